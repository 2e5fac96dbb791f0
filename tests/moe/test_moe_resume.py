"""--save / --load of an MoE run at EP = 2 (ZeRO-1 and ZeRO-2): the resumed run continues bit-identically.

Run A stops at iteration 3 and saves; run B resumes and trains to 6; run C trains 6 without stopping.
B's losses must equal C's iterations 4-6 exactly (experts, router, optimizer state, data position, RNG).
Experts are written one file per global expert id (DeepSpeed's MoE checkpoint files).
"""

import glob
import os

import pytest

from tests.distributed import run_on_ranks
from tests.moe.test_moe_training import MOE
from tests.training.corpus import VOCAB


def _values(corpus, **overrides):
    values = dict(model_family="gpt", num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32,
                  max_position_embeddings=32, micro_batch_size=2, global_batch_size=8, train_iters=6,
                  lr_decay_iters=6, lr=1e-2, min_lr=1e-3, lr_warmup_iters=2, lr_decay_style="cosine", clip_grad=1.0,
                  weight_decay=0.01, seed=1234, log_interval=100, data_path=[corpus["prefix"]],
                  data_cache_path=corpus["cache"], split="98,2,0", tokenizer_type="NullTokenizer", vocab_size=VOCAB,
                  num_workers=0, expert_model_parallel_size=2, **MOE)
    values.update(overrides)
    return values


def _pretrain(values, deepspeed_config):
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config=deepspeed_config, world_size=comm.get_world_size())
    state = pretrain(config, printer=lambda message: None)
    return state.iteration, state.losses


def _generation_error(folder):
    from megatron.checkpointing.safe_load import CheckpointError
    from megatron.core import parallel_state as ps
    from megatron.inference.load_model import load_model_for_inference

    ps.initialize_model_parallel(1)
    with pytest.raises(CheckpointError) as error:
        load_model_for_inference(folder)
    return str(error.value)


@pytest.mark.parametrize("zero", [1, 2])
def test_expert_parallel_save_and_load_resume_exactly(zero, synthetic_corpus, tmp_path):
    deepspeed_config = {"zero_optimization": {"stage": zero}}
    save_dir = str(tmp_path / "checkpoints")
    uninterrupted = run_on_ranks(2, _pretrain, values=_values(synthetic_corpus), deepspeed_config=deepspeed_config)[0]
    first = run_on_ranks(2, _pretrain, values=_values(synthetic_corpus, save=save_dir, exit_interval=3),
                         deepspeed_config=deepspeed_config)[0]
    assert first == (3, uninterrupted[1][:3])
    expert_files = sorted(os.path.basename(path) for path in glob.glob(os.path.join(save_dir, "*", "*expert*")))
    assert len(expert_files) == 2 * 4, expert_files  # 2 MoE layers x 4 experts, one file per global id
    if zero == 1:
        message = run_on_ranks(1, _generation_error, folder=save_dir)[0]
        assert "generation from MoE checkpoints is not supported yet" in message
    resumed = run_on_ranks(2, _pretrain, values=_values(synthetic_corpus, load=save_dir),
                           deepspeed_config=deepspeed_config)[0]
    assert resumed == (6, uninterrupted[1][3:]), (resumed, uninterrupted)
