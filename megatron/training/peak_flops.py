"""The peak FLOP/s that MFU is stated against.

MFU is only meaningful against a stated peak, so the training log prints which one it used. On NVIDIA GPUs
it is the datasheet's dense bf16/fp16 tensor-core figure for the detected model; on CPUs there is no such
datasheet number for a given container, so we measure this machine's GEMM rate once at start-up, in the
run's compute dtype (fp32, or bf16/fp16 under mixed precision: a CPU with bf16 dot-product instructions
multiplies bf16 about twice as fast, and MFU against the fp32 rate would then exceed 100%).
``--peak-tflops-per-device`` overrides both.
"""

import time

import torch

# Dense (no sparsity) bf16/fp16 tensor-core TFLOP/s by device-name fragment, most specific first.
_GPU_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("V100", 125.0), ("MI300X", 1307.0),
    ("MI250X", 383.0),
)
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def measure_cpu_gemm_tflops(size: int = 1024, seconds: float = 0.5, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul rate in ``dtype`` with the current torch thread count."""
    # A private generator: drawing from torch's global one would shift the run's dropout masks, so a run's
    # losses would depend on whether the peak was measured or given.
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, dtype=dtype, generator=generator) for _ in range(2))
    torch.mm(a, b)  # warm-up: first call allocates and picks a kernel
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    elapsed = time.perf_counter() - start
    return 2.0 * size ** 3 * count / elapsed / 1e12


def device_peak_tflops(override=None, dtype: torch.dtype = torch.float32):
    """(peak TFLOP/s per device, a short description of where the number comes from); ``dtype`` is the
    run's GEMM dtype (measured on CPUs; GPU figures are the bf16/fp16 tensor-core peak whatever it is)."""
    if override:
        return float(override), "given by --peak-tflops-per-device"
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return measure_cpu_gemm_tflops(dtype=dtype), f"measured {_DTYPE_NAMES.get(dtype, dtype)} GEMM of this CPU"
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else accelerator.device_name()
    for fragment, peak in _GPU_PEAK_TFLOPS:
        if fragment in name:
            return peak, f"dense bf16 datasheet peak of {name}"
    return None, f"unknown device {name!r}: pass --peak-tflops-per-device to get MFU"
