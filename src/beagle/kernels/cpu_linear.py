"""Linear layers on a CPU in float32: oneDNN with pre-packed weights, so a pass over many tokens costs
about what a pass over one does.

Speculative decoding on a CPU lives or dies by one number: what a target pass over a handful of tree
tokens costs against a plain one-token step. PyTorch's stock CPU product (``x @ Wᵀ`` through MKL) reads
float32 weights at a fraction of memory bandwidth for 2–64 rows, so a pass over 4 or 8 tokens costs well over a
step (figures: ``docs/results/cpu-kernels.md``). Three kernels, chosen once per process when a target is loaded
(``load_target(cpu_kernels=...)``, through :func:`beagle.kernels.cpu_kernels.install_cpu_kernels`;
:func:`use_kernel` inside a block for benchmarks):

- ``onednn`` (the default where PyTorch has oneDNN): the weight is re-laid-out once into oneDNN's blocked
  format (``torch.ops.mkldnn._reorder_linear_weight``, the same call ``torch.compile`` uses when it freezes a
  CPU model) and every product runs ``torch.ops.mkldnn._linear_pointwise``: a pass over a few rows then costs
  about what one row does (``docs/results/cpu-kernels.md``, ``docs/results/cpu-paths.md``). The packed copy
  costs one more copy of the weights in memory; it is made on first use and made again when the weight
  changes (its version counter moves). float32 and bfloat16 (a bf16 draft beside a float32 target).
- ``columns``: ``(W @ xᵀ)ᵀ`` for 1..``CPU_SMALL_BATCH_ROWS`` rows, 1 and 3 rows padded by one (2 and 4
  columns hit MKL's fast small-N kernel; float32 only): fast up to 4 rows, slow from 6. The fallback without
  oneDNN.
- ``stock``: ``nn.functional.linear``.

:func:`install_cpu_linear` routes every ``nn.Linear`` of a model through :func:`cpu_linear`. Only float32 (and,
with oneDNN, bfloat16) CPU products outside autograd take another kernel: a model later moved to a GPU, and
training, run the stock one. Plain and speculative decoding share the same model object, so every comparison
runs the same kernels, and plain decoding gets faster too. All kernels sum the same float32 terms in another order:
results agree to rounding, and the greedy-equality tests cover it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref

import torch
from torch import nn

from beagle.errors import BeagleError

logger = logging.getLogger(__name__)

KERNELS = ("onednn", "columns", "stock")
CPU_SMALL_BATCH_ROWS = 64
# ``columns`` row counts padded by one: 2 and 4 columns of W @ xᵀ beat 1 and 3 (docs/results/cpu-kernels.md).
PADDED_ROWS = (1, 3)
_INSTALLED = "_beagle_cpu_linear"


def onednn_available() -> bool:
    """Whether this PyTorch build can pack weights for oneDNN's CPU linear."""
    return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@functools.lru_cache(maxsize=1)
def onednn_bf16_supported() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 kernels (AVX512-BF16 / AMX, or the AVX-512 emulation)."""
    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_kernel() -> str:
    """onednn where this PyTorch has it, else columns."""
    return "onednn" if onednn_available() else "columns"


def check_kernel(kernel: str) -> str:
    """``kernel`` if this PyTorch can run it, else a one-line BeagleError naming the choices."""
    if kernel not in KERNELS:
        raise BeagleError(f"unknown CPU linear kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "onednn" and not onednn_available():
        raise BeagleError("this PyTorch build has no oneDNN; use the 'columns' or 'stock' CPU linear kernel")
    return kernel


_kernel: str | None = None  # the process's kernel: set by select_kernel (load_target), else the default


def current_kernel() -> str:
    global _kernel
    if _kernel is None:
        _kernel = default_kernel()
    return _kernel


def select_kernel(kernel: str) -> None:
    """Make ``kernel`` the process's CPU linear kernel (every installed layer reads it per call); logged."""
    global _kernel
    kernel = check_kernel(kernel)
    if kernel != _kernel:
        logger.info("CPU linear kernel: %s", kernel)
    _kernel = kernel


