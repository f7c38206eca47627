"""PyTorch's cuDNN attention backend: off by default on CUDA, for every Beagle entry point.

cuDNN's scaled-dot-product attention builds an execution plan for every new attention shape
(query length × key length), which costs far more host time than the kernel's GPU time. Decoding meets a new
shape at nearly every call: the key length grows each step, tree levels and verification passes have their own
query lengths, so decoding runs several times slower with it (measured side by side in
``docs/results/cudnn-h200``). The flash /
memory-efficient kernels PyTorch uses instead have no such cost. So Beagle disables the cuDNN backend when
it puts a target on a GPU (``load_target(..., cudnn_sdp=False)`` calls :func:`configure_attention`): a
process-wide PyTorch switch, logged when it flips, the same for AR and speculative decoding and for training.
``cudnn_sdp=True`` keeps it (the CLI passes ``BEAGLE_CUDNN_SDP=1`` as that argument).
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

def _supported() -> bool:
    return hasattr(torch.backends.cuda, "enable_cudnn_sdp") and hasattr(torch.backends.cuda, "cudnn_sdp_enabled")


def configure_attention(device, cudnn_sdp: bool = False) -> None:
    """On a CUDA ``device``: PyTorch's cuDNN SDPA backend on or off as ``cudnn_sdp`` says (no-op elsewhere)."""
    if torch.device(device).type != "cuda" or not _supported():
        return
    wanted = bool(cudnn_sdp)
    if torch.backends.cuda.cudnn_sdp_enabled() != wanted:
        torch.backends.cuda.enable_cudnn_sdp(wanted)
        logger.info("cuDNN attention %s", "on (cudnn_sdp=True)" if wanted
                    else "off: it re-plans every new attention shape (cudnn_sdp=True keeps it)")


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
