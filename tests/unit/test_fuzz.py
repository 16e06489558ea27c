"""Fuzzing `parse_header` with damaged real headers: it either succeeds or raises `GGUFFormatError`.

Nothing else may come out (no struct.error, IndexError, UnicodeDecodeError, MemoryError, OverflowError...),
the error offset must lie inside the buffer, and no claimed length or count may ever be allocated:
every loop runs under tracemalloc, and the peak of each single parse and of the whole loop must stay
below 64 MiB (in practice it is under 1 MiB).

Inputs, all real headers:
- gemma prefix: the first 64 KiB of Gemma 3 270M (262,144 tokens), itself cut inside the token array;
- gemma head:   that prefix cut after the last whole token below 6 KiB, with the counts patched so it
                parses (real keys and real token texts, so mutations reach the string-array walker);
- tiny:         a whole `tiny_model` file (64 tokens; keys of every kind, two tensors), which parses unmutated.

A failure message names the input and the exact byte writes, e.g.
`tiny + [(4242, 'ffffffffffffffff')]`; `mutate(buf, writes)` below replays it.
"""

from __future__ import annotations

import random
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
from gguf import GGUFValueType as T
from hypothesis import HealthCheck, given, settings, strategies as st

from ggufpair.errors import GGUFFormatError
from ggufpair.format.reader import GGUFHeader, parse_header
from tests.ggufmake import tiny_model

PATH = Path("fuzzed.gguf")  # only named in messages; parse_header never opens it
PREFIX_SIZE = 64 * 1024
HEAD_SIZE = 6 * 1024  # ~350 tokens: string-array items to damage, yet quick to parse
TINY_TOKENS = 64  # fewer than tiny_model's default 300, so every-offset loops stay fast under tracemalloc
FLIP_REGION = 16 * 1024  # byte flips land in the first 16 KiB of each input
PEAK_LIMIT = 64 * 1024 * 1024
SEED = 20240531
N_RANDOM = 2000  # seeded random mutations per input

Writes = list[tuple[int, bytes]]


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


# 8- and 4-byte values written over length, count, type and offset fields.
WIDE_PAYLOADS = [b"\xff" * 8, u64(2**63), u64(2**63 - 1), u64(2**32), u64(2**30 + 1), u64(0)]
NARROW_PAYLOADS = [u32(2**31), u32(13), u32(T.ARRAY), u32(T.STRING), u32(5), u32(0xFFFFFFFF)]
U32_VALUES = [0, 1, 5, 7, 8, 9, 12, 13, 31, 40, 2**31, 2**32 - 1]


def mutate(buf: bytes, writes: Writes) -> bytes:
    """`buf` with each (offset, bytes) written over it (cut at the end of the buffer)."""
    out = bytearray(buf)
    for pos, data in writes:
        data = data[:max(0, len(out) - pos)]
        out[pos:pos + len(data)] = data
    return bytes(out)


def show(name: str, writes: Writes) -> str:
    return f"{name} + {[(pos, data.hex()) for pos, data in writes]}"


def attempt(buf, how: str) -> GGUFHeader | GGUFFormatError:
    """Parse `buf`; return the header or the GGUFFormatError. Anything else fails the test, saying `how`.

    Under tracemalloc, the peak allocation of this one parse is checked too, so the failure names the
    mutation that made the reader allocate a claimed length.
    """
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
    try:
        result = parse_header(buf, PATH)
    except GGUFFormatError as err:
        result = err
    except Exception as exc:  # noqa: BLE001 - re-raised with the mutation that caused it
        raise AssertionError(f"{how}: {type(exc).__name__} instead of GGUFFormatError: {exc!r}") from exc
    if tracing:
        grown = tracemalloc.get_traced_memory()[1] - base
        assert grown < PEAK_LIMIT, f"{how}: parsing allocated {grown} bytes at peak (limit {PEAK_LIMIT})"
    if isinstance(result, GGUFFormatError):
        if not 0 <= result.offset <= len(buf):
            raise AssertionError(f"{how}: error offset {result.offset} outside the {len(buf)}-byte buffer: {result}")
        if str(PATH) not in str(result) or not result.problem:
            raise AssertionError(f"{how}: error does not name the file and a problem: {result!r}")
    else:
        check_consistent(result, len(buf), how)
    return result


