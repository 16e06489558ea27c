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
  instead of writing them; FIEMAP then shows every data byte on the source's own block, so nothing is read
  (where it cannot show that, the span is compared byte for byte). Elsewhere the file's blocks are reserved first (a full
  disk fails before any copying) and the data is copied by the kernel (`os.copy_file_range`; `sendfile` or
  plain reads as fallbacks) in chunks: each chunk is handed to the disk as soon as it is copied and compared byte for byte with the
  source by a second thread while the next one copies, so the fsync and the verification overlap the copy.
  Then fsync, the header checks, and an atomic rename over the original (or, for `--output`, a hard link to
  the new name, which never replaces a file that appeared there). The original is untouched until then;
  stale temporary files of a killed run are removed by the next one.

After any write the result is re-read and checked: tensor names, types, shapes, offsets and data bytes
identical to the source, the planned keys at their new values, every other key unchanged, and the pair
verdict compatible. If a check fails the original stays as it was.

This module is the orchestration; the concerns have their own modules: `journal` (in-place patches, their
journal and recovery, the per-file lock), `copier` (the rewrite's copy engine) and `verify` (the checks of a
written file).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ggufpair.fix import copier
from ggufpair.fix.errors import FixError, os_error
from ggufpair.fix.journal import (FileLock, patch_in_place, pending_recovery, recover, recover_interrupted,
                                  recovery_note, remove_stale_temps, temp_name)
from ggufpair.fix.plan import Action, FixPlan
from ggufpair.fix.verify import encoded_change, header_snapshot, verify_written
from ggufpair.format.reader import GGUFHeader, _open_map, _pad, read_header
from ggufpair.format.writer import encode_header, encode_kv
from ggufpair.pairing.verdict import Route
from ggufpair.state import fsync_dir

# What callers of the fix use, kept importable from here: the journal's recovery and the fix's error.
__all__ = ["FixError", "FixResult", "apply_plan", "new_header_bytes", "pending_recovery", "recover",
           "recover_interrupted", "recovery_note", "remove_stale_temps", "resolve_output", "temp_name"]


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
    with FileLock(src):
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
            patch_in_place(src, header, patches, plan)
            result = FixResult(src, plan.route, "in-place", None, False, sum(len(n) for _, _, n in patches),
                               time.perf_counter() - start)
        else:
            copied, backup_path = _rewrite(src, dest, header, head, plan, backup)
            result = FixResult(dest, plan.route, "rewrite", backup_path, True, copied, time.perf_counter() - start)
    return result


def _same_size_patches(header: GGUFHeader, changes) -> list[tuple[int, bytes, bytes]] | None:
    """(offset, old bytes, new bytes) for each change, if every one fits exactly in place; else None."""
    out = []
    with _open_map(header.path) as buf:
        for change in changes:
            entry = header.kv.get(change.key)
            if change.action != Action.SET or entry is None:
                return None  # (an entry's value bytes start with its type: a new type of the same size fits too)
            new = encoded_change(change)
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
    if not header.tensors or len(head) != header.data_offset:
        return None
    with _open_map(header.path) as buf:
        old = bytes(buf[:header.data_offset])
    first = _first_difference(old, head)
    return [] if first is None else [(first, old[first:], head[first:])]


def _first_difference(a: bytes, b: bytes) -> int | None:
    """Where two byte strings of one length first differ (None: nowhere), by halving: each step compares
    whole slices (memcmp), so a header of megabytes takes about 2 copies of itself, not a Python loop per byte."""
    if a == b:
        return None
    lo, hi = 0, len(a)  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


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
        raise os_error(e, dest.absolute().parent, "creating a temporary file") from None
    fcntl.flock(fd, fcntl.LOCK_EX)  # held (through `held`) until the end: the temp is not stale meanwhile
    held = os.dup(fd)
    try:
        try:
            _take_attributes(src, fd, replacing=dest == src)
            src_off, dst_off, length, aligned = copier.copy_span(header.data_offset, len(head), data_len)
            with open(src, "rb") as sf:
                # A reflink needs no space and writes no data; where there is none, the blocks are reserved
                # first, so a full disk fails before any copying.
                cloned = aligned and copier.clone_range(sf.fileno(), fd, src_off, dst_off, length)
                if cloned:
                    if os.fstat(fd).st_size != len(head) + data_len:  # (a truncate to the size the clone gave
                        os.ftruncate(fd, len(head) + data_len)  # already would zero the last block's tail: unshared)
                else:
                    copier.reserve(fd, len(head) + data_len)
                equal = copier.copy_and_compare(src, sf.fileno(), tmp, fd, src_off, dst_off, length, cloned)
            view = memoryview(head)  # after the copy: it overwrites the header bytes an aligned span copied
            while view:
                view = view[os.pwrite(fd, view, len(head) - len(view)):]
            os.fsync(fd)
        finally:
            os.close(fd)
        verify_written(header, old_head, read_header(tmp), plan, data_offset=len(head), data_equal=equal)
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
        raise os_error(e, tmp, "writing the fixed copy") from None
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
                shutil.copyfileobj(fin, fout, copier.CHUNK)
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
