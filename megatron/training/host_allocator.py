"""glibc malloc settings that keep CPU training from re-faulting its large tensors into memory every step.

glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on ``free``, and trims the
heap whenever its free top grows past a threshold. A training step allocates and frees the same large tensors
every iteration (logits, flattened gradients, optimizer temporaries), so on CPU each step faults hundreds of
MiB back in page by page: measured with benchmarks/bench_vs_hf.py on the 2-core CI machine, a 124M model's
step took about 1.5x as long. With ``mmap`` disabled for malloc and a trim threshold above any step's
working set, freed memory stays in the process and is reused, as a GPU caching allocator does.

glibc reads these variables once, when the process starts, so they belong in the launch environment
(examples_deepspeed/pretrain_gpt_cpu.sh exports them; the deepspeed launcher passes them to local ranks).
Memory freed during training is then kept by the process rather than returned to the OS.
"""

import os
import platform

TUNED_GLIBC_MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",                    # large blocks come from the heap, so they can be reused
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),    # never give the heap top back between steps
}


def missing_settings(environ=os.environ) -> dict:
    """The tuned variables that are not set in ``environ`` (a value set by the user is left alone)."""
    return {name: value for name, value in TUNED_GLIBC_MALLOC_ENV.items() if name not in environ}


def export_line(settings=TUNED_GLIBC_MALLOC_ENV) -> str:
    return "export " + " ".join(f"{name}={value}" for name, value in settings.items())


def host_allocator_note(device_name: str, environ=os.environ) -> str:
    """One start-up line for a CPU run on glibc: whether the settings are active and, if not, how to set them."""
    if device_name != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return ""
    missing = missing_settings(environ)
    if not missing:
        return "> host allocator: glibc malloc tuned for training (large blocks reused, not re-faulted each step)"
    return (f"> host allocator: glibc defaults, so large tensors are unmapped and re-faulted every step (about "
            f"1.5x slower steps measured on CPU); before launching: {export_line(missing)}")
