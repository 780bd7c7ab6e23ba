"""What editing asks of every decoder, parametrized over the backends on their tiny checkpoints: each clip's final
latents and grid origin, decoding them again without denoising (bit for bit), latent guides (pinned frames,
variations by strength), the continuation head as a guide, and the VAE's own encoding of audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audiostory_cli.decoders.base import ClipRequest, LatentGuide
from audiostory_cli.decoders.geometry import HEAD_CONTEXT_FRAMES, continuation_head
from audiostory_cli.errors import InputError
from audiostory_cli.pipeline import resolve_options
from audiostory_cli.registry import describe_decoder, load_decoder
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import Event

SR = 44100
BACKENDS = {"tangoflux": "tiny_decoder", "stable-audio-3": "tiny_sa3", "stable-audio-3-small": "tiny_sa3_small"}


@pytest.fixture(scope="module", params=list(BACKENDS))
def folder(request) -> Path:
    return Path(request.getfixturevalue(BACKENDS[request.param]))


@pytest.fixture(scope="module")
def decoder(folder):
    return load_decoder(str(folder), device=torch.device("cpu"), dtype=torch.float32)


def render(decoder, requests, *, batch_size=4, **settings):
    options = resolve_options(RenderOptions(**{"steps": 3, "continuation": False, **settings}), decoder)
    return decoder.render(requests, options, batch_size=batch_size, progress=lambda _: None)


def _request(index, seconds, seed, *, start_s=0.0, caption="rain on a tin roof", tail_s=0.0, **fields):
    event = Event(index=index, caption=caption, start_s=start_s, duration_s=seconds)
    return ClipRequest(event=event, n_samples=round((seconds + tail_s) * SR), seed=seed,
                       start_sample=round(start_s * SR), **fields)  # fmt: skip


def _pair():
    """Two clips, the second continuing the first over its 1 s tail."""
    a = _request(0, 1.5, seed=1, tail_s=1.0)
    b = _request(1, 1.5, seed=2, start_s=1.5, caption="a dog barks twice", continues=0)
    return [a, b]


def _guided(request, guide, seed=None):
    fields = {**request.__dict__, "guide": guide, "continues": None}
    if seed is not None:
        fields["seed"] = seed
    return ClipRequest(**fields)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_caps_say_the_latent_grid_from_config_files(decoder, folder):
    caps = describe_decoder(str(folder))
    assert caps == decoder.caps
    assert caps.hop_samples == decoder.hop_samples > 1
    assert caps.frame_multiple == getattr(getattr(decoder, "setup", None), "frame_multiple", 1) >= 1


def test_clips_carry_their_final_latents_and_decode_from_them_bit_for_bit(decoder):
    fresh = render(decoder, [_request(0, 1.3, seed=3, start_s=2.0)])[0]
    assert fresh.origin_sample == round(2.0 * SR)
    assert fresh.latents.dtype == np.float32 and fresh.latents.ndim == 2
    assert fresh.latents.shape[0] * decoder.caps.hop_samples >= fresh.wave.shape[1]
    assert np.array_equal(decoder.decode_latents(fresh.latents, 0, fresh.wave.shape[1]), fresh.wave)
    requests = _pair()
    first, second = render(decoder, requests, continuation=True)
    shift = requests[1].start_sample - second.origin_sample
    assert 0 < shift and first.origin_sample == 0
    assert np.array_equal(decoder.decode_latents(second.latents, shift, requests[1].n_samples), second.wave)
    assert np.array_equal(decoder.decode_latents(first.latents, 0, requests[0].n_samples), first.wave)


def test_a_clip_longer_than_a_window_decodes_from_its_stitched_latents(decoder):
    request = _request(0, 1.3 * decoder.caps.window_s, seed=4, start_s=1.0)
    (clip,) = render(decoder, [request], steps=2)
    assert np.array_equal(decoder.decode_latents(clip.latents, 0, request.n_samples), clip.wave)
    guide = LatentGuide(clip.origin_sample, clip.latents, np.ones(len(clip.latents), dtype=bool))
    (again,) = render(decoder, [_guided(request, guide, seed=99)], steps=2)
    assert np.array_equal(again.latents, clip.latents) and np.array_equal(again.wave, clip.wave)


def test_a_fully_pinned_guide_returns_its_latents_exactly(decoder):
    request = _request(0, 1.2, seed=5, start_s=0.5)
    (clip,) = render(decoder, [request])
    guide = LatentGuide(clip.origin_sample, clip.latents, np.ones(len(clip.latents), dtype=bool))
    (pinned,) = render(decoder, [_guided(request, guide, seed=77)])
    assert np.array_equal(pinned.latents, clip.latents)
    assert np.array_equal(pinned.wave, decoder.decode_latents(guide.latents, 0, request.n_samples))


def test_a_pinned_head_stays_and_the_rest_is_drawn_again(decoder):
    request = _request(0, 1.5, seed=6)
    (clip,) = render(decoder, [request])
    head = 4
    pinned = np.zeros(len(clip.latents), dtype=bool)
    pinned[:head] = True
    (edited,) = render(decoder, [_guided(request, LatentGuide(0, clip.latents, pinned), seed=60)])
    (reseeded,) = render(decoder, [_guided(request, None, seed=60)])
    assert np.array_equal(edited.latents[:head], clip.latents[:head])
    # The rest moved about as far as another seed moves it (random tiny weights: their bias dominates)
    assert _rel(edited.latents[head:], clip.latents[head:]) > 0.5 * _rel(reseeded.latents[head:], clip.latents[head:])
    assert np.isfinite(edited.wave).all()


def test_strength_makes_variations_closer_to_the_known_the_lower_it_is(decoder):
    request = _request(0, 1.5, seed=7)
    (clip,) = render(decoder, [request], steps=6)
    none = np.zeros(len(clip.latents), dtype=bool)
    varied = {
        s: render(decoder, [_guided(request, LatentGuide(0, clip.latents, none, strength=s), seed=70)], steps=6)[0]
        for s in (0.3, 0.9, 1.0)
    }  # fmt: skip
    for v in varied.values():
        assert np.isfinite(v.wave).all() and v.wave.shape == clip.wave.shape
    assert not np.array_equal(varied[0.3].latents, varied[0.9].latents)
    assert not np.array_equal(varied[0.9].latents, varied[1.0].latents)
    assert _rel(varied[0.3].latents, clip.latents) < _rel(varied[1.0].latents, clip.latents)
    again = render(decoder, [_guided(request, LatentGuide(0, clip.latents, none, strength=0.3), seed=70)], steps=6)[0]
    assert np.array_equal(again.wave, varied[0.3].wave)  # same guide, seed and steps: the same samples


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, float("nan")])
def test_a_strength_outside_0_to_1_is_refused(strength):
    with pytest.raises(InputError, match="strength"):
        LatentGuide(0, np.zeros((4, 8), dtype=np.float32), np.ones(4, dtype=bool), strength=strength)


def test_a_guide_cannot_also_continue_and_cannot_start_after_the_clip():
    guide = LatentGuide(100, np.zeros((4, 8), dtype=np.float32), np.ones(4, dtype=bool))
    event = Event(index=1, caption="x", start_s=0.0, duration_s=1.0)
    with pytest.raises(ValueError, match="continue"):
        ClipRequest(event=event, n_samples=SR, seed=1, start_sample=200, continues=0, guide=guide)
    with pytest.raises(ValueError, match="after"):
        ClipRequest(event=event, n_samples=SR, seed=1, start_sample=50, guide=guide)


def _head_guide(decoder, requests, previous):
    """The continuation head as the editing code builds it, from the previous clip's saved latents."""
    caps, before, request = decoder.caps, requests[0], requests[1]
    first, end = continuation_head(
        request.start_sample, previous.origin_sample, before.start_sample + before.n_samples,
        len(previous.latents), hop=caps.hop_samples, frame_multiple=caps.frame_multiple,
        round_end_up=caps.round_head_end_up,
    )  # fmt: skip
    assert (request.start_sample - previous.origin_sample) // caps.hop_samples - first >= HEAD_CONTEXT_FRAMES
    known = previous.latents[first:end]
    return LatentGuide(previous.origin_sample + first * caps.hop_samples, known, np.ones(len(known), dtype=bool))


