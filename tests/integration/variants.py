"""Same-length byte patches of a copied real model, to make drafts that differ in one metadata value."""

from __future__ import annotations

import struct
from pathlib import Path

from gguf import GGUFValueType

from ggufpair.format.reader import read_header


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def set_scalar(path: Path, key: str, value) -> None:
    """Overwrite a scalar (bool or uint32) in place; the key must exist with that type."""
    entry = read_header(path).kv[key]
    fmt = {GGUFValueType.BOOL: "<B", GGUFValueType.UINT32: "<I"}[entry.type]
    _write_at(path, entry.value_offset + 4, struct.pack(fmt, int(value)))


def set_token_text(path: Path, token_id: int, text: bytes) -> None:
    """Overwrite one token's text with another of the same byte length."""
    array = read_header(path).kv["tokenizer.ggml.tokens"].value
    with open(path, "rb") as f:
        f.seek(array.start)
        pos = array.start
        for _ in range(token_id):
            (n,) = struct.unpack("<Q", f.read(8))
            f.seek(n, 1)
            pos += 8 + n
        (n,) = struct.unpack("<Q", f.read(8))
    assert n == len(text), f"token {token_id} has {n} bytes, the new text {len(text)}"
    _write_at(path, pos + 8, text)
