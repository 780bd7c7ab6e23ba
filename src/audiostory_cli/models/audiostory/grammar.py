"""The AudioStory decoding grammar: which tokens may come next while the checkpoint's LLM writes a plan."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ... import story
from .protocol import TS_DONE, TS_PREFIX, GenerationLimits, ProtocolIds, Vocab



@dataclass
class Draft:
    """A clip being written."""

    caption: list[int] = field(default_factory=list)  # caption token ids (before and after the timestamp)
    timestamp: str = ""  # the timestamp text so far
    stamped: bool = False  # the timestamp has been closed
    semantic_at: int = -1  # index (in the generated tokens) of the first semantic query token


class Grammar:
    """Which tokens may come next. The model chooses freely where upstream lets it, the protocol's structure
    is enforced (upstream only nudges it), and the query runs are forced whole."""

    def __init__(self, ids: ProtocolIds, vocab: Vocab, limits: GenerationLimits, max_clips: int) -> None:
        self.ids, self.vocab, self.limits, self.max_clips = ids, vocab, limits, max_clips
        self.phase = "think"  # think -> open -> caption <-> timestamp -> open ... -> done
        self.count = 0  # tokens generated so far
        self.reasoning: list[int] = []
        self.clips: list[Draft] = []  # finished clips
        self.draft: Draft | None = None
        self.queue: list[int] = []  # forced tokens still to come
        self.gap = 0  # whitespace tokens written since the last clip (or the reasoning) closed
        self.clip_cost = limits.caption_tokens + limits.timestamp_chars + len(ids.clip_run()) + 4
        self.ended_by = ""  # why it ended: "eos" (the model's choice), "budget" or "max_clips"
        self._stop = ""  # the reason of a forced end-of-text
        self._eos = torch.zeros_like(vocab.text)
        self._eos[list(ids.eos)] = True

    def _only(self, *tokens: int) -> torch.Tensor:
        mask = torch.zeros_like(self.vocab.text)
        mask[list(tokens)] = True
        return mask

    def forced(self) -> int | None:
        """The next token when there is no choice."""
        if self.queue:
            return self.queue[0]
        if self.phase == "think" and len(self.reasoning) >= self.limits.reasoning_tokens:
            return self.ids.think_end
        if self.phase == "open" and len(self.clips) >= self.max_clips:
            self._stop = "max_clips"
            return self.ids.eos[0]
        if self.phase == "open" and self.limits.max_new_tokens - self.count < self.clip_cost:
            self._stop = "budget"  # a clip that cannot close is not opened
            return self.ids.eos[0]
        if self.phase == "caption" and not self._caption_room():
            return self.ids.sem if self.draft.stamped else self.ids.ts
        if self.phase == "timestamp" and not self._timestamp_options():
            return self.ids.ts_end
        return None

    def allowed(self) -> torch.Tensor:
        """[V] bool: the tokens the model may choose among now."""
        ids, vocab = self.ids, self.vocab
        if self.phase == "think":
            return vocab.text | self._eos | self._only(ids.think_end)
        if self.phase == "open":
            gap = vocab.blank if self.gap < self.limits.gap_tokens else torch.zeros_like(vocab.blank)
            return self._eos | self._only(ids.gen) | gap
        if self.phase == "caption":
            mask = vocab.text & (vocab.chars <= self._chars_left())
            if not self.draft.caption:
                mask &= ~vocab.blank
            if not self.draft.stamped:
                mask[ids.ts] = True
            elif self.draft.caption:
                mask[ids.sem] = True
            return mask
        options = self._timestamp_options()
        mask = self._only(*options) if options else torch.zeros_like(vocab.text)
        if TS_DONE.fullmatch(self.draft.timestamp) and float(self.draft.timestamp) > 0:
            mask[ids.ts_end] = True
        return mask

    def push(self, token: int) -> None:
        """Take the chosen (or forced) token."""
        ids = self.ids
        if self.queue:
            self.queue.pop(0)
        self.count += 1
        if token in ids.eos:
            self.phase, self.ended_by = "done", self._stop or "eos"
        elif self.phase == "think":
            if token == ids.think_end:
                self.phase = "open"
            else:
                self.reasoning.append(token)
        elif self.phase == "open":
            if token == ids.gen:
                self.phase, self.draft, self.gap = "caption", Draft(), 0
            else:
                self.gap += 1
        elif self.phase == "caption":
            self._push_caption(token)
        elif self.phase == "timestamp":
            if token == ids.ts_end:
                self.phase, self.draft.stamped = "caption", True
            else:
                self.draft.timestamp += self.vocab.numeric.get(token, "?")
        if self.phase != "done" and self.count >= self.limits.max_new_tokens:
            self.phase, self.ended_by = "done", "budget"

    def _push_caption(self, token: int) -> None:
        ids, draft = self.ids, self.draft
        if draft.semantic_at >= 0:  # inside the forced run of queries
            if token == ids.gen_end:
                self.clips.append(draft)
                self.phase, self.draft = "open", None
        elif token == ids.ts and not draft.stamped:
            self.phase = "timestamp"
        elif token == ids.sem:
            draft.semantic_at = self.count  # the next token (index count) is the first semantic query
            self.queue = ids.clip_run()
        else:
            draft.caption.append(token)

    def _chars_left(self) -> int:
        used = int(self.vocab.chars[self.draft.caption].sum()) if self.draft.caption else 0
        return story.MAX_CAPTION_CHARS - used

    def _caption_room(self) -> bool:
        if self.draft.semantic_at >= 0:
            return True  # inside the forced run: the queue drives
        return len(self.draft.caption) < self.limits.caption_tokens and self._chars_left() > 0

    def _timestamp_options(self) -> list[int]:
        text = self.draft.timestamp
        return [
            token
            for token, piece in self.vocab.numeric.items()
            if len(text + piece) <= self.limits.timestamp_chars and _timestamp_can_finish(text + piece)
        ]


def _timestamp_can_finish(text: str) -> bool:
    """``text`` is a prefix of a positive number of seconds the grammar admits."""
    if not TS_PREFIX.fullmatch(text):
        return False
    return not re.fullmatch(r"0\.0{3}", text)  # "0.000" can no longer become positive