def test_the_continuation_head_as_a_guide_ends_as_the_continued_clip(decoder):
    requests = _pair()
    first, second = render(decoder, requests, continuation=True)
    guide = _head_guide(decoder, requests, first)
    (guided,) = render(decoder, [_guided(requests[1], guide)], continuation=True)
    head = len(guide.latents)
    assert guided.origin_sample == second.origin_sample
    assert np.array_equal(guided.latents[:head], guide.latents)
    assert np.array_equal(second.latents[:head], guide.latents)
    if decoder.caps.name == "Stable Audio 3":  # the same arithmetic: the same clip, bit for bit
        assert np.array_equal(guided.latents, second.latents) and np.array_equal(guided.wave, second.wave)


def test_guided_windows_batch_with_unguided_ones(decoder):
    request = _request(0, 1.0, seed=8)
    (clip,) = render(decoder, [request])
    pinned = np.zeros(len(clip.latents), dtype=bool)
    pinned[:3] = True
    guided = _guided(request, LatentGuide(0, clip.latents, pinned, strength=0.5), seed=80)
    other = _request(1, 1.0, seed=9, caption="gulls cry")
    together = render(decoder, [guided, other], batch_size=2)
    alone = render(decoder, [other])[0]
    assert _rel(together[1].wave, alone.wave) < 1e-3  # float rounding only
    assert np.array_equal(together[0].latents[:3], clip.latents[:3])


