"""The TangoFlux-layout decoder: strict loading, window sizing, seeds, batching, exact lengths."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from audiostory_cli.decoder import ClipRequest, Decoder
from audiostory_cli.errors import InputError, ModelLoadError, ModelNotFoundError
from audiostory_cli.story import Event

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def decoder(tiny_decoder):
    return Decoder.load(str(tiny_decoder), device=CPU, dtype=torch.float32)


def _request(index, seconds, seed, caption="rain on a tin roof", sample_rate=44100):
    event = Event(index=index, caption=caption, start_s=0.0, duration_s=seconds)
    return ClipRequest(event=event, n_samples=round(seconds * sample_rate), seed=seed)


def test_loads_published_layout(decoder):
    assert decoder.sample_rate == 44100
    assert decoder.channels == 2
    assert decoder.hop_samples == 2048
    assert decoder.config.audio_seq_len == 645
    assert 29.9 < decoder.max_clip_s < 30.0


def test_clip_has_exact_length_and_is_audible(decoder):
    (clip,) = decoder.render([_request(0, 1.37, seed=1)], steps=3)
    assert clip.wave.shape == (2, round(1.37 * 44100))
    assert clip.wave.dtype == np.float32
    assert np.isfinite(clip.wave).all() and np.abs(clip.wave).max() > 1e-4


def test_same_seed_same_samples_other_seed_differs(decoder):
    a = decoder.render([_request(0, 1.0, seed=5)], steps=3)[0].wave
    b = decoder.render([_request(0, 1.0, seed=5)], steps=3)[0].wave
    c = decoder.render([_request(0, 1.0, seed=6)], steps=3)[0].wave
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_clip_renders_the_same_alone_and_in_a_batch(decoder):
    requests = [_request(0, 1.0, seed=1, caption="gulls cry over the water and waves break"), _request(1, 1.1, seed=2)]
    together = decoder.render(requests, steps=3, batch_size=2)
    alone = decoder.render(requests[1:], steps=3, batch_size=1)
    a, b = together[1].wave, alone[0].wave
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3  # float rounding only: the padding is masked


def test_caption_changes_the_sound(decoder):
    a = decoder.render([_request(0, 1.0, seed=1, caption="rain on a tin roof")], steps=3)[0].wave
    b = decoder.render([_request(0, 1.0, seed=1, caption="a dog barks twice")], steps=3)[0].wave
    assert not np.allclose(a, b)


def test_window_follows_clip_length(decoder):
    assert decoder.window_frames(44100) == 32  # 22 frames needed, rounded up to the 16-frame bucket
    assert decoder.window_frames(44100, "full") == 645
    assert decoder.window_frames(decoder.max_clip_samples) == 645
    with pytest.raises(InputError, match="longer than the decoder's window"):
        decoder.window_frames(decoder.max_clip_samples + 1)


def test_full_window_still_cuts_to_the_clip(decoder):
    (clip,) = decoder.render([_request(0, 0.5, seed=1)], steps=2, window="full")
    assert clip.wave.shape == (2, 22050)


def test_steps_drive_the_progress(decoder):
    reports = []
    decoder.render([_request(0, 0.5, seed=1)], steps=4, progress=reports.append)
    assert [r.done for r in reports if r.stage == "step"] == [1, 2, 3, 4]


@pytest.mark.parametrize(("kwargs", "message"), [({"steps": 0}, "steps = 0"), ({"window": "half"}, "window = 'half'")])
def test_bad_render_arguments(decoder, kwargs, message):
    with pytest.raises(InputError, match=message):
        decoder.render([_request(0, 0.5, seed=1)], **kwargs)


def test_renamed_key_is_named_in_the_error(tiny_decoder, tmp_path):
    broken = tmp_path / "decoder"
    shutil.copytree(tiny_decoder, broken)
    state = load_file(str(broken / "tangoflux.safetensors"))
    state["fc.0.weight_renamed"] = state.pop("fc.0.weight")
    save_file(state, str(broken / "tangoflux.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing keys: fc\.0\.weight; unexpected keys: fc\.0\.weight_renamed"):
        Decoder.load(str(broken), device=CPU, dtype=torch.float32)


def test_missing_vae_file_is_named(tiny_decoder, tmp_path):
    broken = tmp_path / "decoder"
    shutil.copytree(tiny_decoder, broken)
    (broken / "vae.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="lacks vae.safetensors"):
        Decoder.load(str(broken), device=CPU, dtype=torch.float32)


def test_bf16_runs_on_cpu(tiny_decoder):
    decoder = Decoder.load(str(tiny_decoder), device=CPU, dtype=torch.bfloat16)
    (clip,) = decoder.render([_request(0, 0.5, seed=1)], steps=2)
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
    together = decoder.render(requests, steps=4, continuation=True)
    apart = decoder.render(requests, steps=4, continuation=False)
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
    alone = decoder.render(requests[:1], steps=3, continuation=False)[0].wave
    chained = decoder.render(requests, steps=3, continuation=True)[0].wave
    np.testing.assert_allclose(chained, alone, atol=1e-5)


def test_clip_longer_than_a_window_is_exact_and_continues_across_windows(decoder):
    seconds = 2.5 * decoder.max_clip_s
    request = _request(0, seconds, seed=3)
    (clip,) = decoder.render([request], steps=2, continuation=False)
    assert clip.wave.shape == (2, request.n_samples)
    assert np.isfinite(clip.wave).all()


def test_tiny_decoder_build_is_reproducible(tmp_path):
    from audiostory_cli.testing import build_tiny_decoder

    first, second = build_tiny_decoder(tmp_path / "a"), build_tiny_decoder(tmp_path / "b")
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)


def test_text_encoder_keys_in_the_dit_file_load_strictly(tiny_decoder, tmp_path):
    broken = tmp_path / "decoder"
    shutil.copytree(tiny_decoder, broken)
    dit = load_file(str(broken / "tangoflux.safetensors"))
    t5 = load_file(str(broken / "text_encoder" / "model.safetensors"))
    full = {**dit, **{f"text_encoder.{k}": v for k, v in t5.items()}}
    save_file(full, str(broken / "tangoflux.safetensors"))
    Decoder.load(str(broken), device=CPU, dtype=torch.float32)  # the whole T5 under text_encoder.*: fine
    del full[next(k for k in full if k.startswith("text_encoder.encoder.block.0."))]
    save_file(full, str(broken / "tangoflux.safetensors"))
    with pytest.raises(ModelLoadError, match="text_encoder keys do not match the T5 encoder: missing"):
        Decoder.load(str(broken), device=CPU, dtype=torch.float32)
