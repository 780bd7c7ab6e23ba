"""The TangoFlux decoder: captions -> clips, with the TangoFlux architecture built from diffusers parts.

Data flow of one batch: ``T5 text encoder -> FluxTransformer2DModel (flow matching, CFG) -> AutoencoderOobleck``.

Unlike upstream, which always denoises a 30 s window, the window follows the clip length (``window="auto"``);
``window="full"`` keeps upstream's full window. Each clip draws its starting noise from its own
``torch.Generator``; captions are attention-masked so a clip renders the same alone or in a batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...checkpoints import quiet_loading
from ...errors import InputError, ModelLoadError
from ...settings import RenderOptions
from ...story import Clip, Progress, ProgressFn, clip_seed, no_progress
from ..base import ClipRequest, DecoderCaps, TextTokens, fit_length
from .config import TangoFluxConfig, caps_for, read_tangoflux_config
from .modules import TangoFluxDiT
from .weights import load_dit_weights, load_text_encoder, load_vae

FRAME_BUCKET = 16  # auto windows are rounded up to a multiple of this many latent frames, so clips batch
LONG_OVERLAP_S = 3.0  # a clip longer than one window is rendered as windows overlapping this much
VAE_CONTEXT_FRAMES = 32  # latent frames decoded on each side of a chunk when a clip is longer than a window
HEAD_CONTEXT_FRAMES = 8  # a continuing clip also pins this many of the previous clip's frames before the
# overlap (and discards their audio), so the VAE's edge effects fall outside the crossfade
MAX_TEXT_TOKENS = 64  # captions are cut to this many T5 tokens (TangoFlux's max_text_seq_len)


@dataclass(frozen=True)
class _LatentTrack:
    """What a rendered clip leaves for the clip that continues it."""

    origin_sample: int  # timeline sample where latent frame 0 starts
    latents: torch.Tensor  # [frames, channels] final latents
    end_sample: int  # timeline sample where the clip's audio ends


class TangoFluxDecoder:
    """A loaded TangoFlux-architecture decoder; ``render`` turns clip requests into clips."""

    def __init__(self, *, ref, config, dit, vae, text_encoder, tokenizer, device, dtype, name="TangoFlux") -> None:
        self.ref: str = ref  # the reference it was loaded from (saved in plans)
        self.config: TangoFluxConfig = config
        self.caps: DecoderCaps = caps_for(config, name)
        self.dit: TangoFluxDiT = dit
        self.vae = vae  # diffusers AutoencoderOobleck, fp32
        self.text_encoder = text_encoder  # transformers T5EncoderModel
        self.tokenizer = tokenizer
        self.device: torch.device = device
        self.dtype: torch.dtype = dtype  # dtype of the DiT; the VAE stays fp32
        self._uncond_cache: dict[int, TextTokens] = {}  # unconditional text by token count

    @classmethod
    def from_folder(cls, ref: str, folder: Path, *, device: torch.device, dtype: torch.dtype) -> TangoFluxDecoder:
        """Load the TangoFlux layout in ``folder`` strictly (see ``decoders/tangoflux/__init__.py``)."""
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
            load_dit_weights(dit, text_encoder, folder / "tangoflux.safetensors")
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
        options: RenderOptions,
        *,
        batch_size: int = 4,
        progress: ProgressFn = no_progress,
    ) -> list[Clip]:
        """Render every request with ``options``' steps, guidance, window and continuation (resolved).

        Without continuation, clips of the same window size share a batch of at most ``batch_size``.
        With it, clips render one after another in timeline order, and the head of a clip that
        ``continues`` another is generated as the continuation of that clip's tail (inpainting: the known
        latent frames are re-noised to the current noise level and pinned at every step). A clip longer
        than one window is rendered as overlapping windows chained the same way, whatever the setting.
        """
        steps, guidance, window, continuation = options.steps, options.guidance, options.window, options.continuation
        if steps is None or guidance is None:
            raise ValueError("render needs resolved options: call options.resolved(...) first")
        if batch_size < 1:
            raise InputError(f"batch_size = {batch_size}: must be >= 1")
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
        wave = fit_length(self._decode_frames(latents)[:, shift:], request.n_samples)
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
        return [fit_length(audio[i], r.n_samples) for i, r in enumerate(batch)]

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
