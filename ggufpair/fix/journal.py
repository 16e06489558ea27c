"""The journal of in-place patches and its recovery: the original bytes are written (fsync'd) to a journal
before a patch, and a fix that dies in between is rolled back by the next run. Also what else a killed fix
can leave behind (a rewrite's temporary file) and the per-file lock that keeps two fixes apart."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from pathlib import Path

from ggufpair.fix.errors import FixError, os_error
from ggufpair.fix.plan import FixPlan
from ggufpair.fix.verify import header_snapshot, verify_written
from ggufpair.format.reader import GGUFHeader, read_header
from ggufpair.state import fsync_dir, state_path, write_json_atomic

TMP_MARK = ".ggufpair-"


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
            raise os_error(e, path, "rolling back an interrupted fix") from None
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
    with FileLock(Path(path)):
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


class FileLock:
    """An exclusive flock on the model file: one fix at a time per file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> "FileLock":
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


def patch_in_place(path: Path, header: GGUFHeader, patches, plan: FixPlan) -> None:
    old_head = header_snapshot(header)
    try:
        f = open(path, "r+b")  # fails here, before anything is written, on a read-only file or folder
    except OSError as e:
        raise os_error(e, path, "opening the file to patch it in place") from None
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
                raise os_error(e, path, "patching in place") from None
            raise
    try:
        verify_written(header, old_head, read_header(path), plan, data_offset=header.data_offset)
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
                    raise os_error(e, journal, "writing the journal of an in-place patch") from None
    raise os_error(error, first, "writing the journal of an in-place patch")
