"""megatron-ds: Megatron tensor and pipeline parallelism inside DeepSpeed engines."""

__version__ = "0.1.0"
