"""--save / --load through the whole training job (pretrain): the resumed run continues bit-identically.

Run A trains with --exit-interval 3 and saves when it stops; run B resumes it with --load and trains to
iteration 6; run C trains 6 iterations without stopping. B's losses must equal C's iterations 4-6 exactly,
with dropout on (GPT-2 at TP=2, ZeRO-1; Llama with GQA at DP=2, ZeRO-3): the data position, scheduler, RNG
and optimizer all come back. The checkpoint also carries the resolved configuration, which must rebuild.
"""

import json
import os

import pytest

from tests.distributed import run_on_ranks
from tests.training.corpus import VOCAB

CASES = {
    "gpt_tp2_zero1": (dict(model_family="gpt", num_layers=2, hidden_size=32, num_attention_heads=4,
                           tensor_model_parallel_size=2), {"zero_optimization": {"stage": 1}}),
    "llama_dp2_zero3": (dict(model_family="llama", num_layers=2, hidden_size=32, num_attention_heads=8,
                             num_key_value_heads=2, ffn_hidden_size=64, hidden_dropout=0.1, attention_dropout=0.1),
                        {"zero_optimization": {"stage": 3}}),
}


def _values(case, corpus, **overrides):
    values = dict(CASES[case][0], seq_length=32, max_position_embeddings=32, micro_batch_size=2,
                  global_batch_size=8, train_iters=6, lr_decay_iters=6, lr=1e-2, min_lr=1e-3, lr_warmup_iters=2,
                  lr_decay_style="cosine", clip_grad=1.0, weight_decay=0.01, seed=1234, log_interval=100,
                  data_path=[corpus["prefix"]], data_cache_path=corpus["cache"], split="98,2,0",
                  tokenizer_type="NullTokenizer", vocab_size=VOCAB, num_workers=0, make_vocab_size_divisible_by=64)
    values.update(overrides)
    return values


def _pretrain(values, deepspeed_config):
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config=deepspeed_config, world_size=comm.get_world_size())
    state = pretrain(config, printer=lambda message: None)
    return state.iteration, state.losses


@pytest.mark.parametrize("case", sorted(CASES))
def test_pretrain_save_and_load_resume_exactly(case, checkpoint_corpus, tmp_path):
    from megatron.config import RunConfig

    deepspeed_config = CASES[case][1]
    save_dir = str(tmp_path / "checkpoints")
    uninterrupted = run_on_ranks(2, _pretrain, values=_values(case, checkpoint_corpus),
                                 deepspeed_config=deepspeed_config)[0]
    first = run_on_ranks(2, _pretrain, values=_values(case, checkpoint_corpus, save=save_dir, exit_interval=3),
                         deepspeed_config=deepspeed_config)[0]
    assert first == (3, uninterrupted[1][:3])
    assert open(os.path.join(save_dir, "latest")).read() == "global_step3"
    resumed = run_on_ranks(2, _pretrain, values=_values(case, checkpoint_corpus, load=save_dir),
                           deepspeed_config=deepspeed_config)[0]
    assert resumed == (6, uninterrupted[1][3:]), (resumed, uninterrupted)

    with open(os.path.join(save_dir, "global_step3", "checkpoint_manifest.json")) as handle:
        manifest = json.load(handle)
    stored = RunConfig.from_dict(manifest["config"])
    assert stored.model.padded_vocab_size == 128 and stored.training.train_iters == 6
    assert manifest["training"]["consumed_train_tokens"] == 3 * 8 * 32


def test_pretrain_universal_checkpoint_flag_reshards(checkpoint_corpus, tmp_path):
    """--universal-checkpoint through the whole job: a TP=2 ZeRO-1 checkpoint resumes at DP=2 ZeRO-2 (the flag
    also puts checkpoint.load_universal into the engine's DeepSpeed config) within 1e-4 of the uninterrupted run."""
    save_dir = str(tmp_path / "checkpoints")
    no_dropout = dict(hidden_dropout=0.0, attention_dropout=0.0)
    tp2 = CASES["gpt_tp2_zero1"][1]
    uninterrupted = run_on_ranks(2, _pretrain, values=_values("gpt_tp2_zero1", checkpoint_corpus, **no_dropout),
                                 deepspeed_config=tp2)[0][1]
    run_on_ranks(2, _pretrain, values=_values("gpt_tp2_zero1", checkpoint_corpus, save=save_dir, exit_interval=3,
                                              **no_dropout), deepspeed_config=tp2)
    dp2 = _values("gpt_tp2_zero1", checkpoint_corpus, load=save_dir, universal_checkpoint=True,
                  tensor_model_parallel_size=1, **no_dropout)
    iteration, losses = run_on_ranks(2, _pretrain, values=dp2, deepspeed_config={"zero_optimization": {"stage": 2}})[0]
    assert iteration == 6
    for got, want in zip(losses, uninterrupted[3:], strict=True):
        assert abs(got - want) <= 1e-4 * abs(want), (losses, uninterrupted)
    assert os.path.isfile(os.path.join(save_dir, "global_step3.universal", "universal_conversion_done.json"))
