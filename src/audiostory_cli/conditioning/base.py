"""What a conditioner is: plan -> one ``TextTokens`` per event, in the decoder's text space.

Three kinds: the training-free residual fusion (``residual.py``), the same with a trained bridge in place of
the text encoder (``trained_bridge.py``), and the AudioStory checkpoint's own queries and fusion
(``models/audiostory/fusion.py``). The pipeline calls ``condition`` and hands the tokens to the decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..story import Plan

if TYPE_CHECKING:
    from ..decoders.base import Decoder, TextTokens


class TextEncoder(Protocol):
    """What turns text into tokens: a decoder's own text encoder, or a trained bridge (``--bridge``)."""

    def encode_text(self, text: str) -> TextTokens: ...


class Conditioner(Protocol):
    """Plan -> per event index, the tokens that fill the decoder's text slot; None lets the decoder encode
    the caption itself."""

    def condition(self, plan: Plan, decoder: Decoder) -> dict[int, TextTokens | None]: ...
