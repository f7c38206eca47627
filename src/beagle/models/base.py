"""The draft interface shared by training and decoding (architectures register in :mod:`beagle.models.registry`).

A draft predicts the next token from a *draft state* h (same space as the target's top
state) through the target's frozen LM head. Both architectures implement:

- ``start_round(cache, new_tokens, new_states, start, root_token) -> root_hidden [1, d]``:
  commit the tokens whose true target states just became known (positions
  ``start .. start+L-1``) and compute the draft state of the root token at ``start+L``.
- ``expand(cache, tokens, parents) -> hidden [n, d]``: one tree level: tokens [n] are
  children of the previous level's nodes ``parents`` [n].

The target's embedding and LM head are shared by reference (frozen, never saved). Drafting proposes
through ``draft_logits`` (over the draft vocabulary: N ≤ V kept rows of the head, see
:mod:`beagle.vocab`) and ``to_target_ids``; ``logits`` is always the full head.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from beagle.errors import BeagleError
from beagle.models.config import DraftConfig
from beagle.models.draft_cache import DraftCache
from beagle.vocab.core import DraftVocab, load_vocab


def _head_product(linear, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """LM-head rows on states: hidden [..., d], weight [R, d], bias [R] | None -> [..., R] float32, through
    ``linear`` (``nn.functional.linear``, or the target's CPU kernel once bound)."""
    return linear(hidden.to(weight.dtype), weight, bias).float()


class DraftModel(nn.Module):
    arch = "base"  # a subclass says its registered architecture's name (beagle.models.registry)
    # Methods besides ``forward`` that training calls with the draft's parameters (FSDP hooks them).
    fsdp_methods: tuple[str, ...] = ()

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        self._shared: tuple[nn.Embedding, nn.Linear] | None = None
        self._vocab = None  # beagle.vocab.DraftVocab, or None: the target's full vocabulary
        self._vocab_head: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
        self._linear = nn.functional.linear  # the LM-head product; the target's CPU kernel once bound

    # ---------------------------------------------------------- target parts
    def bind_target(self, target) -> "DraftModel":
        """Share the target's embedding and LM head (frozen; not parameters of the draft); with a draft
        vocabulary, gather its rows of the head once (see :meth:`set_vocab`). A target with CPU kernels
        (``target.cpu_kernels``, chosen by ``load_target``) hands them to the draft: its layers and head products
        run them on a CPU; a target whose fast path attends with ``"grouped"`` (``target.fast_attention``) has the
        draft decode with it too."""
        self.config.check_target(target.fingerprint())
        self._shared = (target.embed, target.lm_head)
        self._gather_vocab_rows()
        grouped = getattr(target, "fast_attention", "sdpa") == "grouped"
        for module in self.modules():
            if hasattr(module, "grouped_decode"):
                module.grouped_decode = grouped
        kernels = getattr(target, "cpu_kernels", None)
        self._linear = nn.functional.linear
        if kernels is not None and self.device.type == "cpu":
            kernels.install(self)
            self._linear = kernels.linear
        return self

    def _parts(self) -> tuple[nn.Embedding, nn.Linear]:
        if self._shared is None:
            raise BeagleError("draft is not bound to a target; call draft.bind_target(target) first")
        return self._shared

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[...] token ids -> [..., d] embeddings in the draft's dtype (no gradient into the target)."""
        embed = self._parts()[0]
        with torch.no_grad():
            vectors = embed(token_ids.to(embed.weight.device))
        return vectors.to(device=self.device, dtype=self.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Target LM head on draft states: [..., d] -> [..., V] float32 (gradient flows to hidden).
        The full head whatever the draft vocabulary (training losses need the whole distribution)."""
        head = self._parts()[1]
        return _head_product(self._linear, hidden, head.weight, head.bias)

    # ------------------------------------------------------ draft vocabulary
    # Drafting proposes tokens through draft_logits and to_target_ids only. Without a draft vocabulary they
    # are the full head and the identity; with one (beagle.vocab) the head is restricted to the kept rows,
    # gathered once (set_vocab / bind_target), so each call is one matmul and one index: no host syncs.
    @property
    def vocab(self) -> DraftVocab | None:
        """The draft vocabulary (:class:`beagle.vocab.DraftVocab`), or None: the target's full vocabulary."""
        return self._vocab

    @property
    def draft_vocab_size(self) -> int:
        """N: the number of tokens the draft proposes from (the target's V without a draft vocabulary)."""
        return self._vocab.size if self._vocab is not None else self.config.vocab_size

    def set_vocab(self, vocab) -> "DraftModel":
        """Attach a draft vocabulary (a :class:`~beagle.vocab.DraftVocab` or a path to a vocabulary file), or
        None for the full one. Checks its ids against the target's vocabulary (BeagleError) and records its
        size and coverage in the config (so checkpoints carry it). Bound drafts gather the rows now."""
        if vocab is not None:
            vocab = load_vocab(vocab, self.config.vocab_size, self.config.target.get("name"))
            if vocab.target is None or vocab.target_vocab_size is None:  # a hand-made one: record whose it is
                vocab = dataclasses.replace(vocab, target=vocab.target or self.config.target.get("name"),
                                            target_vocab_size=vocab.target_vocab_size or self.config.vocab_size)
        self._vocab = vocab
        self.config.draft_vocab_size = vocab.size if vocab is not None else None
        self.config.draft_vocab_coverage = vocab.coverage if vocab is not None else None
        self._vocab_head = None
        self._gather_vocab_rows()
        return self

    def _gather_vocab_rows(self) -> None:
        """Copy the kept rows of the shared LM head (and bias) next to it, with the kept ids as an index
        tensor on the same device: (weight [N, d], bias [N] | None, ids [N] long)."""
        self._vocab_head = None
        if self._vocab is None or self._shared is None:
            return
        head = self._shared[1]
        if int(self._vocab.ids[-1]) >= head.weight.shape[0]:
            raise BeagleError(f"the draft vocabulary holds id {int(self._vocab.ids[-1])}, beyond the target's "
                              f"LM head ({head.weight.shape[0]} rows)")
        ids = self._vocab.ids.to(head.weight.device)
        with torch.no_grad():
            weight = head.weight.detach().index_select(0, ids).to(self._vocab_dtype()).contiguous()
            bias = head.bias.detach().index_select(0, ids).contiguous() if head.bias is not None else None
        self._vocab_head = (weight, bias, ids)

    def _vocab_dtype(self) -> torch.dtype:
        """The gathered rows' dtype: the narrower of the head's and the draft's (a bf16 draft beside a float32
        target drafts through bf16 rows; a float32 draft in training keeps the head's bf16)."""
        head_dtype = self._parts()[1].weight.dtype
        return self.dtype if self.dtype.itemsize < head_dtype.itemsize else head_dtype

    def _vocab_rows(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        head = self._parts()[1]
        rows = self._vocab_head
        # Python-side checks only (no device work): gather again if the target was moved or cast since.
        if rows is None or rows[0].device != head.weight.device or rows[0].dtype != self._vocab_dtype():
            self._gather_vocab_rows()
            rows = self._vocab_head
        return rows

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Proposal logits over the draft vocabulary: [..., d] -> [..., N] float32 (N = V without one).
        Column i is target id ``to_target_ids(i)``; gradient flows to hidden."""
        if self._vocab is None:
            return self.logits(hidden)
        weight, bias, _ = self._vocab_rows()
        return _head_product(self._linear, hidden, weight, bias)

    def to_target_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices [...] (long, on the head's device) -> target token ids [...]
        (the identity without a vocabulary; otherwise an index into the kept ids)."""
        if self._vocab is None:
            return indices
        return self._vocab_rows()[2][indices]

    def to_draft_vocab(self, target_logits: torch.Tensor) -> torch.Tensor:
        """Restrict logits over the target's vocabulary to the draft's: [..., V] -> [..., N] (unchanged without
        a draft vocabulary). Training uses it for the target's distribution restricted to the subset."""
        if self._vocab is None:
            return target_logits
        return target_logits.index_select(-1, self._vocab_rows()[2].to(target_logits.device))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        """Trainable parameters of the draft itself (shared embedding / LM head excluded)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def parameter_count(cls, config: DraftConfig) -> int:
        """Closed-form count of the trainable parameters of a draft of this class shaped by ``config``."""
        raise NotImplementedError

    def zero_initialised(self) -> list[torch.nn.Linear]:
        """Linear layers that must start at zero (the random initialisation skips them)."""
        return []

    # ---------------------------------------------------------- inference
    def new_cache(self, capacity: int = 256) -> DraftCache:
        return DraftCache(self.config.num_key_value_heads, self.config.head_dim, self.device, self.dtype, capacity)

    def start_round(self, cache, new_tokens, new_states, start, root_token) -> torch.Tensor:
        raise NotImplementedError

    def expand(self, cache, tokens, parents) -> torch.Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------- checkpoints
    def save_pretrained(self, directory, extra: dict | None = None) -> None:
        from beagle.models.checkpoint import save_draft

        save_draft(self, directory, extra=extra)

    @classmethod
    def from_pretrained(cls, directory, target=None, device=None, dtype=None) -> "DraftModel":
        from beagle.models.checkpoint import load_draft

        return load_draft(directory, target=target, device=device, dtype=dtype)
