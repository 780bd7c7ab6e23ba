"""The Stable Audio 3 backend: both layouts, strict conversion, SAME-S, seeds, batching, continuation, long
events, ``convert``. Tiny random checkpoints (the real hop: 4096 samples a frame, a 30 s window)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from conftest import one_thread
import torch
from safetensors.torch import load_file, save_file

from audiostory_cli.decoders import stable_audio_3 as sa3
from audiostory_cli.decoders.base import ClipRequest
from audiostory_cli.errors import InputError, ModelLoadError
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import Event
from audiostory_cli.testing.stable_audio_3 import (
    stability_model_config,
)

CPU = torch.device("cpu")
SR = 44100


@pytest.fixture(scope="module")
def folders(tiny_sa3_folders):
    return tiny_sa3_folders


@pytest.fixture(scope="module")
def decoders(folders):
    with one_thread():
        return {name: sa3.load(str(path), path, device=CPU, dtype=torch.float32) for name, path in folders.items()}


@pytest.fixture(scope="module")
def decoder(decoders):
    return decoders["original"]


def _request(index, seconds, seed, caption="rain on a tin roof", start_s=0.0, continues=None, text=None):
    event = Event(index=index, caption=caption, start_s=start_s, duration_s=seconds)
    return ClipRequest(event=event, n_samples=round(seconds * SR), seed=seed, start_sample=round(start_s * SR),
                       continues=continues, text=text)  # fmt: skip


def _options(decoder, **overrides):
    return RenderOptions(**overrides).resolved(decoder.caps.default_steps, decoder.caps.default_guidance)


def _render(decoder, requests, batch_size=4, **overrides):
    return [c.wave for c in decoder.render(requests, _options(decoder, **overrides), batch_size=batch_size)]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- layouts, caps, conversion ---------------------------------------------------------------------------


def test_both_layouts_are_detected_and_described_from_config_files(folders, tmp_path):
    for name in ("diffusers", "original", "small"):
        assert sa3.detect(folders[name])
        caps = sa3.describe(folders[name])
        assert (caps.sample_rate, caps.channels, caps.text_width) == (SR, 2, 16)
        assert (caps.default_steps, caps.default_guidance) == (8, 1.0)
        assert caps.windows == ("auto",) and caps.continuation == "latent"
        assert 29.5 < caps.window_s <= 30.1
    assert not sa3.detect(tmp_path) and sa3.missing_files(tmp_path) == []
    (tmp_path / "model_config.json").write_text("{}")  # Stability's config alone: the rest is named
    assert not sa3.detect(tmp_path)
    assert sa3.missing_files(tmp_path) == ["model.safetensors", "t5gemma-b-b-ul2/"]


@pytest.mark.parametrize("small", [True, False], ids=["small-sfx", "medium"])
def test_describe_reads_real_size_configs_without_weights(tmp_path, small):
    """A model_config.json at the Small-SFX / Medium sizes (the ones that give the published tensor counts)
    with no weights beside it: 8 steps, guidance 1.0, a 120 / 380 s window; a -base checkpoint
    (rectified_flow, not distilled) takes 100 steps with CFG."""
    raw = stability_model_config(small=small, real=True)
    (tmp_path / "model_config.json").write_text(json.dumps(raw))
    (tmp_path / "model.safetensors").write_bytes(b"")  # never read by describe
    caps = sa3.describe(tmp_path)
    assert (caps.default_steps, caps.default_guidance, caps.text_width) == (8, 1.0, 768)
    assert round(caps.window_s) == (120 if small else 380)
    assert (caps == sa3.default_caps()) is small  # what a dry run of the default decoder (Small-SFX) plans for
    raw["model"]["diffusion"]["diffusion_objective"] = "rectified_flow"
    (tmp_path / "model_config.json").write_text(json.dumps(raw))
    assert (sa3.describe(tmp_path).default_steps, sa3.describe(tmp_path).default_guidance) == (100, 7.0)


@pytest.mark.parametrize("small, tensors, elements", [(True, 685, 567_573_761), (False, 997, 2_305_495_793)],
                         ids=["small-sfx", "medium"])  # fmt: skip
def test_key_mapping_covers_the_real_checkpoints(small, tensors, elements, tmp_path):
    """At the real sizes (on the meta device: no memory), the diffusers modules map to exactly the tensors
    Stability's checkpoints hold (Small 685 / 567.6M elements, Medium 997 / 2.31B), and back, strictly."""
    from audiostory_cli.decoders.stable_audio_3.convert import (
        build_components,
        convert_state,
        parse_config,
    )
    from audiostory_cli.testing.stable_audio_3 import stability_state

    config = parse_config(stability_model_config(small=small, real=True))
    with torch.device("meta"):
        modules = build_components(config)
    state = stability_state(modules, config)
    assert (len(state), sum(t.numel() for t in state.values())) == (tensors, elements)
    converted = convert_state(state, config, modules, tmp_path / "model.safetensors")
    assert sum(len(c) for c in converted.values()) == tensors - (12 if small else 24) - 1  # rope buffers, noise scale


