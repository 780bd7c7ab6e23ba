"""Pick the torch device and dtype once, from the user's words (``auto``, ``cuda``, ``bf16`` ...).

Library code does not print: what is worth saying (the device ``auto`` chose, a dtype fallback) goes to
``notify``, which the CLI draws on stderr.
"""

from __future__ import annotations

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
    """``auto`` is bf16 on CUDA and fp32 elsewhere; fp16 on CPU falls back to fp32 with a warning."""
    import torch

    if name not in DTYPE_CHOICES:
        raise InputError(f"dtype = {name!r}: must be one of {', '.join(DTYPE_CHOICES)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and name == "fp16":
        if notify is not None:
            notify("fp16 is not supported on CPU; using fp32 instead")
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
