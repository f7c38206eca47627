"""Multi-process training: data parallel ranks and FSDP (fully sharded) draft / target.

Launched by ``torchrun`` (env RANK / WORLD_SIZE), every rank processes its share of each global batch.

- Data parallel (default, ``--fsdp none``): every rank holds the whole draft and a replica of the target;
  the trainer sums gradients with one all_reduce per step.
- ``--fsdp target``: the frozen target's decoder layers are sharded with FSDP2 (``fully_shard``): each rank
  stores 1/N of every layer and all-gathers one layer at a time during the forward. The embedding, the
  final norm's neighbours outside the decoder and the LM head stay whole on every rank: the draft reads
  them directly (shared, frozen). GPU memory for the target ≈ embedding + LM head + layers / N.
- ``--fsdp draft``: the draft's parameters, gradients and AdamW state are sharded (1/N per rank);
  parameters are all-gathered for each forward and backward, gradients reduce-scattered (summed: the
  objectives already divide by global counts). Worth it when the target is large: the draft is one
  decoder-sized layer whose fp32 weights + gradients + AdamW moments take 16 bytes per parameter.
- ``--fsdp both``: the two together.

With FSDP every rank takes part in every forward of a sharded module, so held-out evaluation runs on
all ranks (same batches; rank 0 keeps the result) and checkpoints are gathered to full tensors
collectively before rank 0 writes them. Checkpoints do not depend on the mode: a run can be resumed
with a different ``--fsdp`` setting or number of ranks (the global batch must stay the same).

Host memory: each rank reads the target checkpoint on the CPU before sharding it onto its GPU.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from beagle.errors import BeagleError
from beagle.ranks import Distributed, launched_by_torchrun

logger = logging.getLogger(__name__)

FSDP_MODES = ("none", "draft", "target", "both")


def check_fsdp_mode(mode: str) -> str:
    if mode not in FSDP_MODES:
        raise BeagleError(f"unknown --fsdp {mode!r}; choose one of {', '.join(FSDP_MODES)}")
    if mode != "none" and not launched_by_torchrun():
        raise BeagleError(f"--fsdp {mode} shards over torchrun ranks; launch with "
                          "`torchrun --nproc-per-node N -m beagle.cli.main train ... --fsdp " + mode + "`")
    return mode


def device_mesh(dist: Distributed, device: torch.device):
    """A 1-D mesh over all ranks on ``device``'s type."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.world_size,))


# --------------------------------------------------------------------------- target


def shard_target(target, mesh, device: torch.device) -> None:
    """FSDP2 over the target's decoder layers (one all-gather per layer in the forward), then ``device``.

    The embedding and the LM head are left whole (ignored by FSDP): the draft uses them directly.
    ``target`` may sit on the CPU: every module FSDP manages is moved to the mesh's device as it is
    sharded, so the whole target never needs to fit on one GPU.
    """
    from torch.distributed.fsdp import fully_shard

    layers = getattr(target.decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise BeagleError(f"cannot shard target {target.name!r}: its decoder has no `layers` list of blocks")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    decoder_params = {id(p) for p in target.decoder.parameters()}
    whole = {p for p in (*target.embed.parameters(), *target.lm_head.parameters()) if id(p) in decoder_params}
    fully_shard(target.decoder, mesh=mesh, ignored_params=whole or None)
    _move_unsharded(target.model, device)
    logger.info("target %s sharded over %d ranks (%d decoder layers)", target.name, mesh.size(), len(layers))


def _move_unsharded(model: nn.Module, device: torch.device) -> None:
    """Move what FSDP left alone (embedding, LM head, buffers) to ``device``, keeping tied weights tied."""
    from torch.distributed.tensor import DTensor

    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if not isinstance(parameter, DTensor) and parameter.device != device:
                parameter.data = parameter.data.to(device)  # same Parameter object: ties survive
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and not isinstance(buffer, DTensor) and buffer.device != device:
                module._buffers[name] = buffer.to(device)


def is_sharded_module(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


# --------------------------------------------------------------------------- draft


def shard_draft(draft, mesh) -> None:
    """FSDP2 over the whole draft (one parameter group: it is a single layer).

    Besides ``forward``, the draft methods that training calls directly (``draft.fsdp_methods``) are
    registered so that they all-gather the parameters too. Gradients are summed over ranks.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # FSDP warns when a hooked method returns a view (K/V projections are transposed views): an in-place
    # op on one would skip its pre-backward hook. Training never writes into draft outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    fully_shard(draft, mesh=mesh)
    for name in draft.fsdp_methods:
        register_fsdp_forward_method(draft, name)
    if hasattr(draft, "set_gradient_divide_factor") and hasattr(draft, "set_force_sum_reduction_for_comms"):
        draft.set_gradient_divide_factor(1.0)  # sum, not mean: losses are already divided by global counts
        draft.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
        draft._beagle_grad_scale = 1.0
    else:  # older torch: reduce-scatter averages; the trainer multiplies the gradients back
        draft._beagle_grad_scale = float(mesh.size())
    logger.info("draft sharded over %d ranks", mesh.size())


def gradient_scale(draft) -> float:
    """Factor the trainer applies to a sharded draft's gradients so that they are sums over ranks."""
    return getattr(draft, "_beagle_grad_scale", 1.0)


def local_norm(value) -> float:
    """A float from a (possibly DTensor) scalar, e.g. the total norm from clip_grad_norm_."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)


# --------------------------------------------------------------------------- checkpoints


def full_state(draft: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) CPU state dicts of the draft and its optimizer (optimizer keyed by parameter name).

    Collective when the draft is sharded (every rank must call it); the result is meant for rank 0.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if is_sharded_module(draft):
        return get_model_state_dict(draft, options=options), get_optimizer_state_dict(draft, optimizer, options=options)
    model = {name: tensor.detach().cpu() for name, tensor in draft.state_dict().items()}
    return model, get_optimizer_state_dict(draft, optimizer, options=options)


def load_full_state(draft: nn.Module, optimizer: torch.optim.Optimizer, model: dict, optim: dict) -> None:
    """Load :func:`full_state` dicts into a (possibly sharded) draft and its optimizer on every rank."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if is_sharded_module(draft):
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(draft, model, options=options)
        set_optimizer_state_dict(draft, optimizer, optim, options=options)
    else:
        draft.load_state_dict(model)
        set_optimizer_state_dict(draft, optimizer, optim)
