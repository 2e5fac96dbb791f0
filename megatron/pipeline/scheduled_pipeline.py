"""Runs Megatron's 1F1B / interleaved schedules with one DeepSpeed engine per pipeline rank.

The engine holds this rank's model chunks (stage_model.ModelChunks) with any ZeRO stage; DeepSpeed partitions
over the data-parallel group, reduces gradients, clips and steps. This module only orders the work:

- every stage reads the same micro-batches from its own data iterator (same DP rank, same loader), so
  position ids, attention masks, labels and loss masks never travel between stages; only hidden states
  [s(/tp), b, h] go forward and their gradients backward (p2p.py);
- the last virtual stage's backward is ``engine.backward(loss)`` (DeepSpeed scales it by 1/GAS); every
  other backward is ``engine.backward(sum(output * output_grad), scale_wrt_gas=False)``, whose gradient with
  respect to ``output`` is exactly the received ``output_grad`` (already 1/GAS-scaled);
- the engine's gradient-accumulation boundary is set on the rank's last backward only, so ZeRO-0/1 reduce
  once per global batch and ZeRO-2/3 finish their reductions there; ``engine.step()`` then runs once.

MoE: each chunk's aux (+ z) losses stay on that chunk's rank and join its own backward, so nothing extra
travels between stages. The last virtual stage adds them to its loss; every other chunk backpropagates
``sum(output * output_grad) + aux / GAS`` (the 1/GAS DeepSpeed would give a loss), whose gradient is the
received one plus the aux term's, exactly what the whole model's ``d(loss + aux)`` gives those parameters.
"""

from typing import Iterator, List, Optional, Tuple

import torch
from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

from megatron.core import comm
from megatron.core import parallel_state as ps
from megatron.core.grad_norm import global_grad_norm
from megatron.model.loss import context_parallel_loss
from megatron.model.moe import collect_aux_losses
from megatron.pipeline.p2p import PeerToPeer
from megatron.pipeline.schedules import BACKWARD, FORWARD, PipelineOp, schedule_for
from megatron.pipeline.stage_model import ModelChunks
from megatron.pipeline.tied_embedding import TiedEmbedding


