"""Text from tokens as they arrive, with bounded work per chunk (what ``stream()`` yields).

Decoding the whole sequence after every round costs O(n) per round, O(n²) per request. A tokenizer's text is
not a sum of per-token texts (byte-level BPE splits a character across tokens; SentencePiece drops the space
of a leading "▁"; clean-up rules look at neighbours), so :class:`IncrementalDetokenizer` decodes a short
window instead: the tokens from ``prefix_offset`` (at least one token already shown, as context) to the end,
and yields what that window's text adds to the text of its already-shown part (the method of text-generation-
inference and vLLM). Text ending in U+FFFD (an incomplete UTF-8 sequence) is held back until later tokens
complete it, but never more than MAX_HELD_TOKENS tokens: past that the text of all but the last
SETTLED_TOKENS tokens is final (UTF-8 resynchronises within 3 bytes, and a token carries at least one byte) and
is shown if the longer window's text extends it. :meth:`IncrementalDetokenizer.flush` releases whatever is
left. So a round decodes at most about 2 · (MAX_HELD_TOKENS + tokens per round) tokens. The pieces concatenate to
``tokenizer.decode(all_tokens)`` (tests compare them on SmolLM2's tokenizer and on byte-level tokenizers built
in code).

:class:`StopStringScanner` finds stop strings in the same pieces, scanning only the new text plus the last
``len(longest stop) - 1`` characters held back, so a stop string split across rounds is still found.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what decode() gives for an incomplete UTF-8 sequence
MAX_HELD_TOKENS = 8  # tokens held back at most while their text ends in REPLACEMENT (invalid bytes, say)
SETTLED_TOKENS = 4  # tokens after a cut that settle the text before it (a UTF-8 sequence has at most 4 bytes)


class IncrementalDetokenizer:
    """``push(tokens)`` -> the new text they complete; ``flush()`` -> the rest. ``tokenizer``: anything with
    ``decode(ids, skip_special_tokens=...)``; None gives empty text."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self.prefix_offset = 0  # window start: context for the tokens after read_offset
        self.read_offset = 0  # tokens before it are shown

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens)

    def push(self, tokens: list[int]) -> str:
        """Add tokens; return the text they complete ("" when it is not complete yet)."""
        self.tokens.extend(tokens)
        if self.tokenizer is None or self.read_offset == len(self.tokens):
            return ""
        shown = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        text = self._decode(self.tokens[self.prefix_offset:])
        if len(text) > len(shown) and not text.endswith(REPLACEMENT):
            return self._advance(len(self.tokens), text[len(shown):])
        if len(self.tokens) - self.read_offset > MAX_HELD_TOKENS:  # settled text ending in REPLACEMENT: show it
            cut = len(self.tokens) - SETTLED_TOKENS
            settled = self._decode(self.tokens[self.prefix_offset:cut])
            if len(settled) > len(shown) and text.startswith(settled):
                return self._advance(cut, settled[len(shown):])
        return ""

    def _advance(self, read_offset: int, piece: str) -> str:
        self.prefix_offset, self.read_offset = self.read_offset, read_offset
        return piece

    def flush(self) -> str:
        """The text of the tokens not shown yet, incomplete sequences included."""
        if self.tokenizer is None or self.read_offset == len(self.tokens):
            return ""
        shown = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        text = self._decode(self.tokens[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return text[len(shown):]


class StopStringScanner:
    """Feed text pieces; get back what may be shown, up to the first stop string.

    ``feed(piece)`` -> (text to show, stopped); after a stop, nothing more is shown. ``finish()`` -> the
    held-back tail (no stop string can complete any more)."""

    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self.hold = max((len(stop) for stop in self.stops), default=1) - 1
        self.pending = ""  # the last ``hold`` characters, not shown yet
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self.pending + piece
        cuts = [position for position in (text.find(stop) for stop in self.stops) if position >= 0]
        if cuts:
            self.stopped, self.pending = True, ""
            return text[: min(cuts)], True
        ready = max(len(text) - self.hold, 0)
        self.pending = text[ready:]
        return text[:ready], False

    def finish(self) -> str:
        tail, self.pending = ("" if self.stopped else self.pending), ""
        return tail
