"""Strict weight loading shared by the backends: every key mapped, none left over, shapes checked, the first
offenders named in one ``ModelLoadError`` (research code loads with ``strict=False`` and never notices)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from torch import nn


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; an unreadable file is a ModelLoadError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {path}: {err}") from None


def strict_load(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, *, prefix: str = "", assign: bool = False
) -> None:
    """Load ``state`` into ``module`` only if every key matches and every shape fits (``check_state``).
    ``assign``: the module takes the tensors as they are (a meta-built module: no init, no second copy)."""
    check_state(module, state, path, prefix=prefix)
    module.load_state_dict(state, strict=True, assign=assign)


def check_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> None:
    """Every key of ``module`` in ``state`` and nothing else, every shape as the module's (a meta-built module
    and meta tensors are enough: nothing is loaded); else one ModelLoadError naming the first offenders, each
    spelt as the file spells it (``prefix`` + key), a misfit with the file's shape and the expected one."""
    expected = module.state_dict()
    common = set(state) & set(expected)
    problems = {
        "missing keys": [prefix + k for k in sorted(set(expected) - set(state))],
        "unexpected keys": [prefix + k for k in sorted(set(state) - set(expected))],
        "wrong shapes": [f"{prefix}{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                         for k in sorted(common) if state[k].shape != expected[k].shape],
    }  # fmt: skip
    if any(problems.values()):
        raise ModelLoadError(f"{path} does not match the model: {summarize(problems)}")


def summarize(problems: dict[str, list[str]]) -> str:
    """``label: first five, (+N more)`` for each label with offenders, ``; ``-joined: one error's text."""
    parts = []
    for label, keys in problems.items():
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{label}: {', '.join(keys[:5])}{more}")
    return "; ".join(parts)
