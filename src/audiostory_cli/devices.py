"""Pick the torch device and dtype once, from the user's words (``auto``, ``cuda``, ``bf16`` ...).

Library code does not print: what is worth saying (the device ``auto`` chose, a dtype fallback) goes to
``notify``, which the CLI draws on stderr.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import TYPE_CHECKING, Callable

from .errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: str = "auto", *, notify: Callable[[str], None] | None = None) -> torch.device:
    """``auto`` takes CUDA when present, else MPS, else CPU, and says which on stderr."""
    import torch

    if name not in DEVICE_CHOICES:
        raise InputError(f"device = {name!r}: must be one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        if notify is not None:
            notify(f"using device {device.type} (--device auto)")
        return device
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device = 'cuda' but no CUDA device is available", hint="use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("device = 'mps' but MPS is not available", hint="use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, *, notify: Callable[[str], None] | None = None) -> torch.dtype:
    """``auto`` is bf16 on CUDA and on a CPU with native bf16 (avx512_bf16 or AMX), fp32 elsewhere; fp16 on
    CPU falls back to fp32 with a warning."""
    import torch

    if name not in DTYPE_CHOICES:
        raise InputError(f"dtype = {name!r}: must be one of {', '.join(DTYPE_CHOICES)}")
    if name == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            if device.type == "cpu" and notify is not None:
                notify("this CPU computes bf16 natively: using bf16 (--dtype auto; --dtype fp32 to keep fp32)")
            return torch.bfloat16
        return torch.float32
    if device.type == "cpu" and name == "fp16":
        if notify is not None:
            notify("fp16 is not supported on CPU; using fp32 instead")
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that multiply bf16 natively


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates bf16, which
    is slower than fp32. Read from the kernel's CPU flags (torch's ``get_cpu_capability`` stops at AVX512)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (the kernel's ``model name``), else what ``platform`` says."""
    import platform

    try:
        with open(cpuinfo) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def runs_natively(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``dtype`` is computed natively on ``device`` (fp32 always; bf16/fp16 on CUDA; bf16 on a CPU
    with native bf16), i.e. whether it is worth using for a part that fp32 would also serve."""
    import torch

    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        return dtype == torch.float16 or torch.cuda.is_bf16_supported()
    return device.type == "cpu" and dtype == torch.bfloat16 and cpu_has_native_bf16()


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: CUDA's free memory, MPS's recommended budget left, the
    system's available memory (``MemAvailable``) on CPU."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


KEEP_FREED_MEMORY_ENV = "AUDIOSTORY_KEEP_FREED_MEMORY"  # "0": leave glibc's malloc as it is
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")  # the user's own tuning
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_NEVER = -1  # M_TRIM_THRESHOLD -1: never trim (mallopt(3))


_kept = False  # whether keep_freed_memory is in effect in this process


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a decode frees, for the next tensor of that size.

    By default glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it when freed, so each of
    the VAE's activations (hundreds of MB at 44.1 kHz) is page-faulted in anew, layer after layer: a third of
    an Oobleck decode's CPU time went to the kernel. With ``mmap`` off and no automatic trimming they stay in
    the heap, where the next layer reuses them: the same floats, TangoFlux's VAE decode of a 60 s story 149 ->
    106 s in ``benchmarks/speed.py`` (2 AVX2 cores), its peak RSS 4.7 -> 6.2 GiB (the heap's fragmentation);
    Stable Audio 3's unchanged (3.1 GiB). ``release_freed_memory`` hands the heap back after each render.
    Linux with glibc only; nothing is changed where ``AUDIOSTORY_KEEP_FREED_MEMORY=0`` or one of glibc's own
    ``MALLOC_*`` variables is set. Returns whether it is in effect."""
    global _kept
    if _kept:
        return True
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "").strip() == "0" or any(os.environ.get(n) for n in GLIBC_MALLOC_ENV):
        return False
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER))
    return _kept


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the system (``malloc_trim``) where ``keep_freed_memory`` kept it:
    called once a render's clips are decoded, so a long-lived process (the studio, a batch) does not hold its
    peak between stories. Not after each clip: faulting the heap in again every clip cost back half the gain."""
    libc = _glibc() if _kept else None
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    """The process's own C library when it is glibc on Linux (it has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc's; musl has neither
    except (OSError, AttributeError):
        return None
    return libc
