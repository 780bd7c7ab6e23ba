"""Strict weight loading shared by the backends: every key mapped, none left over, shapes checked, the first
offenders named in one ``ModelLoadError`` (research code loads with ``strict=False`` and never notices)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from torch import nn


def read_safetensors(path: Path, *, copy: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; an unreadable file is a ModelLoadError naming it. ``copy``: each
    tensor copied once into its own (aligned) memory, for modules that take them as they are (``assign``): a
    tensor left at the file's offset would round differently in matmuls."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        if not copy:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_tensor(key).clone() for key in file.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - any reader failure is one clear message
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
    problems = mismatches({key: t.shape for key, t in module.state_dict().items()}, state, prefix)
    if any(problems.values()):
        raise ModelLoadError(f"{path} does not match the model: {summarize(problems)}")


def mismatches(
    expected: dict[str, torch.Size], state: dict[str, torch.Tensor], prefix: str = ""
) -> dict[str, list[str]]:
    """What keeps ``state`` from fitting ``expected`` (key -> shape), each list sorted, each key spelt as the
    file spells it (``prefix`` + key): ``missing keys``, ``unexpected keys``, ``wrong shapes`` (with the
    file's shape and the expected one)."""
    common = set(state) & set(expected)
    return {
        "missing keys": [prefix + k for k in sorted(set(expected) - set(state))],
        "unexpected keys": [prefix + k for k in sorted(set(state) - set(expected))],
        "wrong shapes": [f"{prefix}{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                         for k in sorted(common) if state[k].shape != expected[k]],
    }  # fmt: skip


def summarize(problems: dict[str, list[str]]) -> str:
    """``label: first five, (+N more)`` for each label with offenders, ``; ``-joined: one error's text."""
    parts = []
    for label, keys in problems.items():
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{label}: {', '.join(keys[:5])}{more}")
    return "; ".join(parts)
