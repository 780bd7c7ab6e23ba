"""The TangoFlux decoder: captions -> clips, with the TangoFlux architecture built from diffusers parts.

Data flow of one render: ``requests -> schedule.plan_windows -> batches of same-size windows -> T5 text encoder
(each caption once) -> FluxTransformer2DModel (flow matching, CFG, all batches in lockstep, continuing heads
pinned) -> AutoencoderOobleck (only the frames that hold audio)``.

Unlike upstream, which always denoises a 30 s window, the window follows the clip length (``window="auto"``);
``window="full"`` keeps upstream's full window. Each window draws its starting noise from its own
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
from ...devices import free_memory_bytes, runs_natively
from ...errors import InputError, ModelLoadError
from ...settings import RenderOptions
from ...story import Clip, Progress, ProgressFn, no_progress
from ..base import ClipRequest, DecoderCaps, TextTokens, first_step, fit_length
from .config import TangoFluxConfig, caps_for, read_tangoflux_config
from .modules import TangoFluxDiT
from .schedule import ClipGrid, Window, plan_windows, window_frames_for
from .weights import load_dit_weights, load_text_encoder, load_vae

VAE_CONTEXT_FRAMES = 32  # latent frames decoded on each side of a chunk when a clip is longer than a window
VAE_EDGE_FRAMES = 4  # latent frames past a clip's last one still decoded, so the VAE's right edge falls past
# its audio (the frames beyond are never decoded: a window rounded up to its bucket decodes no more)
DIT_ACTIVATION_WIDTHS = 24  # live activations of the DiT per token and row, in model widths (~11 measured
# on CPU at real size; twice that for headroom)
VAE_BYTES_PER_SAMPLE = 3500  # peak activations of the fp32 Oobleck decoder per output sample (measured)
MEMORY_SHARE = 0.7  # share of the free memory ``max_batch_size`` plans to use
MAX_TEXT_TOKENS = 64  # captions are cut to this many T5 tokens (TangoFlux's max_text_seq_len)


class TangoFluxDecoder:
    """A loaded TangoFlux-architecture decoder; ``render`` turns clip requests into clips."""

    def __init__(
        self, *, ref, config, dit, vae, text_encoder, tokenizer, device, dtype, name="TangoFlux", vae_dtype=None
    ) -> None:
        self.ref: str = ref  # the reference it was loaded from (saved in plans)
        self.config: TangoFluxConfig = config
        self.caps: DecoderCaps = caps_for(config, name)
        self.dit: TangoFluxDiT = dit
        self.vae = vae  # diffusers AutoencoderOobleck, in ``vae_dtype``
        self.text_encoder = text_encoder  # transformers T5EncoderModel
        self.tokenizer = tokenizer
        self.device: torch.device = device
        self.dtype: torch.dtype = dtype  # dtype of the DiT
        self.vae_dtype: torch.dtype = vae_dtype or torch.float32  # dtype of the VAE (see ``vae_dtype_for``)
        self.compile: bool = False  # torch.compile the DiT's transformer on first use (minutes once, faster steps)
        self._compiled = None  # the compiled transformer, once made
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
            vae_dtype = vae_dtype_for(device, dtype)
            dit.to(device=device, dtype=dtype).eval()
            vae.to(device=device, dtype=vae_dtype).eval()
        return cls(
            ref=ref, config=config, dit=dit, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            device=device, dtype=dtype, vae_dtype=vae_dtype,
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
        return window_frames_for(math.ceil(n_samples / self.hop_samples), self.config.audio_seq_len, window)

    def batch_probe(self, n_samples: int) -> tuple[int, torch.nn.Module]:
        """What ``cpu_batching`` times batching with: the rows the DiT's products take for one clip of
        ``n_samples`` (its window and the text tokens; twice that with guidance, as the default is) and the DiT."""
        rows = self.window_frames(min(n_samples, self.max_clip_samples)) + MAX_TEXT_TOKENS + 1
        return rows * (2 if self.caps.default_guidance > 1.0 else 1), self.dit

    def max_batch_size(self) -> int:
        """Full windows that fit one denoising batch in the memory free now (two rows each with guidance),
        after room for the VAE decoding one full window (``--batch-size auto``)."""
        element = torch.finfo(self.dtype).bits // 8
        tokens = self.config.audio_seq_len + MAX_TEXT_TOKENS + 1
        inner = self.config.num_attention_heads * self.config.attention_head_dim
        per_window = 2 * tokens * DIT_ACTIVATION_WIDTHS * inner * element
        vae = self.max_clip_samples * VAE_BYTES_PER_SAMPLE * torch.finfo(self.vae_dtype).bits // 32
        budget = MEMORY_SHARE * free_memory_bytes(self.device) - vae
        return max(1, int(budget // per_window))

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

        Every clip is one latent window (several overlapping ones past the model's window); windows of one
        size share a batch of at most ``batch_size``, continuation or not. All batches take their denoising
        steps in lockstep: with continuation, the head of a clip that ``continues`` another is pinned to
        that clip's frames at every step (see ``schedule.py``), so the clips still batch and both sides of
        the crossfade end as the same latents.

        A clip with a ``LatentGuide`` batches with the others too: its grid starts at the guide's origin, the
        guide is laid on each of its windows (from the window's first frame on), its pinned frames are held
        to the known latents at every step's noise level and end exactly as them; below strength 1 its rows
        wait, unchanged, until the first step whose sigma is at most the strength. A guided head built with
        ``geometry.continuation_head`` from the previous clip's ``Clip.latents`` ends as the same frames as
        the ``continues`` head (the frames in between may differ: lockstep copying there, re-noising here).
        """
        steps, guidance = options.steps, options.guidance
        if steps is None or guidance is None:
            raise ValueError("render needs resolved options: call options.resolved(...) first")
        if batch_size < 1:
            raise InputError(f"batch_size = {batch_size}: must be >= 1")
        for r in requests:
            if r.guide is not None and r.guide.latents.shape[1] != self.config.in_channels:
                raise ValueError(f"guide latents have {r.guide.latents.shape[1]} channels, the DiT {self.config.in_channels}")
        # 1. The windows, the heads pinned to the clips they continue, and batches of same-size windows.
        windows, grids = plan_windows(
            requests, hop=self.hop_samples, full=self.config.audio_seq_len, sample_rate=self.sample_rate,
            window=options.window, continuation=options.continuation,
        )  # fmt: skip
        batches = _batches(windows, batch_size)
        # 2. Conditioning of every batch; each caption without given text tokens is encoded once.
        texts = self._texts(requests)
        use_cfg = guidance > 1.0
        conditioning = [
            self._conditioning([texts[windows[w].clip] for w in batch], [windows[w].seconds for w in batch], use_cfg)
            for batch in batches
        ]
        # 3. Flow-matching Euler over every batch, in lockstep.
        progress(Progress("render", 0, len(requests), f"{len(windows)} windows in {len(batches)} batches"))
        guides = [requests[w.clip].guide for w in windows]
        latents = self._denoise(windows, batches, conditioning, steps, guidance, progress, guides)
        # 4. VAE decode, one clip at a time (its activations are the render's largest: ~7 MB a frame in
        # fp32), only the frames that hold audio, and cut each clip to its exact length.
        place = {w: (b, row) for b, batch in enumerate(batches) for row, w in enumerate(batch)}
        clips: dict[int, Clip] = {}
        for i, grid in sorted(grids.items()):
            request = requests[i]
            progress(Progress("render", len(clips), len(requests), f"decoding event {request.event.index + 1}"))
            final = np.ascontiguousarray(self._clip_latents(grid, windows, place, latents).float().cpu().numpy())
            wave = self.decode_latents(final, grid.shift, request.n_samples)
            clips[i] = Clip(event=request.event, wave=wave, sample_rate=self.sample_rate, latents=final,
                            origin_sample=grid.origin_sample)  # fmt: skip
        progress(Progress("render", len(clips), len(requests), "done"))
        return [clips[i] for i in range(len(requests))]

    def _texts(self, requests: Sequence[ClipRequest]) -> list[TextTokens]:
        """Each request's text tokens: its own, or its caption's encoding (each distinct caption once)."""
        encoded: dict[str, TextTokens] = {}
        for r in requests:
            if r.text is None and r.event.caption not in encoded:
                encoded[r.event.caption] = self.encode_text(r.event.caption)
        return [r.text if r.text is not None else encoded[r.event.caption] for r in requests]

    def _noise(self, seed: int, frames: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn((frames, self.config.in_channels), generator=generator, dtype=torch.float32)

    def _denoise(self, windows, batches, conditioning, steps, guidance, progress, guides=None) -> list[torch.Tensor]:
        """Flow-matching Euler from each window's own noise, every batch one step at a time. Before each
        step, and after the last, every pinned head is overwritten with its source window's current frames
        (both at that step's noise level); guided frames (``guides``: each window's ``LatentGuide`` or None)
        are set first, to their known latents at that noise level (exactly them after the last step).
        No host sync inside the loop. Returns [B, frames, C] per batch."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 1.0 / steps, steps)), device=self.device)
        sigmas, timesteps = scheduler.sigmas.to(self.device, torch.float32), scheduler.timesteps
        # Starting noise: one generator per window, drawn on the CPU so it is the same on every device.
        latents = [torch.stack([self._noise(windows[w].seed, windows[w].frames) for w in b]).to(self.device)
                   for b in batches]  # fmt: skip
        place = {w: (b, row) for b, batch in enumerate(batches) for row, w in enumerate(batch)}
        pins = [
            (*place[w], *place[window.source], window.source_offset, window.pinned)
            for w, window in enumerate(windows)
            if window.source is not None and window.pinned > 0
        ]  # in window order: a source's own head is in place before it is copied on
        guided = self._guided(windows, batches, guides or [None] * len(windows), latents, sigmas, steps)
        transformer = self._transformer()
        for i in range(steps):
            for b, held in guided.items():
                held.pin(latents, b, i, sigmas[i])
            _pin(latents, pins)
            for b, cond in enumerate(conditioning):
                active = guided[b].active(i) if b in guided else None
                if active is not None and not active.any():
                    continue  # every row waits for its first step (variations)
                velocity = self._velocity(transformer, latents[b], cond, timesteps[i], guidance)
                new = latents[b] + (sigmas[i + 1] - sigmas[i]) * velocity
                latents[b] = new if active is None or active.all() else torch.where(
                    torch.from_numpy(active).to(self.device)[:, None, None], new, latents[b]
                )  # fmt: skip
            progress(Progress("step", i + 1, steps))
        for b, held in guided.items():
            held.finish(latents, b)
        _pin(latents, pins)
        return latents

    def _guided(self, windows, batches, guides, latents, sigmas, steps) -> dict[int, _Held]:
        """Per batch holding a guided window: its known latents, pinned frames, starting noise and first
        steps; rows of a variation start at their first step's mix of known latents and noise (in place)."""
        held: dict[int, _Held] = {}
        for b, batch in enumerate(batches):
            if all(guides[w] is None for w in batch):
                continue
            frames = windows[batch[0]].frames
            known = np.zeros((len(batch), frames, self.config.in_channels), dtype=np.float32)
            pinned = np.zeros((len(batch), frames), dtype=bool)
            covered = np.zeros((len(batch), frames), dtype=bool)
            first = np.zeros(len(batch), dtype=np.int64)
            varied = np.zeros(len(batch), dtype=bool)
            for row, w in enumerate(batch):
                guide = guides[w]
                if guide is None:
                    continue
                known[row], pinned[row] = guide.window(windows[w].start, frames)
                covered[row] = guide.covered(windows[w].start, frames)
                first[row] = first_step([float(x) for x in sigmas[:steps]], guide.strength, steps)
                varied[row] = guide.strength < 1.0
            item = _Held(
                known=torch.from_numpy(known).to(self.device), pinned=torch.from_numpy(pinned).to(self.device)[..., None],
                noise=latents[b].clone(), first=first,
            )  # fmt: skip
            for row in np.flatnonzero(varied):
                sigma = sigmas[first[row]]
                mix = (1 - sigma) * item.known[row] + sigma * item.noise[row]
                cover = torch.from_numpy(covered[row]).to(self.device)[:, None]
                latents[b][row] = torch.where(cover, mix, item.noise[row])
            held[b] = item
        return held

    def _velocity(self, transformer, latents, cond: _Conditioning, t, guidance: float) -> torch.Tensor:
        """The DiT's velocity for [B, frames, C], guided: both halves in one batch, unconditional first."""
        use_cfg = guidance > 1.0
        model_input = torch.cat([latents, latents]) if use_cfg else latents
        frames = latents.shape[1]
        velocity = transformer(
            hidden_states=model_input.to(self.dtype),
            timestep=(t / 1000).expand(model_input.shape[0]).to(self.dtype),
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.context,
            txt_ids=cond.txt_ids,
            img_ids=torch.arange(frames, device=self.device, dtype=torch.float32)[:, None].repeat(1, 3),
            joint_attention_kwargs=None if cond.mask is None else {"attention_mask": cond.attention_mask(frames)},
            return_dict=False,
        )[0].float()
        if use_cfg:
            uncond, guided = velocity.chunk(2)
            velocity = uncond + guidance * (guided - uncond)
        return velocity

    def _transformer(self):
        """The DiT's transformer, compiled on first use when ``self.compile`` is set."""
        if not self.compile:
            return self.dit.transformer
        if self._compiled is None:
            self._compiled = torch.compile(self.dit.transformer)
        return self._compiled

    @staticmethod
    def _clip_latents(grid: ClipGrid, windows, place, latents) -> torch.Tensor:
        """A clip's final latents [frames, C]: its windows laid end to end (a later one wins where they
        overlap), up to the last frame that holds its audio plus ``VAE_EDGE_FRAMES``."""
        clip = None
        for w in grid.windows:
            b, row = place[w]
            new = latents[b][row]
            clip = new if clip is None else torch.cat([clip[: windows[w].start], new])
        return clip[: grid.total + VAE_EDGE_FRAMES]

    @torch.inference_mode()
    def decode_latents(self, latents: np.ndarray, shift: int, n_samples: int) -> np.ndarray:
        """[C, n_samples] float32: the wave ``render`` returns for a clip whose final latents [frames, C] are
        ``latents`` (its ``Clip.latents``) and whose audio starts ``shift`` samples after frame 0, bit for bit
        (``render`` decodes through this very function)."""
        tensor = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)).to(self.device)
        return fit_length(self._decode_frames(tensor)[:, shift:], n_samples)

    @torch.inference_mode()
    def encode_audio(self, wave: np.ndarray) -> np.ndarray:
        """[frames, C] float32: the Oobleck VAE's encoding of ``wave`` [channels, T] (at the decoder's rate, T a
        multiple of ``hop_samples``), the posterior's mean (no sampling); frame f holds samples
        [f * hop, (f + 1) * hop). One pass: meant for an input's tail, not for minutes of audio."""
        wave = np.asarray(wave)
        _check_wave(wave, self.channels, self.hop_samples)
        audio = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None].to(self.device, self.vae_dtype)
        latents = self.vae.encode(audio).latent_dist.mode()[0].float()  # [C, frames]
        if latents.shape[-1] != wave.shape[1] // self.hop_samples:
            raise ModelLoadError(f"the VAE encoded {wave.shape[1]} samples to {latents.shape[-1]} frames, "
                                 f"not {wave.shape[1] // self.hop_samples}")  # fmt: skip
        return np.ascontiguousarray(latents.T.cpu().numpy())

    def _decode_frames(self, latents: torch.Tensor) -> np.ndarray:
        """VAE-decode [frames, channels]; past one window, in window-sized chunks with context on each side."""
        full, hop = self.config.audio_seq_len, self.hop_samples
        if latents.shape[0] <= full:
            return self.vae.decode(latents.T[None].to(self.vae_dtype)).sample[0].float().cpu().numpy()
        pieces = []
        for first in range(0, latents.shape[0], full):
            a, b = max(0, first - VAE_CONTEXT_FRAMES), min(latents.shape[0], first + full + VAE_CONTEXT_FRAMES)
            audio = self.vae.decode(latents[a:b].T[None].to(self.vae_dtype)).sample[0].float().cpu().numpy()
            keep = min(full, latents.shape[0] - first)
            pieces.append(audio[:, (first - a) * hop : (first - a + keep) * hop])
        return np.concatenate(pieces, axis=1)

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

    def _conditioning(self, texts: list[TextTokens], seconds: list[float], use_cfg: bool) -> _Conditioning:
        """Each clip's text tokens followed by its duration token, their mask and the pooled text vector;
        with guidance, the unconditional rows come first."""
        if use_cfg:
            texts, seconds = [self._uncond_like(t) for t in texts] + texts, seconds * 2
        context, mask, pooled = self._stack_texts(texts)
        duration = self.dit.duration_emebdder(torch.tensor(seconds, device=self.device))
        context = torch.cat([context, duration.to(context.dtype)], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        txt_ids = torch.zeros(context.shape[1], 3, device=self.device)
        return _Conditioning(context=context, mask=mask, pooled=pooled, txt_ids=txt_ids)

    def _stack_texts(self, texts: list[TextTokens]):
        """Pad to the longest with the padding masked, so a clip does not depend on its batch neighbours;
        no mask at all when every row has the same length (known here, so no device sync)."""
        lengths = [t.states.shape[0] for t in texts]
        width = max(lengths)
        states = torch.zeros(len(texts), width, texts[0].states.shape[1], device=self.device)
        mask = torch.zeros(len(texts), width, dtype=torch.bool, device=self.device)
        for row, text in enumerate(texts):
            states[row, : text.states.shape[0]] = text.states
            mask[row, : text.states.shape[0]] = True
        pooled = self.dit.fc(torch.stack([t.pooled for t in texts]).to(self.device, self.dtype))
        return states.to(self.dtype), (mask if min(lengths) < width else None), pooled


@dataclass(frozen=True)
class _Conditioning:
    """What the DiT gets for one batch besides the latents (unconditional rows first with guidance)."""

    context: torch.Tensor  # [rows, tokens, D] text tokens then the duration token
    mask: torch.Tensor | None  # [rows, tokens] which context tokens attend; None: all of them
    pooled: torch.Tensor  # [rows, D] projected pooled text
    txt_ids: torch.Tensor  # [tokens, 3] zero positions of the context tokens

    def attention_mask(self, frames: int) -> torch.Tensor:
        """[rows, 1, 1, tokens + frames]: the context's mask, every latent frame attending."""
        return torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], frames)], dim=1)[:, None, None, :]


