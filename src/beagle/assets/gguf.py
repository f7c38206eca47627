"""A small numpy reader for GGUF v3 files (llama.cpp's model format), with dequantisation.

File layout (all integers little-endian)::

    magic        4 bytes  b"GGUF"
    version      uint32   (2 or 3 supported)
    n_tensors    uint64
    n_kv         uint64
    n_kv x       key: string, value_type: uint32, value
    n_tensors x  name: string, n_dims: uint32, dims: uint64[n_dims], ggml_type: uint32, offset: uint64
    padding      to `general.alignment` (default 32)
    tensor data  each tensor at data_start + offset

    string = uint64 length + UTF-8 bytes
    array  = elem_type: uint32, count: uint64, count x elem

GGUF dims are listed fastest-varying first (``ne0`` = row length), so the numpy shape is the
reversed list: a matrix with ``dims == [in, out]`` is a numpy/torch array of shape ``(out, in)``.

Supported tensor types (``ggml_type``) for :func:`dequantize`:

* ``F32`` (0): plain float32.
* ``F16`` (1): plain float16.
* ``Q4_1`` (3): blocks of 32 elements, 20 bytes each: fp16 scale ``d``, fp16 minimum ``m``,
  16 bytes of packed nibbles. Byte ``j`` holds element ``j`` in its low nibble and element
  ``j + 16`` in its high nibble. Value = ``q * d + m`` with ``q`` in 0..15.
* ``Q8_0`` (8): blocks of 32 elements, 34 bytes each: fp16 scale ``d`` then 32 int8 ``q``.
  Value = ``q * d``.

Other types raise :class:`~beagle.errors.DataError`.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beagle.errors import DataError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

_SCALAR_DTYPES: dict[int, np.dtype] = {
    UINT8: np.dtype("<u1"),
    INT8: np.dtype("<i1"),
    UINT16: np.dtype("<u2"),
    INT16: np.dtype("<i2"),
    UINT32: np.dtype("<u4"),
    INT32: np.dtype("<i4"),
    FLOAT32: np.dtype("<f4"),
    BOOL: np.dtype("<u1"),
    UINT64: np.dtype("<u8"),
    INT64: np.dtype("<i8"),
    FLOAT64: np.dtype("<f8"),
}

# ggml tensor types (subset named for messages; only some are dequantisable).
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1 = 0, 1, 2, 3
GGML_Q8_0 = 8
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
}
# (elements per block, bytes per block)
_BLOCK_LAYOUT = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_1: (32, 20), GGML_Q8_0: (32, 34)}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's directory entry. ``shape`` is the numpy shape (GGUF dims reversed)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute byte offset in the file

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.ggml_type, f"type{self.ggml_type}")

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def n_bytes(self) -> int:
        """Size of the raw data; raises DataError for unsupported types."""
        block, nbytes = _layout(self.ggml_type, self.name)
        if self.n_elements % block:
            raise DataError(f"GGUF tensor {self.name}: {self.n_elements} elements is not a multiple of {block}")
        return self.n_elements // block * nbytes


def _layout(ggml_type: int, name: str) -> tuple[int, int]:
    try:
        return _BLOCK_LAYOUT[ggml_type]
    except KeyError:
        type_name = GGML_TYPE_NAMES.get(ggml_type, f"type {ggml_type}")
        supported = ", ".join(GGML_TYPE_NAMES[t] for t in _BLOCK_LAYOUT)
        raise DataError(
            f"GGUF tensor {name} has type {type_name}, which this reader cannot dequantise "
            f"(supported: {supported})"
        ) from None


class _Cursor:
    """Sequential little-endian reader over a uint8 memmap."""

    def __init__(self, buf: np.ndarray, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > len(self.buf):
            raise DataError(f"{self.path}: truncated GGUF file (wanted {n} bytes at offset {self.pos})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size).tobytes())[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        return self.take(n).tobytes().decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype = self.scalar("<I")
            count = self.scalar("<Q")
            if etype in _SCALAR_DTYPES:
                dtype = _SCALAR_DTYPES[etype]
                arr = np.frombuffer(self.take(count * dtype.itemsize).tobytes(), dtype=dtype)
                return [bool(x) for x in arr] if etype == BOOL else arr.tolist()
            return [self.value(etype) for _ in range(count)]
        if vtype in _SCALAR_DTYPES:
            dtype = _SCALAR_DTYPES[vtype]
            item = np.frombuffer(self.take(dtype.itemsize).tobytes(), dtype=dtype)[0].item()
            return bool(item) if vtype == BOOL else item
        raise DataError(f"{self.path}: unknown GGUF metadata value type {vtype} at offset {self.pos}")


class GGUFReader:
    """Parse a GGUF file's header, metadata and tensor directory; tensor data stays memory-mapped.

    Attributes:
        path: the file.
        version: GGUF version (2 or 3).
        metadata: ``{key: value}``; arrays become Python lists (strings, ints, floats).
        tensors: ``{name: TensorInfo}`` in file order.
        alignment: data alignment in bytes (``general.alignment``, default 32).
        data_start: absolute offset of the tensor data section.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as error:
            raise DataError(f"cannot open GGUF file {self.path}: {error}") from error
        cur = _Cursor(self._buf, self.path)
        magic = cur.take(4).tobytes()
        if magic != GGUF_MAGIC:
            raise DataError(f"{self.path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.version: int = cur.scalar("<I")
        if self.version not in (2, 3):
            raise DataError(f"{self.path}: GGUF version {self.version} is not supported (need 2 or 3)")
        n_tensors = cur.scalar("<Q")
        n_kv = cur.scalar("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.scalar("<I"))
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            ggml_type = cur.scalar("<I")
            offset = cur.scalar("<Q")
            raw.append((name, tuple(reversed(dims)), ggml_type, offset))
        self.alignment: int = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        self.data_start: int = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {
            name: TensorInfo(name, shape, ggml_type, self.data_start + offset)
            for name, shape, ggml_type, offset in raw
        }
        logger.info(
            "GGUF v%d %s: %d metadata keys, %d tensors", self.version, self.path.name, n_kv, n_tensors
        )

    def raw(self, name: str) -> np.ndarray:
        """The tensor's raw bytes as a read-only uint8 memmap view."""
        info = self._info(name)
        end = info.offset + info.n_bytes
        if end > len(self._buf):
            raise DataError(f"{self.path}: tensor {name} runs past the end of the file (truncated?)")
        return self._buf[info.offset : end]

    def tensor(self, name: str) -> np.ndarray:
        """Dequantised float32 array of the tensor's numpy shape (GGUF dims reversed)."""
        info = self._info(name)
        return dequantize(self.raw(name), info.ggml_type, info.shape, name=name)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise DataError(f"{self.path}: no tensor named {name!r}") from None


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...], name: str = "tensor") -> np.ndarray:
    """Decode raw bytes (uint8, any length matching ``shape``) into float32 of ``shape``."""
    raw = np.asarray(raw, dtype=np.uint8)
    if ggml_type == GGML_F32:
        out = raw.view("<f4").astype(np.float32)
    elif ggml_type == GGML_F16:
        out = raw.view("<f2").astype(np.float32)
    elif ggml_type == GGML_Q8_0:
        out = dequantize_q8_0(raw)
    elif ggml_type == GGML_Q4_1:
        out = dequantize_q4_1(raw)
    else:
        _layout(ggml_type, name)  # raises the clear error
        raise AssertionError("unreachable")
    return out.reshape(shape)


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0: ``(n_blocks * 34,)`` uint8 → ``(n_blocks * 32,)`` float32; block = fp16 d, 32 × int8 q; x = q·d."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, 34)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n, 1)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)  # (n, 32)
    return (q * d).reshape(-1)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1: ``(n_blocks * 20,)`` uint8 → ``(n_blocks * 32,)`` float32.

    Block = fp16 d, fp16 m, 16 bytes; element j (j < 16) is the low nibble of byte j and element
    j + 16 the high nibble; x = q·d + m.
    """
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, 20)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)  # (n, 1)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)  # (n, 1)
    packed = blocks[:, 4:]  # (n, 16)
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)  # (n, 32)
    return (q * d + m).reshape(-1)
