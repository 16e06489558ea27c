"""Carrying out a `FixPlan` without ever risking the model file.

- No copy: no file changes; the `--override-kv` arguments are checked to make the pair compatible and
  returned, for the launch command (`ggufpair tune` plans them itself and keeps them in the profile).
- In place, when every new value occupies exactly the bytes of the old one, or when the new header still
  ends within the padding before the tensor data (GGUF aligns the data, so a few bytes more or less of token
  text fit): the original bytes go to a journal first (fsync'd), then the patch is written and fsync'd, then
  the journal is deleted. A fix that
  dies in between is rolled back by the next run (`recover_interrupted`).
- Otherwise a rewrite: a temporary file in the same folder receives the tensor data, then the new header.
  A reflink (btrfs, XFS) needs the source and the copy at the same offset within a filesystem block: when the
  data keeps its offset (a same-size header written to `--output` or with `--backup`) or moves by whole
  blocks, the span from the block holding its first byte is cloned (FICLONERANGE), sharing the blocks
  instead of writing them, and then only compared. Elsewhere the file's blocks are reserved first (a full
  disk fails before any copying) and the data is copied by the kernel (`os.copy_file_range`; `sendfile` or
  plain reads as fallbacks) in chunks: each chunk is handed to the disk as soon as it is copied and compared byte for byte with the
  source by a second thread while the next one copies, so the fsync and the verification overlap the copy.
  Then fsync, the header checks, and an atomic rename over the original (or, for `--output`, a hard link to
  the new name, which never replaces a file that appeared there). The original is untouched until then;
  stale temporary files of a killed run are removed by the next one.

After any write the result is re-read and checked: tensor names, types, shapes, offsets and data bytes
identical to the source, the planned keys at their new values, every other key unchanged, and the pair
verdict compatible. If a check fails the original stays as it was.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufpair.errors import GgufpairError
from ggufpair.fix.plan import Action, FixPlan, KeyChange
from ggufpair.format.reader import GGUFHeader, _open_map, _pad, read_header
from ggufpair.format.writer import encode_header, encode_kv, encode_value
from ggufpair.pairing.verdict import Route
from ggufpair.state import fsync_dir, state_path, write_json_atomic

TMP_MARK = ".ggufpair-"
CHUNK = 8 << 20
REWRITE_CHUNK = 128 << 20  # copied, handed to the disk and compared at a time
REFLINK_BLOCK = 4096  # the block size at which btrfs and XFS can share a copy's blocks (their usual one)


class FixError(GgufpairError):
    """A fix could not be applied; the original file is as it was."""

    exit_code = 6


@dataclass(frozen=True)
class FixResult:
    path: Path  # the file that now holds the fixed model (the original path, or --output)
    route: Route
    mode: str  # "override", "in-place" or "rewrite"
    backup: Path | None
    data_verified: bool  # every tensor data byte compared equal to the source (rewrite)
    bytes_copied: int
    seconds: float
    override_args: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- helpers


def temp_name(dest: Path) -> Path:
    """A hidden name beside `dest` (the name cut short where the whole would pass the filesystem's 255 bytes)."""
    return dest.with_name(f".{_short(dest.name)}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _short(name: str, limit: int = 200) -> str:
    raw = name.encode()
    return name if len(raw) <= limit else raw[:limit].decode(errors="ignore")


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove temporary files left in `dest`'s folder by killed fixes (of this file, or copies to any name).
    A rewrite holds an flock on its temporary file until it is done, so one another fix is still writing is
    spared, and one whose writer died (the kernel drops its lock) is removed, whatever became of its pid."""
    removed = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        # any fix's temp in the folder (a killed --output to another name too), or a journal's own temp
        if not (p.name.startswith(".") and TMP_MARK in p.name and p.name.endswith(".tmp") and p.is_file()):
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            p.unlink()
            removed.append(p)
        except OSError:
            pass  # locked: its writer is at work
        finally:
            os.close(fd)
    return removed


def _journal_places(path: Path) -> tuple[Path, Path]:
    """Where an in-place patch's journal may be: beside the model (found by any user, any $GGUFPAIR_HOME, a
    `sudo` run), else (a folder the user cannot write, a disk with no room, a name too long) in ggufpair's
    state folder. Nothing is created: `inspect` looks here too."""
    real = Path(os.path.realpath(path))
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:24]
    return real.with_name(f".{real.name}{TMP_MARK}journal.json"), state_path("journals", f"{digest}.json")


def _journal_path(path: Path) -> Path:
    """The journal of `path`: the one that exists, else where a new one goes first. (os.path.exists, not
    Path.exists: a name too long or a folder that cannot be entered is "not there", not an error.)"""
    beside, home = _journal_places(path)
    if os.path.exists(beside) or not os.path.exists(home) and os.access(beside.parent, os.W_OK):
        return beside
    return home


def _unlink_durably(journal: Path) -> None:
    """Remove a journal and sync its folder: a journal back from the dead after a power cut would undo a
    finished fix at the next run."""
    journal.unlink()
    try:
        fsync_dir(journal.parent)
    except OSError:
        pass


def _remove_journal(path: Path, journal: Path, state: str, consequence: str) -> None:
    """Remove the journal once the file is whole (rolled back, or patched and verified); when it cannot be,
    a FixError saying the file's `state` and the `consequence` of the journal staying."""
    try:
        _unlink_durably(journal)
    except OSError as e:
        raise FixError(f"{path}: {state}, but {journal} could not be removed ({e.strerror}); {consequence}",
                       hint=f"remove {journal} (as a user who can write its folder)") from None


def _load_journal(journal: Path) -> tuple[dict, list[tuple[int, bytes, bytes]]]:
    """A journal's record and its (offset, old bytes, new bytes) patches; OSError, ValueError, KeyError or
    TypeError when it cannot be read."""
    data = json.loads(journal.read_text())
    return data, [(int(o), bytes.fromhex(old), bytes.fromhex(new)) for o, old, new in data["patches"]]


def recover_interrupted(path: str | Path) -> list[str]:
    """Undo an in-place patch that was interrupted, and remove stale temporary files. Returns what was done.
    The caller holds the file's lock (`recover`), so no running fix is undone. A journal that does not match
    the file now at that path (another inode or size, or bytes that are neither the old nor the new ones) is
    refused and kept: the file was replaced, and writing the old bytes would damage the new one."""
    path = Path(os.path.realpath(path))  # through a link: the file it names, where a fix wrote
    done = []
    journal = _journal_path(path)
    if os.path.exists(journal):
        try:
            data, patches = _load_journal(journal)
        except PermissionError as e:
            owner = os.stat(journal).st_uid
            raise FixError(f"{path}: the journal of an interrupted fix ({journal}) is not readable by you "
                           f"({e.strerror}); the file may be half-patched",
                           hint=f"run `ggufpair fix {path}` as its owner (uid {owner}) or root: it rolls back") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FixError(f"{path}: the journal of an interrupted fix ({journal}) is unreadable ({e})",
                           hint=f"check the file with `ggufpair inspect`; then delete {journal}") from None
        try:
            with open(path, "r+b") as f:
                st = os.fstat(f.fileno())
                same_file = data.get("inode", st.st_ino) == st.st_ino and data.get("size", st.st_size) == st.st_size
                for offset, old, new in patches:
                    f.seek(offset)
                    now = f.read(len(old))
                    # byte by byte: a write cut short leaves some new bytes and some old ones
                    if not same_file or len(now) != len(old) or any(b != o and b != n for b, o, n in zip(now, old, new)):
                        raise FixError(f"{path}: an interrupted fix's journal ({journal}) does not match this file "
                                       "(it was replaced since); nothing was written",
                                       hint=f"check the file with `ggufpair inspect`; then delete {journal}")
                _write_durably(f, [(offset, old) for offset, old, _new in patches])
        except OSError as e:
            raise _os_error(e, path, "rolling back an interrupted fix") from None
        _remove_journal(path, journal, "rolled back an interrupted fix (the file is whole again)",
                        "remove it before fixing the file again")
        done.append(f"rolled back an interrupted in-place fix of {path}")
    for p in remove_stale_temps(path):
        done.append(f"removed stale temporary file {p}")
    return done


def _write_durably(f, pieces: list[tuple[int, bytes]]) -> None:
    """Write each (offset, bytes) into the open file, then flush and fsync: a patch, or its rollback."""
    for offset, data in pieces:
        f.seek(offset)
        f.write(data)
    f.flush()
    os.fsync(f.fileno())


def recover(path: str | Path) -> list[str]:
    """`recover_interrupted` under the file's lock: refused while another fix is working on the file."""
    with _Lock(Path(path)):
        return recover_interrupted(path)


def pending_recovery(path: str | Path) -> bool:
    """Whether an interrupted in-place fix of `path` waits to be rolled back."""
    return any(os.path.exists(p) for p in _journal_places(Path(path)))


def recovery_note(path: str | Path) -> str | None:
    """What to tell someone reading `path` while a journal of an in-place fix of it exists: a fix at work
    (it holds the file's lock), or an interrupted one, which changed bytes or none."""
    if not pending_recovery(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return f"a `ggufpair fix` is patching {path} right now; read it again when it is done"
        finally:
            os.close(fd)
    state = "half-patched"
    try:
        _data, patches = _load_journal(_journal_path(Path(path)))
        with open(path, "rb") as f:
            untouched = True
            for offset, old, _new in patches:
                f.seek(offset)
                untouched &= f.read(len(old)) == old
        if untouched:
            state = "unchanged (cut short before writing), with a journal"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # unreadable here: say what may be
    return (f"an interrupted `ggufpair fix` left {path} {state}; `ggufpair fix {path}` rolls it back and removes "
            "the journal (the next fix of the file would too)")


class _Lock:
    """An exclusive flock on the model file: one fix at a time per file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_Lock":
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise FixError(f"{self.path}: another ggufpair fix is working on this file") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _os_error(e: OSError, where: Path, what: str) -> FixError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return FixError(f"{where}: no space left ({e.strerror}) while {what}; the original is untouched",
                        hint="free some space, or write the fixed copy elsewhere with --output PATH")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FixError(f"{where}: not writable ({e.strerror}) while {what}; the original is untouched",
                        hint="write the fixed copy elsewhere with --output PATH; a fix of flags or special ids can also "
                             "take the no-copy route (--route override)")
    return FixError(f"{where}: {e.strerror or e} while {what}; the original is untouched")


# ----------------------------------------------------------------------------------------------- apply


def resolve_output(src: Path, output: str | Path | None) -> Path | None:
    """Where `--output` puts the fixed copy: a folder gets the model's own name in it. An existing file is
    refused (a fixed copy never replaces a file ggufpair did not make); the model itself means no copy."""
    if output is None:
        return None
    from ggufpair.errors import UsageError
    from ggufpair.format.shards import shard_paths

    if len(shard_paths(src)) > 1:
        raise UsageError(f"{src}: --output of a split model would copy only its first shard (the one with the "
                         "metadata), and the copy could not find the others",
                         hint="fix the split model where it is (only its first shard is rewritten), or use the no-copy route")
    out = Path(output)
    if str(output).endswith(os.sep) and not out.is_dir():
        raise UsageError(f"{output}: no such folder for --output")
    if out.is_dir():
        out = out / Path(src).name
    if out.exists() and out.resolve() == Path(src).resolve():
        raise UsageError(f"{out}: --output is the model itself; a copy was asked for",
                         hint="give another path, or drop --output to fix the model where it is")
    if os.path.lexists(out):  # a dangling link too
        raise UsageError(f"{out}: already exists; a fixed copy never replaces an existing file",
                         hint="remove it first, or give another --output path")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such folder for --output")
    return out.absolute()


def apply_plan(plan: FixPlan, output: str | Path | None = None, backup: bool = False) -> FixResult:
    start = time.perf_counter()
    if plan.route is None or plan.empty:
        raise FixError(f"{plan.path}: nothing to apply ({plan.why})")
    if plan.route == Route.OVERRIDE_KV:
        from ggufpair.fix.plan import verdict_after

        after = verdict_after(plan)
        if after is not None and not after.compatible:
            raise FixError(f"{plan.path}: the --override-kv arguments do not make the pair compatible ({after.summary})")
        return FixResult(plan.path, plan.route, "override", None, False, 0, time.perf_counter() - start,
                         plan.override_args)
    output = resolve_output(plan.path, output)
    # Through a symbolic link (a Hugging Face cache snapshot links to its blobs): the file it names is fixed
    # and the link kept, by either write (a rename next to the link would replace the link with a copy).
    src = Path(os.path.realpath(plan.path))
    dest = output or src
    with _Lock(src):
        recover_interrupted(src)
        if output:
            remove_stale_temps(dest)
        st = os.stat(src)
        if (st.st_size, st.st_mtime_ns) != (plan.size, plan.mtime_ns):
            raise FixError(f"{src}: the file changed since the fix was planned (size or modification time); "
                           "nothing was written", hint="run the fix again to plan it on the current file")
        header = read_header(src)
        # A backup is a hard link to the original inode, so it needs a rewrite (a new inode) to stay intact.
        in_place_allowed = not (output or backup)
        patches = _same_size_patches(header, plan.changes) if in_place_allowed else None
        head = b""
        if patches is None:
            head = new_header_bytes(header, plan.changes)  # computed once: for the padding check and the rewrite
            if in_place_allowed:
                patches = _slack_patch(header, head)
        if patches is not None:
            _patch_in_place(src, header, patches, plan)
            result = FixResult(src, plan.route, "in-place", None, False, sum(len(n) for _, _, n in patches),
                               time.perf_counter() - start)
        else:
            copied, backup_path = _rewrite(src, dest, header, head, plan, backup)
            result = FixResult(dest, plan.route, "rewrite", backup_path, True, copied, time.perf_counter() - start)
    return result


def _encoded_change(change: KeyChange) -> bytes:
    return encode_value(change.type, change.new, change.item_type)


def _same_size_patches(header: GGUFHeader, changes) -> list[tuple[int, bytes, bytes]] | None:
    """(offset, old bytes, new bytes) for each change, if every one fits exactly in place; else None."""
    out = []
    with _open_map(header.path) as buf:
        for change in changes:
            entry = header.kv.get(change.key)
            if change.action != Action.SET or entry is None:
                return None  # (an entry's value bytes start with its type: a new type of the same size fits too)
            new = _encoded_change(change)
            if len(new) != entry.end - entry.value_offset:
                return None
            old = bytes(buf[entry.value_offset:entry.end])
            if old != new:
                first = next(i for i in range(len(new)) if old[i] != new[i])
                last = next(i for i in range(len(new) - 1, -1, -1) if old[i] != new[i]) + 1
                out.append((entry.value_offset + first, old[first:last], new[first:last]))
    return out


def _slack_patch(header: GGUFHeader, head: bytes) -> list[tuple[int, bytes, bytes]] | None:
    """One patch from the first changed header byte to the tensor data, when the new header `head` still ends
    within the padding GGUF puts before the data (up to `alignment` bytes): a few bytes more or less of token
    text then move no tensor data at all."""
    import numpy as np

    if not header.tensors or len(head) != header.data_offset:
        return None
    with _open_map(header.path) as buf:
        old = bytes(buf[:header.data_offset])
    differ = np.flatnonzero(np.frombuffer(old, np.uint8) != np.frombuffer(head, np.uint8))
    if not len(differ):
        return []
    first = int(differ[0])
    return [(first, old[first:], head[first:])]


def _patch_in_place(path: Path, header: GGUFHeader, patches, plan: FixPlan) -> None:
    old_head = header_snapshot(header)
    try:
        f = open(path, "r+b")  # fails here, before anything is written, on a read-only file or folder
    except OSError as e:
        raise _os_error(e, path, "opening the file to patch it in place") from None
    with f:
        st = os.fstat(f.fileno())
        journal = _write_journal(path, {"path": str(path), "inode": st.st_ino, "size": st.st_size,
                                        "patches": [(o, old.hex(), new.hex()) for o, old, new in patches]})
        try:
            _write_durably(f, [(offset, new) for offset, _old, new in patches])
        except BaseException as e:  # a failed write, or Ctrl-C: rolled back at once, not left to the next run
            f.close()
            recover_interrupted(path)
            if isinstance(e, OSError):
                raise _os_error(e, path, "patching in place") from None
            raise
    try:
        _verify(header, old_head, read_header(path), plan, data_offset=header.data_offset)
    except BaseException:
        recover_interrupted(path)
        raise
    _remove_journal(path, journal, "fixed and verified", "left there, the next fix would roll the file back")


def _write_journal(path: Path, record: dict) -> Path:
    """Write the journal durably before the patch, beside the model, else (a full disk there, a folder the
    user cannot write) in the state folder. Returns where it went; nothing is written to the model if neither
    place takes it."""
    first = _journal_path(path)
    for journal in dict.fromkeys((first, _journal_places(path)[1])):
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(journal, record, like=path)
            return journal
        except OSError as e:
            error = e
            if os.path.exists(journal):  # renamed into place, then its folder's sync failed: not trusted, not left
                try:
                    journal.unlink()
                except OSError:
                    raise _os_error(e, journal, "writing the journal of an in-place patch") from None
    raise _os_error(error, first, "writing the journal of an in-place patch")


def new_header_bytes(header: GGUFHeader, changes) -> bytes:
    """The header with `changes` applied: untouched entries and tensor infos copied byte for byte."""
    by_key = {c.key: c for c in changes}
    blobs = []
    with _open_map(header.path) as buf:
        for entry in header.kv.values():
            change = by_key.get(entry.key)
            if change is None:
                blobs.append(bytes(buf[entry.key_offset:entry.end]))
            elif change.action == Action.SET:
                blobs.append(encode_kv(entry.key, change.type, change.new, change.item_type))
        for change in changes:
            if change.action == Action.ADD or (change.action == Action.SET and change.key not in header.kv):
                blobs.append(encode_kv(change.key, change.type, change.new, change.item_type))
        tensor_infos = bytes(buf[header.tensor_info_start:header.header_end])
    head = encode_header(blobs, [], len(blobs), header.version)
    # encode_header wrote a tensor count of 0: put back the real one, then the raw tensor infos.
    head = head[:8] + len(header.tensors).to_bytes(8, "little") + head[16:] + tensor_infos
    if header.tensors:
        head += b"\0" * (_pad(len(head), header.alignment) - len(head))
    return head


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int, method: list[str]) -> None:
    """Copy `length` bytes from `src_off` in src to `dst_off` in dst, in the kernel where possible.

    `method` (a one-item list, shared across calls) falls back from copy_file_range to sendfile to plain
    reads when the kernel or the filesystems refuse the faster one."""
    copied = 0
    while copied < length:
        n = 0
        try:
            if method[0] == "copy_file_range":
                n = os.copy_file_range(src_fd, dst_fd, min(length - copied, 1 << 30), src_off + copied, dst_off + copied)
            elif method[0] == "sendfile":
                os.lseek(dst_fd, dst_off + copied, os.SEEK_SET)
                n = os.sendfile(dst_fd, src_fd, src_off + copied, min(length - copied, 1 << 30))
            else:
                n = os.pwrite(dst_fd, os.pread(src_fd, min(length - copied, CHUNK), src_off + copied), dst_off + copied)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) and method[0] != "read":
                method[0] = "sendfile" if method[0] == "copy_file_range" else "read"
                continue
            raise
        if n == 0:
            raise OSError(errno.EIO, f"source ended {length - copied} bytes early")
        copied += n


def _kernel_call(name: str, *argtypes):
    """A libc function by name (Linux), or None."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    return fn


_FALLOCATE = _kernel_call("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_SYNC_FILE_RANGE = _kernel_call("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
WRITEBACK_START, WRITEBACK_WAIT = 2, 1 | 2 | 4  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER


def _reserve(fd: int, size: int) -> None:
    """Give the new file its final size, its blocks reserved where the filesystem can: a full disk fails here,
    before gigabytes are copied."""
    if _FALLOCATE is not None and _FALLOCATE(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(err, os.strerror(err))
        # Anything else (no fallocate on this filesystem, a sandbox refusing it): the copy finds out.
    os.ftruncate(fd, size)


FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range), linux/fs.h


def _clone_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> bool:
    """Share the span's blocks with the source (a reflink: btrfs, XFS, bcachefs, ZFS 2.2+); False where the
    filesystem cannot (ext4, tmpfs, another filesystem) and the bytes must be copied."""
    try:
        fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("qQQQ", src_fd, src_off, length, dst_off))
        return True
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM):
            return False
        raise


def _copy_span(src_data: int, dst_data: int, length: int) -> tuple[int, int, int, bool]:
    """(source offset, new-file offset, length, block-aligned) of the kernel copy of the tensor data. When the
    data moves by a whole number of reflink blocks (0 included), the span starts at the block holding the
    data's first byte, so every copy call is block-aligned and reflinks can happen; the header written
    afterwards covers the header bytes copied with that first block."""
    if (dst_data - src_data) % REFLINK_BLOCK:
        return src_data, dst_data, length, False
    lead = dst_data % REFLINK_BLOCK
    return src_data - lead, dst_data - lead, length + lead, True


def _copy_and_compare(src_path: Path, src_fd: int, dst_path: Path, dst_fd: int, src_off: int, dst_off: int,
                      length: int, cloned: bool = False) -> bool:
    """Copy the tensor data in chunks, each handed to the disk as soon as it is copied (so the final fsync
    finds little left to write) and compared byte for byte with the source by a second thread while the
    next chunk copies. `cloned`: the span already shares the source's blocks, so it is only compared.
    Returns whether every byte compared equal."""
    method = ["copy_file_range" if hasattr(os, "copy_file_range") else "sendfile"]
    step = max(REFLINK_BLOCK, REWRITE_CHUNK // REFLINK_BLOCK * REFLINK_BLOCK)  # chunks keep aligned spans aligned
    with _open_map(src_path) as a, _open_map(dst_path) as b:
        checker = _Checker(a, src_off, b, dst_off)
        try:
            prev = None
            for pos in range(0, length, step):
                if checker.error is not None or not checker.equal:
                    break  # no use copying the rest
                n = min(step, length - pos)
                if not cloned:  # a clone has nothing to copy or write back, only to compare
                    _copy_range(src_fd, dst_fd, src_off + pos, dst_off + pos, n, method)
                    if _SYNC_FILE_RANGE is not None:
                        _SYNC_FILE_RANGE(dst_fd, dst_off + pos, n, WRITEBACK_START)
                        if prev is not None:  # wait for the previous chunk: dirty memory stays bounded
                            _SYNC_FILE_RANGE(dst_fd, dst_off + prev[0], prev[1], WRITEBACK_WAIT)
                        prev = (pos, n)
                checker.queue.put((pos, n))
        except BaseException:
            checker.abort = True  # stop comparing: the copy is abandoned
            raise
        finally:
            checker.queue.put(None)
            checker.join()
        return checker.equal


class _Checker(threading.Thread):
    """Compares copied chunks with the source as they arrive (numpy releases the GIL while comparing)."""

    def __init__(self, a, a_off: int, b, b_off: int) -> None:
        import queue

        super().__init__(daemon=True)
        self.a, self.a_off, self.b, self.b_off = a, a_off, b, b_off
        self.queue: queue.Queue = queue.Queue(maxsize=4)  # the copy runs at most a few chunks ahead
        self.equal, self.error, self.abort = True, None, False
        self.start()

    def run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                pos, n = item
                if self.equal and not self.abort and not _same_data(self.a, self.a_off + pos, self.b, self.b_off + pos, n):
                    self.equal = False
        except BaseException as e:  # handed to the joining thread
            self.error = e
            while self.queue.get() is not None:
                pass

    def join(self, timeout=None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def _rewrite(src: Path, dest: Path, header: GGUFHeader, head: bytes, plan: FixPlan,
             backup: bool) -> tuple[int, Path | None]:
    old_head = header_snapshot(header)
    data_len = header.file_size - header.data_offset
    backup_path: Path | None = None
    if dest == src:
        _check_replaceable(src)
    tmp = temp_name(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise _os_error(e, dest.absolute().parent, "creating a temporary file") from None
    fcntl.flock(fd, fcntl.LOCK_EX)  # held (through `held`) until the end: the temp is not stale meanwhile
    held = os.dup(fd)
    try:
        try:
            _take_attributes(src, fd, replacing=dest == src)
            src_off, dst_off, length, aligned = _copy_span(header.data_offset, len(head), data_len)
            with open(src, "rb") as sf:
                # A reflink needs no space and writes no data; where there is none, the blocks are reserved
                # first, so a full disk fails before any copying.
                cloned = aligned and _clone_range(sf.fileno(), fd, src_off, dst_off, length)
                if cloned:
                    os.ftruncate(fd, len(head) + data_len)
                else:
                    _reserve(fd, len(head) + data_len)
                equal = _copy_and_compare(src, sf.fileno(), tmp, fd, src_off, dst_off, length, cloned)
            view = memoryview(head)  # after the copy: it overwrites the header bytes an aligned span copied
            while view:
                view = view[os.pwrite(fd, view, len(head) - len(view)):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _verify(header, old_head, read_header(tmp), plan, data_offset=len(head), data_equal=equal)
        backup_path = _make_backup(src) if backup and dest == src else None
        if dest == src:
            try:
                os.replace(tmp, dest)
            except OSError as e:
                raise FixError(f"{dest}: cannot be replaced by the fixed copy ({e.strerror}); the original is untouched",
                               hint="is the file immutable (lsattr) or on a read-only mount? write the copy elsewhere "
                                    "with --output PATH") from None
        else:  # a new file: linked, which fails if one appeared there meanwhile (rename would replace it)
            try:
                os.link(tmp, dest)
            except FileExistsError:
                raise FixError(f"{dest}: a file appeared there during the fix; it was left alone") from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                    raise
                os.replace(tmp, dest)  # a filesystem without hard links (FAT, some FUSE): a plain rename
            try:
                _unlink(tmp)  # the copy is in place under its name
            except OSError:
                pass  # a hidden second name of the copy stays; harmless to the models, and rare
    except OSError as e:
        _unlink(tmp)
        _unlink_backup(backup_path)
        raise _os_error(e, tmp, "writing the fixed copy") from None
    except BaseException:
        _unlink(tmp)
        _unlink_backup(backup_path)
        raise
    finally:
        os.close(held)
    try:
        fsync_dir(dest.parent)
    except OSError as e:  # the rename is done: the fixed file is in place, only its folder entry is unsynced
        raise FixError(f"{dest}: fixed and verified, but its folder could not be synced ({e.strerror or e})",
                       hint="run `sync` before relying on it after a power loss") from None
    return data_len, backup_path


def _take_attributes(src: Path, fd: int, replacing: bool) -> None:
    """Give the new file the original's permission bits (exactly, whatever the umask); when it replaces the
    original, also its owner, group and extended attributes (ACLs among them), before any data is copied, so
    the people and services that could use the model still can. Refused when they cannot be kept (a user
    replacing a file they do not own)."""
    st, mine = os.stat(src), os.fstat(fd)
    if replacing and (st.st_uid, st.st_gid) != (mine.st_uid, mine.st_gid):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except PermissionError:
            raise FixError(f"{src}: belongs to uid {st.st_uid}, gid {st.st_gid}; the rewritten file would belong to "
                           f"you (uid {os.geteuid()}) instead; nothing was written",
                           hint="run the fix as the file's owner, write a copy with --output PATH, or take the "
                                "no-copy route (--route override) for flags and special ids") from None
    os.fchmod(fd, st.st_mode & 0o7777)  # after the chown, which clears set-id bits
    if not replacing or not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(src)
    except OSError:
        return  # no extended attributes on this filesystem
    for name in names:
        try:
            os.setxattr(fd, name, os.getxattr(src, name))
        except OSError as e:
            if name.startswith("security.") or e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                continue  # a security label is the folder's policy's to give (SELinux), as to any new file
            raise FixError(f"{src}: its extended attribute {name} cannot be carried over to the rewritten file "
                           f"({e.strerror}); nothing was written",
                           hint="write a copy with --output PATH, or run the fix as the file's owner") from None


def _unlink_backup(backup: Path | None) -> None:
    """A failed fix leaves no backup: the original is still where it was."""
    if backup is not None:
        try:
            _unlink(backup)
        except OSError:
            pass


FS_IOC_GETFLAGS, FS_IMMUTABLE_FL, FS_APPEND_FL = 0x80086601, 0x10, 0x20  # linux/fs.h


def _check_replaceable(path: Path) -> None:
    """Refuse, before any copying, a file that no rename may replace: immutable or append-only (chattr)."""
    try:
        with open(path, "rb") as f:
            flags = struct.unpack("l", fcntl.ioctl(f.fileno(), FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
    except OSError:
        return  # no such flags on this filesystem
    if flags & (FS_IMMUTABLE_FL | FS_APPEND_FL):
        raise FixError(f"{path}: is {'immutable' if flags & FS_IMMUTABLE_FL else 'append-only'} (chattr), so it "
                       "cannot be replaced by a fixed copy; nothing was written",
                       hint="chattr -i (or -a) it first, or write the copy elsewhere with --output PATH")


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _make_backup(src: Path) -> Path:
    """MODEL.bak (or .bak1, ...): a hard link to the original inode where the filesystem has them (instant),
    else a copy into a new file. A name that exists, even as a dangling link, is never written through."""
    for n in range(1000):
        backup = src.with_name(src.name + (".bak" if n == 0 else f".bak{n}"))
        if os.path.lexists(backup):
            continue
        try:
            os.link(src, backup)
            return backup
        except FileExistsError:
            continue  # appeared meanwhile: the next name
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
        try:  # no hard links here: a copy, into a file only this call creates
            with open(src, "rb") as fin, open(backup, "xb") as fout:
                shutil.copyfileobj(fin, fout, CHUNK)
                fout.flush()
                os.fsync(fout.fileno())
            shutil.copystat(src, backup)
            return backup
        except FileExistsError:
            continue
        except BaseException:
            _unlink(backup)  # no partial backup left behind
            raise
    raise FixError(f"{src}: no free backup name ({src.name}.bak ... .bak999)")


# ----------------------------------------------------------------------------------------------- verify


def _value_bytes(header: GGUFHeader, key: str, buf) -> bytes:
    entry = header.kv[key]
    return bytes(buf[entry.value_offset:entry.end])


def header_snapshot(header: GGUFHeader) -> bytes:
    """The source's header bytes, kept before writing so the result can be compared with them."""
    with _open_map(header.path) as buf:
        return bytes(buf[:header.header_end])


def _verify(old: GGUFHeader, old_head: bytes, new: GGUFHeader, plan: FixPlan, data_offset: int,
            data_equal: bool = True) -> None:
    """Check the written file against the source and the plan; raise FixError on any difference.

    `data_offset`: where the tensor data was written; `data_equal`: whether its bytes compared equal to the
    source's (the rewrite compares them while copying; an in-place patch does not touch them)."""
    problems = []
    if new.data_offset != data_offset or new.file_size - new.data_offset != old.file_size - old.data_offset:
        problems.append("its tensor data is not where it was written")
    if not data_equal:
        problems.append("tensor data bytes differ from the source")
    if [(t.name, t.shape, t.type, t.offset) for t in old.tensors] != [(t.name, t.shape, t.type, t.offset) for t in new.tensors]:
        problems.append("tensor infos differ from the source")
    if new.alignment != old.alignment or new.data_offset % new.alignment:
        problems.append("tensor data is not aligned as in the source")
    by_key = {c.key: c for c in plan.changes}
    with _open_map(new.path) as nb:
        for key in set(old.kv) | set(new.kv):
            change = by_key.get(key)
            if change is None:
                if key not in new.kv or key not in old.kv or _value_bytes(old, key, old_head) != _value_bytes(new, key, nb):
                    problems.append(f"key {key} changed but was not planned to")
            elif change.action == Action.REMOVE:
                if key in new.kv:
                    problems.append(f"key {key} is still present")
            elif key not in new.kv or _value_bytes(new, key, nb) != _encoded_change(change):
                problems.append(f"key {key} does not hold its planned value")
    if problems:
        raise FixError(f"{plan.path}: verification of the fixed file failed ({'; '.join(problems)}); "
                       "the original is left as it was")
    if plan.reference is not None:
        from ggufpair.format.model_info import read_model_info
        from ggufpair.pairing.verdict import check_pair

        verdict = check_pair(read_model_info(plan.reference), read_model_info(new.path, whole_model=False))
        if not verdict.compatible:
            raise FixError(f"{plan.path}: after the fix the pair is still incompatible ({verdict.summary}); "
                           "the original is left as it was")


def _same_data(a, a_off: int, b, b_off: int, length: int) -> bool:
    """Every byte of two ranges compared, streamed in chunks (as 64-bit words with numpy: ~5 GB/s warm).

    A byte-for-byte comparison is stronger than comparing hashes of the two ranges, and cheaper."""
    import numpy as np

    if length == 0:
        return True
    va = np.frombuffer(a, dtype=np.uint8, count=length, offset=a_off)
    vb = np.frombuffer(b, dtype=np.uint8, count=length, offset=b_off)
    try:
        for pos in range(0, length, CHUNK):
            end = min(pos + CHUNK, length)
            x, y = va[pos:end], vb[pos:end]
            words = (end - pos) // 8 * 8
            if not np.array_equal(x[:words].view(np.uint64), y[:words].view(np.uint64)):
                return False
            if not np.array_equal(x[words:], y[words:]):
                return False
        return True
    finally:
        del va, vb
