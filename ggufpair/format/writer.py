"""Encoding GGUF metadata and headers, byte for byte as llama.cpp reads them.

Used to rewrite a header around unchanged tensor data, and by the tests to build tiny files.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Sequence

from ggufpair.format.gguf_constants import GGMLQuantizationType, GGUFValueType
from ggufpair.format.reader import _SCALAR_FORMATS, ArrayValue, GGUF_MAGIC

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def encode_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return _U64.pack(len(raw)) + raw


def _encode_scalar(vtype: GGUFValueType, value: Any) -> bytes:
    if vtype == GGUFValueType.STRING:
        return encode_string(value)
    return struct.pack(_SCALAR_FORMATS[vtype], int(value) if vtype == GGUFValueType.BOOL else value)


def encode_value(vtype: GGUFValueType, value: Any, item_type: GGUFValueType | None = None) -> bytes:
    """The type tag and payload of a value. Arrays take a sequence (or an `ArrayValue`) and `item_type`."""
    if vtype != GGUFValueType.ARRAY:
        return _U32.pack(vtype) + _encode_scalar(vtype, value)
    if isinstance(value, ArrayValue):
        return _U32.pack(GGUFValueType.ARRAY) + _U32.pack(value.item_type) + _U64.pack(value.count) + value.raw()
    assert item_type is not None, "arrays need an item type"
    items = list(value)
    if item_type == GGUFValueType.STRING:
        payload = b"".join(encode_string(v) for v in items)
    else:
        fmt = _SCALAR_FORMATS[item_type]
        if item_type == GGUFValueType.BOOL:
            items = [int(v) for v in items]
        payload = struct.pack(f"<{len(items)}{fmt[1]}", *items)
    return _U32.pack(GGUFValueType.ARRAY) + _U32.pack(item_type) + _U64.pack(len(items)) + payload


def encode_kv(key: str, vtype: GGUFValueType, value: Any, item_type: GGUFValueType | None = None) -> bytes:
    return encode_string(key) + encode_value(vtype, value, item_type)


def encode_tensor_info(name: str, shape: Sequence[int], ttype: GGMLQuantizationType, offset: int) -> bytes:
    out = encode_string(name) + _U32.pack(len(shape))
    out += b"".join(_U64.pack(d) for d in shape)
    return out + _U32.pack(ttype) + _U64.pack(offset)


def encode_header(kv_blobs: Iterable[bytes], tensor_blobs: Sequence[bytes], n_kv: int, version: int = 3) -> bytes:
    """Magic, version, counts, the encoded key-value pairs and tensor infos (no alignment padding)."""
    return (GGUF_MAGIC + _U32.pack(version) + _U64.pack(len(tensor_blobs)) + _U64.pack(n_kv)
            + b"".join(kv_blobs) + b"".join(tensor_blobs))
