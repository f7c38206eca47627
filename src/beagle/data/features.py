"""Target features: the frozen target's top hidden states H (post final norm), online or offline.

Online: :func:`target_states` runs the target on a right-padded batch. Offline: ``beagle datagen``
(:func:`generate_features`) writes them once into sharded safetensors that :class:`FeatureDataset`
reads back. Only states are stored; the target's next-token distribution is recomputed at train time
as softmax(lm_head(H)) through the frozen LM head (exact: that is how the target computes it).

Shard layout (``shard-00000.safetensors``, ``shard_size`` sequences each, ragged, no padding)::

    offsets   [N + 1] int64     sequence n spans rows offsets[n] : offsets[n + 1]
    input_ids [tokens] int32
    loss_mask [tokens] uint8    1 = assistant token
    states    [tokens, d]       bf16 by default

``manifest.json`` records the target fingerprint (shapes, and ``target_weights``: a fingerprint of the
embedding / LM head), sizes and dtype. Shards are written atomically (:func:`beagle.files.atomic_file`: a
temporary + rename, with the mode of a newly created file) and completed shards are skipped, so an interrupted
datagen resumes; temporaries a killed run left behind are removed when the next one starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from beagle.errors import DataError
from beagle.files import TEMPORARY_SUFFIX, atomic_file, destination_path, remove_stale

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "beagle-features"
VERSION = 1
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Left by a killed datagen: atomic_file's temporaries, and those of earlier versions (``.NAME.tmp``).
STALE_TEMPORARIES = (f".shard-*.safetensors.*{TEMPORARY_SUFFIX}", f".{MANIFEST}.*{TEMPORARY_SUFFIX}",
                     ".shard-*.safetensors.tmp", f".{MANIFEST}.tmp")


@torch.no_grad()
def target_states(target, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Top hidden states of a right-padded batch.

    input_ids: [B, T]; attention_mask: [B, T] (1/True = real token) -> [B, T, d] in the target's dtype
    (rows past a sequence's length are meaningless).
    """
    device = target.device
    mask = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.long)
    if mask is not None and bool(mask.all()):
        mask = None
    output = target.decoder(input_ids=input_ids.to(device), attention_mask=mask, use_cache=False)
    return output.last_hidden_state


def attach_states(batch: dict, target) -> dict:
    """Make sure ``batch["states"]`` holds [B, T, d] target states (online when the batch has none)."""
    if "states" not in batch:
        batch["states"] = target_states(target, batch["input_ids"], batch["attention_mask"])
    return batch


def estimate_disk_bytes(num_tokens: int, hidden_size: int, states_dtype: torch.dtype = torch.bfloat16) -> int:
    """Disk needed by the shards: tokens × d × (2 bytes in bf16) + ids (4) + mask (1) per token."""
    element = torch.empty(0, dtype=states_dtype).element_size()
    return num_tokens * (hidden_size * element + 4 + 1)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def generate_features(
    target,
    dataset,
    out_dir: str | os.PathLike,
    shard_size: int = 1000,
    batch_tokens: int = 16384,
    states_dtype: torch.dtype = torch.bfloat16,
    source: dict | None = None,
    progress: bool = True,
) -> Path:
    """Write the target's states for every sequence of ``dataset`` (a ChatDataset) into ``out_dir``.

    Sequences are processed in dataset order; shard k holds sequences [k·shard_size, (k+1)·shard_size).
    Existing complete shards are kept (resume). ``batch_tokens`` bounds B × T of one target pass.
    Returns the output folder.
    """
    out_dir = destination_path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; pass a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir, STALE_TEMPORARIES)
    lengths = dataset.lengths
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "target": target.fingerprint(),
        "target_weights": target.weights_fingerprint(),
        "hidden_size": int(target.hidden_size),
        "states_dtype": _dtype_name(states_dtype),
        "shard_size": int(shard_size),
        "num_records": len(lengths),
        "num_tokens": int(sum(lengths)),
        "num_shards": (len(lengths) + shard_size - 1) // shard_size,
        "source": source or {},
    }
    _write_or_check_manifest(out_dir, manifest)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=manifest["num_tokens"], desc="datagen", unit="tok", unit_scale=True, dynamic_ncols=True)
    for shard in range(manifest["num_shards"]):
        indices = list(range(shard * shard_size, min(len(lengths), (shard + 1) * shard_size)))
        path = out_dir / shard_name(shard)
        if path.is_file() and _shard_ok(path, len(indices)):
            logger.info("shard %s already complete; skipped", path.name)
        else:
            _write_shard(target, dataset, indices, path, batch_tokens, states_dtype)
        if bar is not None:
            bar.update(sum(lengths[i] for i in indices))
    if bar is not None:
        bar.close()
    return out_dir


