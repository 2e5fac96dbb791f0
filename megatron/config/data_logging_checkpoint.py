"""What a run reads (DataConfig) and what it writes (LoggingConfig, CheckpointConfig)."""

import os
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from megatron.config.fields import option

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPT2BPETokenizer", "HFTokenizer", "NullTokenizer")


@dataclass(frozen=True)
class DataConfig:
    """Training data and tokenizer. Whether the named files exist is checked by the data code."""

    data_path: Optional[Tuple[str, ...]] = option(
        None, "Dataset prefix, or alternating `weight prefix` pairs to blend several; unset means the "
        "built-in corpus.")
    train_data_path: Optional[Tuple[str, ...]] = option(
        None, "Training data only (prefix or `weight prefix` pairs), instead of splitting --data-path.")
    valid_data_path: Optional[Tuple[str, ...]] = option(
        None, "Validation data only (prefix or `weight prefix` pairs); with --train-data-path.")
    test_data_path: Optional[Tuple[str, ...]] = option(
        None, "Test data (prefix or `weight prefix` pairs); accepted with --train-data-path, not used by "
        "pre-training.")
    split: str = option("969,30,1", "Train,validation,test proportions (comma separated).")
    data_cache_path: Optional[str] = option(None, "Where sample-index caches are written.",
                                            derived="next to the dataset")
    tokenizer_type: Optional[str] = option(
        None, "Tokenizer kind. Megatron-DeepSpeed's GPTSentencePieceTokenizer and Llama2Tokenizer are read as "
        "SentencePieceTokenizer, Megatron-LM's HuggingFaceTokenizer as HFTokenizer.", choices=TOKENIZER_TYPES,
        derived="GPT2BPETokenizer with --vocab-file (Megatron-DeepSpeed's default); else the built-in corpus's")
    tokenizer_model: Optional[str] = option(None, "SentencePiece model file or Hugging Face tokenizer "
                                            "name/path.")
    vocab_file: Optional[str] = option(None, "GPT-2 BPE vocabulary (vocab.json).")
    merge_file: Optional[str] = option(None, "GPT-2 BPE merges (merges.txt).")
    eod_mask_loss: bool = option(False, "Exclude end-of-document tokens from the loss.")
    reset_position_ids: bool = option(False, "Restart position ids after each end-of-document token.")
    reset_attention_mask: bool = option(False, "Stop attention across end-of-document tokens.")
    num_workers: int = option(2, "DataLoader worker processes per rank.", minimum=0)


@dataclass(frozen=True)
class LoggingConfig:
    """Where and how often progress is reported."""

    log_interval: int = option(100, "Log training metrics every this many steps.", minimum=1)
    tensorboard_dir: Optional[str] = option(None, "Write TensorBoard events here (unset: no TensorBoard).")
    run_name: Optional[str] = option(None, "Name of the run; names the default output directory.")
    # The timestamp is read from the local clock, so ranks started in different seconds can disagree:
    # only rank 0 should write under output_dir, or pass --run-name / --output-dir to every rank.
    output_dir: Optional[str] = option(None, "Directory for metrics and run artefacts.",
                                       derived="runs/<run_name>, else runs/<YYYYmmdd-HHMMSS>")
    metrics_file: Optional[str] = option(None, "JSON-lines file with one record per logged step.",
                                         derived="<output_dir>/metrics.jsonl")
    tensorboard_tags: str = option(
        "native", "TensorBoard tag names: native (train/loss, eval/loss, ...), megatron-deepspeed "
        "(lm-loss-training/lm loss, learning-rate/learning-rate, ... with their `vs samples` / `vs tokens` "
        "twins, written every --tensorboard-log-interval steps) or both.",
        choices=("native", "megatron-deepspeed", "both"))
    tensorboard_log_interval: int = option(1, "Steps between Megatron-DeepSpeed-style TensorBoard scalars.",
                                           minimum=1)
    tensorboard_queue_size: int = option(1000, "Events the TensorBoard writer queues before flushing.",
                                         minimum=1)
    log_batch_size_to_tensorboard: bool = option(False, "Megatron-DeepSpeed tags: also write batch-size/*.")
    log_validation_ppl_to_tensorboard: bool = option(False, "Megatron-DeepSpeed tags: also write the "
                                                     "validation perplexity.")
    log_world_size_to_tensorboard: bool = option(False, "Megatron-DeepSpeed tags: also write world-size/*.")
    log_memory_to_tensorboard: bool = option(False, "Megatron-DeepSpeed tags: also write the memory "
                                             "figures (peak RSS on CPU, allocated bytes on GPUs).")
    log_learning_rate_to_tensorboard: bool = option(
        True, "Megatron-DeepSpeed tags: write learning-rate/*.",
        const_aliases={"--no-log-learnig-rate-to-tensorboard": False,
                       "--no-log-learning-rate-to-tensorboard": False})
    log_loss_scale_to_tensorboard: bool = option(
        True, "Megatron-DeepSpeed tags: write loss-scale/* (fp16 only).",
        const_aliases={"--no-log-loss-scale-to-tensorboard": False})
    peak_tflops_per_device: Optional[float] = option(
        None, "Peak dense TFLOP/s of one device, for MFU.", minimum=0,
        derived="detected by the training code from its device table or a measurement")

    def __post_init__(self):
        if self.output_dir is None:
            name = self.run_name or time.strftime("%Y%m%d-%H%M%S")
            object.__setattr__(self, "output_dir", os.path.join("runs", name))
        if self.metrics_file is None:
            object.__setattr__(self, "metrics_file", os.path.join(self.output_dir, "metrics.jsonl"))


@dataclass(frozen=True)
class CheckpointConfig:
    """Saving and resuming."""

    save: Optional[str] = option(None, "Directory to save checkpoints in (unset: never save).")
    load: Optional[str] = option(None, "Directory to resume from (unset: start from scratch).")
    save_interval: Optional[int] = option(None, "Save every this many steps (unset: only at the end).",
                                          minimum=1)
    keep_last: Optional[int] = option(None, "Keep only the newest N checkpoints (unset: keep all).",
                                      minimum=1)
    finetune: bool = option(False, "Load weights only and restart the iteration count at 0.")
    no_load_optim: bool = option(False, "Do not load optimizer state when resuming.")
    no_load_rng: bool = option(False, "Do not load RNG state when resuming.")
    use_checkpoint_args: bool = option(
        False, "Take the model's architecture and tokenizer from the checkpoint in --load (flags given "
        "must agree with it).")
    exit_on_missing_checkpoint: bool = option(False, "Fail when --load holds no checkpoint instead of "
                                              "starting from scratch.")
    universal_checkpoint: bool = option(
        False, "Load a DeepSpeed universal checkpoint, resharding to the current TP/PP/DP "
        "(DeepSpeed checkpoint.load_universal).")
