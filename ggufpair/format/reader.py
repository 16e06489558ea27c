"""A fast, defensive reader of GGUF headers (metadata and tensor infos, never tensor data).

`gguf.GGUFReader` builds a numpy view for every array element, which costs seconds on a 262k-token
vocabulary. This reader walks the header once with `struct` over a read-only memory map, keeps large
arrays (token texts, scores, merges) as lazy spans of the file, and checks every count and length against
the bytes left before it slices anything, so a hostile or truncated file raises `GGUFFormatError`
instead of exhausting memory. It accepts what llama.cpp's own loader (`ggml/src/gguf.cpp`) accepts and
rejects what it rejects (GGUF v2/v3, no nested arrays, unique keys and tensor names, power-of-two
alignment, tensor offsets in order).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ggufpair.errors import GGUFFormatError, ModelFileError
from ggufpair.format.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_STRING_LENGTH = 1 << 30  # GGUF_MAX_STRING_LENGTH in gguf.cpp
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME - 1
MAX_DIMS = 4
EAGER_ARRAY_LIMIT = 4096
"""Arrays with at most this many items are decoded while reading; longer ones stay lazy spans."""

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<B",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_SIZES = {t: struct.calcsize(f) for t, f in _SCALAR_FORMATS.items()}
_NUMPY_DTYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class ArrayValue:
    """A GGUF array: its item type, count and byte span in the file; items decoded on demand.

    String items are `bytes`, exactly as llama.cpp stores and compares them (token texts need not be UTF-8).
    """

    path: Path
    item_type: GGUFValueType
    count: int
    start: int
    end: int
    eager: tuple | None = field(default=None, compare=False, repr=False)

    def items(self) -> tuple:
        """All items: ints/floats/bools for numbers, bytes for strings."""
        if self.eager is not None:
            return self.eager
        with _open_map(self.path) as buf:
            if len(buf) < self.end:
                raise GGUFFormatError(self.path, self.start, "file changed since it was read (array now truncated)")
            return _decode_array(buf, self.path, self.item_type, self.count, self.start, self.end)

    def raw(self) -> bytes:
        """The encoded bytes of the items (without the type and count prefix)."""
        with _open_map(self.path) as buf:
            return bytes(buf[self.start:self.end])

    def numpy(self):
        """Numeric items as a numpy array (not for strings)."""
        import numpy as np

        if self.item_type == GGUFValueType.STRING:
            raise TypeError("string arrays have no numpy form")
        return np.frombuffer(self.raw(), dtype=_NUMPY_DTYPES[self.item_type], count=self.count)

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class KVEntry:
    """One metadata key-value pair and where it sits in the file (for in-place patching)."""

    key: str
    type: GGUFValueType
    value: Any  # int | float | bool | str | ArrayValue
    key_offset: int  # where the key's length prefix starts
    value_offset: int  # where the value's type tag starts
    end: int  # one past the value's last byte


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] is the row length
    type: GGMLQuantizationType
    offset: int  # relative to the start of the data section
    info_offset: int  # where this tensor info starts in the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * type_size


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    file_size: int
    version: int
    alignment: int
    kv: dict[str, KVEntry]
    tensors: tuple[TensorInfo, ...]
    kv_start: int  # first byte of the first key-value pair
    tensor_info_start: int
    header_end: int  # one past the last tensor info
    data_offset: int  # start of the aligned data section
    data_size: int  # bytes of tensor data, padding included

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.kv.get(key)
        return default if entry is None else entry.value

    def __contains__(self, key: str) -> bool:
        return key in self.kv


class _open_map:
    """A read-only memory map of a file (an empty bytes object for an empty file), as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._map: mmap.mmap | None = None

    def __enter__(self):
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise ModelFileError(self.path, "no such file") from None
        except IsADirectoryError:
            raise ModelFileError(self.path, "is a folder, not a GGUF file") from None
        except PermissionError:
            raise ModelFileError(self.path, "permission denied") from None
        except OSError as e:
            raise ModelFileError(self.path, f"cannot open: {e.strerror or e}") from None
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return b""
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def __exit__(self, *exc) -> None:
        if self._map is not None:
            self._map.close()
        if self._file is not None:
            self._file.close()


