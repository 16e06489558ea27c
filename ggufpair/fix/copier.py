"""The rewrite's copy engine: the tensor data of the source into the new file, by a reflink where the
filesystem shares blocks (btrfs, XFS), else by the kernel's copy in chunks, each handed to the disk as soon as
it is copied and compared byte for byte with the source by a second thread while the next one copies."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from pathlib import Path

from ggufpair.fix import verify
from ggufpair.format.reader import _open_map

CHUNK = 8 << 20
REWRITE_CHUNK = 128 << 20  # copied, handed to the disk and compared at a time
REFLINK_BLOCK = 4096  # the block size at which btrfs and XFS can share a copy's blocks (their usual one)


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


def reserve(fd: int, size: int) -> None:
    """Give the new file its final size, its blocks reserved where the filesystem can: a full disk fails here,
    before gigabytes are copied."""
    if _FALLOCATE is not None and _FALLOCATE(fd, 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(err, os.strerror(err))
        # Anything else (no fallocate on this filesystem, a sandbox refusing it): the copy finds out.
    os.ftruncate(fd, size)


FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range), linux/fs.h


def clone_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> bool:
    """Share the span's blocks with the source (a reflink: btrfs, XFS, bcachefs, ZFS 2.2+); False where the
    filesystem cannot (ext4, tmpfs, another filesystem) and the bytes must be copied."""
    try:
        fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("qQQQ", src_fd, src_off, length, dst_off))
        return True
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM):
            return False
        raise


def copy_span(src_data: int, dst_data: int, length: int) -> tuple[int, int, int, bool]:
    """(source offset, new-file offset, length, block-aligned) of the kernel copy of the tensor data. When the
    data moves by a whole number of reflink blocks (0 included), the span starts at the block holding the
    data's first byte, so every copy call is block-aligned and reflinks can happen; the header written
    afterwards covers the header bytes copied with that first block."""
    if (dst_data - src_data) % REFLINK_BLOCK:
        return src_data, dst_data, length, False
    lead = dst_data % REFLINK_BLOCK
    return src_data - lead, dst_data - lead, length + lead, True


FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap), linux/fiemap.h
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
# extents whose physical address does not name the bytes plainly: not taken as proof of anything
FIEMAP_UNTRUSTED = (0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800)  # unknown, delalloc, encoded,
# encrypted, not aligned, inline, tail, unwritten
FIEMAP_BATCH = 512


def _extents(fd: int, start: int, length: int) -> list[tuple[int, int, int]] | None:
    """(logical, physical, length) of the file's extents over [start, start + length), by FIEMAP (after the
    kernel wrote back the file's dirty pages); None where the filesystem cannot say or an extent's address
    does not plainly hold its bytes."""
    out: list[tuple[int, int, int]] = []
    pos, end = start, start + length
    while pos < end:
        buf = bytearray(struct.pack("QQIIII", pos, end - pos, FIEMAP_FLAG_SYNC, 0, FIEMAP_BATCH, 0)
                        + bytes(56 * FIEMAP_BATCH))
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        except OSError:
            return None
        mapped = struct.unpack_from("QQIIII", buf)[3]
        if not mapped:
            return out
        last = False
        for i in range(mapped):
            logical, physical, n, _, _, flags = struct.unpack_from("QQQQQI", buf, 32 + 56 * i)
            if flags & FIEMAP_UNTRUSTED:
                return None
            out.append((logical, physical, n))
            pos, last = logical + n, bool(flags & FIEMAP_EXTENT_LAST)
        if last:
            break
    return out


def unproven_spans(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> list[tuple[int, int]] | None:
    """The (offset, length) pieces of the new file's span, relative to its start, whose bytes do not sit on
    the very disk blocks that hold the same bytes of the source (a clone puts them there: the same storage,
    so the same bytes, with nothing to read). None where the filesystem cannot show it (no FIEMAP,
    compressed or not-yet-allocated extents): then every byte must be compared."""
    src, dst = _extents(src_fd, src_off, length), _extents(dst_fd, dst_off, length)
    if src is None or dst is None:
        return None

    def physical(extents, logical: int, limit: int) -> tuple[int | None, int]:
        """(address, bytes until the next extent boundary), address None in a hole."""
        for lo, ph, n in extents:
            if lo <= logical < lo + n:
                return ph + logical - lo, lo + n - logical
        after = [lo for lo, _, _ in extents if lo > logical]
        return None, (min(after) - logical) if after else limit

    out: list[tuple[int, int]] = []
    done = 0
    while done < length:
        a, a_n = physical(src, src_off + done, length - done)
        b, b_n = physical(dst, dst_off + done, length - done)
        n = min(a_n, b_n, length - done)
        if a is None or b is None or a != b:
            if out and out[-1][0] + out[-1][1] == done:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((done, n))
        done += n
    return out


def same_blocks(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int) -> bool:
    """Whether every byte of the new file's span sits on the source's own block for that byte."""
    return unproven_spans(src_fd, dst_fd, src_off, dst_off, length) == []


def copy_and_compare(src_path: Path, src_fd: int, dst_path: Path, dst_fd: int, src_off: int, dst_off: int,
                     length: int, cloned: bool = False) -> bool:
    """Copy the tensor data in chunks, each handed to the disk as soon as it is copied (so the final fsync
    finds little left to write) and compared byte for byte with the source by a second thread while the
    next chunk copies. `cloned`: the span already shares the source's blocks; the bytes FIEMAP shows on the
    source's own blocks are not read, the others (all, where it cannot tell) compared byte for byte.
    Returns whether every byte is the source's."""
    if cloned:
        spans = unproven_spans(src_fd, dst_fd, src_off, dst_off, length)
        if spans is not None:  # only the pieces not on the source's own blocks are read and compared
            with _open_map(src_path) as a, _open_map(dst_path) as b:
                return all(verify.same_data(a, src_off + pos, b, dst_off + pos, n) for pos, n in spans)
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
                if self.equal and not self.abort and not verify.same_data(self.a, self.a_off + pos, self.b, self.b_off + pos, n):
                    self.equal = False
        except BaseException as e:  # handed to the joining thread
            self.error = e
            while self.queue.get() is not None:
                pass

    def join(self, timeout=None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error
