"""The tiny TangoFlux decoder in declare-lab/TangoFlux's layout (``size="real"``: TangoFlux's real sizes,
random weights, for speed checks), and the T5 encoder it shares with the AudioStory layout."""

from __future__ import annotations

from pathlib import Path

import torch

from .common import CORPUS, fill_random, plain_state

TANGOFLUX_SIZES = {  # the DiT sizes in declare-lab/TangoFlux's config.json: the real decoder
    "num_layers": 6, "num_single_layers": 18, "attention_head_dim": 128, "num_attention_heads": 8,
    "joint_attention_dim": 1024,
}  # fmt: skip
TINY_DECODER_SIZES = {  # one block of each kind, one head: renders a clip in milliseconds on a CPU
    "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 128, "num_attention_heads": 1,
    "joint_attention_dim": 32,
}  # fmt: skip
TINY_VAE = dict(encoder_hidden_size=128, channel_multiples=[1, 2, 2, 2, 2], decoder_channels=4)  # Oobleck, 2048 hop;
# the encoder as wide as the real one at its output (2 x 64 latent channels: mean and scale), so it encodes


def build_tiny_decoder(path: str | Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """Write a TangoFlux-layout decoder with random weights: ``config.json``, ``tangoflux.safetensors`` (the
    DiT, and the T5 under ``text_encoder.*`` without its tied alias ``encoder.embed_tokens.weight``, as the
    published file), ``vae.safetensors`` and ``text_encoder/`` (the same T5 with a locally trained tokenizer:
    the published layout takes them from ``google/flan-t5-large``, which a test cannot download).

    ``size="real"`` gives the DiT, the T5 width and the VAE their published sizes (for GPU timing); the T5
    keeps two layers. ``size="tiny"`` makes everything small.
    """
    import json
    import warnings
    from dataclasses import asdict

    from diffusers import AutoencoderOobleck
    from safetensors.torch import save_file

    from ..decoders.tangoflux.config import TangoFluxConfig
    from ..decoders.tangoflux.modules import TangoFluxDiT

    if size not in ("tiny", "real"):
        raise ValueError(f"size = {size!r}: must be 'tiny' or 'real'")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {**asdict(TangoFluxConfig()), **(TINY_DECODER_SIZES if size == "tiny" else TANGOFLUX_SIZES)}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    t5 = build_t5_encoder(path / "text_encoder", d_model=config["joint_attention_dim"], seed=seed + 1)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dit = TangoFluxDiT(TangoFluxConfig.from_dict(config), config["joint_attention_dim"])
        vae = AutoencoderOobleck(**(TINY_VAE if size == "tiny" else {}))
    fill_random(dit, seed + 2, gain=1.0)
    fill_random(vae, seed + 3, gain=1.0)
    tame_vae(vae, quieten=size == "tiny")
    t5_state = {f"text_encoder.{k}": v for k, v in plain_state(t5).items() if k != "encoder.embed_tokens.weight"}
    save_file({**plain_state(dit), **t5_state}, str(path / "tangoflux.safetensors"))
    save_file(plain_state(vae), str(path / "vae.safetensors"))
    return path


def build_t5_encoder(path: Path, *, d_model: int, seed: int):
    """A two-layer T5 encoder (flan-t5's gated-GELU feed-forward) with a word-level tokenizer over ``CORPUS``'s
    words (``</s>`` appended, as T5), saved to ``path``; returns the encoder.

    The vocabulary is the corpus's sorted words, so the same call writes the same files (a trained Unigram
    model is not reproducible across runs)."""
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = sorted(set(re.findall(r"[a-z0-9']+|[^\sa-z0-9']", CORPUS.lower())))
    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    config = T5Config(
        vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=2,
        num_heads=max(1, d_model // 16), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        feed_forward_proj="gated-gelu",  # flan-t5's gated feed-forward (wi_0, wi_1), as the published files name it
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        encoder = T5EncoderModel(config)
    fill_random(encoder, seed, gain=1.0)
    encoder.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return encoder


def tame_vae(vae, *, quieten: bool) -> None:
    """Snake activations at alpha = beta = 1 (random log-scales make them chaotic, so float rounding would
    decide the output), and, for the tiny VAE, an output layer scaled so random latents peak near 0.5."""
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith((".alpha", ".beta")):
                param.zero_()  # Oobleck's snake parameters are log-scale: 0 means 1
        if not quieten:
            return
        latents = torch.randn((1, vae.config.decoder_input_channels, 32), generator=torch.Generator().manual_seed(0))
        peak = vae.decode(latents).sample.abs().max().clamp(min=1e-6)
        vae.decoder.conv2.weight_g.mul_(0.5 / peak)

