"""Adam's state under ZeRO, created before it exists.

torch's Adam creates ``step``/``exp_avg``/``exp_avg_sq`` at its first step. A ZeRO-3 engine saved before any
step (right after a --finetune load, say) therefore has empty optimizer shards, which ds_to_universal cannot
convert; and a universal load into a fresh engine has nothing to write the moments into. Zero moments at step
0 are exactly what Adam would create, so creating them early changes no result.
"""

import torch


def ensure_adam_state(engine) -> bool:
    """Create missing Adam moments for the engine's flat ZeRO partitions; False if it is not a ZeRO Adam."""
    base = getattr(engine.optimizer, "optimizer", None)
    if base is None or not base.param_groups or "betas" not in base.param_groups[0]:
        return False
    # ZeRO-3 hands its flat fp32 partitions to the torch optimizer only inside step(); ZeRO-1/2 keep them in
    # the param groups.
    flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    if flats is None:
        flats = [flat for group in base.param_groups for flat in group["params"]]
    for flat in flats:
        if not base.state.get(flat):
            base.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                "exp_avg_sq": torch.zeros_like(flat)}
    return True
