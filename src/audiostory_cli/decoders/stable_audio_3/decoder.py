"""The Stable Audio 3 decoder: clip requests -> clips, with diffusers' SA3 parts and our own sampling loop.

Data flow of one batch: ``T5Gemma -> StableAudio3DurationEmbedder -> StableAudio3DiTModel (rectified flow,
ping-pong or Euler) -> SAME VAE (AutoencoderSAME or our AutoencoderSameS)``.

The loop is ours rather than ``StableAudio3Pipeline.__call__`` for what a story needs: one ``torch.Generator``
per clip for its starting noise *and* for the ping-pong sampler's re-noise (the pipeline draws one tensor for
the whole batch, so a clip would change with its neighbours); the sigma schedule is the pipeline's
(``logsnr_sigma_schedule``, log-SNR -6.2 .. 2.0); the DiT takes the time as the sigma itself, in [0, 1].

The latent is sized to the clip (~10.77 frames/s) plus ``TAIL_FRAMES`` whose audio is cut, so the clip's last
frames are decoded with frames after them in view, as the clip that continues it decodes them (SAME-S models
round up to whole attention chunks), so a
clip up to the model's window (120 s Small, 380 s Medium) is one pass. Clips of the same length share a
batch; the prompt is padded to the encoder's token count with SA3's learned padding vector (which the DiT
attends to, as upstream), so a clip is the same alone or in a batch. Longer clips are overlapping windows,
each continuing the last; the VAE decodes long latents in chunks with context wide enough (16 frames) to
cover SAME's receptive field, so chunk seams are float rounding.

Continuation is **latent pinning** (``caps.continuation == "latent"``): the head of a continuing clip takes
the previous clip's final latents over the overlap, re-noised to each step's sigma with the clip's own
starting noise and pinned, and the DiT also gets SA3's inpainting input for those frames (mask 1, masked
latents), the conditioning it was trained to fill around. We chose pinning over inpainting alone (reference
latents + mask, the DiT free to redraw the head) by measurement (tiny Medium-architecture checkpoint, 8
steps, a 1 s overlap; relative error between the continuing clip's head and the previous clip's tail):
pinning 0.0 over the first 0.8 s and 0.21 over the whole second (its last 0.1 s is decoded with the next
frames in view, which the earlier clip never had), inpainting alone 1.2, no better than two independent
clips (1.27). Inpainting's fidelity is whatever the weights learnt; pinning holds by construction, for any
weights, at the same cost. PIN_HEAD = False switches to inpainting alone, for measuring with real weights.
Stability's own ``generate`` passes an all-zero inpainting input when nothing is inpainted; so do we. With
that input left out, a clip is what ``StableAudio3Pipeline`` renders from the same generator, to float
rounding (tested).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from ...errors import InputError
from ...settings import RenderOptions
from ...story import Clip, Progress, ProgressFn, clip_seed, no_progress
from ..base import ClipRequest, DecoderCaps, LatentGuide, TextTokens, first_step, fit_length
from ..geometry import LONG_OVERLAP_S, continuation_head
from .convert import SA3Setup

LOGSNR_RANGE = (-6.2, 2.0)  # log-SNR of the first and last step (StableAudio3Pipeline's defaults)
DECODE_CHUNK_FRAMES = 128  # latents longer than this are VAE-decoded in chunks of this many frames...
DECODE_CONTEXT_FRAMES = 16  # ...with this many frames of context each side (SAME-L sees 12; even for SAME-S)
TAIL_FRAMES = 8  # every clip's latent runs this many frames past its audio, so its last frames are decoded with
# frames after them in view, as the clip that continues it decodes them (without, the crossfade's end differs)
PIN_HEAD = True  # continuation by latent pinning (see the module docstring); False: SA3 inpainting alone


class StableAudio3Decoder:
    """A loaded Stable Audio 3 decoder (Decoder protocol)."""

    def __init__(
        self, *, ref, caps, setup, transformer, vae, duration_embedder, text_encoder, tokenizer, device, dtype
    ) -> None:
        self.ref: str = ref  # the reference it was loaded from (saved in plans)
        self.caps: DecoderCaps = caps  # what it is and can do
        self.setup: SA3Setup = setup
        self.transformer = transformer  # StableAudio3DiTModel, in ``dtype``
        self.vae = vae  # AutoencoderSAME / AutoencoderSameS, fp32
        self.duration_embedder = duration_embedder  # StableAudio3DurationEmbedder, fp32
        self.text_encoder = text_encoder  # transformers T5GemmaEncoderModel
        self.tokenizer = tokenizer
        self.device: torch.device = device
        self.dtype: torch.dtype = dtype
        self._empty: TextTokens | None = None  # the encoding of "" (the unconditional prompt for CFG)

    @property
    def hop_samples(self) -> int:
        """Audio samples per latent frame (4096 for SAME)."""
        return int(self.vae.downsampling_ratio)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.io_channels)

    @property
    def max_clip_samples(self) -> int:
        return self.setup.max_frames * self.hop_samples

    def frames_for(self, n_samples: int) -> int:
        """Latent frames one pass denoises for ``n_samples`` of audio: those, ``TAIL_FRAMES`` more (whose audio is
        cut), rounded up to whole SAME-S attention chunks; within the model's window."""
        needed = math.ceil(n_samples / self.hop_samples)
        return min(_round_up(needed + TAIL_FRAMES, self.setup.frame_multiple), max(needed, self.setup.max_frames))

    def batch_probe(self, n_samples: int) -> tuple[int, torch.nn.Module]:
        """What ``cpu_batching`` times batching with: the latent frames the DiT's products take for one clip of
        ``n_samples`` (twice that with guidance; SA3's default has none) and the DiT."""
        rows = self.frames_for(min(n_samples, self.max_clip_samples))
        return rows * (2 if self.caps.default_guidance > 1.0 else 1), self.transformer

    # --- text ----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_text(self, text: str, *, pad_to: int | None = None) -> TextTokens:
        """T5Gemma states of ``text`` (cut to the model's token count) and their mean. ``pad_to``: exactly that
        many rows, the padding rows holding SA3's learned padding vector (what the DiT sees there)."""
        limit = self.setup.text_max_tokens if pad_to is None else pad_to
        tokens = self.tokenizer([text], max_length=limit, truncation=True, return_tensors="pt").to(self.device)
        states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0][0].float()
        pooled = states.mean(dim=0)
        if pad_to is not None and states.shape[0] < pad_to:
            pad = self.transformer.prompt_padding_embedding.detach().float().to(states.device)
            states = torch.cat([states, pad.expand(pad_to - states.shape[0], -1)])
        return TextTokens(states=states, pooled=pooled)

    def _text_of(self, request: ClipRequest) -> TextTokens:
        return request.text if request.text is not None else self.encode_text(request.event.caption)

    def _context(self, texts: list[TextTokens], seconds: list[float], use_cfg: bool):
        """Cross-attention context [B, rows + 1, D] (text rows, padded, then the duration token), its mask
        (padding rows False: the DiT swaps in the learned vector) and the global duration embedding [B, D].
        With guidance, the unconditional ("") rows come first."""
        if use_cfg:
            if self._empty is None:
                self._empty = self.encode_text("")
            texts, seconds = [self._empty] * len(texts) + texts, seconds * 2
        rows = max(self.setup.text_max_tokens, *(t.states.shape[0] for t in texts))
        width = texts[0].states.shape[1]
        states = torch.zeros(len(texts), rows, width, device=self.device)
        mask = torch.zeros(len(texts), rows + 1, dtype=torch.bool, device=self.device)
        for row, text in enumerate(texts):
            states[row, : text.states.shape[0]] = text.states.to(self.device)
            mask[row, : text.states.shape[0]] = True
        mask[:, -1] = True
        duration = self.duration_embedder(torch.tensor(seconds, device=self.device, dtype=torch.float32))
        context = torch.cat([states, duration[:, None].float()], dim=1).to(self.dtype)
        return context, mask, duration.to(self.dtype)

    def _context_rows(self, request: ClipRequest) -> int:
        rows = request.text.states.shape[0] if request.text is not None else 0
        return max(self.setup.text_max_tokens, rows)

    # --- rendering -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def render(
        self, requests: Sequence[ClipRequest], options: RenderOptions, *, batch_size: int = 4,
        progress: ProgressFn = no_progress,
    ) -> list[Clip]:  # fmt: skip
        """Render every request with ``options``' (resolved) steps, guidance and continuation.

        Without continuation, clips of the same latent length share a batch of at most ``batch_size``.
        With it, clips render one after another in timeline order, each head continuing the clip it
        ``continues``. A clip longer than the window is rendered as chained windows, whatever the setting.

        A clip with a ``LatentGuide`` renders on its own (as a continuing clip does): its grid starts at the
        guide's origin, its pinned frames are held to the known latents (re-noised to each sigma with its
        own starting noise, and in SA3's inpainting input, as a continuing head) and end exactly as them;
        below strength 1 it starts at the first step whose sigma is at most the strength. The ``continues``
        head is this same guide, built by ``geometry.continuation_head`` from the previous clip's
        ``Clip.latents`` (cut to the first window's frames less one): a guide built that way renders the
        same clip, bit for bit.
        """
        steps, guidance = options.steps, options.guidance
        if steps is None or guidance is None:
            raise ValueError("render needs resolved options: call options.resolved(...) first")
        if batch_size < 1:
            raise InputError(f"batch_size = {batch_size}: must be >= 1")
        self.caps.check(options)
        for r in requests:
            if r.guide is not None and r.guide.latents.shape[1] != self.latent_channels:
                raise ValueError(f"guide latents have {r.guide.latents.shape[1]} channels, the DiT {self.latent_channels}")
        clips: dict[int, Clip] = {}
        chained = set(range(len(requests))) if options.continuation else {
            i for i, r in enumerate(requests) if r.n_samples > self.max_clip_samples or r.guide is not None
        }  # fmt: skip
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in sorted(set(range(len(requests))) - chained):
            groups[(self.frames_for(requests[i].n_samples), self._context_rows(requests[i]))].append(i)
        for (frames, _), group in sorted(groups.items()):
            for first in range(0, len(group), batch_size):
                chunk = group[first : first + batch_size]
                names = ", ".join(str(requests[i].event.index + 1) for i in chunk)
                progress(Progress("render", len(clips), len(requests), f"events {names}"))
                latents = self._render_batch([requests[i] for i in chunk], frames, steps, guidance, progress)
                for i, final in zip(chunk, latents, strict=True):
                    clips[i] = self._clip(requests[i], final, requests[i].start_sample)
        for i in sorted(chained, key=lambda i: (requests[i].start_sample, i)):
            request = requests[i]
            guide = request.guide
            if guide is None and options.continuation and request.continues in clips:
                guide = self._head_guide(request, requests[request.continues], clips[request.continues])
            progress(Progress("render", len(clips), len(requests), f"event {request.event.index + 1}"))
            final, origin = self._render_chained(request, guide, steps, guidance, progress)
            clips[i] = self._clip(request, final, origin)
        progress(Progress("render", len(clips), len(requests), "done"))
        return [clips[i] for i in range(len(requests))]

    def _clip(self, request: ClipRequest, latents: torch.Tensor, origin: int) -> Clip:
        """The clip decoded from its final latents [C, frames] laid at timeline sample ``origin``."""
        final = np.ascontiguousarray(latents.float().cpu().numpy().T)
        wave = self.decode_latents(final, request.start_sample - origin, request.n_samples)
        return Clip(event=request.event, wave=wave, sample_rate=self.setup.sample_rate, latents=final,
                    origin_sample=origin)  # fmt: skip

    def _render_batch(self, batch: list[ClipRequest], frames: int, steps, guidance, progress) -> torch.Tensor:
        # 1. Conditioning: padded text rows + duration token, and the global duration embedding.
        seconds = [r.n_samples / self.setup.sample_rate for r in batch]
        context, mask, duration = self._context([self._text_of(r) for r in batch], seconds, guidance > 1.0)
        # 2. One generator per clip: its starting noise, then (ping-pong) its re-noise at every step.
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in batch]
        # 3. Denoise the latents sized to the clips.
        latents = self._denoise(generators, frames, context, mask, duration, steps, guidance, progress)
        return latents  # [B, C, frames] (the caller VAE-decodes them)

    def _head_guide(self, request: ClipRequest, before: ClipRequest, previous: Clip) -> LatentGuide | None:
        """The continuing head as a guide: the previous clip's final frames from ``HEAD_CONTEXT_FRAMES``
        before this clip's start (aligned to SAME-S chunks) to the end of its audio, the last partly covered
        frame included, cut to the first window's frames less one; None when they do not overlap."""
        hop = self.hop_samples
        span = continuation_head(
            request.start_sample, previous.origin_sample, before.start_sample + before.n_samples,
            previous.latents.shape[0], hop=hop, frame_multiple=self.caps.frame_multiple,
            round_end_up=self.caps.round_head_end_up,
        )  # fmt: skip
        if span is None:
            return None
        first, end = span
        origin = previous.origin_sample + first * hop
        frames = min(self.setup.max_frames, self.frames_for(request.start_sample - origin + request.n_samples))
        known = previous.latents[first:end][: frames - 1]
        return LatentGuide(origin, known, np.ones(known.shape[0], dtype=bool))

    def _render_chained(self, request: ClipRequest, guide: LatentGuide | None, steps, guidance, progress):
        """One clip as one or more windows, the first held to ``guide``, each next one continuing the last (and
        held to the guide where it covers it). Returns the final latents [C, frames] and their origin."""
        hop, full = self.hop_samples, self.setup.max_frames
        origin = request.start_sample if guide is None else guide.origin_sample
        shift = request.start_sample - origin  # samples between latent frame 0 and the clip's start
        total = self.frames_for(shift + request.n_samples)
        overlap = _round_up(round(LONG_OVERLAP_S * self.setup.sample_rate / hop), self.setup.frame_multiple)
        text = self._text_of(request)
        latents, start, part = None, 0, 0
        while True:
            frames = min(full, total - start)
            seed = request.seed if part == 0 else clip_seed(request.seed, part)
            held = self._held(guide, start, frames, None if part == 0 else latents[:, start : start + overlap])
            content = shift + request.n_samples - start * hop  # audio samples still to come from here on
            seconds = min(content, frames * hop) / self.setup.sample_rate
            context, mask, duration = self._context([text], [seconds], guidance > 1.0)
            generator = [torch.Generator(device="cpu").manual_seed(seed)]
            new = self._denoise(generator, frames, context, mask, duration, steps, guidance, progress, held)[0]
            latents = new if latents is None else torch.cat([latents[:, :start], new], dim=1)
            if start + frames >= total:
                break
            start, part = start + frames - overlap, part + 1
        return latents, origin

    def _held(self, guide: LatentGuide | None, start: int, frames: int, overlap: torch.Tensor | None):
        """What one window of a chained clip is held to: ``(known [1, C, frames], pinned [frames] bool,
        covered [frames] bool, strength)`` from the guide laid on grid frames ``[start, start + frames)`` and
        the previous window's ``overlap`` [C, k] (pinned on its first k frames); None when nothing is."""
        if guide is None and overlap is None:
            return None
        known = torch.zeros(self.latent_channels, frames, device=self.device)
        pinned = torch.zeros(frames, dtype=torch.bool, device=self.device)
        covered = torch.zeros(frames, dtype=torch.bool, device=self.device)
        if guide is not None:
            values, held = guide.window(start, frames)
            known = torch.from_numpy(np.ascontiguousarray(values.T)).to(self.device)
            pinned = torch.from_numpy(held).to(self.device)
            covered = torch.from_numpy(guide.covered(start, frames)).to(self.device)
        if overlap is not None:
            known[:, : overlap.shape[-1]] = overlap
            pinned[: overlap.shape[-1]] = True
            covered[: overlap.shape[-1]] = True
        return known[None], pinned, covered, 1.0 if guide is None else guide.strength

    def _denoise(self, generators, frames, context, mask, duration, steps, guidance, progress, held=None):
        """Rectified-flow sampling of [B, C, frames] latents from each clip's own generator. ``held``: ``(known
        [B, C, frames], pinned [frames], covered [frames], strength)``: pinned frames are held to ``known``
        (re-noised to each sigma with the starting noise; exactly ``known`` at the end); below strength 1 the
        sampling starts at the first step whose sigma is at most it, from ``known`` (where covered) noised to
        that sigma."""
        from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import (
            logsnr_sigma_schedule,
        )

        sigmas = [*logsnr_sigma_schedule(steps, *LOGSNR_RANGE), 0.0]
        noise = torch.stack([self._randn(g, frames) for g in generators]).to(self.device)
        latents, known, pinned, start = noise.clone(), None, None, 0
        if held is not None:
            known, pinned, covered, strength = held
            start = first_step(sigmas, strength, steps)
            if strength < 1.0:
                mix = (1 - sigmas[start]) * known + sigmas[start] * noise
                latents = torch.where(covered, mix, noise)
            if not bool(pinned.any()):
                pinned = None
        local = self._inpaint_input(noise.shape, known, pinned)
        use_cfg = guidance > 1.0
        for i in range(start, steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            if pinned is not None and PIN_HEAD:
                latents = torch.where(pinned, (1 - sigma) * known + sigma * noise, latents)
            model_input = torch.cat([latents, latents]) if use_cfg else latents
            velocity = self.transformer(
                model_input.to(self.dtype),
                torch.full((model_input.shape[0],), sigma, device=self.device),
                encoder_hidden_states=context,
                global_hidden_states=duration,
                encoder_attention_mask=mask,
                local_add_cond=None if local is None else (torch.cat([local, local]) if use_cfg else local),
                return_dict=False,
            )[0].float()
            if use_cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance * (cond - uncond)
            if self.setup.stochastic:  # ping-pong: jump to the clean estimate, re-noise with fresh noise
                denoised = latents - sigma * velocity
                fresh = torch.stack([self._randn(g, frames) for g in generators]).to(self.device) if sigma_next else 0
                latents = (1 - sigma_next) * denoised + sigma_next * fresh
            else:
                latents = latents + (sigma_next - sigma) * velocity
            progress(Progress("step", i + 1, steps))
        if pinned is not None and PIN_HEAD:
            latents = torch.where(pinned, known, latents)
        return latents

    def _randn(self, generator: torch.Generator, frames: int) -> torch.Tensor:
        """Noise drawn on the CPU from the clip's generator, so it is the same on every device."""
        return torch.randn((self.latent_channels, frames), generator=generator, dtype=torch.float32)

    def _inpaint_input(self, shape, known, pinned) -> torch.Tensor | None:
        """SA3's inpainting input [B, 1 + C, frames]: mask (1 on the pinned frames), then the masked latents."""
        if not self.setup.inpaint_input:
            return None
        local = torch.zeros(shape[0], 1 + shape[1], shape[2], device=self.device)
        if pinned is not None:
            local[:, 0, pinned] = 1.0
            local[:, 1:, pinned] = known[..., pinned]
        return local.to(self.dtype)

    @torch.inference_mode()
    def decode_latents(self, latents: np.ndarray, shift: int, n_samples: int) -> np.ndarray:
        """[C, n_samples] float32: the wave ``render`` returns for a clip whose final latents [frames, C] are
        ``latents`` (its ``Clip.latents``) and whose audio starts ``shift`` samples after frame 0, bit for bit
        (``render`` decodes through this very function)."""
        tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(latents, dtype=np.float32).T)).to(self.device)
        return fit_length(self._decode(tensor)[:, shift:], n_samples)

    @torch.inference_mode()
    def encode_audio(self, wave: np.ndarray) -> np.ndarray:
        """[frames, C] float32: the SAME VAE's (deterministic) encoding of ``wave`` [channels, T] at the decoder's
        rate, T a multiple of ``hop_samples``; frame f holds samples [f * hop, (f + 1) * hop). One pass: meant
        for an input's tail, not for minutes of audio."""
        wave = np.asarray(wave)
        hop, channels = self.hop_samples, self.caps.channels
        if wave.ndim != 2 or wave.shape[0] != channels:
            raise ValueError(f"wave must be [{channels}, samples], got {wave.shape}")
        if wave.shape[1] == 0 or wave.shape[1] % hop:
            raise ValueError(f"wave of {wave.shape[1]} samples: must be a positive multiple of {hop} (one latent frame)")
        audio = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None].to(self.device)
        latents = self.vae.encode(audio).latents[0].float()  # [C, frames]
        if latents.shape[-1] != wave.shape[1] // hop:
            raise ValueError(f"the VAE encoded {wave.shape[1]} samples to {latents.shape[-1]} frames, not {wave.shape[1] // hop}")
        return np.ascontiguousarray(latents.T.cpu().numpy())

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """VAE-decode [C, frames] (fp32); long latents in chunks with context on each side."""
        hop, total = self.hop_samples, latents.shape[-1]
        latents = latents.float()
        if total <= DECODE_CHUNK_FRAMES + 2 * DECODE_CONTEXT_FRAMES:
            return self.vae.decode(latents[None]).sample[0].cpu().numpy()
        pieces = []
        for first in range(0, total, DECODE_CHUNK_FRAMES):
            a = max(0, first - DECODE_CONTEXT_FRAMES)
            b = min(total, first + DECODE_CHUNK_FRAMES + DECODE_CONTEXT_FRAMES)
            audio = self.vae.decode(latents[None, :, a:b]).sample[0].cpu().numpy()
            keep = min(DECODE_CHUNK_FRAMES, total - first)
            pieces.append(audio[:, (first - a) * hop : (first - a + keep) * hop])
        return np.concatenate(pieces, axis=1)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
