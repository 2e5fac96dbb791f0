"""The glibc malloc settings for CPU training: the start-up note, and that glibc really honours them."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from megatron.training.host_allocator import TUNED_GLIBC_MALLOC_ENV, host_allocator_note, missing_settings

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; this platform's C library is not glibc")
def test_note_tells_how_to_tune_a_cpu_run_and_is_silent_elsewhere():
    untuned = host_allocator_note("cpu", environ={})
    assert "export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736" in untuned
    assert "re-faulted" in untuned
    assert "tuned" in host_allocator_note("cpu", environ=dict(TUNED_GLIBC_MALLOC_ENV))
    assert host_allocator_note("cuda", environ={}) == ""


def test_a_value_the_user_set_is_left_alone():
    assert missing_settings({"MALLOC_MMAP_MAX_": "65536"}) == {"MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def _bytes_in_mmapped_blocks_after_a_large_malloc(environ) -> int:
    """In a fresh process: malloc 256 MiB, free it, malloc it again; return glibc's count of mmapped bytes."""
    probe = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None)
        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in
                        ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                         "fordblks", "keepcost")]
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.mallinfo2.restype = MallInfo2
        block = libc.malloc(256 << 20)
        libc.free(block)
        block = libc.malloc(256 << 20)
        print(libc.mallinfo2().hblkhd)
    """)
    result = subprocess.run([sys.executable, "-c", probe], env=environ, capture_output=True, text=True, check=True)
    return int(result.stdout)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; this platform's C library is not glibc")
def test_glibc_serves_large_blocks_from_the_reusable_heap_only_when_tuned():
    base = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    assert _bytes_in_mmapped_blocks_after_a_large_malloc(base) >= 256 << 20       # default: its own mapping
    assert _bytes_in_mmapped_blocks_after_a_large_malloc({**base, **TUNED_GLIBC_MALLOC_ENV}) == 0


def test_the_cpu_example_exports_the_same_settings():
    with open(os.path.join(REPO, "examples_deepspeed", "pretrain_gpt_cpu.sh")) as script:
        text = script.read()
    for name, value in TUNED_GLIBC_MALLOC_ENV.items():
        assert f"{name}=${{{name}:-{value}}}" in text
