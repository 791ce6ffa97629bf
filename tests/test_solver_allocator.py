"""The glibc allocator tuning: an 8 MB block comes from the heap (not a fresh mmap) once tuned.

Each case runs in a fresh Python process (the thresholds are process-wide and glibc adjusts its
default mmap threshold as blocks are freed), mallocs 8 MB and asks glibc (``mallinfo2``) how many
bytes are mmapped while the block is held.
"""

import ctypes
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")

_PROBE = """
import ctypes, ctypes.util, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tune":
    from app_extension.solver.allocator import tune_cpu_allocator
    print(tune_cpu_allocator(), tune_cpu_allocator())
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 << 20)
held = libc.mallinfo2().hblkhd
libc.free(block)
print(held - before)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


def _mmapped_bytes(mode: str, **env) -> tuple[list[str], int]:
    root = str(Path(__file__).resolve().parents[1])
    environ = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env=environ, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[:-1], int(out[-1])


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_tuning_keeps_large_blocks_on_the_heap():
    env = {"APP_EXTENSION_MALLOC_TUNING": "1"}
    assert _mmapped_bytes("plain", **env)[1] >= 8 << 20  # glibc's default: a fresh mmap
    flags, mmapped = _mmapped_bytes("tune", **env)
    assert flags == ["True", "True"]  # set, and a second call does nothing more
    assert mmapped == 0


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_opt_out_leaves_the_allocator_alone():
    flags, mmapped = _mmapped_bytes("tune", APP_EXTENSION_MALLOC_TUNING="0")
    assert flags == ["False", "False"]
    assert mmapped >= 8 << 20
