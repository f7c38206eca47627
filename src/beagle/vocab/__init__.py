"""Draft vocabularies: the subset of the target's tokens a draft proposes from (EAGLE-3's d2t, FR-Spec).

A draft predicts through the target's frozen LM head ([V, d]); with a draft vocabulary of N kept ids
it reads only those N rows (gathered once, when the draft is bound to the target), takes its top-k over
N and maps the picks back to target ids. Verification is unchanged, so the output stays the target's.

- :mod:`beagle.vocab.core`: :class:`DraftVocab` (the kept ids + where they came from), the file
  format, validation, choosing the N most frequent ids from token counts, coverage.
- :mod:`beagle.data.vocab_counts`: counting assistant tokens of chat data (the training data pipeline),
  building a vocabulary from data, and writing a draft checkpoint that carries one.
"""

from beagle.vocab.core import VOCAB_FILE_NAME, DraftVocab, build_vocab, coverage_of_sizes, load_vocab

__all__ = ["VOCAB_FILE_NAME", "DraftVocab", "build_vocab", "coverage_of_sizes", "load_vocab"]
