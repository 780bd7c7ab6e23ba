"""SAME-S, the small SAME autoencoder of Stable Audio 3 Small (Small-SFX, Small-Music), which diffusers'
``AutoencoderSAME`` cannot hold.

SAME-S differs from SAME-L in two ways that change the weights or the maths (Stability-AI/stable-audio-3,
``stable_audio_3/models/autoencoders.py`` ``TransformerResamplingBlock``; its MLX port
``optimized/mlx/models/defs/same_s_decoder.py``):

- its decoder's channel mapping is a weight-normed conv of kernel 3 (``conv_mapping=True``, padding "same"),
  where diffusers builds kernel 1;
- it attends in fixed chunks instead of a sliding band ("modified chunked attention with midpoint shift"):
  the token sequence (one ``stride + 1`` sub-chunk per latent) is cut into chunks of
  ``chunk_size + chunk_size // stride`` tokens; the first half of the layers attend within those chunks, the
  second half within chunks shifted by half a chunk (the sequence is padded at both ends with copies of its
  own first and last half-chunk, then cropped back). RoPE restarts in every chunk.

The transformer layers, the patching and the soft-norm bottleneck are the same as SAME-L's, so this module
reuses diffusers' SAME blocks and spells its parameters like ``AutoencoderSAME`` (``encoder.blocks.0...``,
``attn.to_qkv`` in diffusers' ``[q1 | q2 | k1 | k2 | v]`` order): one key mapping serves both VAEs.
"""

from __future__ import annotations

import math
import warnings

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_same import (
    AutoencoderSAMEDecoderOutput,
    AutoencoderSAMEOutput,
    PatchEmbed,
    SoftNormBottleneck,
    TransformerBlock,
)
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils import weight_norm


