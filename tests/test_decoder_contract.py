"""The contract every decoder keeps, one suite parametrized over the registered backends: exact lengths,
determinism, batch invariance, continuation across a crossfade, events longer than a window, strict loads."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from audiostory_cli.decoders.base import ClipRequest
from audiostory_cli.errors import ModelLoadError
from audiostory_cli.pipeline import resolve_options
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import Event

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Backend:
    """How the contract reaches one backend through its real loader."""

    name: str
    fixture: str  # the conftest fixture that builds its tiny checkpoint
    load: Callable[[Path, torch.dtype], object]  # folder -> loaded decoder
    break_key: Callable[[Path], str]  # rename one weight in a copied folder; returns the key's file name


def _load_registered(folder: Path, dtype: torch.dtype):
    from audiostory_cli.registry import load_decoder

    return load_decoder(str(folder), device=CPU, dtype=dtype)


def _load_audiostory(folder: Path, dtype: torch.dtype):
    from audiostory_cli.models.audiostory.load import AudioStoryModel

    return AudioStoryModel.load(str(folder), device=CPU, dtype=dtype).decoder


def _rename_in_safetensors(path: Path, key: str) -> str:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state[key + "_renamed"] = state.pop(key)
    save_file(state, str(path))
    return key


def _break_tangoflux(folder: Path) -> str:
    return _rename_in_safetensors(folder / "tangoflux.safetensors", "fc.0.weight")


def _break_audiostory(folder: Path) -> str:
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["tangoflux.fc.0.weight_renamed"] = state.pop("tangoflux.fc.0.weight")
    torch.save(state, folder / "pytorch_model.bin")
    return "tangoflux.fc.0.weight"


def _break_sa3_original(folder: Path) -> str:
    return _rename_in_safetensors(folder / "model.safetensors", "model.model.transformer.layers.1.cross_attn.to_kv.weight")


def _break_sa3_diffusers(folder: Path) -> str:
    from safetensors import safe_open

    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), "pt") as file:
        key = sorted(file.keys())[0]
    return _rename_in_safetensors(path, key)


BACKENDS = [
    Backend("tangoflux", "tiny_decoder", _load_registered, _break_tangoflux),
    Backend("audiostory", "tiny_audiostory_model", _load_audiostory, _break_audiostory),
    Backend("stable-audio-3", "tiny_sa3", _load_registered, _break_sa3_diffusers),
    Backend("stable-audio-3-original", "tiny_sa3_original", _load_registered, _break_sa3_original),
    Backend("stable-audio-3-small", "tiny_sa3_small", _load_registered, _break_sa3_original),
]


@pytest.fixture(scope="module", params=BACKENDS, ids=lambda b: b.name)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def folder(backend, request) -> Path:
    return Path(request.getfixturevalue(backend.fixture))


@pytest.fixture(scope="module")
def decoder(backend, folder):
    return backend.load(folder, torch.float32)


def render(decoder, requests, *, batch_size=4, progress=lambda _: None, **settings):
    """``decoder.render`` with options resolved as the pipeline does (steps given, the rest its own)."""
    options = resolve_options(RenderOptions(**{"continuation": False, **settings}), decoder)
    return decoder.render(requests, options, batch_size=batch_size, progress=progress)


def _request(index, seconds, seed, caption="rain on a tin roof", sample_rate=44100):
    event = Event(index=index, caption=caption, start_s=0.0, duration_s=seconds)
    return ClipRequest(event=event, n_samples=round(seconds * sample_rate), seed=seed)


def test_caps_describe_stereo_44k(decoder):
    assert decoder.caps.sample_rate == 44100 and decoder.caps.channels == 2
    assert decoder.caps.window_s > 0 and decoder.caps.text_width > 0
    assert decoder.encode_text("rain on a tin roof").states.shape[1] == decoder.caps.text_width


def test_clip_has_exact_length_and_is_audible(decoder):
    (clip,) = render(decoder, [_request(0, 1.37, seed=1)], steps=3)
    assert clip.wave.shape == (2, round(1.37 * 44100))
    assert clip.wave.dtype == np.float32
    assert np.isfinite(clip.wave).all() and np.abs(clip.wave).max() > 1e-4


def test_same_seed_same_samples_other_seed_differs(decoder):
    a = render(decoder, [_request(0, 1.0, seed=5)], steps=3)[0].wave
    b = render(decoder, [_request(0, 1.0, seed=5)], steps=3)[0].wave
    c = render(decoder, [_request(0, 1.0, seed=6)], steps=3)[0].wave
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_clip_renders_the_same_alone_and_in_a_batch(decoder):
    requests = [_request(0, 1.0, seed=1, caption="gulls cry over the water and waves break"), _request(1, 1.1, seed=2)]
    together = render(decoder, requests, steps=3, batch_size=2)
    alone = render(decoder, requests[1:], steps=3, batch_size=1)
    a, b = together[1].wave, alone[0].wave
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3  # float rounding only: the padding is masked


def test_caption_changes_the_sound(decoder):
    a = render(decoder, [_request(0, 1.0, seed=1, caption="rain on a tin roof")], steps=3)[0].wave
    b = render(decoder, [_request(0, 1.0, seed=1, caption="a dog barks twice")], steps=3)[0].wave
    assert not np.allclose(a, b)


def test_steps_drive_the_progress(decoder):
    reports = []
    render(decoder, [_request(0, 0.5, seed=1)], steps=4, progress=reports.append)
    assert [r.done for r in reports if r.stage == "step"] == [1, 2, 3, 4]


def test_bf16_runs_on_cpu(backend, folder):
    decoder = backend.load(folder, torch.bfloat16)
    (clip,) = render(decoder, [_request(0, 0.5, seed=1)], steps=2)
    assert clip.wave.dtype == np.float32 and np.isfinite(clip.wave).all()


def _joined_pair(seconds=(1.5, 1.5), tail_s=0.5, captions=("rain on a tin roof", "a dog barks twice")):
    """Two clips on one timeline; the first renders ``tail_s`` past its end, under the second's head."""
    sr = 44100
    first_span = round(seconds[0] * sr)
    a = ClipRequest(Event(0, captions[0], 0.0, seconds[0]), first_span + round(tail_s * sr), seed=1)
    b = ClipRequest(Event(1, captions[1], seconds[0], seconds[1]), round(seconds[1] * sr), seed=2,
                    start_sample=first_span, continues=0)  # fmt: skip
    return [a, b], first_span, round(tail_s * sr)


