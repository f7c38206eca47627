"""The draft interface shared by training and decoding, and the architecture registry.

A draft predicts the next token from a *draft state* h (same space as the target's top
state) through the target's frozen LM head. Both architectures implement:

- ``start_round(cache, new_tokens, new_states, start, root_token) -> root_hidden [1, d]``:
  commit the tokens whose true target states just became known (positions
  ``start .. start+L-1``) and compute the draft state of the root token at ``start+L``.
- ``expand(cache, tokens, parents) -> hidden [n, d]``: one tree level: tokens [n] are
  children of the previous level's nodes ``parents`` [n].

The target's embedding and LM head are shared by reference (frozen, never saved).
"""

from __future__ import annotations

import torch
from torch import nn

from beagle.errors import BeagleError
from beagle.models.config import DraftConfig
from beagle.models.draft_cache import DraftCache

DRAFT_CLASSES: dict[str, type["DraftModel"]] = {}


CPU_SMALL_BATCH_ROWS = 64  # see DraftModel.logits


def register(arch: str):
    def decorate(cls):
        DRAFT_CLASSES[arch] = cls
        cls.arch = arch
        return cls

    return decorate


def draft_class(arch: str) -> type["DraftModel"]:
    # Importing the modules registers the classes.
    from beagle.models import beagle as _beagle  # noqa: F401
    from beagle.models import eagle2 as _eagle2  # noqa: F401

    if arch not in DRAFT_CLASSES:
        raise BeagleError(f"unknown draft architecture {arch!r}; choose one of {sorted(DRAFT_CLASSES)}")
    return DRAFT_CLASSES[arch]


class DraftModel(nn.Module):
    arch = "base"
    # Methods besides ``forward`` that training calls with the draft's parameters (FSDP hooks them).
    fsdp_methods: tuple[str, ...] = ()

    def __init__(self, config: DraftConfig):
        super().__init__()
        self.config = config
        self._shared: tuple[nn.Embedding, nn.Linear] | None = None

    # ---------------------------------------------------------- target parts
    def bind_target(self, target) -> "DraftModel":
        """Share the target's embedding and LM head (frozen; not parameters of the draft)."""
        self.config.check_target(target.fingerprint())
        self._shared = (target.embed, target.lm_head)
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
        """Target LM head on draft states: [..., d] -> [..., V] float32 (gradient flows to hidden)."""
        head = self._parts()[1]
        hidden = hidden.to(head.weight.dtype)
        rows = hidden.numel() // hidden.shape[-1] if hidden.numel() else 0
        if (head.weight.device.type == "cpu" and 1 < rows <= CPU_SMALL_BATCH_ROWS and head.bias is None
                and not (torch.is_grad_enabled() and hidden.requires_grad)):
            # Drafting on a CPU: a few rows against a [V, d] head. BLAS runs x @ Wᵀ for 2–64 rows at a
            # fraction of its memory bandwidth; W @ xᵀ streams the head once (2–3× faster measured on
            # SmolLM2's 49152 × 576 head, 2 cores). Draft logits only pick proposals: no effect on output.
            flat = hidden.reshape(rows, hidden.shape[-1])
            return (head.weight @ flat.T).T.reshape(*hidden.shape[:-1], -1).float()
        return nn.functional.linear(hidden, head.weight, head.bias).float()

    # ------------------------------------------------------ draft vocabulary
    # Drafting proposes tokens through these two methods only. Without a draft vocabulary they are
    # the full head and the identity; with one (beagle.vocab) the head is restricted to the kept rows.
    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Proposal logits over the draft vocabulary: [..., d] -> [..., N] float32 (N = V without one)."""
        return self.logits(hidden)

    def to_target_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices [...] -> target token ids [...] (the identity without a vocabulary)."""
        return indices

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        """Trainable parameters of the draft itself (shared embedding / LM head excluded)."""
        return sum(p.numel() for p in self.parameters())

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
