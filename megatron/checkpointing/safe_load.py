"""Loading checkpoint files without ever running code stored in them.

``torch.load(weights_only=False)`` unpickles arbitrary objects, so a crafted ``.pt`` file can execute code
(a ``__reduce__`` that returns ``os.system``). DeepSpeed 0.19 loads with ``weights_only=False`` in its
checkpoint engine (``TorchCheckpointEngine.load``) and calls ``torch.load`` directly in its universal-checkpoint
loader (``checkpoint/universal_checkpoint.py``), its ZeRO-3 universal path (``runtime/zero/stage3.py``) and
in ``ds_to_universal``. Every load here goes through :func:`safe_torch_load`:

- :class:`SafeCheckpointEngine` replaces the engine's ``checkpoint_engine`` (installed before each load);
- :func:`weights_only_torch_load` patches ``torch.load`` for the duration of a DeepSpeed call, which covers
  the direct calls above (they look ``torch.load`` up at call time).

Only tensors, containers, primitives and the few DeepSpeed classes listed in ``DEEPSPEED_SAFE_GLOBALS``
(plain records: a loss scaler, an enum, a fragment address) can come out of a file; anything else is refused
with :class:`UnsafeCheckpointError` before a single object of it is built.
"""

import contextlib
import pickle
import re
import threading

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is (missing, truncated, of another model or layout)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that would need to run code (an object outside the allowlist) to load."""


def _deepspeed_safe_globals():
    """Classes DeepSpeed pickles into its checkpoints; each is a plain record rebuilt field by field."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


DEEPSPEED_SAFE_GLOBALS = _deepspeed_safe_globals()
_original_torch_load = torch.load


def safe_torch_load(path, map_location="cpu", mmap=None):
    """``torch.load(path, weights_only=True)`` with DeepSpeed's record classes allowed; errors name the file."""
    try:
        with torch.serialization.safe_globals(DEEPSPEED_SAFE_GLOBALS):
            return _original_torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds objects that only arbitrary code could rebuild "
            f"({_refused_global(str(error))}), so it may be malicious or was not written by megatron-ds/DeepSpeed. "
            f"Nothing from it was executed. Do not load it with weights_only=False unless you wrote it") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing: the checkpoint is incomplete; resume from "
                              f"another one (see the `latest` file in its folder)") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"checkpoint file {path} is unreadable ({error}); it is truncated or corrupt: "
                              f"resume from another checkpoint") from error


def _refused_global(message: str) -> str:
    """The global torch refused (e.g. `builtins.exec`), without torch's advice to allowlist it."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or \
        re.search(r"unsupported GLOBAL ([\w.]+)", message)
    if found:
        return f"it needs `{found.group(1)}`"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", message)
    return found.group(1).split(". ")[0] if found else "an object outside the weights-only allowlist"


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with a load that cannot run pickled code."""

    def load(self, path: str, map_location=None):
        return safe_torch_load(path, map_location=map_location if map_location is not None else "cpu")


def install_safe_checkpoint_engine(engine):
    """Make every load through ``engine.checkpoint_engine`` weights-only (keeps the engine's save settings)."""
    current = engine.checkpoint_engine
    if isinstance(current, SafeCheckpointEngine):
        return
    if type(current) is not TorchCheckpointEngine:
        raise ValueError(f"the DeepSpeed config selects checkpoint engine {type(current).__name__}; megatron-ds "
                         f"loads checkpoints only through its weights-only torch engine: remove the "
                         f"`checkpoint.writer` / nebula / datastates settings from the DeepSpeed JSON")
    safe = SafeCheckpointEngine.__new__(SafeCheckpointEngine)
    safe.__dict__.update(current.__dict__)
    engine.checkpoint_engine = safe


_patch_lock = threading.Lock()
_patch_depth = 0


def _weights_only_load(f, map_location=None, *args, **kwargs):
    return safe_torch_load(f, map_location=map_location if map_location is not None else "cpu",
                           mmap=kwargs.get("mmap"))


@contextlib.contextmanager
def weights_only_torch_load():
    """Within the block every ``torch.load`` is :func:`safe_torch_load`, whatever ``weights_only`` it passes."""
    global _patch_depth
    with _patch_lock:
        _patch_depth += 1
        torch.load = _weights_only_load
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                torch.load = _original_torch_load