def vae_dtype_for(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype: the DiT's where the device computes it natively (bf16/fp16 on CUDA, bf16 on a CPU
    with native bf16: about twice as fast), else fp32 (emulated bf16 is slower than fp32)."""
    return dtype if runs_natively(dtype, device) else torch.float32


def _batches(windows: list[Window], batch_size: int) -> list[list[int]]:
    """Window indices grouped by size, in timeline order, ``batch_size`` at a time."""
    by_frames: dict[int, list[int]] = defaultdict(list)
    for w, window in enumerate(windows):
        by_frames[window.frames].append(w)
    return [group[k : k + batch_size] for _, group in sorted(by_frames.items()) for k in range(0, len(group), batch_size)]


@dataclass
class _Held:
    """The guided rows of one batch: what they are held to, and from which step on they move."""

    known: torch.Tensor  # [B, frames, C] the guides' latents (zeros where a row has none)
    pinned: torch.Tensor  # [B, frames, 1] bool: frames held to ``known``
    noise: torch.Tensor  # [B, frames, C] each row's starting noise
    first: np.ndarray  # [B] the first step each row takes (0 for unguided rows)

    def active(self, step: int) -> np.ndarray:
        return self.first <= step

    def pin(self, latents: list[torch.Tensor], b: int, step: int, sigma: torch.Tensor) -> None:
        """Hold the pinned frames of the rows that move at ``step`` to the known latents at ``sigma``."""
        active = self.active(step)
        mask = self.pinned if active.all() else self.pinned & torch.from_numpy(active).to(self.pinned.device)[:, None, None]
        latents[b] = torch.where(mask, (1 - sigma) * self.known + sigma * self.noise, latents[b])

    def finish(self, latents: list[torch.Tensor], b: int) -> None:
        """After the last step the pinned frames are exactly the known latents."""
        latents[b] = torch.where(self.pinned, self.known, latents[b])


def _check_wave(wave: np.ndarray, channels: int, hop: int) -> None:
    if wave.ndim != 2 or wave.shape[0] != channels:
        raise ValueError(f"wave must be [{channels}, samples], got {wave.shape}")
    if wave.shape[1] == 0 or wave.shape[1] % hop:
        raise ValueError(f"wave of {wave.shape[1]} samples: must be a positive multiple of {hop} (one latent frame)")


def _pin(latents: list[torch.Tensor], pins) -> None:
    """Copy each pinned head from its source window: ``(batch, row, source batch, source row, offset, n)``."""
    for b, row, src_b, src_row, offset, n in pins:
        latents[b][row, :n] = latents[src_b][src_row, offset : offset + n]
