"""Linear layers over a few rows on a CPU: ``(W @ xᵀ)ᵀ`` instead of ``x @ Wᵀ``.

Speculative decoding on a CPU lives or dies by one number: what a target pass over a handful of tree
tokens costs against a plain one-token step. With float32 weights, PyTorch's CPU BLAS runs ``x @ Wᵀ``
for 2–64 rows through a general GEMM path that reads the weight at a fraction of memory bandwidth, and a
single row as a matrix-vector product at about half of it. The same product written ``(W @ xᵀ)ᵀ``
streams the weight once, fastest with 2 or 4 columns. Measured on a 2-core x86 CPU (torch 2.13,
SmolLM2-135M, fp32, 200 tokens of context; ``docs/results/cpu-small-batch.md``): a target pass over 4
tokens cost 87 ms as ``x @ Wᵀ`` and 50 ms this way, and a one-token step 58 ms and 45 ms.

:func:`install_small_batch_linear` swaps the forward of every ``nn.Linear`` of a model on a CPU in
float32 for :func:`small_batch_linear`. It covers 1 to ``CPU_SMALL_BATCH_ROWS`` rows, padding 1 and 3
rows by one. Longer inputs (prefill) still run ``nn.functional.linear``. Plain and speculative decoding
share the same model object, so every comparison runs the same kernels, and plain decoding gets faster too.
Both products are float32 sums of the same terms in another order: results agree to rounding, and the
greedy-equality tests cover it. ``BEAGLE_CPU_SMALL_BATCH=0`` keeps the stock forward.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

ENV = "BEAGLE_CPU_SMALL_BATCH"
CPU_SMALL_BATCH_ROWS = 64
# Row counts padded by one: measured per 1536 × 576 projection (2 cores, fp32), 1 / 2 / 3 / 4 columns of
# W @ xᵀ took 330 / 131–153 / 194–212 / 142 µs (one column is a matrix-vector product; 2 and 4 hit the fast
# small-N kernel). 5 columns (219 µs) beat 6 (309 µs), so padding stops there.
PADDED_ROWS = (1, 3)
_INSTALLED = "_beagle_small_batch_linear"


def small_batch_rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    """The row count of ``x`` [..., d] when ``x @ weightᵀ`` should run as ``weight @ xᵀ``, else 0.

    Only on a CPU, in float32, outside autograd, for 1..CPU_SMALL_BATCH_ROWS rows."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or x.dtype != torch.float32:
        return 0
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return 0
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    return rows if 0 < rows <= CPU_SMALL_BATCH_ROWS else 0


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.functional.linear(x, weight, bias)``: x [..., d], weight [R, d], bias [R] | None -> [..., R];
    computed as ``(weight @ xᵀ)ᵀ`` when :func:`small_batch_rows` says so."""
    rows = small_batch_rows(x, weight)
    if not rows:
        return nn.functional.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    if rows in PADDED_ROWS:  # 1 and 3 columns run slower than 2 and 4: pad with a copy of the last row
        flat = torch.cat([flat, flat[-1:]])
    out = (weight @ flat.T)[:, :rows].T
    if bias is not None:
        out = out + bias
    return out.contiguous().reshape(*x.shape[:-1], weight.shape[0])


def _forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return small_batch_linear(x, module.weight, module.bias)


def enabled() -> bool:
    """False when the environment sets ``BEAGLE_CPU_SMALL_BATCH=0`` (or off/false/no)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def install_small_batch_linear(model: nn.Module) -> int:
    """Route every ``nn.Linear`` of ``model`` through :func:`small_batch_linear` (idempotent; the switch
    is per call, so a model later moved to a GPU or cast to bf16 runs the stock kernels). Returns the
    number of layers it now covers; 0 when ``BEAGLE_CPU_SMALL_BATCH=0``."""
    if not enabled():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:  # subclasses (quantised, LoRA) keep their own forward
            if not getattr(module, _INSTALLED, False):
                module.forward = functools.partial(_forward, module)
                setattr(module, _INSTALLED, True)
            count += 1
    return count


def uninstall_small_batch_linear(model: nn.Module) -> None:
    """Give every layer :func:`install_small_batch_linear` touched its stock forward back."""
    for module in model.modules():
        if getattr(module, _INSTALLED, False):
            del module.forward
            delattr(module, _INSTALLED)