class _Cursor:
    """Bounds-checked little-endian reads over a buffer; every failure names the file and offset."""

    __slots__ = ("buf", "pos", "size", "path")

    def __init__(self, buf, path: Path, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.size = len(buf)
        self.path = path

    def fail(self, problem: str, offset: int | None = None) -> GGUFFormatError:
        return GGUFFormatError(self.path, self.pos if offset is None else offset, problem)

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"truncated: {what} needs {n} bytes but only {self.size - self.pos} remain{CUT_SHORT}")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def scalar(self, vtype: GGUFValueType, what: str):
        size = _SCALAR_SIZES[vtype]
        self.need(size, what)
        (v,) = struct.unpack_from(_SCALAR_FORMATS[vtype], self.buf, self.pos)
        self.pos += size
        return bool(v) if vtype == GGUFValueType.BOOL else v

    def raw_string(self, what: str) -> bytes:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > MAX_STRING_LENGTH:
            raise self.fail(f"{what} claims {n} bytes, more than GGUF's limit of {MAX_STRING_LENGTH}", start)
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def text(self, what: str) -> str:
        start = self.pos
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start} of the string)", start + 8 + e.start) from None

    def value_type(self, what: str) -> GGUFValueType:
        start = self.pos
        raw = self.u32(what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {raw}", start) from None


CUT_SHORT = " (the header is cut short: an interrupted download or copy?)"


def _skip_strings(buf, path: Path, count: int, pos: int, limit: int) -> int:
    """Walk `count` length-prefixed strings from `pos`; return the end. The hot loop of the reader."""
    unpack = _U64.unpack_from
    for i in range(count):
        if pos + 8 > limit:
            raise GGUFFormatError(path, pos, f"truncated: string {i} of {count} in an array has no length{CUT_SHORT}")
        (n,) = unpack(buf, pos)
        pos += 8
        if n > limit - pos:
            raise GGUFFormatError(path, pos - 8, f"string {i} of {count} in an array claims {n} bytes but only "
                                                 f"{limit - pos} remain{CUT_SHORT}")
        pos += n
    return pos


def _decode_array(buf, path: Path, item_type: GGUFValueType, count: int, start: int, end: int) -> tuple:
    if item_type == GGUFValueType.STRING:
        out = []
        pos = start
        unpack = _U64.unpack_from
        for _ in range(count):
            (n,) = unpack(buf, pos)
            pos += 8
            out.append(bytes(buf[pos:pos + n]))
            pos += n
        return tuple(out)
    fmt = _SCALAR_FORMATS[item_type]
    values = struct.unpack_from(f"<{count}{fmt[1]}", buf, start)
    if item_type == GGUFValueType.BOOL:
        values = tuple(bool(v) for v in values)
    return values


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.text(f"value of {key!r}")
    if vtype != GGUFValueType.ARRAY:
        return cur.scalar(vtype, f"value of {key!r}")
    item_type = cur.value_type(f"item type of array {key!r}")
    if item_type == GGUFValueType.ARRAY:
        raise cur.fail(f"array {key!r} holds arrays; nested arrays are not supported by llama.cpp", cur.pos - 4)
    count_offset = cur.pos
    count = cur.u64(f"item count of array {key!r}")
    min_item = 8 if item_type == GGUFValueType.STRING else _SCALAR_SIZES[item_type]
    if count > (cur.size - cur.pos) // min_item:
        raise cur.fail(f"array {key!r} claims {count} items, more than the {cur.size - cur.pos} bytes left can hold", count_offset)
    start = cur.pos
    if item_type == GGUFValueType.STRING:
        end = _skip_strings(cur.buf, cur.path, count, start, cur.size)
    else:
        end = start + count * min_item
    cur.pos = end
    eager = None
    if count <= EAGER_ARRAY_LIMIT:
        eager = _decode_array(cur.buf, cur.path, item_type, count, start, end)
        if item_type == GGUFValueType.STRING and not key.startswith("tokenizer.ggml."):
            for i, s in enumerate(eager):
                try:
                    s.decode("utf-8")
                except UnicodeDecodeError:
                    raise cur.fail(f"item {i} of array {key!r} is not valid UTF-8", start) from None
    return ArrayValue(cur.path, item_type, count, start, end, eager)


def _read_tensor_info(cur: _Cursor, index: int) -> TensorInfo:
    info_offset = cur.pos
    name = cur.text(f"name of tensor {index}")
    if len(name.encode()) > MAX_TENSOR_NAME:
        raise cur.fail(f"tensor name {name[:80]!r} is longer than llama.cpp's limit of {MAX_TENSOR_NAME} bytes", info_offset)
    n_dims = cur.u32(f"dimension count of tensor {name!r}")
    if n_dims > MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {n_dims} dimensions, at most {MAX_DIMS} are allowed", cur.pos - 4)
    shape = []
    for _ in range(n_dims):
        d = cur.u64(f"dimension of tensor {name!r}")
        if d >= 1 << 63:
            raise cur.fail(f"tensor {name!r} has a negative dimension", cur.pos - 8)
        shape.append(d)
    n = 1
    for d in shape:
        n *= d
    if n >= 1 << 63:
        raise cur.fail(f"tensor {name!r} has {n} elements, which overflows llama.cpp's int64 count", info_offset)
    type_offset = cur.pos
    raw_type = cur.u32(f"type of tensor {name!r}")
    try:
        ttype = GGMLQuantizationType(raw_type)
        block, type_size = GGML_QUANT_SIZES[ttype]
    except (ValueError, KeyError):
        raise cur.fail(f"tensor {name!r} has unknown ggml type {raw_type}", type_offset) from None
    if shape and shape[0] % block != 0:
        raise cur.fail(f"tensor {name!r} of type {ttype.name} has rows of {shape[0]} elements, not a multiple of its block size {block}", type_offset)
    offset = cur.u64(f"data offset of tensor {name!r}")
    return TensorInfo(name, tuple(shape), ttype, offset, info_offset)


def _pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def parse_header(buf, path: Path) -> GGUFHeader:
    """Parse the header in `buf` (the whole file, or its first bytes for a damaged one)."""
    cur = _Cursor(buf, path)
    cur.need(4, "the GGUF magic")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (magic {magic!r}, expected b'GGUF')", 0)
    cur.pos = 4
    version = cur.u32("the GGUF version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version & 0xFFFF == 0 and swapped in (1, 2, 3):
            raise cur.fail(f"big-endian GGUF (version field reads {swapped} byte-swapped); llama.cpp on this machine reads little-endian files only", 4)
        if version == 1:
            raise cur.fail("GGUF version 1 is no longer supported by llama.cpp; convert the model again", 4)
        raise cur.fail(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})", 4)
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    # Each key-value pair needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info 8 + 4 + 4 + 8.
    if n_kv > (cur.size - cur.pos) // 13:
        raise cur.fail(f"header claims {n_kv} metadata entries, more than the file can hold", 16)
    if n_tensors > (cur.size - cur.pos) // 24:
        raise cur.fail(f"header claims {n_tensors} tensors, more than the file can hold", 8)

    kv_start = cur.pos
    kv: dict[str, KVEntry] = {}
    for i in range(n_kv):
        key_offset = cur.pos
        key = cur.text(f"key of metadata entry {i}")
        if not key:
            raise cur.fail(f"metadata entry {i} has an empty key", key_offset)
        if key in kv:
            raise cur.fail(f"duplicate metadata key {key!r}", key_offset)
        value_offset = cur.pos
        vtype = cur.value_type(f"type of {key!r}")
        value = _read_value(cur, vtype, key)
        kv[key] = KVEntry(key, vtype, value, key_offset, value_offset, cur.pos)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        entry = kv["general.alignment"]
        if entry.type != GGUFValueType.UINT32:
            raise cur.fail(f"general.alignment must be UINT32, not {entry.type.name}", entry.value_offset)
        alignment = entry.value
        if alignment == 0 or alignment & (alignment - 1):
            raise cur.fail(f"general.alignment {alignment} is not a power of 2", entry.value_offset)

    tensor_info_start = cur.pos
    tensors = []
    names: set[str] = set()
    for i in range(n_tensors):
        info = _read_tensor_info(cur, i)
        if info.name in names:
            raise cur.fail(f"duplicate tensor name {info.name!r}", info.info_offset)
        names.add(info.name)
        tensors.append(info)
    header_end = cur.pos
    data_offset = _pad(header_end, alignment) if tensors else header_end

    expected = 0
    for info in tensors:
        if info.offset != expected:
            raise cur.fail(f"tensor {info.name!r} has data offset {info.offset}, expected {expected} (offsets must be in order and aligned to {alignment})", info.info_offset)
        expected += _pad(info.n_bytes, alignment)
    data_size = expected
    return GGUFHeader(path, len(buf), version, alignment, kv, tuple(tensors), kv_start, tensor_info_start, header_end, data_offset, data_size)


def read_header(path: str | os.PathLike, *, check_data: bool = True) -> GGUFHeader:
    """Read a GGUF file's header. With `check_data`, a file too short for its tensor data is an error."""
    path = Path(path)
    with _open_map(path) as buf:
        header = parse_header(buf, path)
    if check_data and header.data_offset + _last_tensor_end(header) > header.file_size:
        need = header.data_offset + _last_tensor_end(header)
        raise GGUFFormatError(path, header.file_size, f"truncated: its header and tensor data need a file of {need} bytes but it has {header.file_size} (an interrupted download or copy?)")
    return header


def _last_tensor_end(header: GGUFHeader) -> int:
    if not header.tensors:
        return 0
    last = header.tensors[-1]
    return last.offset + last.n_bytes