def _pad_to(x: torch.Tensor, multiple: int, dim: int) -> torch.Tensor:
    """Zero-pad ``x`` along ``dim`` up to a multiple of ``multiple`` (as Stability pads before chunking)."""
    extra = (multiple - x.shape[dim] % multiple) % multiple
    if not extra:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class ChunkedResamplingBlock(nn.Module):
    """One SAME-S transformer resampling block: ``stride`` audio frames <-> one latent, chunked attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        mode: str,
        depth: int,
        dim_heads: int,
        chunk_size: int,
        midpoint_shift: bool,
        mapping_kernel: int,
        sinusoidal_blocks: int,
        ff_mult: int,
        differential: bool,
        new_token_count: int,
    ) -> None:
        super().__init__()
        if mode not in ("encoder", "decoder"):
            raise ValueError(f"mode = {mode!r}: must be 'encoder' or 'decoder'")
        if chunk_size % stride:
            raise ValueError(f"chunk_size {chunk_size} is not a multiple of the stride {stride}")
        self.mode, self.stride, self.chunk_size, self.midpoint_shift = mode, stride, chunk_size, midpoint_shift
        width = out_channels if mode == "encoder" else in_channels  # the transformer's width
        self.width = width
        same = in_channels == out_channels
        self.mapping = nn.Identity() if same else _weight_normed_conv(in_channels, out_channels, mapping_kernel)
        self.transformers = nn.ModuleList(
            TransformerBlock(
                width, dim_heads=min(dim_heads, width), use_differential=differential, ff_mult=ff_mult,
                sinusoidal=(depth - i) < sinusoidal_blocks,
            )
            for i in range(depth)
        )  # fmt: skip
        self.new_tokens = nn.Parameter(torch.zeros(1, new_token_count, width))

    @property
    def chunk_tokens(self) -> int:
        """Tokens in one attention chunk: ``chunk_size`` frames plus one new token per ``stride`` of them."""
        return self.chunk_size + self.chunk_size // self.stride

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """The layers over [B, N, C] tokens, within chunks; the second half on half-shifted chunks."""
        batch, chunk = x.shape[0], self.chunk_tokens
        split = len(self.transformers) // 2 if self.midpoint_shift else len(self.transformers)
        x = x.reshape(-1, chunk, self.width)
        for layer in self.transformers[:split]:
            x = layer(x)
        x = x.reshape(batch, -1, self.width)
        if split == len(self.transformers):
            return x
        shift = chunk // 2
        x = torch.cat([x[:, :shift], x, x[:, -shift:]], dim=1).reshape(-1, chunk, self.width)
        for layer in self.transformers[split:]:
            x = layer(x)
        return x.reshape(batch, -1, self.width)[:, shift:-shift]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x) if self.mode == "encoder" else self._decode(x)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, T] frames -> [B, C_out, T_padded / stride] latents."""
        # 1. Pad to whole chunks before the mapping (so padding is mapped, as upstream), then map.
        x = self.mapping(_pad_to(x, self.chunk_size, dim=-1)).transpose(1, 2)  # [B, T, C]
        batch, frames, stride = x.shape[0], x.shape[1], self.stride
        # 2. Each ``stride`` frames are followed by one new token that becomes their latent.
        x = x.reshape(batch * (frames // stride), stride, self.width)
        x = torch.cat([x, self.new_tokens.expand(x.shape[0], -1, -1)], dim=1).reshape(batch, -1, self.width)
        # 3. Chunked attention, then keep the new tokens.
        x = self._attend(x).reshape(batch, frames // stride, stride + 1, self.width)[:, :, -1]
        return x.transpose(1, 2)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, T] latents -> [B, C_out, T_padded * stride] frames."""
        # 1. Pad the latents to whole chunks; each latent is followed by ``stride`` new tokens.
        x = _pad_to(x.transpose(1, 2), self.chunk_size // self.stride, dim=1)  # [B, T, C]
        batch, latents, stride = x.shape[0], x.shape[1], self.stride
        new = self.new_tokens.expand(batch * latents, stride, -1)
        x = torch.cat([x.reshape(batch * latents, 1, self.width), new], dim=1).reshape(batch, -1, self.width)
        # 2. Chunked attention, keep the new tokens, then map the channels.
        x = self._attend(x).reshape(batch, latents, stride + 1, self.width)[:, :, 1:]
        return self.mapping(x.reshape(batch, latents * stride, self.width).transpose(1, 2))


class AutoencoderSameS(ModelMixin, ConfigMixin):
    """SAME-S: patching, chunked transformer resampling blocks, a linear latent projection, soft-norm.

    ``decode`` takes ``[B, latent_dim, T]`` latents and returns ``[B, audio_channels, T * hop]`` audio, where
    ``hop = patch_size * prod(strides)`` (4096 for the published SAME-S). An odd ``T`` is zero-padded inside
    (chunks hold ``chunk_size // stride`` latents), as upstream; the caller cuts the audio to its length.
    """

    @register_to_config
    def __init__(
        self,
        audio_channels: int = 2,
        patch_size: int = 256,
        channels: int = 128,
        c_mults: tuple[int, ...] = (6,),
        strides: tuple[int, ...] = (16,),
        transformer_depths: tuple[int, ...] = (6,),
        latent_dim: int = 256,
        dim_heads: int = 64,
        differential: bool = True,
        ff_mult: int = 3,
        chunk_size: int = 32,
        chunk_midpoint_shift: bool = True,
        encoder_mapping_kernel: int = 1,
        decoder_mapping_kernel: int = 3,
        encoder_sinusoidal_blocks: tuple[int, ...] = (0,),
        decoder_sinusoidal_blocks: tuple[int, ...] = (0,),
        variable_stride: bool = True,
        sampling_rate: int = 44100,
    ) -> None:
        super().__init__()
        levels = len(strides)
        self.downsampling_ratio = patch_size * math.prod(strides)
        widths = [audio_channels * patch_size] + [m * channels for m in c_mults]

        def block(i: int, mode: str, sinusoidal: int) -> ChunkedResamplingBlock:
            encoder = mode == "encoder"
            return ChunkedResamplingBlock(
                widths[i] if encoder else widths[i + 1], widths[i + 1] if encoder else widths[i], strides[i],
                mode=mode, depth=transformer_depths[i], dim_heads=dim_heads, chunk_size=chunk_size,
                midpoint_shift=chunk_midpoint_shift,
                mapping_kernel=encoder_mapping_kernel if encoder else decoder_mapping_kernel,
                sinusoidal_blocks=sinusoidal, ff_mult=ff_mult, differential=differential,
                new_token_count=1 if variable_stride or encoder else strides[i],
            )  # fmt: skip

        enc_sin = _per_level(encoder_sinusoidal_blocks, levels)
        dec_sin = _per_level(decoder_sinusoidal_blocks, levels)
        self.patch_embed = PatchEmbed(patch_size)
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList(block(i, "encoder", enc_sin[i]) for i in range(levels))
        self.encoder.proj = nn.Linear(widths[-1], latent_dim)
        self.bottleneck = SoftNormBottleneck(latent_dim)
        self.decoder = nn.Module()
        self.decoder.proj = nn.Linear(latent_dim, widths[-1])
        self.decoder.blocks = nn.ModuleList(block(i, "decoder", dec_sin[i]) for i in reversed(range(levels)))

    def encode(self, sample: torch.Tensor, return_dict: bool = True):
        """[B, audio_channels, T] audio -> [B, latent_dim, ceil(T / hop)] latents (soft-normed)."""
        x = self.patch_embed.encode(sample)
        for block in self.encoder.blocks:
            x = block(x)
        x = self.bottleneck.encode(self.encoder.proj(x.transpose(1, 2)).transpose(1, 2))
        x = x[..., : -(-sample.shape[-1] // self.downsampling_ratio)]
        return AutoencoderSAMEOutput(latents=x) if return_dict else (x,)

    def decode(self, latents: torch.Tensor, return_dict: bool = True):
        """[B, latent_dim, T] latents -> [B, audio_channels, T * hop] audio."""
        x = self.decoder.proj(self.bottleneck.decode(latents).transpose(1, 2)).transpose(1, 2)
        for block in self.decoder.blocks:
            x = block(x)
        audio = self.patch_embed.decode(x)[..., : latents.shape[-1] * self.downsampling_ratio]
        return AutoencoderSAMEDecoderOutput(sample=audio) if return_dict else (audio,)


def _weight_normed_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Module:
    """A weight-normed conv with ``weight_g`` / ``weight_v`` parameters, as SAME's checkpoints spell them (the
    parametrizations API would rename them, so the deprecated helper stays, its warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return weight_norm(nn.Conv1d(in_channels, out_channels, kernel, padding=kernel // 2))


def _per_level(values, levels: int) -> list[int]:
    values = list(values)
    if len(values) == 1:
        values = values * levels
    if len(values) != levels:
        raise ValueError(f"{values}: needs one value per level ({levels})")
    return values