class ScheduledPipeline:
    """A DeepSpeed engine over this rank's chunks plus the schedule that drives it.

    Attributes DeepSpeed's engine has (``train_batch_size()``, ``get_lr()``, ``save_checkpoint``, ...) are
    forwarded to it, so the training loop and checkpointing treat this like an engine.
    """

    def __init__(self, engine, *, hidden_size: int, seq_length: int, sequence_parallel: bool = False):
        if not isinstance(engine.module, ModelChunks):
            raise TypeError(f"ScheduledPipeline needs an engine around ModelChunks, got {type(engine.module).__name__}")
        if engine.fp16_enabled():
            raise ValueError("fp16 is not supported with the 1f1b/interleaved pipeline schedules (each stage would "
                             "need the last stage's dynamic loss scale); use bf16, or --pipeline-schedule deepspeed")
        if engine.module.num_chunks > 1 and engine.zero_optimization_stage() >= 2 and engine.zero_cpu_offload():
            # DeepSpeed moves accumulated gradients to the offloaded optimizer only for the parameters of the
            # backward that ends accumulation, which touches one chunk: the others would step on stale ones.
            raise ValueError(f"the interleaved schedule cannot offload the ZeRO-{engine.zero_optimization_stage()} "
                             f"optimizer: use --pipeline-schedule 1f1b with --offload-optimizer, or ZeRO-1, or "
                             f"drop the offload")
        self.engine = engine
        _stop_zero3_world_trace_check(engine)
        self.chunks: ModelChunks = engine.module
        self.pipeline_size = ps.get_pipeline_model_parallel_world_size()
        self.pipeline_rank = ps.get_pipeline_model_parallel_rank()
        self.num_micro_batches = engine.gradient_accumulation_steps()
        self.ops = schedule_for(self.num_micro_batches, self.pipeline_size, self.pipeline_rank, self.chunks.num_chunks)
        tp = ps.get_tensor_model_parallel_world_size()
        sequence = seq_length // tp if sequence_parallel and tp > 1 else seq_length
        sequence //= ps.get_context_parallel_world_size()  # a CP rank passes on its share of the tokens
        # [s(/tp), b, h]: what every virtual stage passes to the next.
        self.activation_shape = (sequence, engine.train_micro_batch_size_per_gpu(), hidden_size)
        self.activation_dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
        self.last_stage = self.pipeline_size * self.chunks.num_chunks - 1
        self.tied = TiedEmbedding(self.chunks) if self.chunks.tied_embedding else None
        if self.tied is not None:
            self.tied.broadcast_table()

    def on_checkpoint_loaded(self) -> None:
        """Call after loading weights into the engine: the tied head's replica is not a parameter, so it
        is refreshed from the first stage's table (a collective of the first and last stages)."""
        if self.tied is not None:
            self.tied.broadcast_table()

    def __getattr__(self, name):
        # Only called for attributes this object lacks: the engine's API (checkpoints, lr, batch sizes).
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    # --- one global batch ---------------------------------------------------------------------------
    def train_step(self, micro_batches: Iterator[dict], moe_metrics=None) -> Tuple[float, Optional[float], bool]:
        """Forward and backward of ``num_micro_batches`` micro-batches, then one optimizer step.

        Returns (loss averaged over micro-batches and DP ranks, the global grad norm, whether the step was
        skipped), the same on every rank.
        """
        engine = self.engine
        batches = [next(micro_batches) for _ in range(self.num_micro_batches)]
        p2p = PeerToPeer(ps.get_pipeline_model_parallel_prev_rank(), ps.get_pipeline_model_parallel_next_rank())
        inputs, outputs, auxes, losses, aux_values = {}, {}, {}, [], []
        last_backward = max(i for i, op in enumerate(self.ops) if op.kind == BACKWARD)
        head_backwards = [i for i, op in enumerate(self.ops)
                          if op.kind == BACKWARD and self._stage(op) == self.last_stage]
        seen_chunks = set()
        engine.train()
        for index, op in enumerate(self.ops):
            key = (op.chunk, op.micro_batch)
            if op.kind == FORWARD:
                inputs[key] = self._receive_input(p2p, op)
                output = self._forward(op, batches[op.micro_batch], inputs[key])
                aux = collect_aux_losses(self.chunks.chunks[op.chunk])  # this chunk's MoE layers only
                if moe_metrics is not None:
                    moe_metrics.add_micro_batch(self.chunks.chunks[op.chunk], new_micro_batch=op.chunk == 0)
                if self._stage(op) == self.last_stage:
                    output = output if aux is None else output + aux
                    losses.append(output.detach())
                else:
                    p2p.send_activation(output)
                    if aux is not None:
                        auxes[key] = aux
                        aux_values.append(aux.detach())
                outputs[key] = output
                continue
            output_grad = self._receive_output_grad(p2p, op)
            if self.tied is not None and index == last_backward and self.tied.table is not None:
                self.tied.receive_head_gradient(p2p)
            first_of_chunk = op.chunk not in seen_chunks
            seen_chunks.add(op.chunk)
            input_tensor = inputs.pop(key)
            self._backward(outputs.pop(key), output_grad, auxes.pop(key, None), boundary=index == last_backward,
                           first_of_chunk=first_of_chunk)
            if self._stage(op) != 0:
                p2p.send_gradient(input_tensor.grad)
            if self.tied is not None and head_backwards and index == head_backwards[-1]:
                self.tied.send_head_gradient(p2p)
        p2p.finish()
        return self._finish_step(losses, aux_values)

    def _finish_step(self, losses: List[torch.Tensor],
                     aux_values: List[torch.Tensor]) -> Tuple[float, Optional[float], bool]:
        engine = self.engine
        fp32_zero0 = not (engine.bfloat16_enabled() or engine.zero_optimization())
        # DeepSpeed clips an fp32 ZeRO-0 model without reporting the norm: measure the reduced gradients.
        norm = global_grad_norm(engine.module.parameters()) if fp32_zero0 else None
        skipped_before = engine.skipped_steps
        engine.step()
        if self.tied is not None:
            self.tied.broadcast_table()
        if norm is None:
            reported = engine.get_global_grad_norm()
            norm = float(reported) if reported is not None else None
        return self._pipeline_mean(losses + aux_values, self.num_micro_batches), norm, \
            engine.skipped_steps > skipped_before

    @torch.no_grad()
    def evaluate(self, micro_batches: Iterator[dict], num_micro_batches: int) -> float:
        """Mean loss of ``num_micro_batches`` micro-batches, forward only (virtual stages in order)."""
        self.engine.eval()
        p2p = PeerToPeer(ps.get_pipeline_model_parallel_prev_rank(), ps.get_pipeline_model_parallel_next_rank())
        losses = []
        for micro_batch in range(num_micro_batches):
            batch = next(micro_batches)
            for chunk in range(self.chunks.num_chunks):
                op = PipelineOp(FORWARD, chunk, micro_batch)
                output = self._forward(op, batch, self._receive_input(p2p, op))
                if self._stage(op) == self.last_stage:
                    losses.append(output)
                else:
                    p2p.send_activation(output)
        p2p.finish()
        self.engine.train()
        return self._pipeline_mean(losses, num_micro_batches)

    # --- pieces ----------------------------------------------------------------------------------------
    def _stage(self, op: PipelineOp) -> int:
        return op.chunk * self.pipeline_size + self.pipeline_rank

    def _receive_input(self, p2p: PeerToPeer, op: PipelineOp) -> Optional[torch.Tensor]:
        if self._stage(op) == 0:
            p2p.post()
            return None
        hidden = p2p.receive_activation(self.activation_shape, self.activation_dtype)
        return hidden.requires_grad_(torch.is_grad_enabled())

    def _receive_output_grad(self, p2p: PeerToPeer, op: PipelineOp) -> Optional[torch.Tensor]:
        if self._stage(op) == self.last_stage:
            p2p.post()
            return None
        return p2p.receive_gradient(self.activation_shape, self.activation_dtype)

    def _forward(self, op: PipelineOp, batch: dict, input_tensor: Optional[torch.Tensor]) -> torch.Tensor:
        stage = self._stage(op)
        output = self.engine(op.chunk, tokens=batch["tokens"] if stage == 0 else None,
                             position_ids=batch.get("position_ids"), attention_mask=batch.get("attention_mask"),
                             labels=batch["labels"] if stage == self.last_stage else None,
                             hidden_states=input_tensor)
        if stage == self.last_stage:
            return context_parallel_loss(output, batch["loss_mask"])
        return output

    def _backward(self, output: torch.Tensor, output_grad: Optional[torch.Tensor], aux: Optional[torch.Tensor], *,
                  boundary: bool, first_of_chunk: bool) -> None:
        engine = self.engine
        engine.set_gradient_accumulation_boundary(boundary)
        optimizer = engine.optimizer
        if isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
            # ZeRO-3 overwrites a parameter's gradient partition when micro_step_id == 0 and adds to it
            # otherwise, and only advances micro_step_id in the *next forward*. Backwards here may follow
            # each other without a forward (the cool-down), and with interleaving a chunk's first backward
            # comes after other chunks' backwards; both would add onto stale partitions (measured). A
            # backward touches one chunk's parameters, so "first backward of this chunk" is exactly when to
            # overwrite.
            optimizer.micro_step_id = 0 if first_of_chunk else 1
        if output_grad is None:
            engine.backward(output)
        else:
            surrogate = torch.sum(output * output_grad)
            if aux is not None:
                # scale_wrt_gas=False: give the aux loss the 1/GAS DeepSpeed gives the last stage's loss.
                surrogate = surrogate + aux / self.num_micro_batches
            engine.backward(surrogate, scale_wrt_gas=False)

    def _pipeline_mean(self, terms: List[torch.Tensor], num_micro_batches: int) -> float:
        """Mean over micro-batches and DP ranks of the loss terms every stage holds (the last stage's losses,
        other chunks' MoE aux losses): each rank sums its own, DP (x CP) averages, the pipeline sums (ranks holding
        none add zero), so every stage gets the same figure."""
        total = torch.zeros(1, dtype=torch.float64)
        if terms:
            total += torch.stack([term.double().cpu() for term in terms]).sum() / num_micro_batches
        comm.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=True))
        total /= ps.get_data_parallel_world_size(with_context_parallel=True)
        comm.all_reduce(total, group=ps.get_pipeline_model_parallel_group())
        return total.item()


def _stop_zero3_world_trace_check(engine) -> None:
    """ZeRO-3 starts every forward of the engine's module with ``reset_step`` (a forward pre-hook), which,
    until it has recorded a stable trace of submodules, broadcasts the trace from global rank 0 over the
    whole world to check that every rank runs the same modules. Pipeline stages run different modules at
    different times, so the first stage's forward waits in that broadcast for a stage that waits for the
    first stage's activations: a deadlock (measured). The trace is only used to prefetch parameters; without
    the hook ZeRO-3 gathers each submodule's parameters when it runs, and results are unchanged."""
    hook = getattr(getattr(engine.optimizer, "parameter_offload", None), "fwd_pre_hook", None)
    if hook is not None:
        hook.remove()
