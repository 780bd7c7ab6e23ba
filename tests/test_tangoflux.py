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
    full = load_file(str(broken / "tangoflux.safetensors"))
    # as published: the T5 under text_encoder.*, its tied embedding under one name only
    assert "text_encoder.shared.weight" in full and "text_encoder.encoder.embed_tokens.weight" not in full
    full["text_encoder.shared.weight"] = full["text_encoder.shared.weight"] + 1.0
    save_file(full, str(broken / "tangoflux.safetensors"))
    text_encoder = load_decoder(str(broken), device=CPU, dtype=torch.float32).text_encoder
    assert torch.equal(text_encoder.encoder.embed_tokens.weight, full["text_encoder.shared.weight"])  # the file's
    del full[next(k for k in full if k.startswith("text_encoder.encoder.block.0."))]
    save_file(full, str(broken / "tangoflux.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing keys: text_encoder\.encoder\.block\.0\."):
        load_decoder(str(broken), device=CPU, dtype=torch.float32)


def test_the_prepared_vae_decodes_exactly_what_diffusers_oobleck_decodes(tiny_decoder):
    from diffusers import AutoencoderOobleck

    from audiostory_cli.decoders.tangoflux.weights import InPlaceSnake, load_vae

    path = tiny_decoder / "vae.safetensors"
    plain = AutoencoderOobleck.from_config(load_vae(path).config).eval()
    plain.load_state_dict(load_file(path))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # snake log-scales away from 0 (alpha = beta = 1), where a changed formula would show
        for name, param in plain.named_parameters():
            if name.endswith(("alpha", "beta")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    fast = load_vae(path).eval()  # the same file: its convs hold the folded weights
    snakes = {k: v for k, v in plain.state_dict().items() if k.endswith(("alpha", "beta"))}
    assert fast.load_state_dict(snakes, strict=False).unexpected_keys == []
    assert any(isinstance(m, InPlaceSnake) for m in fast.modules())
    assert not any(hasattr(m, "weight_g") for m in fast.modules())
    latents = torch.randn(1, plain.config.decoder_input_channels, 12, generator=generator)
    with torch.inference_mode():
        assert torch.equal(fast.decode(latents).sample, plain.decode(latents).sample)
