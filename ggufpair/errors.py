"""One error hierarchy for ggufpair.

Every error carries a message for people and, where one exists, a hint saying what to do. The faces
(CLI, TUI) render them in one place; library code only raises. Each class has its own exit code so that
scripts can tell a bad file from a missing binary without parsing text.
"""

from __future__ import annotations

from pathlib import Path


class GgufpairError(Exception):
    """Base of every error ggufpair raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(GgufpairError):
    """The command line or a setting asks for something impossible."""

    exit_code = 2


class ModelFileError(GgufpairError):
    """A model file is missing, unreadable or not a model ggufpair can use."""

    exit_code = 3

    def __init__(self, path: str | Path, message: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}", hint)
        self.path = Path(path)


class GGUFFormatError(ModelFileError):
    """The bytes of a GGUF file break the format: names the file, the byte offset and the problem."""

    exit_code = 4

    def __init__(self, path: str | Path, offset: int, problem: str, hint: str | None = None) -> None:
        super().__init__(path, f"at byte {offset}: {problem}", hint)
        self.offset = offset
        self.problem = problem


class MissingShardError(ModelFileError):
    """A split model (name-00001-of-0000N.gguf) lacks one or more of its shards."""

    exit_code = 3


class IncompatiblePairError(GgufpairError):
    """llama.cpp would not speculate with the pair (as `inspect`'s verdict)."""

    exit_code = 10


class EngineError(GgufpairError):
    """llama-server or llama.cpp could not be found, started or used."""

    exit_code = 5


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": GgufpairError.exit_code,
    "usage": UsageError.exit_code,
    "model file": ModelFileError.exit_code,
    "GGUF format": GGUFFormatError.exit_code,
    "engine": EngineError.exit_code,
    "fix not applied": 6,
    "incompatible pair, fixable (inspect)": 9,
    "incompatible pair (inspect)": 10,
    "interrupted": 130,
}
"""Exit codes of the `ggufpair` command, documented in the README."""
