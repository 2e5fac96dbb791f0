"""What a user sees while training runs: one line per --log-interval, the same figures as JSON lines in the
metrics file, and TensorBoard scalars when asked.

Figures per interval: iteration, loss (mean over the interval), learning rate, grad norm, loss scale,
skipped steps, tokens/s, TFLOP/s per device, MFU against a stated peak, and memory.
"""

import json
import os
import resource
import time
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class ThroughputModel:
    """What one iteration costs: tokens in the global batch and model FLOPs (forward + backward + recompute)."""
    tokens_per_iteration: int
    flops_per_iteration: float
    world_size: int
    peak_tflops_per_device: Optional[float]


def memory_figures() -> dict:
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # ru_maxrss is in KiB on Linux: the peak resident memory of this rank's process.
        return {"mem_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    return {"mem_allocated_gib": get_accelerator().memory_allocated() / 2 ** 30,
            "mem_max_allocated_gib": get_accelerator().max_memory_allocated() / 2 ** 30}


class ProgressLog:
    def __init__(self, *, log_interval: int, throughput: ThroughputModel, metrics_file: Optional[str],
                 tensorboard_dir: Optional[str], is_writer: bool, printer=print, tensorboard_tags: str = "native",
                 megatron_deepspeed_tags=None, tensorboard_queue_size: int = 10, tokens_per_sample: int = 0):
        self.log_interval = log_interval
        self.throughput = throughput
        self.is_writer = is_writer
        self.printer = printer
        self.metrics_file = metrics_file if is_writer else None
        if self.metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(self.metrics_file)), exist_ok=True)
        self.tensorboard = None
        if tensorboard_dir and is_writer:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ValueError("--tensorboard-dir needs the `tensorboard` package: pip install tensorboard") \
                    from error
            self.tensorboard = SummaryWriter(log_dir=tensorboard_dir, max_queue=tensorboard_queue_size)
        # --tensorboard-tags: our train/* and eval/* tags, Megatron-DeepSpeed's names, or both.
        self.native_tags = tensorboard_tags in ("native", "both")
        self.megatron_deepspeed = None
        if self.tensorboard is not None and tensorboard_tags in ("megatron-deepspeed", "both"):
            from megatron.training.tensorboard_tags import MegatronDeepSpeedTags, MegatronDeepSpeedWriter

            self.megatron_deepspeed = MegatronDeepSpeedWriter(
                self.tensorboard, megatron_deepspeed_tags or MegatronDeepSpeedTags(), throughput.world_size)
        self.tokens_per_sample = tokens_per_sample
        self._reset_interval()
        self.history = []

    def _reset_interval(self):
        self._losses, self._skipped, self._steps = [], 0, 0
        self._moe_aux, self._moe_load = [], None
        self._interval_start = time.perf_counter()

    def record_step(self, iteration: int, loss: float, lr: float, grad_norm: Optional[float],
                    loss_scale: Optional[float], skipped: bool, consumed_samples: Optional[int] = None,
                    batch_size: Optional[int] = None, moe: Optional[dict] = None):
        if self.megatron_deepspeed is not None and consumed_samples is not None:
            self.megatron_deepspeed.train_step(
                iteration, samples=consumed_samples, tokens=consumed_samples * self.tokens_per_sample, loss=loss,
                lr=lr, batch_size=batch_size, grad_norm=grad_norm, loss_scale=loss_scale, memory=memory_figures())
        self._steps += 1
        self._skipped += int(skipped)
        if not skipped:
            self._losses.append(loss)
        self._last = {"lr": lr, "grad_norm": grad_norm, "loss_scale": loss_scale}
        if moe is not None:
            # MoE: the aux (+ z) loss apart from the LM loss, and the last step's expert load per layer.
            if not skipped:
                self._moe_aux.append(moe["moe_aux_loss"])
            self._moe_load = {key: value for key, value in moe.items() if key != "moe_aux_loss"}
        if iteration % self.log_interval == 0:
            self._emit(iteration)

    def _emit(self, iteration: int):
        elapsed = time.perf_counter() - self._interval_start
        seconds_per_iteration = elapsed / max(self._steps, 1)
        tokens_per_second = self.throughput.tokens_per_iteration / seconds_per_iteration
        tflops_per_device = (self.throughput.flops_per_iteration / seconds_per_iteration
                             / self.throughput.world_size / 1e12)
        peak = self.throughput.peak_tflops_per_device
        record = {
            "iteration": iteration,
            "loss": sum(self._losses) / len(self._losses) if self._losses else float("nan"),
            "lr": self._last["lr"], "grad_norm": self._last["grad_norm"], "loss_scale": self._last["loss_scale"],
            "skipped_steps": self._skipped, "seconds_per_iteration": seconds_per_iteration,
            "tokens_per_second": tokens_per_second, "tflops_per_device": tflops_per_device,
            "mfu": tflops_per_device / peak if peak else None,
            **memory_figures(),
        }
        if self._moe_load is not None:
            aux = sum(self._moe_aux) / len(self._moe_aux) if self._moe_aux else float("nan")
            record.update(lm_loss=record["loss"] - aux, moe_aux_loss=aux, **self._moe_load)
        self.history.append(record)
        if self.is_writer:
            self.printer(_format_line(record))
            self._write(record, "train")
        self._reset_interval()

    def record_eval(self, iteration: int, loss: float, consumed_samples: Optional[int] = None):
        record = {"iteration": iteration, "eval_loss": loss, "eval_ppl": _perplexity(loss)}
        if self.megatron_deepspeed is not None and consumed_samples is not None:
            self.megatron_deepspeed.validation(iteration, samples=consumed_samples,
                                               tokens=consumed_samples * self.tokens_per_sample, loss=loss,
                                               ppl=record["eval_ppl"])
        self.history.append(record)
        if self.is_writer:
            self.printer(f" validation at iteration {iteration:>6} | loss {loss:.4f} | ppl {record['eval_ppl']:.3f}")
            self._write(record, "eval")

    def _write(self, record: dict, kind: str):
        if self.metrics_file:
            with open(self.metrics_file, "a") as handle:
                handle.write(json.dumps({"kind": kind, **record}) + "\n")
        if self.tensorboard is not None and self.native_tags:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and value is not None:
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, record["iteration"])
                elif isinstance(value, list):  # MoE tokens per expert: one scalar per expert
                    for index, item in enumerate(value):
                        self.tensorboard.add_scalar(f"{kind}/{key}/{index}", item, record["iteration"])
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()


