"""The peak that MFU is stated against: measured on CPU in the run's GEMM dtype, or given by the user."""

import torch

from megatron.training.peak_flops import device_peak_tflops, measure_cpu_gemm_tflops


def test_cpu_peak_is_measured_in_the_runs_gemm_dtype():
    fp32, fp32_source = device_peak_tflops(dtype=torch.float32)
    bf16, bf16_source = device_peak_tflops(dtype=torch.bfloat16)
    assert fp32_source == "measured fp32 GEMM of this CPU" and fp32 > 0
    assert bf16_source == "measured bf16 GEMM of this CPU" and bf16 > 0


def test_a_given_peak_overrides_the_measurement():
    assert device_peak_tflops(override=123.0, dtype=torch.bfloat16) == (123.0, "given by --peak-tflops-per-device")


def test_measuring_the_peak_leaves_the_global_rng_alone():
    """Otherwise a run's dropout masks, hence its losses, would depend on whether the peak was measured."""
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert measure_cpu_gemm_tflops(size=64, seconds=0.01) > 0
    assert torch.equal(torch.rand(4), expected)
