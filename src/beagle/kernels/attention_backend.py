"""PyTorch's cuDNN attention backend: off by default on CUDA, for every Beagle entry point.

cuDNN's scaled-dot-product attention builds an execution plan for every new attention shape
(query length × key length), which costs far more host time than the kernel's GPU time. Decoding meets a new
shape at nearly every call: the key length grows each step, tree levels and verification passes have their own
query lengths, so decoding runs several times slower with it (measured side by side in
``docs/results/cudnn-h200``). The flash /
memory-efficient kernels PyTorch uses instead have no such cost. So Beagle disables the cuDNN backend when
it puts a target on a GPU (:func:`configure_attention`): a process-wide PyTorch switch, logged when it
flips, the same for AR and speculative decoding and for training. Set ``BEAGLE_CUDNN_SDP=1`` to keep it.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)

ENV = "BEAGLE_CUDNN_SDP"


def _supported() -> bool:
    return hasattr(torch.backends.cuda, "enable_cudnn_sdp") and hasattr(torch.backends.cuda, "cudnn_sdp_enabled")


def cudnn_sdp_requested() -> bool:
    """Whether the user asked to keep cuDNN attention (env ``BEAGLE_CUDNN_SDP=1``)."""
    return os.environ.get(ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def configure_attention(device) -> None:
    """On a CUDA ``device``: cuDNN SDPA off unless ``BEAGLE_CUDNN_SDP=1`` (no-op on other devices)."""
    if torch.device(device).type != "cuda" or not _supported():
        return
    wanted = cudnn_sdp_requested()
    if torch.backends.cuda.cudnn_sdp_enabled() != wanted:
        torch.backends.cuda.enable_cudnn_sdp(wanted)
        logger.info("cuDNN attention %s (%s=%d)", "on" if wanted else "off: it re-plans every new attention shape",
                    ENV, int(wanted))


@contextlib.contextmanager
def cudnn_sdp_backend(enabled: bool | None):
    """Enable / disable PyTorch's cuDNN SDPA backend inside the block (None: leave it), restoring the
    previous setting afterwards."""
    if enabled is None or not _supported():
        yield
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