@contextlib.contextmanager
def use_kernel(kernel: str):
    """Run the block with another CPU linear kernel (benchmarks and tests)."""
    global _kernel
    check_kernel(kernel)
    previous, _kernel = current_kernel(), kernel
    try:
        yield
    finally:
        _kernel = previous


_DTYPES = (torch.float32, torch.bfloat16)


def takes_cpu_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True for a float32 or bfloat16 CPU product outside autograd with at least one row."""
    if weight.device.type != "cpu" or x.dtype != weight.dtype or weight.dtype not in _DTYPES:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return x.numel() > 0


def small_batch_rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    """The row count of ``x`` [..., d] when the ``columns`` kernel applies (1..CPU_SMALL_BATCH_ROWS), else 0."""
    if not takes_cpu_kernel(x, weight):
        return 0
    rows = x.numel() // x.shape[-1]
    return rows if rows <= CPU_SMALL_BATCH_ROWS else 0


# id(weight) -> (weak reference to it, (version, data pointer), packed weight). An entry goes with its weight.
_PACKED: dict[int, tuple[weakref.ref, tuple[int, int], torch.Tensor]] = {}


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` [R, d] in oneDNN's blocked layout, packed once and again after any in-place change."""
    key, stamp = id(weight), (weight._version, weight.data_ptr())
    entry = _PACKED.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == stamp:
        return entry[2]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    _PACKED[key] = (weakref.ref(weight, functools.partial(_forget, key)), stamp, packed)
    return packed


def _forget(key: int, _reference: weakref.ref) -> None:
    _PACKED.pop(key, None)


def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.functional.linear(x, weight, bias)``: x [..., d], weight [R, d], bias [R] | None -> [..., R],
    through the process's CPU kernel where :func:`takes_cpu_kernel` says so. Under ``torch.compile`` it is the
    stock call: the compiler packs weights itself, and the Python bookkeeping here would break its graph."""
    if torch.compiler.is_compiling() or weight.device.type != "cpu":  # before any Python bookkeeping
        return nn.functional.linear(x, weight, bias)
    kernel = current_kernel()
    if kernel == "stock" or not takes_cpu_kernel(x, weight):
        return nn.functional.linear(x, weight, bias)
    if kernel == "onednn":
        if weight.dtype == torch.bfloat16 and not onednn_bf16_supported():
            return nn.functional.linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed_weight(weight), bias, "none", [], "")
    return _columns_linear(x, weight, bias)


def _columns_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The ``columns`` kernel, for a product :func:`takes_cpu_kernel` accepted (float32 only)."""
    rows = x.numel() // x.shape[-1]
    if rows > CPU_SMALL_BATCH_ROWS or weight.dtype != torch.float32:
        return nn.functional.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    if rows in PADDED_ROWS:  # 1 and 3 columns run slower than 2 and 4: pad with a copy of the last row
        flat = torch.cat([flat, flat[-1:]])
    out = (weight @ flat.T)[:, :rows].T
    if bias is not None:
        out = out + bias
    return out.contiguous().reshape(*x.shape[:-1], weight.shape[0])


def _forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return cpu_linear(x, module.weight, module.bias)


def install_cpu_linear(model: nn.Module) -> int:
    """Route every ``nn.Linear`` of ``model`` through :func:`cpu_linear` (idempotent; the kernel is chosen
    per call, so a model later moved to a GPU or cast to bf16 runs the stock one). Returns the number of
    layers it covers; 0 when the kernel is ``stock``."""
    if current_kernel() == "stock":
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:  # subclasses (quantised, LoRA) keep their own forward
            if not getattr(module, _INSTALLED, False):
                module.forward = functools.partial(_forward, module)
                setattr(module, _INSTALLED, True)
            count += 1
    return count


def uninstall_cpu_linear(model: nn.Module) -> None:
    """Give every layer :func:`install_cpu_linear` touched its stock forward back."""
    for module in model.modules():
        if getattr(module, _INSTALLED, False):
            del module.forward
            delattr(module, _INSTALLED)
