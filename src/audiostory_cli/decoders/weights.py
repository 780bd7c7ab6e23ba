"""Strict weight loading shared by the backends: every key mapped, none left over, shapes checked, the first
offenders named in one ``ModelLoadError`` (research code loads with ``strict=False`` and never notices)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; an unreadable file is a ModelLoadError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {path}: {err}") from None


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``module`` only if every key matches and every shape fits (``check_state``)."""
    check_state(module, state, path)
    module.load_state_dict(state, strict=True)


def check_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """Every key of ``module`` in ``state`` and nothing else, every shape as the module's (a meta-built module
    and meta tensors are enough: nothing is loaded); else one ModelLoadError naming the first offenders, each
    spelt as the file spells it (``prefix`` + key)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(prefix + k for k in keys[:5])}{more}")
        raise ModelLoadError(f"{path} does not match the model: {'; '.join(parts)}")
