"""RunConfig: every group plus the resolved DeepSpeed JSON; the one object passed to everything."""

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from megatron.config.data_logging_checkpoint import CheckpointConfig, DataConfig, LoggingConfig
from megatron.config.errors import ConfigError
from megatron.config.memory import PrecisionConfig, RecomputeConfig, ZeroConfig
from megatron.config.model import ModelConfig
from megatron.config.moe import MoEConfig
from megatron.config.parallel import ParallelConfig
from megatron.config.training import TrainingConfig

# (attribute on RunConfig, group class), in the order the reference documents them.
GROUPS: Tuple[Tuple[str, type], ...] = (
    ("model", ModelConfig),
    ("moe", MoEConfig),
    ("parallel", ParallelConfig),
    ("training", TrainingConfig),
    ("precision", PrecisionConfig),
    ("zero", ZeroConfig),
    ("recompute", RecomputeConfig),
    ("data", DataConfig),
    ("logging", LoggingConfig),
    ("checkpoint", CheckpointConfig),
)
FORMAT_VERSION = 1  # bump when a stored to_dict() can no longer be read by from_dict()


def default_pipeline_schedule(pipeline_model_parallel_size: int, zero_stage: int) -> str:
    """DeepSpeed's PipelineEngine where it works (PP > 1 with ZeRO-0/1), Megatron's 1F1B otherwise."""
    return "deepspeed" if pipeline_model_parallel_size > 1 and zero_stage <= 1 else "1f1b"


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of a run. Build it with parse_config() or resolve_config(); a
    checkpoint's copy comes back with from_dict()."""

    model: ModelConfig = field(default_factory=ModelConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # The merged DeepSpeed JSON: flags and JSON agree on everything in it (see deepspeed_json.py).
    deepspeed_config: Dict[str, Any] = field(default_factory=dict)
    deepspeed_config_path: Optional[str] = None
    # Start-up notes from resolution (legacy flags accepted without effect, defaults taken from
    # Megatron-DeepSpeed); logged once by the entry script, never stored in checkpoints.
    notes: Tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self):
        # The one cross-group default: the pipeline schedule depends on the ZeRO stage.
        if self.parallel.pipeline_schedule is None:
            schedule = default_pipeline_schedule(self.parallel.pipeline_model_parallel_size, self.zero.stage)
            object.__setattr__(self, "parallel", dataclasses.replace(self.parallel, pipeline_schedule=schedule))

    # --- what the training code asks ---------------------------------------------------------------
    def deepspeed_dict(self) -> Dict[str, Any]:
        """A fresh copy of the DeepSpeed config for deepspeed.initialize(config=...), so nothing
        DeepSpeed does to it can change the stored configuration."""
        return copy.deepcopy(self.deepspeed_config)

    @property
    def deepspeed_builds_optimizer(self) -> bool:
        """True when the JSON has an optimizer block: pass no optimizer to deepspeed.initialize.
        False: build Megatron's param groups + AdamW (DeepSpeedCPUAdam with optimizer offload)."""
        return "optimizer" in self.deepspeed_config

    @property
    def deepspeed_builds_scheduler(self) -> bool:
        """True when the JSON has a scheduler block; the lr_* fields then mirror it where they can."""
        return "scheduler" in self.deepspeed_config

    def with_vocab(self, orig_vocab_size: int) -> "RunConfig":
        """A copy holding the tokenizer's vocabulary size and the padded size for this TP degree.

        Call it once the tokenizer exists, with tokenizer.vocab_size. Until then padded_vocab_size is None
        and model.vocab_size is only what --vocab-size said. For NullTokenizer that flag counts the text
        ids, and the tokenizer adds EOD as one more id (Megatron's NullTokenizer), so it reports
        --vocab-size + 1: that is the vocabulary the embedding must cover.
        """
        model = self.model
        flag_size = model.vocab_size if model.padded_vocab_size is None else None
        if self.data.tokenizer_type == "NullTokenizer" and flag_size is not None:
            if orig_vocab_size != flag_size + 1:
                raise ConfigError(f"NullTokenizer with --vocab-size {flag_size} has {flag_size + 1} ids (EOD "
                                  f"added), but with_vocab() got {orig_vocab_size}; pass tokenizer.vocab_size")
            model = dataclasses.replace(model, vocab_size=None)
        model = model.with_vocab(orig_vocab_size, self.parallel.tensor_model_parallel_size)
        return dataclasses.replace(self, model=model)

    # --- storage inside checkpoints --------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable form (tuples become lists); from_dict() reverses it."""
        result: Dict[str, Any] = {"format_version": FORMAT_VERSION}
        for name, _ in GROUPS:
            group = dataclasses.asdict(getattr(self, name))
            result[name] = {key: list(value) if isinstance(value, tuple) else value
                            for key, value in group.items()}
        result["deepspeed_config"] = copy.deepcopy(self.deepspeed_config)
        result["deepspeed_config_path"] = self.deepspeed_config_path
        return result

    @classmethod
    def from_dict(cls, stored: Dict[str, Any]) -> "RunConfig":
        """Rebuild and re-validate a configuration saved by to_dict()."""
        from megatron.config.validate import validate  # validate reads RunConfig; import late

        version = stored.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(f"stored configuration has format_version={version!r}; this code reads "
                              f"{FORMAT_VERSION}: convert it or load with a matching megatron-ds")
        known = {name for name, _ in GROUPS} | {"format_version", "deepspeed_config", "deepspeed_config_path"}
        unknown = sorted(set(stored) - known)
        if unknown:
            raise ConfigError(f"stored configuration has unknown sections {unknown}; expected {sorted(known)}")
        groups = {name: _group_from_dict(group_cls, stored.get(name, {})) for name, group_cls in GROUPS}
        config = cls(**groups, deepspeed_config=copy.deepcopy(stored.get("deepspeed_config", {})),
                     deepspeed_config_path=stored.get("deepspeed_config_path"))
        validate(config)
        return config


def _group_from_dict(group_cls: type, values: Dict[str, Any]):
    names = {f.name for f in dataclasses.fields(group_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"stored {group_cls.__name__} has unknown fields {unknown}; it was written by a "
                          f"different version of megatron-ds")
    return group_cls(**{key: tuple(value) if isinstance(value, list) else value
                        for key, value in values.items()})
