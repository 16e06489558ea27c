"""A fix that could not be applied, and the words for the system's refusals (no room, no permission)."""

from __future__ import annotations

import errno
from pathlib import Path

from ggufpair.errors import GgufpairError


class FixError(GgufpairError):
    """A fix could not be applied; the original file is as it was."""

    exit_code = 6


def os_error(e: OSError, where: Path, what: str) -> FixError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return FixError(f"{where}: no space left ({e.strerror}) while {what}; the original is untouched",
                        hint="free some space, or write the fixed copy elsewhere with --output PATH")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FixError(f"{where}: not writable ({e.strerror}) while {what}; the original is untouched",
                        hint="write the fixed copy elsewhere with --output PATH; a fix of flags or special ids can also "
                             "take the no-copy route (--route override)")
    return FixError(f"{where}: {e.strerror or e} while {what}; the original is untouched")