# --- Checkpoints of Megatron-DeepSpeed and Megatron-LM (imported by megatron/checkpointing/megatron_import) ---
# Their files pickle the run's argparse.Namespace (holding torch dtypes and Megatron enums), numpy random
# states and DeepSpeed records. Their package is also called `megatron`, so their enum paths
# (megatron.model.enums.*) would resolve to nothing or to our modules: each is mapped BY NAME to a stand-in
# below that only records the value; no module of theirs (or ours under their name) is imported.


class MegatronEnumStandIn:
    """What a pickled Megatron enum member becomes: its class name and value, nothing callable."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"{type(self).__name__}({self.value!r})"

    def __eq__(self, other):
        return type(self) is type(other) and self.value == other.value

    def __hash__(self):
        return hash((type(self).__name__, self.value))


MEGATRON_ENUMS = {  # class name -> member names by value, as Megatron-DeepSpeed / Megatron-LM define them
    "PositionEmbeddingType": {1: "rotary", 2: "absolute", 3: "alibi"},
    "AttnMaskType": {1: "padding", 2: "causal", 3: "prefix", 4: "no_mask", 5: "arbitrary"},
    "AttnType": {1: "self_attn", 2: "cross_attn"},
    "LayerType": {1: "encoder", 2: "decoder", 3: "retro_encoder", 4: "retro_decoder",
                  5: "retro_decoder_with_retriever"},
    "ModelType": {1: "encoder_or_decoder", 2: "encoder_and_decoder", 3: "retro_encoder", 4: "retro_decoder"},
    "AttnBackend": {1: "flash", 2: "fused", 3: "unfused", 4: "local", 5: "auto"},  # Megatron-LM's args
}
_ENUM_MODULES = ("megatron.model.enums", "megatron.core.enums", "megatron.core.transformer.enums",
                 "megatron.legacy.model.enums", "megatron.core.models.common.embeddings.rotary_pos_embedding")


def enum_member_name(value) -> str:
    """'rotary' for a stand-in of PositionEmbeddingType.rotary; strings pass through (Megatron-LM stores them)."""
    if isinstance(value, MegatronEnumStandIn):
        return MEGATRON_ENUMS.get(type(value).__name__, {}).get(value.value, str(value.value))
    return value


def _megatron_enum_stand_ins():
    found = []
    for name in MEGATRON_ENUMS:
        stand_in = type(name, (MegatronEnumStandIn,), {"__module__": __name__})
        found += [(stand_in, f"{module}.{name}") for module in _ENUM_MODULES]
    return found


def _numpy_globals():
    """numpy arrays and scalars (the random states in `rng_state`): data records, under numpy 1 and 2 names."""
    import numpy

    reconstruct = numpy._core.multiarray._reconstruct if hasattr(numpy, "_core") else numpy.core.multiarray._reconstruct
    scalar = numpy._core.multiarray.scalar if hasattr(numpy, "_core") else numpy.core.multiarray.scalar
    dtype_classes = {type(numpy.dtype(kind)) for kind in ("u4", "i4", "i8", "u8", "f4", "f8", "u1", "b1")}
    found = [numpy.ndarray, numpy.dtype] + sorted(dtype_classes, key=lambda kind: kind.__name__)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found += [(reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    return found


def megatron_safe_globals():
    import argparse

    return DEEPSPEED_SAFE_GLOBALS + [argparse.Namespace] + _megatron_enum_stand_ins() + _numpy_globals()


def safe_megatron_load(path, map_location="cpu", mmap=None):
    """A Megatron-DeepSpeed / Megatron-LM ``.pt`` file, weights-only, with exactly the classes their writers
    pickle allowed (the Namespace of arguments, Megatron enums as stand-ins, numpy random states)."""
    try:
        with torch.serialization.safe_globals(megatron_safe_globals()):
            return _original_torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds objects that only arbitrary code could rebuild "
            f"({_refused_global(str(error))}); Megatron checkpoints hold only tensors, their arguments, "
            f"Megatron enums and numpy random states. Nothing from it was executed") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing: the checkpoint is incomplete") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"checkpoint file {path} is unreadable ({error}); it is truncated or corrupt") \
            from error
