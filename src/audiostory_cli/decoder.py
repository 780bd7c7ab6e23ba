"""Diffusion decoder: captions -> clips, with the TangoFlux architecture built from diffusers parts.

Data flow of one batch: ``T5 text encoder -> FluxTransformer2DModel (flow matching, CFG) -> AutoencoderOobleck``.

It loads the layout that declare-lab/TangoFlux publishes: ``config.json`` (the DiT's sizes),
``tangoflux.safetensors`` (keys ``transformer.*``, ``fc.*``, ``duration_emebdder.*``, spelled as upstream)
and ``vae.safetensors`` (the Stable Audio Open Oobleck VAE, whose config is read off its tensor shapes).
The T5 encoder comes from a ``text_encoder/`` folder beside them when present, else from the model
reference in ``config.json``'s ``text_encoder_name`` (``google/flan-t5-large``).

Unlike upstream, which always denoises a 30 s window, the window follows the clip length (``window="auto"``);
``window="full"`` keeps upstream's full window. Each clip draws its starting noise from its own
``torch.Generator``; captions are attention-masked so a clip renders the same alone or in a batch.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .checkpoints import ModelKind, quiet_loading, resolve
from .errors import InputError, ModelLoadError
from .story import WINDOWS, Clip, Event, Progress, ProgressFn, clip_seed, no_progress

DECODER_KIND = ModelKind(
    role="decoder",
    required=("config.json", "tangoflux.safetensors", "vae.safetensors"),
    layout="config.json, tangoflux.safetensors, vae.safetensors and optionally text_encoder/, "
    "as declare-lab/TangoFlux publishes",
)
TEXT_ENCODER_KIND = ModelKind(
    role="text encoder", required=("config.json",), layout="a T5 encoder folder with config.json and its tokenizer"
)
FRAME_BUCKET = 16  # auto windows are rounded up to a multiple of this many latent frames, so clips batch
LONG_OVERLAP_S = 3.0  # a clip longer than one window is rendered as windows overlapping this much
VAE_CONTEXT_FRAMES = 32  # latent frames decoded on each side of a chunk when a clip is longer than a window
HEAD_CONTEXT_FRAMES = 8  # a continuing clip also pins this many of the previous clip's frames before the
# overlap (and discards their audio), so the VAE's edge effects fall outside the crossfade
MAX_TEXT_TOKENS = 64  # captions are cut to this many T5 tokens (TangoFlux's max_text_seq_len)


@dataclass(frozen=True)
class TangoFluxConfig:
    """The fields of TangoFlux's config.json, with upstream's defaults."""

    num_layers: int = 6  # double-stream (joint) transformer blocks
    num_single_layers: int = 18  # single-stream transformer blocks
    in_channels: int = 64  # latent channels (the VAE's latent size)
    attention_head_dim: int = 128  # width of one attention head
    joint_attention_dim: int = 1024  # width of the text tokens fed to the DiT (= the T5's d_model)
    num_attention_heads: int = 8  # attention heads
    audio_seq_len: int = 645  # latent frames of the full window (30 s at 44.1 kHz / 2048)
    max_duration: float = 30.0  # the duration token's upper bound, seconds
    uncondition: bool = False  # training flag, unused at inference
    text_encoder_name: str = "google/flan-t5-large"  # reference of the T5 text encoder

    @property
    def max_clip_s(self) -> float:
        """The longest clip one window holds, with the Stable Audio Open VAE (2048 samples a frame, 44.1 kHz)."""
        return self.audio_seq_len * 2048 / 44100

    @classmethod
    def from_dict(cls, data: dict) -> TangoFluxConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TextTokens:
    """What fills the decoder's text-conditioning slot for one clip (the duration token follows it)."""

    states: torch.Tensor  # [L, D] token features (T5 states of the caption, or the bridge's fused queries)
    pooled: torch.Tensor  # [D] pooled text vector, projected by the DiT's ``fc`` into its global conditioning


@dataclass(frozen=True)
class ClipRequest:
    """One clip to render."""

    event: Event  # the event it renders
    n_samples: int  # exact length of the clip in samples (event span plus crossfade tail)
    seed: int  # seed of this clip's starting noise
    text: TextTokens | None = None  # conditioning; None: the T5 encoding of ``event.caption``
    start_sample: int = 0  # where the clip starts on the story timeline, in samples
    continues: int | None = None  # index (in the same request list) of the clip whose tail this clip's head
    # continues: with ``continuation`` on, the overlap is generated as that clip's latent frames


