"""What only the TangoFlux backend has: its published layout, window sizing, its strict-load cases, the tiny build.
The behaviour every decoder shares is in test_decoder_contract.py."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from audiostory_cli.decoders.base import ClipRequest
from audiostory_cli.errors import InputError, ModelLoadError, ModelNotFoundError
from audiostory_cli.pipeline import resolve_options
from audiostory_cli.registry import load_decoder
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import Event

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def decoder(tiny_decoder):
    return load_decoder(str(tiny_decoder), device=CPU, dtype=torch.float32)


def _request(index, seconds, seed, caption="rain on a tin roof", sample_rate=44100):
    event = Event(index=index, caption=caption, start_s=0.0, duration_s=seconds)
    return ClipRequest(event=event, n_samples=round(seconds * sample_rate), seed=seed)


def test_loads_published_layout(decoder):
    assert decoder.sample_rate == 44100
    assert decoder.channels == 2
    assert decoder.hop_samples == 2048
    assert decoder.config.audio_seq_len == 645
    assert 29.9 < decoder.max_clip_s < 30.0
    assert (decoder.caps.default_steps, decoder.caps.default_guidance) == (50, 4.5)  # TangoFlux's own


def test_window_follows_clip_length(decoder):
    assert decoder.window_frames(44100) == 32  # 22 frames needed, rounded up to the 16-frame bucket
    assert decoder.window_frames(44100, "full") == 645
    assert decoder.window_frames(decoder.max_clip_samples) == 645
    with pytest.raises(InputError, match="longer than the decoder's window"):
        decoder.window_frames(decoder.max_clip_samples + 1)


def test_full_window_still_cuts_to_the_clip(decoder):
    options = resolve_options(RenderOptions(steps=2, window="full", continuation=False), decoder)
    (clip,) = decoder.render([_request(0, 0.5, seed=1)], options, batch_size=1)
    assert clip.wave.shape == (2, 22050)


def test_missing_vae_file_is_named(tiny_decoder, tmp_path):
    broken = tmp_path / "decoder"
    shutil.copytree(tiny_decoder, broken)
    (broken / "vae.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="lacks vae.safetensors"):
        load_decoder(str(broken), device=CPU, dtype=torch.float32)


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
    load_decoder(str(broken), device=CPU, dtype=torch.float32)  # the whole T5 under text_encoder.*: fine
    del full[next(k for k in full if k.startswith("text_encoder.encoder.block.0."))]
    save_file(full, str(broken / "tangoflux.safetensors"))
    with pytest.raises(ModelLoadError, match="text_encoder keys do not match the T5 encoder: missing"):
        load_decoder(str(broken), device=CPU, dtype=torch.float32)
