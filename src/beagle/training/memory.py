"""Memory measurement of training objectives: the bytes autograd graphs hold (deterministic, on CPU)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def peak_saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Peak bytes of tensors held by autograd graphs (saved for backward) while ``fn()`` runs.

    Counts each storage once while any graph holds it and stops counting it when the graph that saved
    it is freed (after backward). Tensors sharing storage with ``exclude`` (parameters, which live
    anyway) are not counted. Deterministic on CPU: a memory measure for comparing objectives.
    """
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    live: dict[int, list[int]] = {}
    tally = {"current": 0, "peak": 0}

    class Saved:
        __slots__ = ("tensor", "key")

        def __init__(self, tensor):
            self.tensor = tensor
            self.key = tensor.untyped_storage().data_ptr()
            if self.key in excluded:
                self.key = None
                return
            entry = live.setdefault(self.key, [0, tensor.untyped_storage().nbytes()])
            if entry[0] == 0:
                tally["current"] += entry[1]
                tally["peak"] = max(tally["peak"], tally["current"])
            entry[0] += 1

        def __del__(self):
            if self.key is None:
                return
            entry = live[self.key]
            entry[0] -= 1
            if entry[0] == 0:
                tally["current"] -= entry[1]
                del live[self.key]

    with torch.autograd.graph.saved_tensors_hooks(Saved, lambda saved: saved.tensor):
        fn()
    return tally["peak"]
