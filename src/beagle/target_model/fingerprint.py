"""A cheap fingerprint of a target's shared weights (input embedding and LM head).

Drafts reuse the target's embedding and LM head, so a draft trained for one set of weights is
wrong for another target of the same shapes (a base model vs its chat fine-tune, another seed).
Shapes alone cannot tell them apart; this fingerprint can, in microseconds, on any device:

- a fixed strided sample of ``SAMPLES`` entries of each matrix (row-major positions
  ``i·step + (i·7919 + phase) mod step``, so the sample spreads over rows *and* columns),
- cast to float32 and rounded to bfloat16, stored as base64 of the little-endian bf16 bits.

Rounding to bf16 is idempotent, so a float32 target and the same weights loaded as bfloat16 give
the *identical* fingerprint; float16 (one more rounding) lands within one bf16 step. Comparison
(:func:`same_weights`) therefore allows a relative difference of 1/64 per entry and asks that at
least 99 % of the entries agree: other weights (another seed, a fine-tune) differ in most entries.
"""

from __future__ import annotations

import base64

import numpy as np
import torch

METHOD = "strided-bf16-v1"
SAMPLES = 256  # entries per matrix
RELATIVE_TOLERANCE = 1 / 64  # two bf16 steps
ABSOLUTE_TOLERANCE = 1e-6  # float16 subnormals
AGREEMENT = 0.99


def strided_sample(weight: torch.Tensor, count: int = SAMPLES, phase: int = 0) -> torch.Tensor:
    """``count`` entries of a 2-D ``weight`` [R, C] at fixed positions -> float32 [count] on the CPU.

    Reads only those entries (no copy of the matrix), so it is cheap on a GPU too.
    """
    rows, columns = weight.shape
    total = rows * columns
    count = min(count, total)
    step = total // count
    index = torch.arange(count, dtype=torch.long)
    flat = index * step + (index * 7919 + phase) % step
    rows_index, columns_index = (flat // columns).to(weight.device), (flat % columns).to(weight.device)
    return weight.detach()[rows_index, columns_index].float().cpu()


def weights_fingerprint(embedding: torch.Tensor, lm_head: torch.Tensor) -> dict:
    """{"method", "values"} for the embedding [V, d] and LM head [V, d] (tied or not)."""
    sample = torch.cat([strided_sample(embedding, phase=0), strided_sample(lm_head, phase=SAMPLES // 2 + 1)])
    bits = sample.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2")
    return {"method": METHOD, "values": base64.b64encode(bits.tobytes()).decode("ascii")}


def decode(fingerprint: dict) -> torch.Tensor | None:
    """The sampled values as float32 [N], or None when the fingerprint is not one this version reads."""
    if not isinstance(fingerprint, dict) or fingerprint.get("method") != METHOD:
        return None
    try:
        raw = base64.b64decode(fingerprint["values"], validate=True)
    except (KeyError, TypeError, ValueError):
        return None
    if len(raw) % 2:
        return None
    bits = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    return torch.from_numpy(bits.copy()).view(torch.bfloat16).float()


def same_weights(recorded: dict, current: dict) -> bool | None:
    """True when two fingerprints come from the same weights (in any dtype), False when not,
    None when either cannot be read (an unknown method: nothing to compare)."""
    a, b = decode(recorded), decode(current)
    if a is None or b is None:
        return None
    if a.shape != b.shape:
        return False
    close = (a - b).abs() <= RELATIVE_TOLERANCE * torch.maximum(a.abs(), b.abs()) + ABSOLUTE_TOLERANCE
    return bool(close.float().mean() >= AGREEMENT)
