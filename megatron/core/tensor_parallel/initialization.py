"""Layout-independent parameter initialisation: one seed, one model, whatever the parallel layout.

A parameter's initial value depends only on the run's seed, its name in the whole (non-pipeline) GPTModel
and its full shape: the full tensor is drawn from a generator seeded with hash(seed, name), and each
tensor-parallel rank keeps its slice. So a TP=4 rank, a pipeline stage that builds only layers 6-7, an
interleaved chunk, a ZeRO-3 rank under ``zero.Init`` and the single-rank model all hold slices of the same
tensors, independent of construction order and of which stage builds what. (Megatron-LM instead draws from
one stream in construction order with a per-pipeline-rank seed offset, so its PP>1 models differ from PP=1.)

Every parameter declares how it is initialised where it is created (:func:`declare_init`: the draw, the full
shape, the TP split, and for vocabulary tables how many rows are real), and :func:`initialize_parameters` is
the one place that fills values, for any module. Padding rows of the vocabulary are zero and are never drawn,
so the real rows do not depend on how much padding a TP size needs.

Parameters created outside a model (a layer built alone) are drawn from the default RNG at construction as
before; model builders enter :func:`deferred_initialization` so nothing is drawn twice.
"""

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import nn

from megatron.core import parallel_state as ps

# fills ``tensor`` in place, drawing from ``generator`` (None: torch's default generator)
InitMethod = Callable[..., torch.Tensor]

_deferred = False


@dataclass(frozen=True)
class InitSpec:
    method: InitMethod
    full_shape: Tuple[int, ...]
    partition_dim: Optional[int] = None     # dimension split over TP ranks; None: replicated
    drawn_rows: Optional[int] = None        # vocabulary tables: rows [0, drawn_rows) drawn, the rest zero


def init_method_normal(std: float) -> InitMethod:
    if not std > 0.0:
        raise ValueError(f"init_method_std must be a positive number, got {std!r}")

    def init(tensor: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return nn.init.normal_(tensor, mean=0.0, std=std, generator=generator)
    return init


def init_method_constant(value: float) -> InitMethod:
    def init(tensor: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return nn.init.constant_(tensor, value)
    return init


def declare_init(param: torch.Tensor, method: InitMethod, full_shape, partition_dim: Optional[int] = None,
                 drawn_rows: Optional[int] = None) -> None:
    param.init_spec = InitSpec(method, tuple(full_shape), partition_dim, drawn_rows)


@contextlib.contextmanager
def deferred_initialization() -> Iterator[None]:
    """Inside, layers allocate their parameters without drawing values: :func:`initialize_parameters` will."""
    global _deferred
    previous, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = previous


def draws_at_construction() -> bool:
    return not _deferred


def parameter_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (run seed, parameter name), stable across processes, machines and versions."""
    digest = hashlib.blake2b(f"{int(seed)}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def full_initial_value(spec: InitSpec, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The whole (unsharded) fp32 tensor ``spec`` describes."""
    full = torch.zeros(spec.full_shape, dtype=torch.float32)
    drawn = full if spec.drawn_rows is None else full[:spec.drawn_rows]
    if generator is None:
        spec.method(drawn)
        return full
    try:
        spec.method(drawn, generator=generator)
    except TypeError:
        # A Megatron-style init_method(tensor) that draws from the default RNG: run it on a private copy of that
        # RNG seeded from the parameter's generator, so it is just as layout-independent.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator.initial_seed())
            spec.method(drawn)
    return full


def tensor_parallel_slice(full: torch.Tensor, partition_dim: Optional[int]) -> torch.Tensor:
    """This TP rank's contiguous slice of ``full`` along ``partition_dim`` (all of it when replicated)."""
    if partition_dim is None:
        return full
    world, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    return torch.chunk(full, world, dim=partition_dim)[rank]


def initial_shard(spec: InitSpec, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return tensor_parallel_slice(full_initial_value(spec, generator), spec.partition_dim)


def initialize_parameters(module: nn.Module, seed: int,
                          to_model_name: Callable[[str], str] = lambda name: name) -> None:
    """Give every parameter of ``module`` its layout-independent initial value.

    ``to_model_name`` maps the module's parameter names to the whole GPTModel's (pipeline stages and chunks
    provide theirs, see megatron/pipeline/param_names.py). Parameters already partitioned by ZeRO-3's
    ``zero.Init`` are gathered one at a time, written, and partitioned again.
    """
    missing = [name for name, param in module.named_parameters() if not hasattr(param, "init_spec")]
    if missing:
        raise ValueError(f"parameters {missing} declare no initialisation; create them through the "
                         f"tensor-parallel primitives or call megatron.core.tensor_parallel.declare_init on them")
    for name, param in module.named_parameters():
        spec = param.init_spec
        model_name = to_model_name(name)
        # A parameter whose module path depends on the layout (an MoE expert's local id) names its
        # layout-independent identity itself.
        model_name = getattr(param, "init_name", lambda n: n)(model_name)
        generator = torch.Generator().manual_seed(parameter_seed(seed, model_name))
        shard = initial_shard(spec, generator)
        with _writable(param):
            if tuple(param.shape) != tuple(shard.shape):
                raise ValueError(f"{name}: declared full shape {spec.full_shape} split over TP gives "
                                 f"{tuple(shard.shape)}, but the parameter is {tuple(param.shape)}")
            param.data.copy_(shard.to(device=param.device, dtype=param.dtype))


def _writable(param: torch.Tensor):
    if hasattr(param, "ds_id"):  # partitioned by deepspeed.zero.Init
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=0)
    return torch.no_grad()
