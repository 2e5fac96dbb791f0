"""ParallelConfig: how the world of ranks is split into tensor, pipeline, expert and data parallelism."""

from dataclasses import dataclass
from typing import Optional

from megatron.config.fields import option

PIPELINE_SCHEDULES = ("deepspeed", "1f1b", "interleaved")


@dataclass(frozen=True)
class ParallelConfig:
    """Parallel degrees. data_parallel_size is whatever is left: world_size / (TP * CP * PP)."""

    tensor_model_parallel_size: int = option(1, "Tensor-parallel degree (splits every layer).", minimum=1)
    pipeline_model_parallel_size: int = option(1, "Pipeline-parallel degree (splits the layer stack).",
                                               minimum=1)
    num_layers_per_virtual_pipeline_stage: Optional[int] = option(
        None, "Layers per model chunk for the interleaved schedule; each stage holds several chunks.",
        minimum=1)
    pipeline_schedule: Optional[str] = option(
        None, "Pipeline schedule: deepspeed (DeepSpeed's PipelineEngine; ZeRO-0/1 only), 1f1b or "
        "interleaved (Megatron schedules; any ZeRO stage).", choices=PIPELINE_SCHEDULES,
        derived="interleaved with virtual stages; else deepspeed when PP > 1 and ZeRO <= 1; else 1f1b")
    pipeline_partition_method: str = option(
        "type:TransformerLayer", "How --pipeline-schedule deepspeed assigns layers to stages (DeepSpeed's "
        "PipelineModule partition_method): type:TransformerLayer (equal numbers of transformer layers), "
        "uniform (equal numbers of layer specs) or parameters (balance parameter counts).",
        aliases=("--partition-method",))
    expert_model_parallel_size: int = option(1, "Expert-parallel degree for MoE layers; carved out of "
                                             "the data-parallel ranks.", minimum=1,
                                             aliases=("--moe-expert-parallel-size",))
    context_parallel_size: int = option(
        1, "Ring-attention context-parallel degree (Megatron-LM's flag): each sequence is cut into 2 CP "
        "zig-zag chunks and K/V travel around the ring of CP ranks; the loss is averaged over all tokens of the "
        "global batch. Composes with TP (+ --sequence-parallel), ZeRO 0-3, ZeRO-2 optimizer offload, full and "
        "selective recomputation and PP under --pipeline-schedule 1f1b; refused with MoE, batch ramp-up, "
        "--partition-activations, parameter offload and optimizer offload at other ZeRO stages.",
        minimum=1)
    ds_sequence_parallel_size: int = option(
        1, "DeepSpeed-Ulysses sequence-parallel degree (Megatron-DeepSpeed's flag): all-to-all from sequence "
        "shards to head shards around local attention; composes with TP when heads/TP and key/value heads/TP "
        "are divisible by it. Uses the same context-parallel axis (zig-zag shares, global-token loss) with the "
        "same combinations as --context-parallel-size.", minimum=1)
    sequence_parallel: bool = option(False, "Megatron sequence parallelism: split norm/dropout "
                                     "activations along the sequence over the tensor-parallel ranks "
                                     "(needs TP > 1).")
    distributed_backend: Optional[str] = option(
        None, "torch.distributed backend. A backend this machine's accelerator cannot run (nccl without CUDA, "
        "ccl without oneCCL) is replaced by the accelerator's own, with a log line.",
        choices=("nccl", "gloo", "ccl", "mpi", "hccl", "xccl"), derived="the accelerator's backend (gloo on CPU)")
    distributed_timeout_minutes: float = option(
        10.0, "A collective waiting longer than this fails the job, naming the ranks that stopped sending "
        "heartbeats (applies to every process group).", minimum=0.05)
    world_size: int = option(1, "Number of ranks.", cli=False, minimum=1,
                             derived="parse_config's world_size argument, else $WORLD_SIZE, else 1")
    data_parallel_size: Optional[int] = option(None, "Data-parallel degree.", cli=False,
                                               derived="world_size / (TP * CP * PP)")
    local_rank: int = option(0, "This process's rank on its node, as passed by the DeepSpeed launcher.",
                             aliases=("--local_rank",), derived="$LOCAL_RANK, else 0")

    def __post_init__(self):
        # A world that does not divide leaves DP unset; validate() explains what to change.
        model_parallel = (self.tensor_model_parallel_size * self.pipeline_model_parallel_size
                          * self.context_parallel_axis_size)
        if self.data_parallel_size is None and model_parallel > 0 and self.world_size % model_parallel == 0:
            object.__setattr__(self, "data_parallel_size", self.world_size // model_parallel)
        if self.pipeline_schedule is None and self.num_layers_per_virtual_pipeline_stage is not None:
            object.__setattr__(self, "pipeline_schedule", "interleaved")

    @property
    def context_parallel_axis_size(self) -> int:
        """Size of the layout's context-parallel axis: the ring's CP or the Ulysses degree (only one is > 1)."""
        return max(self.context_parallel_size, self.ds_sequence_parallel_size)
