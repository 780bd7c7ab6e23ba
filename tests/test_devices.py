"""Device and dtype choice: ``--dtype auto`` is bf16 where it is native (CUDA, a CPU with AVX512-BF16 or AMX)."""

from __future__ import annotations

import os
import subprocess
import sys

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


FAULTS_SCRIPT = """
import resource, sys, torch
from audiostory_cli.devices import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
passes = []
for _ in range(4):  # six layers on 64 MB activations, again and again, as clip after clip is decoded
    before = faults()
    x = torch.ones(16 * 2**20)
    for layer in range(6):
        x = x * 2
    del x
    passes.append(faults() - before)
print(kept, min(passes[1:]))  # the steady state (glibc's placement of aligned blocks varies pass to pass)
if kept:  # and what the clip's decode kept goes back to the system after it
    from audiostory_cli.devices import release_freed_memory
    def rss(): return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    held = rss(); release_freed_memory(); assert held - rss() > 32 * 2**20, (held, rss())
"""


def _second_allocation(mode: str, env: dict | None = None) -> tuple[bool, int]:
    run = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})}, check=True)  # fmt: skip
    kept, faults = run.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_not_page_faulted_in_again():
    kept, faults = _second_allocation("keep")
    if not kept:
        pytest.skip("this C library has no mallopt (not glibc)")
    _, system = _second_allocation("system")
    pages = 16 * 2**20 * 4 // 4096  # of one activation
    assert system > 3 * pages  # glibc's default: a fresh mmap for each, every page faulted in anew
    assert faults < pages // 10  # kept: the freed blocks are reused


def test_kept_memory_is_left_alone_when_asked(monkeypatch):
    monkeypatch.setattr(devices, "_kept", False)  # as in a fresh process (a decoder loaded by another test sets it)
    monkeypatch.setenv(devices.KEEP_FREED_MEMORY_ENV, "0")
    assert devices.keep_freed_memory() is False
    monkeypatch.delenv(devices.KEEP_FREED_MEMORY_ENV)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # the user's own glibc tuning wins
    assert devices.keep_freed_memory() is False
