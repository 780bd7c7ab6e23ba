"""Device and dtype choice: ``--dtype auto`` is bf16 where it is native (CUDA, a CPU with AVX512-BF16 or AMX)."""

from __future__ import annotations

import pytest
import torch

from audiostory_cli import devices
from audiostory_cli.devices import cpu_has_native_bf16

read_cpu_flags = cpu_has_native_bf16  # the real one: conftest patches the module's

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu sse avx2 fma", False), ("avx2 avx512f avx512_bf16 avx512_vnni", True), ("avx2 amx_tile amx_bf16", True)],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert read_cpu_flags(str(cpuinfo)) is native


def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch):
    notes = []
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda *_: True)
    assert devices.resolve_dtype("auto", CPU, notify=notes.append) == torch.bfloat16
    assert devices.runs_natively(torch.bfloat16, CPU) and notes and "bf16" in notes[0]
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda *_: False)
    assert devices.resolve_dtype("auto", CPU) == torch.float32
    assert not devices.runs_natively(torch.bfloat16, CPU)
    assert devices.resolve_dtype("bf16", CPU) == torch.bfloat16  # asked for: given, emulated or not


def test_free_memory_is_positive_on_cpu():
    assert devices.free_memory_bytes(CPU) > 0