@dataclass(frozen=True)
class _LatentTrack:
    """What a rendered clip leaves for the clip that continues it."""

    origin_sample: int  # timeline sample where latent frame 0 starts
    latents: torch.Tensor  # [frames, channels] final latents
    end_sample: int  # timeline sample where the clip's audio ends


class _StableAudioPositionalEmbedding(nn.Module):
    """Random Fourier features of a scalar in [0, 1] (Stable Audio's continuous time embedding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(dim // 2))

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        times = times[..., None]
        freqs = times * self.weights[None] * 2 * math.pi
        return torch.cat((times, freqs.sin(), freqs.cos()), dim=-1)


class DurationEmbedder(nn.Module):
    """Maps a clip duration in seconds to one conditioning token (TangoFlux's duration token)."""

    def __init__(self, dim: int, max_value: float, internal_dim: int = 256) -> None:
        super().__init__()
        self.max_value = max_value
        self.time_positional_embedding = nn.Sequential(
            _StableAudioPositionalEmbedding(internal_dim), nn.Linear(internal_dim + 1, dim)
        )

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        normalized = seconds.clamp(0, self.max_value) / self.max_value
        dtype = self.time_positional_embedding[1].weight.dtype
        return self.time_positional_embedding(normalized.to(dtype)).unsqueeze(1)  # [B, 1, dim]


class TangoFluxDiT(nn.Module):
    """The trained part of TangoFlux: the Flux transformer, the pooled-text projection, the duration token."""

    def __init__(self, config: TangoFluxConfig, text_dim: int) -> None:
        super().__init__()
        from diffusers import FluxTransformer2DModel

        self.transformer = FluxTransformer2DModel(
            in_channels=config.in_channels,
            num_layers=config.num_layers,
            num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.joint_attention_dim,
            pooled_projection_dim=text_dim,
            guidance_embeds=False,
        )
        self.fc = nn.Sequential(nn.Linear(text_dim, config.joint_attention_dim), nn.ReLU())
        self.duration_emebdder = DurationEmbedder(text_dim, config.max_duration)  # upstream's spelling


class Decoder:
    """A loaded TangoFlux-architecture decoder; ``render`` turns clip requests into clips."""

    def __init__(self, *, ref, config, dit, vae, text_encoder, tokenizer, device, dtype) -> None:
        self.ref: str = ref  # the reference it was loaded from (saved in plans)
        self.config: TangoFluxConfig = config
        self.dit: TangoFluxDiT = dit
        self.vae = vae  # diffusers AutoencoderOobleck, fp32
        self.text_encoder = text_encoder  # transformers T5EncoderModel
        self.tokenizer = tokenizer
        self.device: torch.device = device
        self.dtype: torch.dtype = dtype  # dtype of the DiT; the VAE stays fp32
        self._uncond_cache: dict[int, TextTokens] = {}  # unconditional text by token count

    # --- loading -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, ref: str, *, device: torch.device, dtype: torch.dtype) -> Decoder:
        folder = resolve(ref, DECODER_KIND)
        if folder.is_file():
            raise ModelLoadError(f"decoder '{ref}' is a file; expected a folder ({DECODER_KIND.layout})")
        with quiet_loading():
            config = read_tangoflux_config(folder / "config.json")
            text_encoder, tokenizer = load_text_encoder(folder, config, device, dtype)
            text_dim = text_encoder.config.d_model
            if text_dim != config.joint_attention_dim:
                raise ModelLoadError(
                    f"{folder}: text encoder width {text_dim} does not match joint_attention_dim "
                    f"{config.joint_attention_dim} in config.json"
                )
            dit = TangoFluxDiT(config, text_dim)
            _load_dit_weights(dit, text_encoder, folder / "tangoflux.safetensors")
            vae = load_vae(folder / "vae.safetensors")
            dit.to(device=device, dtype=dtype).eval()
            vae.to(device=device, dtype=torch.float32).eval()
        return cls(
            ref=ref, config=config, dit=dit, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            device=device, dtype=dtype,
        )  # fmt: skip

    # --- sizes ---------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    @property
    def channels(self) -> int:
        return int(self.vae.config.audio_channels)

    @property
    def hop_samples(self) -> int:
        """Audio samples per latent frame (2048 for the Stable Audio Open VAE)."""
        return int(np.prod(self.vae.config.downsampling_ratios))

    @property
    def max_clip_samples(self) -> int:
        """The longest clip one window can render."""
        return self.config.audio_seq_len * self.hop_samples

    @property
    def max_clip_s(self) -> float:
        return self.max_clip_samples / self.sample_rate

    def window_frames(self, n_samples: int, window: str = "auto") -> int:
        """Latent frames denoised for a clip of ``n_samples``: just enough (rounded up to a bucket), or all."""
        if n_samples > self.max_clip_samples:
            raise InputError(
                f"a clip of {n_samples / self.sample_rate:.2f} s is longer than the decoder's window "
                f"({self.max_clip_s:.2f} s)",
                hint="split the event into shorter events",
            )
        if window == "full":
            return self.config.audio_seq_len
        needed = math.ceil(n_samples / self.hop_samples)
        return min(self.config.audio_seq_len, math.ceil(needed / FRAME_BUCKET) * FRAME_BUCKET)

    # --- rendering -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def render(
        self,
        requests: Sequence[ClipRequest],
        *,
        steps: int = 50,
        guidance: float = 3.0,
        window: str = "auto",
        batch_size: int = 4,
        continuation: bool = False,
        progress: ProgressFn = no_progress,
    ) -> list[Clip]:
        """Render every request.

        Without ``continuation``, clips of the same window size share a batch of at most ``batch_size``.
        With it, clips render one after another in timeline order, and the head of a clip that
        ``continues`` another is generated as the continuation of that clip's tail (inpainting: the known
        latent frames are re-noised to the current noise level and pinned at every step). A clip longer
        than one window is rendered as overlapping windows chained the same way, whatever the setting.
        """
        _check_render_args(steps, guidance, window, batch_size)
        clips: dict[int, Clip] = {}
        chained = range(len(requests)) if continuation else self._too_long(requests)
        batched = [i for i in range(len(requests)) if i not in set(chained)]
        self._render_batched(requests, batched, clips, steps, guidance, window, batch_size, progress)
        tracks: dict[int, _LatentTrack] = {}
        for i in sorted(chained, key=lambda i: (requests[i].start_sample, i)):
            request = requests[i]
            previous = tracks.get(request.continues) if continuation and request.continues is not None else None
            progress(Progress("render", len(clips), len(requests), f"event {request.event.index + 1}"))
            wave, tracks[i] = self._render_chained(request, previous, steps, guidance, window, progress)
            clips[i] = Clip(event=request.event, wave=wave, sample_rate=self.sample_rate, seed=request.seed)
        progress(Progress("render", len(clips), len(requests), "done"))
        return [clips[i] for i in range(len(requests))]

    def _too_long(self, requests: Sequence[ClipRequest]) -> list[int]:
        return [i for i, r in enumerate(requests) if r.n_samples > self.max_clip_samples]

    def _render_batched(self, requests, indices, clips, steps, guidance, window, batch_size, progress) -> None:
        """Clips with no continuation, grouped by window size, ``batch_size`` at a time."""
        by_frames: dict[int, list[int]] = defaultdict(list)
        for i in indices:
            by_frames[self.window_frames(requests[i].n_samples, window)].append(i)
        for frames, group in sorted(by_frames.items()):
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                batch = [requests[i] for i in chunk]
                names = ", ".join(str(r.event.index + 1) for r in batch)
                progress(Progress("render", len(clips), len(requests), f"events {names}"))
                waves = self._render_batch(batch, frames, steps, guidance, progress)
                for i, request, wave in zip(chunk, batch, waves):
                    clips[i] = Clip(event=request.event, wave=wave, sample_rate=self.sample_rate, seed=request.seed)

    def _render_chained(self, request, previous, steps, guidance, window, progress):
        """One clip as one or more windows; the first continues ``previous``, each next one the last."""
        hop, full = self.hop_samples, self.config.audio_seq_len
        known, origin = self._known_head(request, previous)
        shift = request.start_sample - origin  # samples between latent frame 0 and the clip's start
        total = math.ceil((shift + request.n_samples) / hop)
        overlap = round(LONG_OVERLAP_S * self.sample_rate / hop)
        text = request.text if request.text is not None else self.encode_text(request.event.caption)
        latents, start, part = None, 0, 0
        while True:
            needed = total - start
            frames = full if window == "full" or needed >= full else math.ceil(needed / FRAME_BUCKET) * FRAME_BUCKET
            frames = min(frames, full)
            seed = request.seed if part == 0 else clip_seed(request.seed, part)
            pinned = known[: frames - 1] if part == 0 else latents[start : start + overlap]
            content = shift + request.n_samples - start * hop  # audio samples still to come from here on
            seconds = min(content, frames * hop) / self.sample_rate
            new = self._render_window(text, seconds, self._noise(seed, frames), pinned, steps, guidance, progress)
            latents = new if latents is None else torch.cat([latents[:start], new])
            if start + frames >= total:
                break
            start, part = start + frames - overlap, part + 1
        wave = _fit(self._decode_frames(latents)[:, shift:], request.n_samples)
        return wave, _LatentTrack(origin, latents, request.start_sample + request.n_samples)

    def _known_head(self, request: ClipRequest, previous: _LatentTrack | None):
        """The previous clip's latent frames that lie inside its audio from this clip's start on, and the
        timeline sample this clip's latent grid starts at (aligned to the previous clip's grid)."""
        empty = torch.zeros(0, self.config.in_channels, device=self.device)
        if previous is None:
            return empty, request.start_sample
        hop = self.hop_samples
        first = max(0, (request.start_sample - previous.origin_sample) // hop - HEAD_CONTEXT_FRAMES)
        end = (previous.end_sample - previous.origin_sample) // hop
        if request.start_sample < previous.origin_sample or end <= first:
            return empty, request.start_sample
        return previous.latents[first:end], previous.origin_sample + first * hop

    def _render_window(self, text, seconds, noise, pinned, steps, guidance, progress) -> torch.Tensor:
        """Denoise one window for one clip, its first ``len(pinned)`` frames pinned; [frames, channels]."""
        context, mask, pooled = self._conditioning([text], [seconds], guidance > 1.0)
        known = pinned[None] if pinned.shape[0] else None
        latents = self._denoise(noise[None].to(self.device), context, mask, pooled, steps, guidance, progress, known)
        return latents[0]

    def _decode_frames(self, latents: torch.Tensor) -> np.ndarray:
        """VAE-decode [frames, channels]; past one window, in window-sized chunks with context on each side."""
        full, hop = self.config.audio_seq_len, self.hop_samples
        if latents.shape[0] <= full:
            return self.vae.decode(latents.T[None].float()).sample[0].float().cpu().numpy()
        pieces = []
        for first in range(0, latents.shape[0], full):
            a, b = max(0, first - VAE_CONTEXT_FRAMES), min(latents.shape[0], first + full + VAE_CONTEXT_FRAMES)
            audio = self.vae.decode(latents[a:b].T[None].float()).sample[0].float().cpu().numpy()
            keep = min(full, latents.shape[0] - first)
            pieces.append(audio[:, (first - a) * hop : (first - a + keep) * hop])
        return np.concatenate(pieces, axis=1)

    def _render_batch(self, batch, frames, steps, guidance, progress) -> list[np.ndarray]:
        # 1. Conditioning: text tokens + duration token, pooled text; unconditional half first.
        texts = [r.text if r.text is not None else self.encode_text(r.event.caption) for r in batch]
        seconds = [r.n_samples / self.sample_rate for r in batch]
        context, mask, pooled = self._conditioning(texts, seconds, guidance > 1.0)
        # 2. Starting noise: one generator per clip, drawn on the CPU so it is the same on every device.
        latents = torch.stack([self._noise(r.seed, frames) for r in batch]).to(self.device)
        # 3. Flow-matching Euler over the window.
        latents = self._denoise(latents, context, mask, pooled, steps, guidance, progress)
        # 4. VAE decode and cut each clip to its exact length.
        audio = self.vae.decode(latents.transpose(1, 2).float()).sample.float().cpu().numpy()
        return [_fit(audio[i], r.n_samples) for i, r in enumerate(batch)]

    def _noise(self, seed: int, frames: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn((frames, self.config.in_channels), generator=generator, dtype=torch.float32)

    def _denoise(self, latents, context, mask, pooled, steps, guidance, progress, known=None) -> torch.Tensor:
        """Flow-matching Euler from noise ``latents`` [B, frames, C]. ``known`` [B, k, C]: the first k frames
        are pinned, re-noised to each step's noise level with the starting noise (inpainting)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 1.0 / steps, steps)), device=self.device)
        use_cfg = guidance > 1.0
        frames = latents.shape[1]
        img_ids = torch.arange(frames, device=self.device, dtype=torch.float32)[:, None].repeat(1, 3)
        txt_ids = torch.zeros(context.shape[1], 3, device=self.device)
        attention_mask = torch.cat([mask, mask.new_ones(mask.shape[0], frames)], dim=1)[:, None, None, :]
        noise, pinned = latents.clone(), 0 if known is None else known.shape[1]
        for i, t in enumerate(scheduler.timesteps):
            if pinned:
                sigma = scheduler.sigmas[i]
                latents[:, :pinned] = (1 - sigma) * known + sigma * noise[:, :pinned]
            model_input = torch.cat([latents, latents]) if use_cfg else latents
            velocity = self.dit.transformer(
                hidden_states=model_input.to(self.dtype),
                timestep=(t / 1000).expand(model_input.shape[0]).to(self.dtype),
                pooled_projections=pooled,
                encoder_hidden_states=context,
                txt_ids=txt_ids,
                img_ids=img_ids,
                joint_attention_kwargs={"attention_mask": attention_mask},
                return_dict=False,
            )[0].float()
            if use_cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance * (cond - uncond)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            progress(Progress("step", i + 1, steps))
        if pinned:
            latents[:, :pinned] = known
        return latents

    @torch.inference_mode()
    def encode_text(self, text: str, *, pad_to: int | None = None) -> TextTokens:
        """T5 states of one text (cut to ``MAX_TEXT_TOKENS``) and their mean. ``pad_to``: exactly that many
        rows, the text's own tokens then T5's states of padding (attention-masked), as a fixed-size target."""
        if pad_to is None:
            tokens = self.tokenizer([text], max_length=MAX_TEXT_TOKENS, truncation=True, return_tensors="pt")
        else:
            tokens = self.tokenizer([text], max_length=pad_to, truncation=True, padding="max_length", return_tensors="pt")
        tokens = tokens.to(self.device)
        states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0][0].float()
        valid = tokens.attention_mask[0].bool()
        return TextTokens(states=states, pooled=states[valid].mean(dim=0))

    def _uncond_like(self, text: TextTokens) -> TextTokens:
        """As upstream: "" padded to the caption's own token count (the padding attends), pooled over "" alone."""
        length = text.states.shape[0]
        if length not in self._uncond_cache:
            ids = self.tokenizer([""], max_length=length, padding="max_length", return_tensors="pt").to(self.device)
            states = self.text_encoder(input_ids=ids.input_ids, attention_mask=ids.attention_mask)[0][0].float()
            valid = ids.attention_mask[0].bool()
            self._uncond_cache[length] = TextTokens(states=states, pooled=states[valid].mean(dim=0))
        return self._uncond_cache[length]

    def _conditioning(self, texts: list[TextTokens], seconds: list[float], use_cfg: bool):
        """Each clip's text tokens followed by its duration token, their mask and the pooled text vector;
        with guidance, the unconditional rows come first."""
        if use_cfg:
            texts, seconds = [self._uncond_like(t) for t in texts] + texts, seconds * 2
        context, mask, pooled = self._stack_texts(texts)
        duration = self.dit.duration_emebdder(torch.tensor(seconds, device=self.device))
        context = torch.cat([context, duration.to(context.dtype)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return context, mask, pooled

    def _stack_texts(self, texts: list[TextTokens]):
        """Pad to the longest with the padding masked, so a clip does not depend on its batch neighbours."""
        width = max(t.states.shape[0] for t in texts)
        states = torch.zeros(len(texts), width, texts[0].states.shape[1], device=self.device)
        mask = torch.zeros(len(texts), width, dtype=torch.bool, device=self.device)
        for row, text in enumerate(texts):
            states[row, : text.states.shape[0]] = text.states
            mask[row, : text.states.shape[0]] = True
        pooled = self.dit.fc(torch.stack([t.pooled for t in texts]).to(self.device, self.dtype))
        return states.to(self.dtype), mask, pooled


# --- helpers -----------------------------------------------------------------------------------------


def _check_render_args(steps: int, guidance: float, window: str, batch_size: int) -> None:
    if not 1 <= steps <= 1000:
        raise InputError(f"steps = {steps}: must be between 1 and 1000")
    if not (math.isfinite(guidance) and 0 <= guidance <= 50):
        raise InputError(f"guidance = {guidance}: must be between 0 and 50 (1 or less turns guidance off)")
    if window not in WINDOWS:
        raise InputError(f"window = {window!r}: must be one of {', '.join(WINDOWS)}")
    if batch_size < 1:
        raise InputError(f"batch_size = {batch_size}: must be >= 1")


def _fit(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Cut (or, for a window shorter than the clip, zero-pad) to exactly ``n_samples``."""
    if wave.shape[-1] < n_samples:
        wave = np.pad(wave, ((0, 0), (0, n_samples - wave.shape[-1])))
    return np.ascontiguousarray(wave[:, :n_samples], dtype=np.float32)


def read_tangoflux_config(path: Path) -> TangoFluxConfig:
    """TangoFlux's config.json (the DiT's sizes), unknown fields ignored; a bad file is a ModelLoadError."""
    try:
        return TangoFluxConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot read decoder config {path}: {err}") from None


def load_text_encoder(folder: Path, config: TangoFluxConfig, device, dtype):
    """The T5 encoder and its tokenizer: ``folder/text_encoder`` if present, else ``config.text_encoder_name``."""
    from transformers import AutoTokenizer, T5EncoderModel

    local = folder / "text_encoder"
    path = local if local.is_dir() else resolve(config.text_encoder_name, TEXT_ENCODER_KIND)
    # T5 overflows in fp16; bf16 and fp32 are safe.
    t5_dtype = torch.float32 if dtype == torch.float16 else dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = T5EncoderModel.from_pretrained(path, dtype=t5_dtype)
    except Exception as err:  # noqa: BLE001 - any loader failure is one clear message
        raise ModelLoadError(f"cannot load the T5 text encoder from {path}: {err}") from None
    return encoder.to(device).eval(), tokenizer


def _load_dit_weights(dit: TangoFluxDiT, text_encoder: nn.Module, path: Path) -> None:
    """Strict load: every DiT key must be there and nothing unknown; ``text_encoder.*`` keys load into T5."""
    from safetensors.torch import load_file

    state = _read_safetensors(path, load_file)
    t5_state = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    dit_state = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
    strict_load(dit, dit_state, path)
    if t5_state:
        # T5 ties ``shared`` and ``encoder.embed_tokens``: a file may hold either name of that one weight.
        tied = {"shared.weight", "encoder.embed_tokens.weight"}
        missing, unexpected = text_encoder.load_state_dict(t5_state, strict=False)
        missing = [k for k in missing if not (k in tied and tied & set(t5_state))]
        if missing or unexpected:
            raise ModelLoadError(
                f"{path}: text_encoder keys do not match the T5 encoder: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )


def load_vae(path: Path):
    """The Oobleck VAE from a safetensors file, its sizes read off the weights, loaded strictly (fp32, CPU)."""
    from diffusers import AutoencoderOobleck
    from safetensors.torch import load_file

    state = _read_safetensors(path, load_file)
    vae = AutoencoderOobleck(**_oobleck_config(state, path))
    strict_load(vae, state, path)
    return vae


def _oobleck_config(state: dict[str, torch.Tensor], path: Path) -> dict:
    """Read the Oobleck VAE's sizes off its weights (the TangoFlux layout ships no VAE config)."""
    try:
        first = state["encoder.conv1.weight_v"]  # [hidden, audio_channels, 7]
        hidden = first.shape[0]
        blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.block.")})
        outs = [state[f"encoder.block.{i}.conv1.weight_v"] for i in blocks]  # [out, in, 2 * stride]
        multiples = [w.shape[0] // hidden for w in outs]
        decoder_in = state["decoder.conv1.weight_v"]  # [decoder_channels * multiples[-1], latent, 7]
    except KeyError as err:
        raise ModelLoadError(f"{path}: not an Oobleck VAE, missing key {err}") from None
    return dict(
        encoder_hidden_size=hidden,
        downsampling_ratios=[w.shape[2] // 2 for w in outs],
        channel_multiples=multiples,
        decoder_channels=decoder_in.shape[0] // multiples[-1],
        decoder_input_channels=decoder_in.shape[1],
        audio_channels=first.shape[1],
        sampling_rate=44100,
    )


def _read_safetensors(path: Path, load_file) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {path}: {err}") from None


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise ModelLoadError(f"{path} does not match the model: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)
