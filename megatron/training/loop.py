"""The training loop: gradient accumulation to the global batch, evaluation, logging and exit conditions.

One iteration is one optimizer step over the global batch: ``gradient_accumulation_steps`` micro-batches on
each data-parallel rank. DeepSpeed scales each micro-batch loss by 1/GAS, averages gradients over the
data-parallel group at the accumulation boundary, clips and steps; the loop only feeds micro-batches and
reports.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional

import torch
from deepspeed.runtime.pipe.engine import PipelineEngine

from megatron.checkpointing.checkpointer import NonFiniteModelError
from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.grad_norm import global_grad_norm
from megatron.pipeline import is_pipeline, pipeline_evaluate, pipeline_train_step
from megatron.model.moe import collect_aux_losses
from megatron.model.moe.moe_layer import moe_layers, update_expert_biases
from megatron.training.moe_metrics import MoEMetrics
from megatron.training.progress_log import ProgressLog


def batch_loss(engine, batch: dict) -> torch.Tensor:
    """Mean per-token loss of one micro-batch over the tokens its loss mask keeps.

    Under context parallelism a rank holds 1/CP of each sequence: its loss is its tokens' share of the mean
    over the whole micro-batch's kept tokens, times CP, because DeepSpeed averages gradients (and the loop
    averages reported losses) over DP x CP ranks; the average over the CP ranks is then exactly the mean."""
    per_token = engine(batch["tokens"], position_ids=batch.get("position_ids"),
                       attention_mask=batch.get("attention_mask"), labels=batch["labels"])
    loss_mask = batch["loss_mask"].to(per_token.dtype)
    kept = loss_mask.sum()
    cp = ps.get_context_parallel_world_size()
    if cp > 1:
        kept = kept.detach().clone()
        comm.all_reduce(kept, group=ps.get_context_parallel_group())
    if kept.item() == 0:
        raise ValueError("a micro-batch has an all-zero loss mask (every token is masked, e.g. by --eod-mask-loss "
                         "on documents shorter than 2 tokens); check the data or drop --eod-mask-loss")
    loss = (per_token.float() * loss_mask).sum() / kept * cp
    aux = collect_aux_losses(engine.module)
    # MoE load-balancing and z losses of this forward (zero outside training) join the loss here, so they
    # reach the backward with the same 1/GAS scaling DeepSpeed gives the LM loss.
    return loss if aux is None else loss + aux


def _data_parallel_mean(value: float) -> float:
    """Mean over the DP x CP ranks (each CP rank's loss is CP x its share: see batch_loss)."""
    tensor = torch.tensor([value], dtype=torch.float64)
    comm.all_reduce(tensor, group=ps.get_data_parallel_group(with_context_parallel=True))
    return tensor.item() / ps.get_data_parallel_world_size(with_context_parallel=True)


@dataclass
class TrainState:
    """Where training stands; stored in checkpoints as client state."""
    iteration: int = 0
    consumed_train_samples: int = 0
    global_batch_size: Optional[int] = None  # of the last step (changes during a batch-size ramp-up)
    losses: List[float] = field(default_factory=list)
    history: List[dict] = field(default_factory=list)  # the logged records (train lines and evaluations)
    stop_reason: Optional[str] = None  # set when a signal or the kill switch stopped the run early


def train_step(engine, micro_batches: Iterator[dict], gradient_accumulation_steps: int,
               explicit_boundaries: bool = False, moe_metrics: Optional[MoEMetrics] = None):
    """Runs one global batch; returns (mean loss over DP and micro-batches, grad norm, skipped).

    explicit_boundaries: tell the engine which micro-batch ends the step, instead of letting it count
    micro-batches modulo its accumulation steps; needed once that number changes during a run (ramp-up)."""
    if is_pipeline(engine):
        return pipeline_train_step(engine, micro_batches, moe_metrics)
    total, grad_norm = 0.0, None
    zero_stage = engine.zero_optimization_stage()
    skipped_before = engine.skipped_steps
    for index in range(gradient_accumulation_steps):
        if explicit_boundaries:
            engine.set_gradient_accumulation_boundary(index == gradient_accumulation_steps - 1)
        loss = batch_loss(engine, next(micro_batches))
        if moe_metrics is not None:
            moe_metrics.add_micro_batch(engine.module)
        engine.backward(loss)
        if engine.is_gradient_accumulation_boundary() and zero_stage == 0 and not _mixed_precision(engine):
            # DeepSpeed clips an fp32 ZeRO-0 model without reporting the norm; measure the reduced grads.
            grad_norm = global_grad_norm(engine.module.parameters())
        engine.step()
        total += loss.item()
    if engine.skipped_steps == skipped_before:
        update_expert_biases(engine.module)  # aux-loss-free balancing moves after each optimizer step
    if grad_norm is None:
        reported = engine.get_global_grad_norm()
        grad_norm = float(reported) if reported is not None else None
    return _data_parallel_mean(total / gradient_accumulation_steps), grad_norm, engine.skipped_steps > skipped_before


def _mixed_precision(engine) -> bool:
    return engine.fp16_enabled() or engine.bfloat16_enabled()


@torch.no_grad()
def evaluate(engine, micro_batches: Iterator[dict], num_micro_batches: int) -> float:
    if is_pipeline(engine):
        return pipeline_evaluate(engine, micro_batches, num_micro_batches)
    engine.eval()
    total = 0.0
    for _ in range(num_micro_batches):
        total += batch_loss(engine, next(micro_batches)).item()
    engine.train()
    return _data_parallel_mean(total / num_micro_batches)


def set_global_batch(engine, global_batch_size: int) -> int:
    """Give the engine (and a sample-counting LR schedule) this step's global batch; returns its micro-batches."""
    if engine.train_batch_size() != global_batch_size:
        engine.set_train_batch_size(global_batch_size)
    if hasattr(engine.lr_scheduler, "samples_per_step"):
        engine.lr_scheduler.samples_per_step = global_batch_size
    return engine.gradient_accumulation_steps()


class TrainingDiverged(NonFiniteModelError):
    """Training produced non-finite numbers; raised before anything of the broken step is saved."""


class DivergenceGuard:
    """Decides when non-finite steps end the run.

    DeepSpeed skips a step whose gradients hold inf/NaN (it reports it as an overflow) in fp32 and bf16 too,
    so a skipped step there is a diverged step: without loss scaling nothing will make the next one finite,
    and ZeRO-0's plain torch optimizer even applies it. The run stops at the first one. Under fp16 dynamic
    loss scaling overflows are how the scale is found, so only steps whose loss itself is non-finite count,
    and ``max_skipped_steps`` consecutive ones stop the run.
    """

    def __init__(self, max_skipped_steps: int, dynamic_loss_scale: bool):
        self.max_skipped_steps, self.dynamic_loss_scale = max_skipped_steps, dynamic_loss_scale
        self.consecutive = 0

    def check(self, iteration: int, loss: float, grad_norm: Optional[float], skipped: bool):
        finite_loss = math.isfinite(loss)
        finite_norm = grad_norm is None or math.isfinite(grad_norm)
        if self.dynamic_loss_scale:
            if finite_loss and not skipped:
                self.consecutive = 0
            elif not finite_loss:
                self.consecutive += 1
            diverged = self.consecutive >= self.max_skipped_steps
        else:
            diverged = not (finite_loss and finite_norm and not skipped)
        if diverged:
            how = (f"{self.consecutive} consecutive steps with a non-finite loss (--max-skipped-steps "
                   f"{self.max_skipped_steps}, fp16 dynamic loss scaling)" if self.dynamic_loss_scale else
                   "a non-finite step without loss scaling stops the run at once")
            raise TrainingDiverged(
                f"training diverged at iteration {iteration}: loss {loss}, grad norm {grad_norm}"
                f"{', step skipped by DeepSpeed' if skipped else ''} ({how}). Nothing of this step was saved")


def _has_dynamic_loss_scale(engine) -> bool:
    if not engine.fp16_enabled():
        return False
    return bool(getattr(engine, "dynamic_loss_scale", lambda: True)())


def train(engine, *, state: TrainState, train_iters: int, gradient_accumulation_steps: int,
          global_batch_size: int, train_batches: Iterator[dict], progress: ProgressLog,
          eval_interval: Optional[int] = None, eval_iters: int = 0,
          valid_batches: Optional[Callable[[], Iterator[dict]]] = None,
          exit_interval: Optional[int] = None, exit_duration_in_mins: Optional[float] = None,
          on_iteration_end: Optional[Callable[[TrainState], bool]] = None,
          batch_size_at: Optional[Callable[[int], int]] = None, train_tokens: Optional[int] = None,
          tokens_per_sample: int = 0, max_skipped_steps: int = 3) -> TrainState:
    """Trains until ``train_iters`` (or an exit condition); ``on_iteration_end`` may request a stop (e.g.
    after saving on SIGTERM) by returning True. Non-finite steps raise :class:`TrainingDiverged` before
    ``on_iteration_end`` runs, so a diverged step is never saved (see :class:`DivergenceGuard`).

    batch_size_at(consumed samples) -> global batch: a batch-size ramp-up (--rampup-batch-size); each step
    then runs as many micro-batches as that batch needs. train_tokens: stop once consumed samples x
    tokens_per_sample reach it (Megatron-DeepSpeed's --train-tokens)."""
    start_time = time.monotonic()
    guard = DivergenceGuard(max_skipped_steps, _has_dynamic_loss_scale(engine))
    # By the model's MoE config, not this rank's layers: a pipeline stage without MoE layers still joins the
    # stages' exchange of figures. DeepSpeed's PipelineEngine (refused with MoE) has no per-forward hook.
    has_moe = any(getattr(module, "moe_config", None) is not None for module in engine.module.modules())
    moe_metrics = MoEMetrics() if has_moe and not isinstance(engine, PipelineEngine) else None
    while state.iteration < train_iters:
        if train_tokens is not None and state.consumed_train_samples * tokens_per_sample >= train_tokens:
            break
        if batch_size_at is not None:
            global_batch_size = batch_size_at(state.consumed_train_samples)
            gradient_accumulation_steps = set_global_batch(engine, global_batch_size)
        loss, grad_norm, skipped = train_step(engine, train_batches, gradient_accumulation_steps,
                                              explicit_boundaries=batch_size_at is not None,
                                              moe_metrics=moe_metrics)
        state.iteration += 1
        state.consumed_train_samples += global_batch_size
        state.global_batch_size = global_batch_size
        guard.check(state.iteration, loss, grad_norm, skipped)
        state.losses.append(loss)
        # Only fp16 has a dynamic loss scale; DeepSpeed reports 1.0 otherwise, which would read as a value.
        loss_scale = engine._get_optimizer_loss_scale() if engine.fp16_enabled() else None
        progress.record_step(state.iteration, loss, engine.get_lr()[0], grad_norm, loss_scale, skipped,
                             consumed_samples=state.consumed_train_samples, batch_size=global_batch_size,
                             moe=moe_metrics.step_figures() if moe_metrics is not None else None)

        if eval_interval and valid_batches is not None and state.iteration % eval_interval == 0:
            progress.record_eval(state.iteration, evaluate(engine, valid_batches(),
                                                           eval_iters * gradient_accumulation_steps),
                                 consumed_samples=state.consumed_train_samples)
        stop = on_iteration_end(state) if on_iteration_end is not None else False
        if exit_interval and state.iteration % exit_interval == 0:
            stop = True
        if exit_duration_in_mins is not None:
            # Ranks must agree, or one would leave the others waiting in a collective.
            elapsed = torch.tensor([(time.monotonic() - start_time) / 60.0])
            comm.all_reduce(elapsed, op=comm.ReduceOp.MAX)
            stop = stop or elapsed.item() > exit_duration_in_mins
        if stop:
            break
    return state