def _perplexity(loss: float) -> float:
    return float(torch.exp(torch.tensor(min(loss, 50.0))))


def _format_line(record: dict) -> str:
    def optional(value, fmt):
        return format(value, fmt) if value is not None else "n/a"

    memory = " | ".join(f"{key[4:]} {value:.2f}" for key, value in record.items() if key.startswith("mem_"))
    return (f" iteration {record['iteration']:>6} | loss {record['loss']:.4f} | lr {record['lr']:.3e}"
            f" | grad norm {optional(record['grad_norm'], '.3f')} | loss scale {optional(record['loss_scale'], '.1f')}"
            f" | skipped {record['skipped_steps']} | {record['seconds_per_iteration'] * 1000:.0f} ms/it"
            f" | tokens/s {record['tokens_per_second']:.0f} | TFLOP/s/device {record['tflops_per_device']:.4f}"
            f" | MFU {optional(record['mfu'] * 100 if record['mfu'] is not None else None, '.1f')}%"
            f" | {memory}" + _moe_text(record))


def _moe_text(record: dict) -> str:
    if "moe_aux_loss" not in record:
        return ""
    loads = " | ".join(f"{key[:-len('_tokens_per_expert')]} tokens/expert {record[key]} dropped "
                       f"{record[key[:-len('_tokens_per_expert')] + '_dropped']}"
                       for key in record if key.endswith("_tokens_per_expert"))
    return f" | lm loss {record['lm_loss']:.4f} | aux loss {record['moe_aux_loss']:.4f} | {loads}"