def _overlap_error(clips, first_span, tail):
    """Relative difference between the first clip's tail and the second clip's head (the crossfade region)."""
    tail_audio = clips[0].wave[:, first_span : first_span + tail]
    head_audio = clips[1].wave[:, :tail]
    return np.linalg.norm(tail_audio - head_audio) / np.linalg.norm(tail_audio)


def test_continuation_makes_both_sides_of_a_crossfade_the_same_sound(decoder):
    requests, first_span, tail = _joined_pair(tail_s=1.0)
    together = render(decoder, requests, steps=4, continuation=True)
    apart = render(decoder, requests, steps=4, continuation=False)
    assert _overlap_error(together, first_span, tail) < 0.25 * _overlap_error(apart, first_span, tail)
    # Where the earlier clip still dominates the crossfade (its first three quarters), the two sides match;
    # at the very end the earlier clip's own last frames (past its audio) colour it a little.
    quarter = tail * 3 // 4
    head = together[1].wave[:, :quarter]
    expected = together[0].wave[:, first_span : first_span + quarter]
    assert np.linalg.norm(head - expected) / np.linalg.norm(expected) < 0.05
    assert [c.wave.shape[1] for c in together] == [r.n_samples for r in requests]


def test_continuation_leaves_the_first_clip_as_it_was(decoder):
    requests, _, _ = _joined_pair()
    alone = render(decoder, requests[:1], steps=3, continuation=False)[0].wave
    chained = render(decoder, requests, steps=3, continuation=True)[0].wave
    # Float rounding only: it now shares a batch with the clip that continues it (as in the batch test above).
    assert np.linalg.norm(chained - alone) / np.linalg.norm(alone) < 1e-3


def test_clip_longer_than_a_window_is_exact_and_has_no_jump_at_the_stitches(decoder):
    seconds = 2.5 * decoder.caps.window_s
    request = _request(0, seconds, seed=3)
    (clip,) = render(decoder, [request], steps=2)
    assert clip.wave.shape == (2, request.n_samples)
    assert np.isfinite(clip.wave).all()
    steps = np.abs(np.diff(clip.wave, axis=1)).max(axis=0)
    assert steps.max() < 3 * np.quantile(steps, 0.999)  # no click where windows or VAE chunks meet


def test_a_renamed_key_is_named_and_nothing_loads(backend, folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    key = backend.break_key(broken)
    with pytest.raises(ModelLoadError) as caught:
        backend.load(broken, torch.float32)
    assert key in str(caught.value) and f"{key}_renamed" in str(caught.value)