def test_the_two_layouts_render_identical_samples(decoders):
    request = [_request(0, 1.5, seed=4)]
    assert np.array_equal(_render(decoders["diffusers"], request)[0], _render(decoders["original"], request)[0])


def test_renamed_key_in_the_original_layout_is_named(folders, tmp_path):
    broken = tmp_path / "sa3"
    shutil.copytree(folders["original"], broken)
    state = load_file(str(broken / "model.safetensors"))
    key = "model.model.transformer.layers.1.cross_attn.to_kv.weight"
    state[key.replace("to_kv", "to_kv_renamed")] = state.pop(key)
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        sa3.load(str(broken), broken, device=CPU, dtype=torch.float32)
    assert "unexpected keys: model.model.transformer.layers.1.cross_attn.to_kv_renamed.weight" in str(err.value)
    assert f"missing keys: {key}" in str(err.value)
    with pytest.raises(ModelLoadError, match="to_kv_renamed"):  # ``audiostory convert`` fails the same way...
        sa3.convert(broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sa3"]  # ...and leaves no file behind


def test_wrong_shape_is_named(folders, tmp_path):
    broken = tmp_path / "sa3"
    shutil.copytree(folders["original"], broken)
    state = load_file(str(broken / "model.safetensors"))
    key = "conditioner.conditioners.seconds_total.embedder.embedding.1.weight"
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1)
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=f"wrong shapes: {key} "):
        sa3.load(str(broken), broken, device=CPU, dtype=torch.float32)