def check_consistent(h: GGUFHeader, size: int, how: str) -> None:
    """What a successful parse promises about its spans."""
    assert h.kv_start == 24, how
    assert h.kv_start <= h.tensor_info_start <= h.header_end <= size, how
    assert h.header_end <= h.data_offset and h.data_offset % h.alignment == 0 or not h.tensors, how
    assert h.alignment > 0 and h.alignment & (h.alignment - 1) == 0, how
    end = h.kv_start
    for entry in h.kv.values():
        assert end == entry.key_offset < entry.value_offset < entry.end, how
        end = entry.end
        if entry.type == T.ARRAY:
            arr = entry.value
            assert entry.value_offset + 16 == arr.start <= arr.end == entry.end, how
            if arr.eager is not None:
                assert len(arr.eager) == arr.count, how
    assert end == h.tensor_info_start, how
    for t in h.tensors:
        assert len(t.shape) <= 4 and h.tensor_info_start <= t.info_offset < h.header_end, how


@contextmanager
def bounded_allocation(limit: int = PEAK_LIMIT):
    """Trace allocations inside the block; fail if their peak reaches `limit` bytes."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert peak - base < limit, f"parsing allocated {peak - base} bytes at peak (limit {limit})"


# --- inputs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_prefix(gemma_q4) -> bytes:
    with open(gemma_q4, "rb") as f:  # only the first bytes of the 253 MB file
        return f.read(PREFIX_SIZE)


@pytest.fixture(scope="module")
def gemma_head(gemma_prefix) -> bytes:
    """The prefix made parseable: cut after the last whole token below HEAD_SIZE, counts patched."""
    with pytest.raises(GGUFFormatError) as info:
        parse_header(gemma_prefix, PATH)
    assert "'tokenizer.ggml.tokens' claims 262144 items" in info.value.problem
    count_offset = info.value.offset
    pos, n_tokens = count_offset + 8, 0
    while pos + 8 <= HEAD_SIZE:
        (n,) = struct.unpack_from("<Q", gemma_prefix, pos)
        if pos + 8 + n > HEAD_SIZE:
            break
        pos, n_tokens = pos + 8 + n, n_tokens + 1
    head = bytearray(gemma_prefix[:pos])
    head[count_offset:count_offset + 8] = u64(n_tokens)
    head[8:16] = u64(0)  # no tensor infos
    for n_kv in range(1, 64):  # the token array's position among the keys
        head[16:24] = u64(n_kv)
        result = attempt(bytes(head), f"gemma head with {n_kv} keys")
        if isinstance(result, GGUFHeader) and list(result.kv)[-1] == "tokenizer.ggml.tokens":
            assert result.header_end == len(head) and len(result.get("tokenizer.ggml.tokens")) == n_tokens > 200
            return bytes(head)
    pytest.fail("could not make the Gemma prefix parseable")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return tiny_model(tmp_path_factory.mktemp("fuzz") / "tiny.gguf", n_tokens=TINY_TOKENS).read_bytes()


class Inputs(dict):
    """The inputs by name, with a short repr (hypothesis prints its arguments when a case fails)."""

    def __repr__(self) -> str:
        return f"<fuzz inputs: {', '.join(f'{k} ({len(v)} bytes)' for k, v in self.items())}>"


@pytest.fixture(scope="module")
def inputs(tiny, gemma_prefix, gemma_head) -> Inputs:
    return Inputs({"tiny": tiny, "gemma prefix": gemma_prefix, "gemma head": gemma_head})


def field_offsets(buf: bytes) -> list[int]:
    """Where the fixed fields, key lengths, value types, string lengths, array counts, some array item
    lengths and the tensor info fields of `buf` start (from a successful parse of it)."""
    h = parse_header(buf, PATH)
    offsets = {4, 8, 16}
    for entry in h.kv.values():
        offsets |= {entry.key_offset, entry.value_offset, entry.value_offset + 4}
        if entry.type == T.ARRAY:
            offsets.add(entry.value_offset + 8)
            if entry.value.item_type == T.STRING:
                pos = entry.value.start
                for i in range(entry.value.count):
                    if i < 32 or i % 16 == 0 or i == entry.value.count - 1:
                        offsets.add(pos)
                    pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
    for t in h.tensors:
        pos = t.info_offset + 8 + len(t.name.encode())
        offsets |= {t.info_offset, pos}
        offsets |= {pos + 4 + 8 * i for i in range(len(t.shape))}
        offsets |= {pos + 4 + 8 * len(t.shape), pos + 8 + 8 * len(t.shape)}
    return sorted(offsets)


# --- the properties ------------------------------------------------------------------------------------


def test_gemma_prefix_is_itself_truncated(gemma_prefix):
    err = attempt(gemma_prefix, "gemma prefix")
    assert isinstance(err, GGUFFormatError)
    assert "tokenizer.ggml.tokens" in err.problem and "262144 items" in err.problem


def test_truncation_at_every_offset_of_gemma_prefix(gemma_prefix):
    view = memoryview(gemma_prefix)
    with bounded_allocation():
        for n in range(4097):
            result = attempt(view[:n], f"gemma prefix cut to {n} bytes")
            assert isinstance(result, GGUFFormatError), f"gemma prefix cut to {n} bytes parsed"
            assert result.offset <= n


def test_truncation_at_every_offset_of_tiny(tiny):
    full = attempt(tiny, "tiny")
    assert isinstance(full, GGUFHeader)
    view = memoryview(tiny)
    with bounded_allocation():
        for n in range(len(tiny) + 1):
            how = f"tiny cut to {n} of {len(tiny)} bytes"
            result = attempt(view[:n], how)
            if n < full.header_end:
                assert isinstance(result, GGUFFormatError), f"{how} parsed"
            else:  # the header is whole; only the tensor data (which parse_header does not read) is cut
                assert isinstance(result, GGUFHeader), f"{how}: {result}"
                assert result.kv.keys() == full.kv.keys() and result.tensors == full.tensors, how


def test_gemma_head_agrees_with_prefix(gemma_prefix, gemma_head):
    # Same bytes except the three patched counts, so field offsets found in one serve the other.
    diff = [i for i in range(len(gemma_head)) if gemma_head[i] != gemma_prefix[i]]
    assert diff and all(8 <= i < 24 or 900 < i < 1000 for i in diff)


@pytest.mark.parametrize("name", ["tiny", "gemma head", "gemma prefix"])
def test_huge_values_over_every_field(inputs, name):
    """Every length, count, type and offset field in the first 16 KiB overwritten with hostile values."""
    buf = inputs[name]
    offsets = field_offsets(inputs["gemma head"] if name == "gemma prefix" else buf)
    offsets = [o for o in offsets if o < min(FLIP_REGION, len(buf))]
    assert len(offsets) > 100
    outcomes = {"ok": 0, "error": 0}
    with bounded_allocation():
        for pos in offsets:
            for payload in WIDE_PAYLOADS + NARROW_PAYLOADS:
                writes = [(pos, payload)]
                result = attempt(mutate(buf, writes), show(name, writes))
                outcomes["ok" if isinstance(result, GGUFHeader) else "error"] += 1
    assert outcomes["error"] > outcomes["ok"] / 4, outcomes


def random_writes(rng: random.Random, buf: bytes) -> Writes:
    limit = min(FLIP_REGION, len(buf))
    pos = rng.randrange(limit)
    aligned = pos & ~3  # "aligned-ish": fields are not 8-aligned in GGUF, but many land on 4
    kind = rng.randrange(7)
    if kind == 0:
        return [(pos, bytes([rng.randrange(256)]))]
    if kind == 1:
        return [(pos, bytes([buf[pos] ^ 1 << rng.randrange(8)]))]  # a bit flip
    if kind == 2:
        return [(aligned, b"\xff" * 8)]
    if kind == 3:
        return [(aligned, u64(2**63))]
    if kind == 4:
        return [(aligned, u32(rng.choice(U32_VALUES) if rng.random() < 0.7 else rng.getrandbits(32)))]
    if kind == 5:
        return [(aligned, u64(rng.getrandbits(rng.choice([8, 16, 32, 40, 64]))))]
    return [(rng.randrange(limit), bytes([rng.randrange(256)])) for _ in range(rng.randint(2, 6))]


@pytest.mark.parametrize("name", ["tiny", "gemma head", "gemma prefix"])
def test_seeded_random_mutations(inputs, name):
    buf = inputs[name]
    rng = random.Random(f"{SEED}:{name}")
    with bounded_allocation():
        for i in range(N_RANDOM):
            writes = random_writes(rng, buf)
            attempt(mutate(buf, writes), f"mutation {i} (seed {SEED!r}): {show(name, writes)}")


write_strategy = st.tuples(
    st.one_of(st.integers(0, 1023), st.integers(0, FLIP_REGION - 1), st.integers(0, PREFIX_SIZE - 1)),
    st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(WIDE_PAYLOADS + NARROW_PAYLOADS)),
)


@settings(max_examples=300, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["tiny", "gemma head", "gemma prefix"]),
       writes=st.lists(write_strategy, min_size=1, max_size=6))
def test_hypothesis_random_overwrites(inputs, name, writes):
    buf = inputs[name]
    writes = [(pos % len(buf), data) for pos, data in writes]
    with bounded_allocation():
        attempt(mutate(buf, writes), show(name, writes))