def test_encode_audio_is_the_vaes_deterministic_encoding(decoder):
    hop, channels = decoder.caps.hop_samples, decoder.caps.channels
    wave = (0.3 * np.sin(np.arange(6 * hop) * 2 * np.pi * 440 / SR)).astype(np.float32)
    wave = np.stack([wave, 0.5 * wave])
    assert wave.shape[0] == channels
    latents = decoder.encode_audio(wave)
    assert latents.shape == (6, render(decoder, [_request(0, 0.2, seed=1)], steps=1)[0].latents.shape[1])
    assert latents.dtype == np.float32 and np.isfinite(latents).all()
    assert np.array_equal(latents, decoder.encode_audio(wave))
    back = decoder.decode_latents(latents, 0, wave.shape[1])
    assert back.shape == wave.shape and np.isfinite(back).all()
    with pytest.raises(ValueError, match="multiple"):
        decoder.encode_audio(wave[:, : 6 * hop - 1])
    with pytest.raises(ValueError, match="samples"):
        decoder.encode_audio(wave[:1])


def test_continuation_head_rounds_as_each_backend_does():
    hop = 100
    # TangoFlux floors the end (the last, partly covered frame stays free), SA3 rounds it up (pins it too)
    assert continuation_head(1305, 0, 1750, 40, hop=hop, round_end_up=False) == (13 - HEAD_CONTEXT_FRAMES, 17)
    assert continuation_head(1305, 0, 1750, 40, hop=hop, round_end_up=True) == (13 - HEAD_CONTEXT_FRAMES, 18)
    # SAME-S keeps its attention chunks where the previous clip had them: the first frame rounds down
    assert continuation_head(1305, 0, 1750, 40, hop=hop, frame_multiple=4, round_end_up=True) == (4, 18)
    # on the previous clip's own grid, never past its frames, never before its frame 0
    assert continuation_head(1305, 300, 1750, 12, hop=hop, round_end_up=True) == (2, 12)
    assert continuation_head(500, 0, 900, 40, hop=hop, round_end_up=False) == (0, 9)
    assert continuation_head(200, 300, 900, 40, hop=hop, round_end_up=True) is None  # starts before that grid
    assert continuation_head(3000, 0, 1200, 40, hop=hop, round_end_up=True) is None  # no overlap left
