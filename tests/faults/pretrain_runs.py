"""Rank-side helpers: whole pretrain() runs on the tiny GPT of the resume tests, returning what the tests check."""

from tests.training.corpus import VOCAB


def values(corpus, **overrides):
    result = dict(model_family="gpt", num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32,
                  max_position_embeddings=32, micro_batch_size=2, global_batch_size=8, train_iters=6,
                  lr=1e-2, min_lr=1e-3, lr_warmup_iters=2, lr_decay_style="cosine", clip_grad=1.0,
                  weight_decay=0.01, seed=1234, log_interval=100, data_path=[corpus["prefix"]],
                  data_cache_path=corpus["cache"], split="98,2,0", tokenizer_type="NullTokenizer",
                  vocab_size=VOCAB, num_workers=0, make_vocab_size_divisible_by=64)
    result.update(overrides)
    return result


def pretrain_outcome(values, deepspeed_config=None):
    """(iteration, losses, stop_reason, error type name, error message) of one pretrain() run."""
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config=deepspeed_config or {"zero_optimization": {"stage": 1}},
                            world_size=comm.get_world_size())
    try:
        state = pretrain(config, printer=lambda message: None)
    except Exception as error:  # noqa: BLE001 - the test inspects it
        ps.destroy_model_parallel()
        return None, None, None, type(error).__name__, str(error)
    return state.iteration, state.losses, state.stop_reason, None, None


def pretrain_with_switch_at(values, switch, at_iteration):
    """pretrain() in which rank 1 creates the kill-switch file during iteration ``at_iteration``."""
    import megatron.training.loop as loop
    from megatron.core import comm

    original = loop.train_step

    def train_step(engine, *args, **kwargs):
        result = original(engine, *args, **kwargs)
        if comm.get_rank() == 1 and engine.global_steps == at_iteration:
            open(switch, "w").close()
        return result

    loop.train_step = train_step
    try:
        return pretrain_outcome(values)
    finally:
        loop.train_step = original
