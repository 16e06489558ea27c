"""Same-length byte patches of a copied real model, to make drafts that differ in one metadata value."""

from __future__ import annotations

import struct
from pathlib import Path

from gguf import GGUFValueType

from ggufpair.engine.process import ServerProcess
from ggufpair.format.reader import read_header
from ggufpair.pairing.verdict import override_argument


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


def speculation_live(llama_server, target, draft, overrides=None, log_path=None, extra_args=()) -> tuple[bool, str]:
    """Start a real llama-server with the pair; True when every slot reports speculation on."""
    from ggufpair.engine.dialect import probe_dialect

    fit = probe_dialect(llama_server.path).pick("--fit", "-fit")  # nothing to fit on a CPU build: start faster
    args = ["-m", target, "-md", draft, "--spec-type", "draft-simple", "-c", "512", "-np", "1", "-t", "2",
            *([fit, "off"] if fit else []), *extra_args]
    for key, value in (overrides or {}).items():
        args += ["--override-kv", override_argument(key, value)]
    with ServerProcess(llama_server.path, args, log_path=log_path) as server:
        slots = server.get_json("/slots")
        return all(s["speculative"] for s in slots), server.log_text()


def with_token_text(src: Path, dst: Path, token_id: int, text: bytes) -> Path:
    """A copy of `src` whose token `token_id` has another text of any length (the header is re-encoded)."""
    from gguf import GGUFValueType as T

    from ggufpair.fix.apply import new_header_bytes
    from ggufpair.fix.plan import Action, KeyChange

    header = read_header(src)
    tokens = list(header.kv["tokenizer.ggml.tokens"].value.items())
    tokens[token_id] = text
    change = KeyChange("tokenizer.ggml.tokens", Action.SET, None, tokens, T.ARRAY, T.STRING)
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(new_header_bytes(header, [change]))
        f.seek(header.data_offset)
        while chunk := f.read(8 << 20):
            out.write(chunk)
    return dst