def test_the_t5gemma_folder_is_the_full_encoder_decoder_and_loads_as_an_encoder(folders, decoder):
    text = load_file(str(folders["original"] / "t5gemma-b-b-ul2" / "model.safetensors"))
    assert any(k.startswith("model.decoder.") for k in text) and any(k.startswith("model.encoder.") for k in text)
    assert not [k for k in text if not k.startswith(("model.encoder.", "model.decoder."))]  # as the hub ships it
    loaded = dict(decoder.text_encoder.state_dict())
    assert all(torch.equal(loaded["encoder." + k[len("model.encoder."):]], v)
               for k, v in text.items() if k.startswith("model.encoder."))  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("drop", "missing keys: model.encoder.layers.0.mlp.up_proj.weight"),
        ("rename", "unexpected keys: model.encoder.layers.0.mlp.up_proj_renamed.weight"),
        ("reshape", "wrong shapes: model.encoder.layers.0.mlp.up_proj.weight "),
        ("stray", "unexpected keys: model.stray.weight"),
    ],
)
def test_a_misfit_in_the_t5gemma_encoder_is_named_and_nothing_is_written(folders, tmp_path, edit, named):
    broken = tmp_path / "sa3"
    shutil.copytree(folders["original"], broken)
    path = broken / "t5gemma-b-b-ul2" / "model.safetensors"
    state, key = load_file(str(path)), "model.encoder.layers.0.mlp.up_proj.weight"
    if edit == "drop":
        del state[key]
    elif edit == "rename":
        state[key.replace("up_proj", "up_proj_renamed")] = state.pop(key)
    elif edit == "reshape":
        state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    else:
        state["model.stray.weight"] = torch.zeros(2)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=re.escape(named)):
        sa3.load(str(broken), broken, device=CPU, dtype=torch.float32)
    with pytest.raises(ModelLoadError, match=re.escape(named)):
        sa3.convert(broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sa3"]


def test_a_stability_file_without_running_std_is_refused_by_name(folders, tmp_path):
    broken = tmp_path / "sa3"
    shutil.copytree(folders["original"], broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["pretransform.model.bottleneck.running_std"]  # the config has auto_scale: the scale is learnt
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing keys: pretransform\.model\.bottleneck\.running_std"):
        sa3.load(str(broken), broken, device=CPU, dtype=torch.float32)


def test_convert_writes_a_diffusers_folder_that_renders_identically(folders, decoder, tmp_path):
    out = sa3.convert(folders["original"], tmp_path / "converted")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableAudio3Pipeline"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no temporary folder left beside it
    with one_thread():
        converted = sa3.load(str(out), out, device=CPU, dtype=torch.float32)
    request = [_request(0, 1.2, seed=9)]
    assert np.array_equal(_render(converted, request)[0], _render(decoder, request)[0])
    with pytest.raises(InputError, match="already exists and is not empty"):
        sa3.convert(folders["original"], out)
    with pytest.raises(InputError, match="already in the diffusers layout"):
        sa3.convert(out, tmp_path / "again")


def test_small_converts_with_same_s_and_renders_identically(folders, decoders, tmp_path):
    out = sa3.convert(folders["small"], tmp_path / "small")
    assert json.loads((out / "model_index.json").read_text())["vae"][1] == "AutoencoderSameS"
    with one_thread():
        converted = sa3.load(str(out), out, device=CPU, dtype=torch.float32)
    request = [_request(0, 0.9, seed=2)]
    assert np.array_equal(_render(converted, request)[0], _render(decoders["small"], request)[0])


def test_a_clip_is_what_the_diffusers_pipeline_renders(folders, decoders, monkeypatch):
    """With the inpainting input off (the diffusers text-to-audio pipeline passes none; Stability's own
    generate passes zeros, as we do by default), our loop renders what StableAudio3Pipeline renders from the
    same generator: same schedule, same ping-pong re-noise, same CFG, once our TAIL_FRAMES (latent frames past
    the clip, whose audio is cut) are off (the DiT norms' eps, which we set to
    stable-audio-tools' 1e-5 where diffusers has 1e-6, moves nothing past float rounding)."""
    from dataclasses import replace

    from diffusers import StableAudio3Pipeline

    from audiostory_cli.checkpoints import quiet_loading

    from audiostory_cli.decoders.stable_audio_3 import decoder as sa3_decoder

    decoder = decoders["diffusers"]
    monkeypatch.setattr(decoder, "setup", replace(decoder.setup, inpaint_input=False))
    monkeypatch.setattr(sa3_decoder, "TAIL_FRAMES", 0)  # the pipeline sizes its latent to the clip exactly
    with quiet_loading():
        pipe = StableAudio3Pipeline.from_pretrained(str(folders["diffusers"]))
    pipe.set_progress_bar_config(disable=True)
    for steps, guidance in ((8, 1.0), (6, 3.0)):
        (ours,) = _render(decoder, [_request(0, 1.5, seed=7)], steps=steps, guidance=guidance)
        theirs = pipe("rain on a tin roof", duration=1.5, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(7), output_type="np").audios[0]  # fmt: skip
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


# --- rendering ----------------------------------------------------------------------------------------


def test_clip_has_exact_length_at_44k_stereo_and_is_tame(decoder):
    (wave,) = _render(decoder, [_request(0, 1.37, seed=1)])
    assert wave.shape == (2, round(1.37 * SR)) and wave.dtype == np.float32
    assert np.isfinite(wave).all() and 1e-3 < np.abs(wave).max() < 1.0


def test_same_seed_same_samples_other_seed_differs(decoder):
    a, b, c = (_render(decoder, [_request(0, 1.0, seed=s)])[0] for s in (5, 5, 6))
    assert np.array_equal(a, b)
    assert _rel(a, c) > 0.1


@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["distilled", "cfg"])
def test_clip_renders_the_same_alone_and_in_a_batch(decoder, guidance):
    requests = [_request(0, 1.0, seed=1, caption="gulls cry over the water and waves break"),
                _request(1, 1.0, seed=2), _request(2, 0.6, seed=3)]  # fmt: skip
    together = _render(decoder, requests, batch_size=3, guidance=guidance, continuation=False)
    alone = _render(decoder, requests[1:2], batch_size=1, guidance=guidance, continuation=False)[0]
    assert _rel(together[1], alone) < 1e-4  # float rounding only: per-clip noise, padding the same
    assert _rel(together[0], together[1]) > 0.1


def test_guidance_above_one_runs_cfg(decoder):
    request = [_request(0, 1.0, seed=1)]
    assert _rel(_render(decoder, request, guidance=3.0)[0], _render(decoder, request, guidance=1.0)[0]) > 1e-3


def test_given_text_tokens_condition_like_the_caption(decoder):
    caption = "a dog barks twice"
    text = decoder.encode_text(caption)
    a = _render(decoder, [_request(0, 1.0, seed=1, caption=caption)])[0]
    b = _render(decoder, [_request(0, 1.0, seed=1, caption="ignored", text=text)])[0]
    other = _render(decoder, [_request(0, 1.0, seed=1, caption="rain on a tin roof")])[0]
    assert np.array_equal(a, b) and _rel(a, other) > 1e-3


def test_encode_text_pads_with_the_learned_padding_vector(decoder):
    tokens = decoder.encode_text("rain", pad_to=10)
    assert tokens.states.shape == (10, decoder.caps.text_width)
    padding = decoder.transformer.prompt_padding_embedding.float()
    assert torch.equal(tokens.states[-1], padding) and not torch.equal(tokens.states[0], padding)


def test_full_window_is_refused(decoder):
    with pytest.raises(InputError, match="--window full does not apply"):
        decoder.render([_request(0, 1.0, seed=1)], _options(decoder, window="full"), batch_size=1)


def _joined_pair(tail_s=1.0):
    first_span = round(2.0 * SR)
    a = _request(0, 2.0 + tail_s, seed=11, caption="waves break on pebbles")
    b = _request(1, 2.0, seed=12, caption="a wooden door creaks open", start_s=2.0, continues=0)
    return [a, b], first_span, round(tail_s * SR)


def test_continuation_makes_the_head_match_the_previous_tail(decoder):
    requests, first_span, tail = _joined_pair()
    together = _render(decoder, requests, continuation=True)
    apart = _render(decoder, requests, continuation=False)

    def error(waves, n=tail):
        return _rel(waves[1][:, :n], waves[0][:, first_span : first_span + n])

    assert error(apart) > 0.5  # independent clips: unrelated sounds
    assert error(together, tail * 3 // 4) < 0.01  # where the earlier clip dominates the crossfade: the same
    # At the very end the earlier clip's last frames decoded without the frames after them: a little differs.
    assert error(together) < 0.25 * error(apart)
    assert [w.shape[1] for w in together] == [r.n_samples for r in requests]
    np.testing.assert_allclose(together[0], _render(decoder, requests[:1], continuation=False)[0], atol=1e-5)


def _continues_across_windows(decoder, seconds):
    """A clip longer than the window: exact length; its first window is that window rendered alone (the
    next windows start from its last 3 s, pinned, so the latents are one sequence: no stitch in the audio);
    the chunked VAE decode is the one-piece decode; the level holds steady across every seam."""
    hop, window = decoder.hop_samples, decoder.setup.max_frames
    (wave,) = _render(decoder, [_request(0, seconds, seed=3)], steps=2)
    assert wave.shape == (2, round(seconds * SR)) and np.isfinite(wave).all()
    first = ClipRequest(event=Event(index=0, caption="rain on a tin roof", start_s=0, duration_s=30),
                        n_samples=window * hop, seed=3)  # fmt: skip
    (alone,) = _render(decoder, [first], steps=2)
    kept = (window - 8) * hop  # the last frames' audio also hears the frames after them
    assert _rel(wave[:, :kept], alone[:, :kept]) < 1e-5
    level = np.sqrt((wave[:, : int(seconds) * SR].reshape(2, -1, SR) ** 2).mean(axis=(0, 2)))  # per second
    assert level.min() > 0.25 * np.median(level) and level.max() < 4 * np.median(level)
    latents = 1.3 * torch.randn((1, decoder.latent_channels, 300), generator=torch.Generator().manual_seed(0))
    assert _rel(decoder._decode(latents[0]), decoder.vae.decode(latents).sample[0].numpy()) < 1e-4


def test_a_100_s_event_is_exact_and_has_no_jumps_at_window_stitches(decoder):
    _continues_across_windows(decoder, 100.0)


# --- SAME-S (Small) -------------------------------------------------------------------------------------


def test_small_loads_with_same_s_and_renders(decoders):
    from audiostory_cli.decoders.stable_audio_3.same_s import AutoencoderSameS

    small = decoders["small"]
    assert isinstance(small.vae, AutoencoderSameS)
    assert small.vae.decoder.blocks[0].mapping.weight_v.shape[-1] == 3  # SAME-S's kernel-3 decoder mapping
    # 10.77 frames -> 11, + TAIL_FRAMES (8), rounded up to whole attention chunks (2 frames)
    assert small.frames_for(SR) == 20
    requests = [_request(0, 1.3, seed=1), _request(1, 1.3, seed=2, caption="a dog barks twice")]
    together = _render(small, requests, batch_size=2, continuation=False)
    alone = _render(small, requests[1:], batch_size=1, continuation=False)[0]
    assert together[0].shape == (2, round(1.3 * SR)) and np.isfinite(together[0]).all()
    assert 1e-3 < np.abs(together[0]).max() < 1.0
    assert _rel(together[1], alone) < 1e-4


def test_small_continues_across_windows(decoders):
    _continues_across_windows(decoders["small"], 65.0)
