"""One whole training job (config -> data -> model -> DeepSpeed engine -> loop) on every rank of a pool, and the
figures the parity tests compare with the single-rank run.

Each run initialises itself from its flags (nothing is copied between runs); every rank must report the same
figures, since losses and norms are reduced over the whole job before they are logged.
"""

from tests.distributed import run_on_ranks


def _train(values, deepspeed_config):
    from megatron.config import resolve_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    config = resolve_config(values, deepspeed_config=deepspeed_config, world_size=comm.get_world_size())
    state = pretrain(config, printer=lambda message: None)
    steps = [record for record in state.history if "grad_norm" in record and "eval_loss" not in record]
    return {
        "iteration": state.iteration,
        "losses": state.losses,
        "evals": [record["eval_loss"] for record in state.history if "eval_loss" in record],
        "norms": [record["grad_norm"] for record in steps],
        # the MoE figures of the last log interval: aux loss and every layer's expert load
        "moe": {key: value for key, value in (steps[-1] if steps else {}).items() if key.startswith("moe")},
    }


def train(world_size, values, deepspeed_config):
    """The figures of one run on `world_size` ranks: iteration, losses, evals, norms (per logged step), moe."""
    results = run_on_ranks(world_size, _train, values=values, deepspeed_config=deepspeed_config)
    for rank, result in enumerate(results):
        differing = sorted(key for key in result if result[key] != results[0][key])
        assert not differing, f"rank {rank} reports other {differing} than rank 0: " + "; ".join(
            f"{key}: {result[key]} vs {results[0][key]}" for key in differing)
    return results[0]
