"""`fix`'s rewrite on real copy-on-write filesystems: an XFS and a btrfs made on loop files, mounted for the
test. The tensor data is cloned (FICLONERANGE), not copied: the filesystem's free space barely moves, the
new file's data extents are the original's own blocks (FIEMAP: shared, same physical addresses), the bytes
are identical, and llama-server loads the fixed draft with speculation live.

Making and mounting a filesystem needs root (and mkfs.xfs / mkfs.btrfs, which `.ci/run` installs where it
can): without them these tests skip and say why."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from gguf import GGUFValueType as T

from ggufpair.fix import copier, verify
from ggufpair.fix.apply import apply_plan, new_header_bytes
from ggufpair.fix.plan import Action, KeyChange, RouteChoice, plan_pair_fix
from ggufpair.format.reader import read_header
from tests.integration.variants import set_scalar, speculation_live

pytestmark = pytest.mark.integration

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap), linux/fiemap.h
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
ADD_BOS = "tokenizer.ggml.add_bos_token"
MKFS = {"xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}


def _mount(kind: str, folder: Path) -> tuple[Path, Path]:
    """A fresh `kind` filesystem on a sparse 2 GiB loop file, mounted; skips (with the reason) where it cannot."""
    tool = shutil.which(MKFS[kind][0])
    if tool is None:
        pytest.skip(f"{MKFS[kind][0]} is not installed (Debian: apt-get install {kind}progs)")
    if os.geteuid() != 0:
        pytest.skip(f"mounting a loop {kind} filesystem needs root (uid {os.geteuid()})")
    image, mnt = folder / f"{kind}.img", folder / kind
    with open(image, "wb") as f:
        f.truncate(2 << 30)
    mnt.mkdir()
    made = subprocess.run([*MKFS[kind], str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"{MKFS[kind][0]} failed: {made.stderr.strip()[-300:]}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a loop {kind} filesystem was refused: {mounted.stderr.strip()[-300:]}")
    return image, mnt


@pytest.fixture
def clones(monkeypatch):
    """What each FICLONERANGE call of the rewrite answered (True: the filesystem shared the blocks); the
    bytes the data check read are counted in `clones.read`."""
    answers = Answers()
    real_clone, real_same = copier.clone_range, verify.same_data

    def cloned(*args):
        answers.append(real_clone(*args))
        return answers[-1]

    def compared(a, a_off, b, b_off, length):
        answers.read += length
        return real_same(a, a_off, b, b_off, length)

    monkeypatch.setattr(copier, "clone_range", cloned)
    monkeypatch.setattr(verify, "same_data", compared)
    return answers


class Answers(list):
    read = 0


@pytest.fixture(params=["xfs", "btrfs"], scope="module")
def cow(request, tmp_path_factory):
    image, mnt = _mount(request.param, tmp_path_factory.mktemp(f"cow-{request.param}"))
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)
    image.unlink(missing_ok=True)


def _used(folder: Path) -> int:
    """Bytes in use on the filesystem holding `folder`, after everything written reached it."""
    os.sync()
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _extents(path: Path) -> list[tuple[int, int, int, int]]:
    """(logical, physical, length, flags) of each extent of the file, by the FIEMAP ioctl."""
    count = 4096
    answer = bytearray(struct.pack("QQIIII", 0, (1 << 64) - 1, FIEMAP_FLAG_SYNC, 0, count, 0) + b"\0" * (56 * count))
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, answer)  # fills `answer` in place
    mapped = struct.unpack_from("QQIIII", answer)[3]
    out = []
    for i in range(mapped):
        logical, physical, length, _, _, flags = struct.unpack_from("QQQQQI", answer, 32 + 56 * i)
        out.append((logical, physical, length, flags))
    return out


def _on_original_blocks(src_extents, new: Path, data_start: int, data_len: int, moved: int = 0) -> tuple[int, int]:
    """(bytes of the new file's tensor data on the very physical blocks that held them in the original, of
    those the bytes FIEMAP marks shared). `moved`: how far the data moved (new offset - old offset)."""
    def old_physical(logical: int) -> int | None:
        for lo, ph, n, _ in src_extents:
            if lo <= logical < lo + n:
                return ph + logical - lo
        return None

    same = shared = 0
    for logical, physical, length, flags in _extents(new):
        lo, hi = max(logical, data_start), min(logical + length, data_start + data_len)
        if lo >= hi:
            continue
        if old_physical(lo - moved) == physical + lo - logical:
            same += hi - lo
            if flags & FIEMAP_EXTENT_SHARED:
                shared += hi - lo
    return same, shared


def _same_bytes(a: Path, a_off: int, b: Path, b_off: int, length: int) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(a_off)
        fb.seek(b_off)
        left = length
        while left:
            n = min(left, 16 << 20)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def _broken_draft(gemma_q4: Path, folder: Path) -> Path:
    """The real Gemma 3 270M Q4_K_M written onto the filesystem (a real copy, not a clone), add_bos flipped."""
    draft = folder / "draft.gguf"
    subprocess.run(["cp", "--reflink=never", str(gemma_q4), str(draft)], check=True)
    set_scalar(draft, ADD_BOS, False)
    return draft


def _check_cloned(src_extents, fixed: Path, used_before: int, moved: int = 0, original_kept: bool = True) -> None:
    new = read_header(fixed)
    data_len = new.file_size - new.data_offset
    grew = _used(fixed.parent) - used_before
    assert grew < data_len // 20, f"the fix took {grew} bytes of free space for {data_len} bytes of data: not a clone"
    same, shared = _on_original_blocks(src_extents, fixed, new.data_offset, data_len, moved)
    assert same >= data_len * 0.99, f"only {same} of {data_len} bytes of tensor data sit on the original's blocks"
    if original_kept:  # blocks still referenced by the original (or its backup) are marked shared
        assert shared == same, f"{same - shared} bytes on the original's blocks are not marked shared"


@pytest.mark.parametrize("how", ["output", "backup"])
def test_rewrite_clones_the_data_and_speculates(how, cow, clones, gemma_q4, llama_server, tmp_path):
    """`fix --output` (a new file beside the original) and `fix --backup` (the fixed file in place, the
    original kept as .bak): the data keeps its offset, so it is cloned, never copied."""
    folder = cow / how
    folder.mkdir()
    draft = _broken_draft(gemma_q4, folder)
    src_extents, before_used = _extents(draft), _used(folder)
    header = read_header(draft)
    plan = plan_pair_fix(draft, gemma_q4, RouteChoice.PATCH)
    if how == "output":
        result = apply_plan(plan, output=folder / "fixed.gguf")
        fixed, kept = folder / "fixed.gguf", draft
    else:
        result = apply_plan(plan, backup=True)
        fixed, kept = draft, result.backup
        assert kept is not None and kept.name.endswith(".bak")
    assert result.mode == "rewrite" and clones == [True]  # by FICLONERANGE itself
    assert clones.read == 0, "the clone's data was read back although FIEMAP shows it on the original's blocks"
    assert result.data_verified
    assert read_header(kept).kv[ADD_BOS].value is False, "the original (or its backup) was changed"
    assert read_header(fixed).kv[ADD_BOS].value is True
    new = read_header(fixed)
    assert new.data_offset == header.data_offset
    assert _same_bytes(kept, header.data_offset, fixed, new.data_offset, header.file_size - header.data_offset)
    _check_cloned(src_extents, fixed, before_used)
    live, log = speculation_live(llama_server, gemma_q4, fixed, log_path=tmp_path / "server.log")
    assert live, log[-3000:]


def test_in_folder_rewrite_whose_data_moves_by_whole_blocks_is_cloned(cow, clones, gemma_q4, llama_server, tmp_path):
    """A header that shrinks by exactly one 4 KiB block (a token text 4 KiB too long, repaired from the
    target) replaces the file in its folder: the data moves by a whole block, so it is still cloned."""
    folder = cow / "in-folder"
    folder.mkdir()
    header = read_header(gemma_q4)
    tokens = list(header.kv["tokenizer.ggml.tokens"].value.items())
    token = 5
    # The header grows by exactly the text's extra bytes (a string's length field has a fixed size): this
    # many put the data one block further on, the padding included.
    text = tokens[token] + b"x" * (header.data_offset + 4096 - header.header_end)
    change = KeyChange("tokenizer.ggml.tokens", Action.SET, None, [*tokens[:token], text, *tokens[token + 1:]],
                       T.ARRAY, T.STRING)
    head = new_header_bytes(header, [change])
    assert len(head) == header.data_offset + 4096
    draft = folder / "draft.gguf"
    with open(gemma_q4, "rb") as f, open(draft, "wb") as out:
        out.write(head)
        f.seek(header.data_offset)
        shutil.copyfileobj(f, out, 16 << 20)
    os.sync()
    src_extents, before_used = _extents(draft), _used(folder)
    inode = os.stat(draft).st_ino
    plan = plan_pair_fix(draft, gemma_q4, RouteChoice.PATCH)
    result = apply_plan(plan)
    assert result.mode == "rewrite" and result.backup is None and clones == [True] and clones.read == 0
    assert os.stat(draft).st_ino != inode and [p.name for p in folder.iterdir()] == ["draft.gguf"]
    new = read_header(draft)
    assert new.data_offset == header.data_offset
    assert new.kv["tokenizer.ggml.tokens"].value.items()[token] == tokens[token]
    assert _same_bytes(gemma_q4, header.data_offset, draft, new.data_offset, header.file_size - header.data_offset)
    # the original's inode is gone, so its blocks are the new file's alone: not shared any more, but the same
    _check_cloned(src_extents, draft, before_used, moved=-4096, original_kept=False)
    live, log = speculation_live(llama_server, gemma_q4, draft, log_path=tmp_path / "server.log")
    assert live, log[-3000:]
