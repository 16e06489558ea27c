"""Every way a GGUF header can be broken gives one clean error naming the file, the byte offset and the problem.

Each test builds the smallest file showing one defect (with `ggufpair.format.writer`, so offsets are
computable) and checks `GGUFFormatError.offset` exactly and `.problem` by a distinctive substring.
The last tests check that a well-formed file reads exactly as the reference reader `gguf.GGUFReader`
reads it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFReader, GGUFValueType as T

from ggufpair.errors import GGUFFormatError, MissingShardError, ModelFileError
from ggufpair.format.model_info import read_model_info
from ggufpair.format.reader import read_header
from ggufpair.format.writer import encode_header, encode_kv, encode_string, encode_tensor_info
from tests.ggufmake import model_kv, tiny_model, vocab_kv, write_gguf

HEAD = 24  # magic (4) + version (4) + tensor count (8) + metadata count (8)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gguf_bytes(kv: list[bytes] = (), tensors: list[bytes] = (), n_kv: int | None = None, version: int = 3) -> bytes:
    return encode_header(list(kv), list(tensors), len(kv) if n_kv is None else n_kv, version)


def expect_error(path: Path, offset: int | None, fragment: str, *, cls: type = GGUFFormatError) -> GGUFFormatError:
    """Read `path`; assert it raises `cls` naming the file, at `offset`, with `fragment` in the problem."""
    with pytest.raises(cls) as info:
        read_header(path)
    err = info.value
    assert str(path) in str(err)
    assert err.path == path
    if cls is GGUFFormatError:
        assert type(err) is GGUFFormatError
        assert fragment in err.problem, err.problem
        if offset is not None:
            assert err.offset == offset, (err.offset, err.problem)
        assert f"at byte {err.offset}" in str(err)
    else:
        assert fragment in str(err), str(err)
    return err


@pytest.fixture
def write(tmp_path):
    def write(data: bytes, name: str = "bad.gguf") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return write


# --- the fixed part: magic, version, counts ---------------------------------------------------------


def test_empty_file(write):
    err = expect_error(write(b""), 0, "truncated: the GGUF magic needs 4 bytes but only 0 remain")
    assert "magic" in err.problem


def test_bad_magic(write):
    expect_error(write(b"GGML" + gguf_bytes()[4:]), 0, "not a GGUF file (magic b'GGML'")


def test_version_1(write):
    expect_error(write(gguf_bytes(version=1)), 4, "GGUF version 1 is no longer supported")


def test_version_4_unsupported(write):
    expect_error(write(gguf_bytes(version=4)), 4, "unsupported GGUF version 4 (supported: 2, 3)")


def test_big_endian_file(write):
    # A big-endian v3 file: the version field holds 00 00 00 03, which reads as 0x03000000 little-endian.
    data = b"GGUF" + struct.pack(">I", 3) + struct.pack(">Q", 0) + struct.pack(">Q", 0)
    assert struct.unpack_from("<I", data, 4)[0] == 0x03000000
    expect_error(write(data), 4, "big-endian GGUF (version field reads 3 byte-swapped)")


@pytest.mark.parametrize(("cut", "offset", "what"), [
    (6, 4, "the GGUF version needs 4 bytes but only 2 remain"),
    (13, 8, "the tensor count needs 8 bytes but only 5 remain"),
    (19, 16, "the metadata count needs 8 bytes but only 3 remain"),
])
def test_truncated_in_header_counts(write, cut, offset, what):
    expect_error(write(gguf_bytes()[:cut]), offset, f"truncated: {what}")


def test_absurd_tensor_count(write):
    data = b"GGUF" + u32(3) + u64(2**63) + u64(0)
    expect_error(write(data), 8, "header claims 9223372036854775808 tensors, more than the file can hold")


def test_absurd_kv_count(write):
    data = b"GGUF" + u32(3) + u64(0) + u64(2**63) + encode_kv("general.name", T.STRING, "x")
    expect_error(write(data), 16, "header claims 9223372036854775808 metadata entries, more than the file can hold")


# --- metadata keys and values ---------------------------------------------------------------------


def test_truncated_inside_key(write):
    data = gguf_bytes([encode_kv("general.name", T.STRING, "tiny")])
    cut = HEAD + 8 + 5  # the key's length prefix and 5 of its 12 bytes
    expect_error(write(data[:cut]), HEAD + 8, "truncated: key of metadata entry 0 needs 12 bytes but only 5 remain")


def test_truncated_inside_string_value(write):
    blob = encode_kv("general.name", T.STRING, "a tiny model")
    data = gguf_bytes([blob])[:-4]
    text_start = HEAD + 8 + len("general.name") + 4 + 8
    expect_error(write(data), text_start, "truncated: value of 'general.name' needs 12 bytes but only 8 remain")


def test_truncated_inside_string_array(write):
    blob = encode_kv("tokenizer.ggml.tokens", T.ARRAY, ["alpha", "beta", "gamma"], T.STRING)
    data = gguf_bytes([blob])[:-2]  # cut inside "gamma"
    items = HEAD + 8 + len("tokenizer.ggml.tokens") + 4 + 4 + 8
    third = items + (8 + 5) + (8 + 4)
    err = expect_error(write(data), third, "string 2 of 3 in an array claims 5 bytes but only 3 remain")
    assert "cut short: an interrupted download or copy?" in str(err)  # what a user most likely has (issue 18)


def test_truncated_inside_numeric_array(write):
    blob = encode_kv("test.values", T.ARRAY, list(range(10)), T.UINT32)
    data = gguf_bytes([blob])[:-5]
    count_offset = HEAD + 8 + len("test.values") + 4 + 4
    expect_error(write(data), count_offset, "array 'test.values' claims 10 items, more than the 35 bytes left can hold")


def test_string_length_max_u64(write):
    key = encode_string("general.name")
    data = gguf_bytes([key + u32(T.STRING) + u64(2**64 - 1) + b"tiny"])
    length_offset = HEAD + len(key) + 4
    expect_error(write(data), length_offset, "value of 'general.name' claims 18446744073709551615 bytes, more than GGUF's limit")


def test_key_length_max_u64(write):
    data = gguf_bytes([u64(2**64 - 1) + b"general.name" + u32(T.UINT32) + u32(1)])
    expect_error(write(data), HEAD, "key of metadata entry 0 claims 18446744073709551615 bytes")


def test_array_count_cannot_fit(write):
    key = encode_string("test.values")
    data = gguf_bytes([key + u32(T.ARRAY) + u32(T.UINT32) + u64(2**62) + u32(1) + u32(2)])
    count_offset = HEAD + len(key) + 4 + 4
    expect_error(write(data), count_offset, f"array 'test.values' claims {2**62} items, more than the 8 bytes left can hold")


def test_string_array_count_cannot_fit(write):
    key = encode_string("tokenizer.ggml.tokens")
    data = gguf_bytes([key + u32(T.ARRAY) + u32(T.STRING) + u64(2**63) + encode_string("a")])
    count_offset = HEAD + len(key) + 4 + 4
    expect_error(write(data), count_offset, f"claims {2**63} items, more than the 9 bytes left can hold")


@pytest.mark.parametrize("raw_type", [13, 2**31, 2**32 - 1])
def test_unknown_value_type(write, raw_type):
    key = encode_string("general.name")
    data = gguf_bytes([key + u32(raw_type) + u32(0) * 4])
    expect_error(write(data), HEAD + len(key), f"type of 'general.name' has unknown value type {raw_type}")


def test_unknown_array_item_type(write):
    key = encode_string("test.values")
    data = gguf_bytes([key + u32(T.ARRAY) + u32(13) + u64(0)])
    expect_error(write(data), HEAD + len(key) + 4, "item type of array 'test.values' has unknown value type 13")


def test_nested_array(write):
    key = encode_string("test.nested")
    inner = u32(T.UINT8) + u64(1) + b"\x01"
    data = gguf_bytes([key + u32(T.ARRAY) + u32(T.ARRAY) + u64(1) + inner])
    expect_error(write(data), HEAD + len(key) + 4, "array 'test.nested' holds arrays; nested arrays are not supported")


def test_invalid_utf8_in_key(write):
    data = gguf_bytes([encode_string(b"gen\xffname") + u32(T.UINT32) + u32(1)])
    expect_error(write(data), HEAD + 8 + 3, "key of metadata entry 0 is not valid UTF-8")


def test_invalid_utf8_in_string_value(write):
    key = encode_string("general.name")
    data = gguf_bytes([key + u32(T.STRING) + encode_string(b"ok\xc3(")])
    expect_error(write(data), HEAD + len(key) + 4 + 8 + 2, "value of 'general.name' is not valid UTF-8")


def test_invalid_utf8_in_string_array_item(write):
    # The offset is where the array's items start; the problem names the bad item.
    key = encode_string("general.tags")
    data = gguf_bytes([key + u32(T.ARRAY) + u32(T.STRING) + u64(2) + encode_string("ok") + encode_string(b"\xff")])
    expect_error(write(data), HEAD + len(key) + 4 + 4 + 8, "item 1 of array 'general.tags' is not valid UTF-8")


def test_token_texts_need_not_be_utf8(write):
    # llama.cpp stores and compares token texts as bytes, so the reader must not reject them.
    key = encode_string("tokenizer.ggml.tokens")
    path = write(gguf_bytes([key + u32(T.ARRAY) + u32(T.STRING) + u64(2) + encode_string("ok") + encode_string(b"\xff")]))
    assert read_header(path).get("tokenizer.ggml.tokens").items() == (b"ok", b"\xff")


def test_duplicate_key(write):
    first = encode_kv("general.name", T.STRING, "a")
    data = gguf_bytes([first, encode_kv("general.name", T.STRING, "b")])
    expect_error(write(data), HEAD + len(first), "duplicate metadata key 'general.name'")


def test_empty_key(write):
    data = gguf_bytes([encode_kv("", T.UINT32, 1)])
    expect_error(write(data), HEAD, "metadata entry 0 has an empty key")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_alignment_not_power_of_two(write, alignment):
    first = encode_kv("general.name", T.STRING, "a")
    data = gguf_bytes([first, encode_kv("general.alignment", T.UINT32, alignment)])
    value_offset = HEAD + len(first) + len(encode_string("general.alignment"))
    expect_error(write(data), value_offset, f"general.alignment {alignment} is not a power of 2")


@pytest.mark.parametrize(("vtype", "name"), [(T.UINT64, "UINT64"), (T.INT32, "INT32"), (T.STRING, "STRING")])
def test_alignment_wrong_type(write, vtype, name):
    value = "32" if vtype == T.STRING else 32
    data = gguf_bytes([encode_kv("general.alignment", vtype, value)])
    expect_error(write(data), HEAD + len(encode_string("general.alignment")), f"general.alignment must be UINT32, not {name}")


# --- tensor infos -----------------------------------------------------------------------------------


def test_tensor_with_five_dims(write):
    info = encode_tensor_info("w", (1, 1, 1, 1, 1), Q.F32, 0)
    data = gguf_bytes(tensors=[info])
    expect_error(write(data), HEAD + len(encode_string("w")), "tensor 'w' has 5 dimensions, at most 4 are allowed")


@pytest.mark.parametrize("raw_type", [4, 31, 200, 2**32 - 1])
def test_unknown_ggml_type(write, raw_type):
    info = encode_string("w") + u32(1) + u64(32) + u32(raw_type) + u64(0)
    data = gguf_bytes(tensors=[info])
    type_offset = HEAD + len(encode_string("w")) + 4 + 8
    expect_error(write(data), type_offset, f"tensor 'w' has unknown ggml type {raw_type}")


def test_row_not_multiple_of_block(write):
    data = gguf_bytes(tensors=[encode_tensor_info("w", (33, 2), Q.Q4_0, 0)])
    type_offset = HEAD + len(encode_string("w")) + 4 + 16
    expect_error(write(data), type_offset, "tensor 'w' of type Q4_0 has rows of 33 elements, not a multiple of its block size 32")


def test_tensor_offsets_out_of_order(write):
    a = encode_tensor_info("a", (8,), Q.F32, 32)  # 32 bytes each: a should be at 0, b at 32
    b = encode_tensor_info("b", (8,), Q.F32, 0)
    data = gguf_bytes(tensors=[a, b])
    expect_error(write(data + b"\0" * 128), HEAD, "tensor 'a' has data offset 32, expected 0")


def test_tensor_offset_gap(write):
    a = encode_tensor_info("a", (8,), Q.F32, 0)
    b = encode_tensor_info("b", (8,), Q.F32, 64)
    data = gguf_bytes(tensors=[a, b])
    expect_error(write(data + b"\0" * 160), HEAD + len(a), "tensor 'b' has data offset 64, expected 32")


def test_duplicate_tensor_name(write):
    a = encode_tensor_info("w", (8,), Q.F32, 0)
    b = encode_tensor_info("w", (8,), Q.F32, 32)
    data = gguf_bytes(tensors=[a, b])
    expect_error(write(data + b"\0" * 128), HEAD + len(a), "duplicate tensor name 'w'")


def test_tensor_name_too_long(write):
    name = "x" * 64
    data = gguf_bytes(tensors=[encode_tensor_info(name, (8,), Q.F32, 0)])
    expect_error(write(data), HEAD, "is longer than llama.cpp's limit of 63 bytes")


def test_negative_dimension(write):
    info = encode_string("w") + u32(2) + u64(8) + u64(2**63) + u32(Q.F32) + u64(0)
    expect_error(write(gguf_bytes(tensors=[info])), HEAD + len(encode_string("w")) + 4 + 8, "tensor 'w' has a negative dimension")


def test_element_count_overflow(write):
    info = encode_tensor_info("w", (2**32, 2**32), Q.F32, 0)
    expect_error(write(gguf_bytes(tensors=[info])), HEAD, "which overflows llama.cpp's int64 count")


def test_truncated_inside_tensor_info(write):
    data = gguf_bytes(tensors=[encode_tensor_info("w", (8, 2), Q.F32, 0)])
    cut = HEAD + len(encode_string("w")) + 4 + 8 + 3  # inside the second dimension
    expect_error(write(data[:cut]), cut - 3, "truncated: dimension of tensor 'w' needs 8 bytes but only 3 remain")


def test_tensor_data_truncated(tmp_path):
    path = write_gguf(tmp_path / "cut.gguf", model_kv())
    full = path.read_bytes()
    header = read_header(path)
    need = header.data_offset + header.tensors[-1].offset + header.tensors[-1].n_bytes
    assert need == len(full)  # the last tensor has no padding after it here
    path.write_bytes(full[:-16])
    err = expect_error(path, len(full) - 16, f"truncated: its header and tensor data need a file of {need} bytes but it has {len(full) - 16}")
    assert "truncated" in str(err)
    # The header itself is intact: without the data check it reads.
    assert read_header(path, check_data=False).tensors == header.tensors


def test_tensor_data_missing_entirely(tmp_path):
    path = write_gguf(tmp_path / "cut.gguf", model_kv())
    header = read_header(path)
    path.write_bytes(path.read_bytes()[:header.header_end])
    expect_error(path, header.header_end, "truncated: its header and tensor data need a file of")


# --- files that are not there -----------------------------------------------------------------------


def test_missing_file(tmp_path):
    err = expect_error(tmp_path / "nope.gguf", None, "no such file", cls=ModelFileError)
    assert type(err) is ModelFileError


def test_directory(tmp_path):
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    err = expect_error(folder, None, "is a folder", cls=ModelFileError)
    assert type(err) is ModelFileError


# --- split models -----------------------------------------------------------------------------------


def write_split(folder: Path, skip: int | None = None) -> list[Path]:
    """A 3-shard model (llama.cpp naming, split.* keys); shard number `skip` (1-based) is not written."""
    count = 3
    shards = [
        [("token_embd.weight", (8, 4)), ("output_norm.weight", (8,))],
        [("blk.0.attn_q.weight", (8, 8)), ("blk.0.attn_k.weight", (8, 4)), ("blk.0.attn_norm.weight", (8,))],
        [("output.weight", (8, 16))],
    ]
    paths = []
    for no, tensors in enumerate(shards):
        split = {
            "split.no": (T.UINT16, no),
            "split.count": (T.UINT16, count),
            "split.tensors.count": (T.INT32, sum(map(len, shards))),
        }
        kv = {**model_kv(), **vocab_kv(), **split} if no == 0 else {"general.architecture": (T.STRING, "llama"), **split}
        path = folder / f"tiny-{no + 1:05d}-of-{count:05d}.gguf"
        paths.append(path)
        if skip != no + 1:
            write_gguf(path, kv, tensors)
    return paths


@pytest.mark.parametrize("skip", [1, 3])
def test_split_model_missing_shard(tmp_path, skip):
    paths = write_split(tmp_path, skip=skip)
    given = paths[1]
    with pytest.raises(MissingShardError) as info:
        read_model_info(given)
    err = info.value
    assert isinstance(err, ModelFileError)
    assert paths[skip - 1].name in str(err)
    assert "missing 1" in str(err)
    assert str(paths[0]) in str(err)  # named by its first shard
    for i, p in enumerate(paths, 1):
        if i != skip:
            assert p.name not in str(err).split("missing 1:", 1)[1]


def test_split_model_all_shards(tmp_path):
    paths = write_split(tmp_path)
    info = read_model_info(paths[1])
    assert info.path == paths[0]
    assert info.shards == tuple(paths)
    assert info.file_size == sum(p.stat().st_size for p in paths)
    assert info.n_tensors == sum(len(read_header(p).tensors) for p in paths) == 6
    assert info.architecture == "llama"
    assert info.parameter_count == 32 + 8 + 64 + 32 + 8 + 128


# --- agreement with the reference reader ------------------------------------------------------------


EXTRA_KV = {
    "test.u8": (T.UINT8, 200),
    "test.i8": (T.INT8, -100),
    "test.u16": (T.UINT16, 60000),
    "test.i16": (T.INT16, -30000),
    "test.i32": (T.INT32, -2**31),
    "test.u64": (T.UINT64, 2**64 - 1),
    "test.i64": (T.INT64, -2**63),
    "test.f64": (T.FLOAT64, 3.141592653589793),
    "test.bool_false": (T.BOOL, False),
    "test.unicode": (T.STRING, "naïve — ünïcödé ✓"),
    "test.empty_string": (T.STRING, ""),
    "test.bools": (T.ARRAY, [True, False, True], T.BOOL),
    "test.u64s": (T.ARRAY, [0, 1, 2**64 - 1], T.UINT64),
    "test.f64s": (T.ARRAY, [0.5, -1e300], T.FLOAT64),
    "test.i8s": (T.ARRAY, [-128, 0, 127], T.INT8),
    "test.empty_array": (T.ARRAY, [], T.UINT32),
    "test.strings": (T.ARRAY, ["a", "", "ü"], T.STRING),
}


def test_agrees_with_gguf_reader(tmp_path):
    path = tiny_model(tmp_path / "tiny.gguf", changes=EXTRA_KV)
    ours = read_header(path)
    ref = GGUFReader(path)
    ref_fields = {name: f for name, f in ref.fields.items() if not name.startswith("GGUF.")}

    assert list(ours.kv) == list(ref_fields)
    assert len(ours.kv) == int(ref.fields["GGUF.kv_count"].contents())
    assert ours.version == int(ref.fields["GGUF.version"].contents())
    for key, entry in ours.kv.items():
        field = ref_fields[key]
        assert entry.type == field.types[0], key
        assert entry.key_offset == field.offset, key
        if entry.type == T.ARRAY:
            # field.types omits the item type of an empty array; parts[3] is the raw item type tag.
            assert entry.value.item_type == int(field.parts[3][0]), key
            if entry.value.count:
                assert entry.value.item_type == field.types[-1], key
            assert entry.value.count == len(field.data), key
            items = entry.value.items()
            if entry.value.item_type == T.STRING:
                assert [s.decode("utf-8") for s in items] == field.contents(), key
                assert list(items) == [bytes(field.parts[i]) for i in field.data], key
            else:
                assert list(items) == field.contents(), key
                if items:
                    assert entry.value.numpy().tolist() == field.contents(), key
        else:
            assert entry.value == field.contents(), key
            assert type(entry.value) is type(field.contents()) or entry.type in (T.FLOAT32, T.FLOAT64), key
        assert entry.end == field.offset + sum(p.nbytes for p in field.parts), key

    assert ours.alignment == ref.alignment
    assert ours.data_offset == ref.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(ours.tensors, ref.tensors):
        assert mine.shape == tuple(int(d) for d in theirs.shape), mine.name
        assert mine.type == theirs.tensor_type, mine.name
        assert ours.data_offset + mine.offset == theirs.data_offset, mine.name
        assert mine.n_elements == theirs.n_elements, mine.name
        assert mine.n_bytes == theirs.n_bytes, mine.name
        assert mine.info_offset == theirs.field.offset, mine.name


def test_agrees_with_gguf_reader_on_quantized_tensors(tmp_path):
    # Quantized types and 3-4 dimensions, which tiny_model's F32 tensors do not cover.
    specs = [("a", (32, 3), Q.Q4_0), ("b", (256, 2, 1), Q.Q4_K), ("c", (64, 2, 2, 2), Q.Q8_0), ("d", (5,), Q.F16)]
    infos, offset, sizes = [], 0, []
    for name, shape, qtype in specs:
        block, type_size = GGML_QUANT_SIZES[qtype]
        n = 1
        for d in shape:
            n *= d
        nbytes = n // block * type_size
        infos.append(encode_tensor_info(name, shape, qtype, offset))
        sizes.append(nbytes)
        offset += (nbytes + 31) // 32 * 32
    head = gguf_bytes([encode_kv("general.architecture", T.STRING, "llama")], infos)
    head += b"\0" * (-len(head) % 32)
    path = tmp_path / "quant.gguf"
    path.write_bytes(head + b"\0" * offset)
    ours = read_header(path)
    ref = GGUFReader(path)
    for mine, theirs, nbytes in zip(ours.tensors, ref.tensors, sizes, strict=True):
        assert mine.name == theirs.name
        assert mine.shape == tuple(int(d) for d in theirs.shape)
        assert mine.type == theirs.tensor_type
        assert mine.n_bytes == theirs.n_bytes == nbytes
        assert ours.data_offset + mine.offset == theirs.data_offset
