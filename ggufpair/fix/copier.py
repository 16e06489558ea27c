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


def copy_and_compare(src_path: Path, src_fd: int, dst_path: Path, dst_fd: int, src_off: int, dst_off: int,
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
