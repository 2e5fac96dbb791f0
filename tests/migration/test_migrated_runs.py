"""Migrated runs through the whole job (pretrain() on 2 ranks of the rank pool):

- --rampup-batch-size: each step runs the micro-batches its batch needs; the early steps equal a run at the
  starting batch size, and a schedule counted in samples follows the consumed samples exactly (a step with the
  wrong accumulation boundary would step the optimizer, and the schedule, an extra time);
- Megatron-DeepSpeed's universal-checkpoint workflow: `ds_to_universal` by hand, then --universal-checkpoint loads
  the converted folder (named in latest_universal), not the newer checkpoint `latest` names, and reshards it;
- sizing in tokens: the run stops when the token budget is consumed, with the LR counted in tokens.
"""

import os
import subprocess
import sys

from tests.distributed import run_on_ranks
from tests.training.corpus import VOCAB


def _values(corpus, **overrides):
    values = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32, max_position_embeddings=32,
                  micro_batch_size=2, lr=1e-2, min_lr=0.0, lr_decay_style="linear", clip_grad=1.0,
                  weight_decay=0.01, seed=1234, log_interval=1, hidden_dropout=0.0, attention_dropout=0.0,
                  data_path=[corpus["prefix"]], data_cache_path=corpus["cache"], split="98,2,0",
                  tokenizer_type="NullTokenizer", vocab_size=VOCAB, num_workers=0, make_vocab_size_divisible_by=64,
                  eval_interval=1000, eval_iters=1)
    values.update(overrides)
    return values


def _pretrain(values, deepspeed_config=None):
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config=deepspeed_config or {"zero_optimization": {"stage": 1}},
                            world_size=comm.get_world_size())
    state = pretrain(config, printer=lambda message: None)
    lrs = [record["lr"] for record in state.history if "lr" in record]
    evaluations = [record["eval_loss"] for record in state.history if "eval_loss" in record]
    assert len(evaluations) == state.iteration // values["eval_interval"], state.history
    return state.iteration, state.consumed_train_samples, state.losses, lrs


def test_rampup_runs_the_right_micro_batches_and_counts_samples(migration_corpus, tmp_path):
    # DP 2 x micro 2 = 4 samples per micro-batch round; ramp 4 -> 12 in 2 increments over 16 samples:
    # batches 4, 4, 8, 12, 12 (accumulation 1, 1, 2, 3, 3), 40 samples in 5 steps.
    ramp = _values(migration_corpus, global_batch_size=12, rampup_batch_size=(4, 4, 16), train_samples=40)
    iterations, consumed, losses, lrs = run_on_ranks(2, _pretrain, values=ramp)[0]
    assert (iterations, consumed) == (5, 40)
    # Linear decay over 40 samples (Megatron: sample-sized runs decay over all their samples).
    expected = [1e-2 * (1 - samples / 40) for samples in (4, 8, 16, 28, 40)]
    assert all(abs(got - want) <= 1e-12 for got, want in zip(lrs, expected, strict=True)), (lrs, expected)
    fixed = _values(migration_corpus, global_batch_size=4, train_samples=40)
    fixed_losses = run_on_ranks(2, _pretrain, values=fixed)[0][2]
    # Same data, same initial weights, same LR for the first step (4 of 40 samples): identical first step;
    # the second step's LR is equal too (8 of 40 samples in both runs).
    assert losses[:2] == fixed_losses[:2], (losses, fixed_losses)
    # After the ramp: the same run stopped at iteration 3 and resumed WITHOUT a ramp-up at batch 12 (DeepSpeed's
    # own accumulation of 3 micro-batches from a fresh engine) must give the same steps 4 and 5: a wrong
    # accumulation boundary (the engine counting micro-batches modulo 3 across the changes) steps mid-batch.
    save = str(tmp_path / "ramp")
    run_on_ranks(2, _pretrain, values=dict(ramp, save=save, exit_interval=3))
    resumed = _values(migration_corpus, global_batch_size=12, train_iters=5, lr_decay_samples=40, load=save)
    twin_iterations, twin_consumed, twin_losses, twin_lrs = run_on_ranks(2, _pretrain, values=resumed)[0]
    assert (twin_iterations, twin_consumed) == (5, 40)
    assert twin_losses == losses[3:], (twin_losses, losses)
    assert twin_lrs == lrs[3:]


def test_train_tokens_stops_the_run_and_counts_the_schedule_in_tokens(migration_corpus):
    # Megatron's per-split paths too: all of the corpus trains, all of it validates.
    values = _values(migration_corpus, global_batch_size=8, train_tokens=3 * 8 * 32, train_samples=1000,
                     lr_warmup_tokens=256, lr_decay_tokens=768, lr_decay_style="cosine", lr=6e-4, min_lr=1e-6,
                     data_path=None, train_data_path=[migration_corpus["prefix"]],
                     valid_data_path=[migration_corpus["prefix"]], eval_interval=2, eval_iters=1)
    iterations, consumed, _, lrs = run_on_ranks(2, _pretrain, values=values)[0]
    assert (iterations, consumed) == (3, 24)
    # Warmup ends after 256 tokens (step 1); cosine over the remaining 512 tokens: halfway at step 2.
    expected = [6e-4, 1e-6 + 0.5 * (6e-4 - 1e-6), 1e-6]
    assert all(abs(got - want) <= 1e-12 for got, want in zip(lrs, expected, strict=True)), (lrs, expected)


def test_universal_workflow_loads_the_folder_ds_to_universal_made(migration_corpus, tmp_path):
    save_dir = str(tmp_path / "checkpoints")
    tp2 = dict(tensor_model_parallel_size=2, global_batch_size=8, train_iters=6, lr_warmup_iters=1)
    uninterrupted = run_on_ranks(2, _pretrain, values=_values(migration_corpus, **tp2))[0][2]
    # Saves global_step3 and global_step4; `latest` names global_step4.
    run_on_ranks(2, _pretrain, values=_values(migration_corpus, save=save_dir, save_interval=3, exit_interval=4,
                                              **tp2))
    assert open(os.path.join(save_dir, "latest")).read() == "global_step4"
    assert open(os.path.join(save_dir, "latest_checkpointed_iteration.txt")).read() == "4"
    converted = os.path.join(save_dir, "global_step3_universal")
    result = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                             os.path.join(save_dir, "global_step3"), "--output_folder", converted],
                            env=dict(os.environ, DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert open(os.path.join(save_dir, "latest_universal")).read() == "global_step3_universal"

    resumed = _values(migration_corpus, load=save_dir, universal_checkpoint=True, tensor_model_parallel_size=1,
                      global_batch_size=8, train_iters=6, lr_warmup_iters=1)
    iterations, _, losses, _ = run_on_ranks(2, _pretrain, values=resumed)[0]
    # Resumed at iteration 3 (the converted folder), not 4 (`latest`), and resharded TP=2 -> DP=2.
    assert iterations == 6 and len(losses) == 3, losses
    for got, want in zip(losses, uninterrupted[3:], strict=True):
        assert abs(got - want) <= 1e-4 * abs(want), (losses, uninterrupted)
    assert not os.path.exists(os.path.join(save_dir, "global_step3.universal")), "converted again instead"
    assert os.path.isfile(os.path.join(converted, "universal_conversion_done.json"))
