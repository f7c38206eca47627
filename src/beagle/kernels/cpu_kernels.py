"""The CPU kernels of a target, chosen once and explicitly, when it is loaded.

``load_target(..., cpu_kernels=...)`` calls :func:`install_cpu_kernels`, the one place that changes a model's
modules: it sets the process's CPU linear kernel (:mod:`beagle.kernels.cpu_linear`), routes every
``nn.Linear`` of the target through it, switches its attention to grouped-query SDPA without KV copies
(:mod:`beagle.kernels.cpu_attention`), logs what it did, and leaves a :class:`CpuKernels` on the target. A draft
bound to that target (``DraftModel.bind_target``) takes its kernels from there: the draft's code imports no
kernel module.

Choices (:data:`CPU_KERNEL_CHOICES`): ``auto`` / None = ``onednn`` where PyTorch has it, else ``columns``;
``onednn``, ``columns`` (linears; grouped-query attention too); ``stock`` = nothing installed. An unknown choice, or
``onednn`` without oneDNN, is a one-line BeagleError. On another device nothing is installed.
"""

from __future__ import annotations

import logging
from torch import nn

from beagle.errors import BeagleError
from beagle.kernels import cpu_linear
from beagle.kernels.cpu_attention import use_cpu_gqa_attention

logger = logging.getLogger(__name__)

CPU_KERNEL_CHOICES = ("auto",) + cpu_linear.KERNELS


def resolve_cpu_kernels(choice: str | None) -> str:
    """``choice`` (None = auto) -> one of :data:`beagle.kernels.cpu_linear.KERNELS`, or a one-line BeagleError."""
    if choice is None or choice == "auto":
        return cpu_linear.default_kernel()
    if choice not in CPU_KERNEL_CHOICES:
        raise BeagleError(f"unknown CPU kernels {choice!r}; choose one of {', '.join(CPU_KERNEL_CHOICES)}")
    return cpu_linear.check_kernel(choice)


class CpuKernels:
    """What :func:`install_cpu_kernels` put on a target; a draft bound to it installs the same on itself.
    Installed layers run the process's kernel per call (``linear_kernel``; :func:`~beagle.kernels.cpu_linear.use_kernel`
    switches it inside a block for benchmarks)."""

    @property
    def linear_kernel(self) -> str:
        return cpu_linear.current_kernel()

    def linear(self, x, weight, bias=None):
        """``nn.functional.linear`` through the CPU kernel: x [..., d], weight [R, d] -> [..., R]."""
        return cpu_linear.cpu_linear(x, weight, bias)

    def install(self, model: nn.Module) -> int:
        """Route ``model``'s ``nn.Linear`` layers through the kernel (a draft at bind time); the layer count."""
        return cpu_linear.install_cpu_linear(model)

    @property
    def drafts_in_bf16(self) -> bool:
        """Whether a bfloat16 draft runs native kernels here (oneDNN with AVX512-BF16 / AMX)."""
        return self.linear_kernel == "onednn" and cpu_linear.onednn_bf16_supported()


def install_cpu_kernels(target, choice: str | None = None) -> CpuKernels | None:
    """Choose and install ``target``'s CPU kernels (see the module docstring); ``target.cpu_kernels`` holds the
    result (None: stock, or not on a CPU)."""
    kernel = resolve_cpu_kernels(choice)
    target.cpu_kernels = None
    if target.device.type != "cpu":
        return None
    cpu_linear.select_kernel(kernel)
    if kernel == "stock":
        logger.info("CPU kernels: stock linears and attention")
        return None
    layers = cpu_linear.install_cpu_linear(target.model)
    grouped = use_cpu_gqa_attention(target.model)
    logger.info("CPU kernels: %s linears on %d layers (nn.Linear.forward replaced per layer)%s", kernel, layers,
                ", grouped-query SDPA without KV copies" if grouped else "")
    target.cpu_kernels = CpuKernels()
    return target.cpu_kernels