def _write_shard(target, dataset, indices: list[int], path: Path, batch_tokens: int, states_dtype) -> None:
    from beagle.data.batches import collate

    items = [dataset[i] for i in indices]
    states: list[torch.Tensor | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: -items[i]["input_ids"].shape[0])  # long first: less padding
    start = 0
    while start < len(order):
        width = items[order[start]]["input_ids"].shape[0]
        count = max(1, batch_tokens // max(width, 1))
        group = order[start : start + count]
        batch = collate([items[i] for i in group])
        hidden = target_states(target, batch["input_ids"], batch["attention_mask"])
        for row, item_index in enumerate(group):
            states[item_index] = hidden[row, : batch["lengths"][row]].to(states_dtype).cpu()
        start += count
    lengths = torch.tensor([item["input_ids"].shape[0] for item in items], dtype=torch.long)
    tensors = {
        "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        "input_ids": torch.cat([item["input_ids"] for item in items]).to(torch.int32),
        "loss_mask": torch.cat([item["loss_mask"] for item in items]).to(torch.uint8),
        "states": torch.cat(states).contiguous(),
    }
    with atomic_file(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": FORMAT, "records": str(len(items))})


def _shard_ok(path: Path, records: int) -> bool:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(handle.metadata().get("records", -1)) == records
    except Exception:  # a corrupt file is rewritten
        return False


def _write_or_check_manifest(out_dir: Path, manifest: dict) -> None:
    path = out_dir / MANIFEST
    if path.is_file():
        existing = _read_manifest(path)
        keys = ("target", "hidden_size", "states_dtype", "shard_size", "num_records", "num_tokens")
        different = [key for key in keys if existing.get(key) != manifest[key]]
        if _other_weights(existing.get("target_weights"), manifest["target_weights"]):
            different.append("the target's weights")
        if different:
            raise DataError(
                f"{out_dir} holds features of a different run (differs in {', '.join(different)}); "
                "use a new --out folder or delete this one"
            )
        return
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise DataError(f"cannot read {path} ({error}); the features folder is damaged: rerun "
                        "`beagle datagen` into a new --out folder") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a `beagle datagen` manifest")
    return manifest


def _other_weights(recorded: dict | None, current: dict | None) -> bool:
    """True when both weight fingerprints are known and differ (older manifests have none)."""
    from beagle.target_model.fingerprint import same_weights

    if recorded is None or current is None:
        return False
    return same_weights(recorded, current) is False


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise DataError(f"unsupported states dtype {dtype}; use one of {sorted(DTYPES)}")


class FeatureDataset(torch.utils.data.Dataset):
    """Read ``beagle datagen`` shards. Item i -> {"input_ids": [L] long, "loss_mask": [L] bool,
    "states": [L, d] (stored dtype)}."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise DataError(f"{self.directory} is not a features folder (no {MANIFEST}); "
                            "create it with `beagle datagen`")
        self.manifest = _read_manifest(path)
        missing = [shard_name(k) for k in range(self.manifest["num_shards"])
                   if not (self.directory / shard_name(k)).is_file()]
        if missing:
            raise DataError(
                f"{self.directory} is incomplete ({len(missing)} of {self.manifest['num_shards']} shards missing); "
                "rerun the same `beagle datagen` command to finish it"
            )
        self._handles: dict[int, object] = {}
        self._offsets = []
        for shard in range(self.manifest["num_shards"]):
            self._offsets.append(self._handle(shard).get_tensor("offsets"))
        self._lengths = [int(length) for offsets in self._offsets for length in offsets.diff()]

    def _handle(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.directory / shard_name(shard)), framework="pt")
        return self._handles[shard]

    def check_target(self, fingerprint: dict, weights: dict | None = None) -> None:
        """Raise DataError when the features were computed by a differently shaped target, or (``weights``:
        the target's :meth:`~beagle.target_model.model.TargetModel.weights_fingerprint`) one with other weights."""
        stored = self.manifest["target"]
        different = [key for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")
                     if stored.get(key) != fingerprint.get(key)]
        if _other_weights(self.manifest.get("target_weights"), weights):
            different.append("its embedding / LM-head weights")
        if different:
            raise DataError(
                f"features in {self.directory} come from target {stored.get('name')!r}, which differs from "
                f"{fingerprint.get('name')!r} in {', '.join(different)}; regenerate them with `beagle datagen`"
            )
        if stored.get("name") != fingerprint.get("name"):
            logger.warning("features were generated by %r, training with %r (same shapes)", stored.get("name"),
                           fingerprint.get("name"))

    def content_digest(self) -> str:
        """A hash of what training reads: the manifest's sizes and the shards' token ids, masks and offsets
        (not the states: they follow from the ids and the target, which is fingerprinted separately)."""
        digest = hashlib.blake2b(digest_size=16)
        sizes = {key: self.manifest.get(key) for key in ("states_dtype", "shard_size", "num_records", "num_tokens")}
        digest.update(json.dumps(sizes, sort_keys=True).encode())
        for shard in range(self.manifest["num_shards"]):
            handle = self._handle(shard)
            for name in ("offsets", "input_ids", "loss_mask"):
                digest.update(handle.get_tensor(name).numpy().tobytes())
        return "features:" + digest.hexdigest()

    def __len__(self) -> int:
        return len(self._lengths)

    @property
    def lengths(self) -> list[int]:
        return list(self._lengths)

    def tokens(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence ``index`` without its states: (input_ids [L] long, loss_mask [L] bool)."""
        shard, row = divmod(index, self.manifest["shard_size"])
        offsets = self._offsets[shard]
        start, end = int(offsets[row]), int(offsets[row + 1])
        handle = self._handle(shard)
        return (handle.get_slice("input_ids")[start:end].to(torch.long),
                handle.get_slice("loss_mask")[start:end].to(torch.bool))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        shard, row = divmod(index, self.manifest["shard_size"])
        offsets = self._offsets[shard]
        start, end = int(offsets[row]), int(offsets[row + 1])
        handle = self._handle(shard)
        return {
            "input_ids": handle.get_slice("input_ids")[start:end].to(torch.long),
            "loss_mask": handle.get_slice("loss_mask")[start:end].to(torch.bool),
            "states": handle.get_slice("states")[start:end],
        }
