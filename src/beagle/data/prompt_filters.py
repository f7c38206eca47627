"""Which self-generated prompts are kept: cleanliness checks and near-duplicate removal.

A text is dropped, with the first reason that applies (the counted key in brackets):

- [empty] nothing left after stripping whitespace; [too_short] fewer than ``min_chars`` characters;
  [too_long] more than ``max_chars`` characters (a sample that never reached the end of its turn is dropped
  by the sampler as [unfinished] before it gets here);
- [control_token] it contains one of the template's control strings (``<|im_start|>``, ``<|im_end|>``, ...:
  every special token of the tokenizer and the template's own markers);
- [charset] ``charset="ascii"`` and a letter is not ASCII, or ``charset="latin"`` and a letter is not of
  the Latin script (digits, punctuation, symbols and emoji are allowed either way);
- [duplicate] its normalised text (Unicode NFKC, case-folded, every run of non-alphanumeric characters one
  space) equals a kept one's;
- [near_duplicate] the Jaccard similarity of its character 5-gram set (of the normalised text) with a kept
  text's is at least ``near_duplicate`` (default 0.7). Candidates come from MinHash locality-sensitive
  hashing (64 hashes in 16 bands of 4: a pair at Jaccard 0.7 shares a band with probability 0.99, at 0.8
  with 0.9998, at 0.3 with 0.13); each candidate is then checked exactly, so no text below the threshold is
  dropped, and a near-duplicate just above it slips through now and then.

Kept texts are registered, so later texts are compared with every earlier kept one, whatever its source
(:meth:`PromptSelector.register` adds another dataset's prompts with the duplicate checks only).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

SHINGLE = 5  # characters per n-gram
BANDS, ROWS = 16, 4  # MinHash: BANDS * ROWS hashes
PRIME = (1 << 31) - 1
_rng = np.random.default_rng(20250531)  # fixed: the same hash functions in every run
_A = _rng.integers(1, PRIME, size=BANDS * ROWS, dtype=np.uint64)
_B = _rng.integers(0, PRIME, size=BANDS * ROWS, dtype=np.uint64)
CHARSETS = ("ascii", "latin")


@dataclass
class PromptFilter:
    """The rules of the module docstring; ``near_duplicate=None`` keeps only the exact-duplicate check."""

    min_chars: int = 10
    max_chars: int = 4000
    near_duplicate: float | None = 0.7
    charset: str | None = None  # None, "ascii" or "latin"

    def validate(self) -> "PromptFilter":
        from beagle.errors import BeagleError

        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise BeagleError(f"--min-chars must be at least 1 and at most --max-chars "
                              f"(got {self.min_chars} and {self.max_chars})")
        if self.near_duplicate is not None and not 0 < self.near_duplicate <= 1:
            raise BeagleError(f"--near-duplicate must be in (0, 1] (got {self.near_duplicate})")
        if self.charset not in (None, *CHARSETS):
            raise BeagleError(f"--charset must be one of {', '.join(CHARSETS)} (got {self.charset!r})")
        return self


def normalise(text: str) -> str:
    """NFKC, case-folded, every run of non-alphanumeric characters one space, stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


def shingles(normalised: str) -> set[str]:
    """The character ``SHINGLE``-grams of a normalised text (the whole text when shorter)."""
    if len(normalised) <= SHINGLE:
        return {normalised}
    return {normalised[i: i + SHINGLE] for i in range(len(normalised) - SHINGLE + 1)}


def minhash(grams: set[str]) -> np.ndarray:
    """[BANDS * ROWS] uint64: for each hash function (a·x + b) mod p, its least value over the grams."""
    values = np.fromiter((int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") % PRIME
                          for g in grams), dtype=np.uint64, count=len(grams))
    return ((values[None, :] * _A[:, None] + _B[:, None]) % PRIME).min(axis=1)


def jaccard(first: set[str], second: set[str]) -> float:
    return len(first & second) / len(first | second)


def _letters_fit(text: str, charset: str) -> bool:
    for character in text:
        if not character.isalpha():
            continue
        if charset == "ascii" and not character.isascii():
            return False
        if charset == "latin" and not (character.isascii() or unicodedata.name(character, "").startswith("LATIN")):
            return False
    return True


class PromptSelector:
    """Keeps texts that pass :class:`PromptFilter`; ``check(text)`` -> None (kept, registered) or the reason."""

    def __init__(self, rules: PromptFilter, control_strings: set[str] = frozenset()):
        self.rules = rules
        self.control_strings = sorted(s for s in control_strings if s)
        self.exact: set[bytes] = set()
        self.grams: list[set[str]] = []  # kept texts' shingles, by kept number
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]

    def check(self, text: str) -> str | None:
        text = text.strip()
        if not text:
            return "empty"
        if len(text) < self.rules.min_chars:
            return "too_short"
        if len(text) > self.rules.max_chars:
            return "too_long"
        if any(control in text for control in self.control_strings):
            return "control_token"
        if self.rules.charset is not None and not _letters_fit(text, self.rules.charset):
            return "charset"
        return self._deduplicate(text)

    def register(self, text: str) -> str | None:
        """Only the duplicate checks (for another dataset's prompts): None (registered) or the reason."""
        return self._deduplicate(text.strip())

    def _deduplicate(self, text: str) -> str | None:
        normalised = normalise(text)
        key = hashlib.blake2b(normalised.encode(), digest_size=16).digest()
        if key in self.exact:
            return "duplicate"
        grams, bands = None, None
        if self.rules.near_duplicate is not None:
            grams = shingles(normalised)
            signature = minhash(grams)
            bands = [signature[band * ROWS: (band + 1) * ROWS].tobytes() for band in range(BANDS)]
            candidates = {number for band, bucket in zip(bands, self.buckets) for number in bucket.get(band, ())}
            if any(jaccard(grams, self.grams[number]) >= self.rules.near_duplicate for number in sorted(candidates)):
                return "near_duplicate"
        self.exact.add(key)
        if grams is not None:
            number = len(self.grams)
            self.grams.append(grams)
            for band, bucket in zip(bands, self.buckets):
                bucket.setdefault(band, []).append(number)
        return None
