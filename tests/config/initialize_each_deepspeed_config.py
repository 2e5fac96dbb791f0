"""Run deepspeed.initialize + four optimizer steps for every JSON in deepspeed_configs/, in this one process.

Started as a subprocess by test_deepspeed_configs_initialize.py so that its process group and DeepSpeed's
module-level state cannot leak into other tests. Prints one JSON line per config:
{"name", "ok", "error", "fp16_supported", "loss_before", "loss_after", "seconds", "optimizer_seconds",
"ds_builds_optimizer"}.
"""

import json
import os
import pathlib
import socket
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from megatron.config import resolve_config  # noqa: E402

TINY = dict(num_layers=2, hidden_size=16, num_attention_heads=2, seq_length=8, train_iters=4, lr=1e-2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_optimizer(config, model):
    """What the training code will do: nothing when DeepSpeed builds it, CPU Adam with offload, else AdamW."""
    if config.deepspeed_builds_optimizer:
        return None
    t = config.training
    kwargs = dict(lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps, weight_decay=t.weight_decay)
    if config.zero.offload_optimizer == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(model.parameters(), adamw_mode=True, **kwargs)
    return torch.optim.AdamW(model.parameters(), **kwargs)


def run_one(path: pathlib.Path) -> dict:
    start = time.perf_counter()
    values = dict(TINY)
    if "optimizer" in json.loads(path.read_text()):
        del values["lr"]  # the JSON's optimizer block owns it; passing a different --lr would be an error
    config = resolve_config(values, deepspeed_config=str(path), world_size=1)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 16)
    optimizer_start = time.perf_counter()
    optimizer = build_optimizer(config, model)  # DeepSpeedCPUAdam JIT-builds its C++ op on first use
    optimizer_seconds = time.perf_counter() - optimizer_start
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           model_parameters=model.parameters() if optimizer is None else None,
                                           config=config.deepspeed_dict())
    dtype = torch.bfloat16 if config.precision.bf16 else torch.float16 if config.precision.fp16 else torch.float32
    torch.manual_seed(1)
    batch = torch.randn(config.training.micro_batch_size, 16, dtype=dtype)
    losses = []
    # Four optimizer steps: DeepSpeed's warmup schedulers give LR 0 to the first step or two.
    for _ in range(config.training.gradient_accumulation_steps * 4):
        loss = engine(batch).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    engine.destroy()
    return {"loss_before": losses[0], "loss_after": losses[-1], "seconds": time.perf_counter() - start,
            "optimizer_seconds": optimizer_seconds, "ds_builds_optimizer": config.deepspeed_builds_optimizer}


def main(paths) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    try:
        for path in paths:
            result = {"name": path.name, "ok": True, "error": None}
            try:
                result.update(run_one(path))
            except Exception as error:  # reported to the test, which decides what is expected
                result.update(ok=False, error=f"{type(error).__name__}: {error}",
                              traceback=traceback.format_exc(limit=3))
            # The CPU accelerator answers None (not False) when fp16 is unsupported.
            result["fp16_supported"] = bool(deepspeed.accelerator.get_accelerator().is_fp16_supported())
            print("RESULT " + json.dumps(result), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    names = sys.argv[1:]
    all_paths = sorted((ROOT / "deepspeed_configs").glob("*.json"))
    main([p for p in all_paths if not names or p.name in names])
