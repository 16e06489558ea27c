"""The flag dialect of a llama-server build, read from its own `--help`.

llama.cpp renames and removes flags between builds (`--draft-max` became `--spec-draft-n-max`; `-md` alone
stopped enabling speculation when `--spec-type` arrived; `-fa` went from a bare switch to `on|off|auto`;
`--no-mmap` became `-lm none`). A removed flag makes the server exit, so ggufpair renders every command
line for the dialect of the binary at hand instead of assuming one.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ggufpair.errors import EngineError

_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


@dataclass(frozen=True)
class Dialect:
    flags: frozenset[str]  # every flag the build accepts
    removed: frozenset[str]  # flags it lists as removed (using one makes the server exit)
    spec_types: tuple[str, ...]  # values of --spec-type; () when the flag does not exist
    fa_takes_value: bool  # `-fa on|off|auto` (True) or a bare `-fa` switch (False)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def pick(self, *candidates: str) -> str | None:
        """The first candidate this build accepts (pass canonical names first)."""
        return next((c for c in candidates if c in self.flags), None)

    @property
    def spec_names(self) -> bool:
        """The 2026 `--spec-draft-*` names (else the older `--draft-max/--draft-min`)."""
        return "--spec-draft-n-max" in self.flags

    @property
    def has_spec_type(self) -> bool:
        return bool(self.spec_types)

    @property
    def draft_spec_types(self) -> tuple[str, ...]:
        """The --spec-type kinds that use a draft model (draft-simple, draft-eagle3, ...); none in early-2026
        builds, whose --spec-type only chose a draftless kind and -md alone enabled the draft."""
        return tuple(t for t in self.spec_types if t.startswith("draft"))

    @property
    def ngram_kinds(self) -> tuple[str, ...]:
        """The draftless n-gram kinds of --spec-type, in llama.cpp's priority order."""
        from ggufpair.engine.kinds import offered

        return tuple(k.name for k in offered(self))

    @property
    def ngram_with_draft(self) -> bool:
        """Whether an n-gram kind can run beside a draft model (a comma list of --spec-type kinds, tried in
        llama.cpp's fixed priority, n-gram kinds first). Early-2026 builds took a draftless kind only instead
        of the draft ("when no draft model is provided")."""
        return bool(self.draft_spec_types) and bool(self.ngram_kinds)

    @property
    def draft_max_flag(self) -> str | None:
        return self.pick("--spec-draft-n-max", "--draft-max", "--draft")

    @property
    def draft_min_flag(self) -> str | None:
        return self.pick("--spec-draft-n-min", "--draft-min")

    @property
    def p_min_flag(self) -> str | None:
        return self.pick("--spec-draft-p-min", "--draft-p-min")

    @property
    def draft_model_flag(self) -> str | None:
        return self.pick("--spec-draft-model", "-md", "--model-draft")

    @property
    def draft_kv_flags(self) -> tuple[str, str] | None:
        k = self.pick("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft")
        v = self.pick("--spec-draft-type-v", "-ctvd", "--cache-type-v-draft")
        return (k, v) if k and v else None

    @property
    def draft_gpu_layers_flag(self) -> str | None:
        return self.pick("--spec-draft-ngl", "-ngld", "--gpu-layers-draft")

    @property
    def no_mmap_args(self) -> tuple[str, ...]:
        if self.has("-lm"):
            return ("-lm", "none")
        if self.has("--no-mmap"):
            return ("--no-mmap",)
        return ()

    def summary(self) -> dict[str, object]:
        return {
            "draft length": f"{self.draft_max_flag} / {self.draft_min_flag}",
            "spec names": "--spec-*" if self.spec_names else "--draft-max/--draft-min (older)",
            "--spec-type": ",".join(self.spec_types) if self.spec_types else "absent (-md alone enables speculation)",
            "n-gram kinds": (", ".join(self.ngram_kinds) + ("; with a draft too" if self.ngram_with_draft else
                                                             "; only without a draft model")) if self.ngram_kinds
            else "none",
            "-fa": "on|off|auto" if self.fa_takes_value else "bare switch",
            "no mmap": " ".join(self.no_mmap_args) or "unsupported",
            "--override-kv": self.has("--override-kv"),
            "draft KV types": " / ".join(self.draft_kv_flags) if self.draft_kv_flags else "unsupported",
            "--metrics": self.has("--metrics"),
        }


def parse_help(text: str) -> Dialect:
    """Read a dialect from `llama-server --help` output."""
    flags: set[str] = set()
    removed: set[str] = set()
    spec_types: tuple[str, ...] = ()
    fa_takes_value = False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("-"):
            continue
        m = re.match(r"(\S.*?)(?:\s{2,}(.*))?$", line)
        head, desc = m.group(1), m.group(2) or ""
        if not desc and i + 1 < len(lines):
            desc = lines[i + 1].strip()
        names = [m for m in _FLAG.findall(head) if not m.isupper()]
        names = [n for n in names if n.lstrip("-") and not re.fullmatch(r"-\d.*", n)]
        target = removed if "has been removed" in desc else flags
        target.update(names)
        if "--spec-type" in names:  # the list follows the flag, or starts the next line when it is long
            m = re.search(r"--spec-type\s+\[?([a-z0-9,|\-]+)", head) or re.match(r"\[([a-z0-9,|\-]+)\]", desc)
            if m:
                spec_types = tuple(t for t in re.split(r"[,|]", m.group(1)) if t)
        if "--flash-attn" in names or "-fa" in names:
            fa_takes_value = bool(re.search(r"\[?on\|off", head)) or "FA" in head or "on|off" in desc
    return Dialect(frozenset(flags), frozenset(removed), spec_types, fa_takes_value)


def probe_dialect(binary: Path, timeout: float = 30) -> Dialect:
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineError(f"cannot run {binary} --help: {e}") from None
    text = out.stdout + out.stderr
    dialect = parse_help(text)
    if not dialect.has("--model") and not dialect.has("-m"):
        raise EngineError(f"{binary} --help does not look like llama-server's (no -m/--model flag)")
    if not (dialect.has("--host") and dialect.has("--port")):  # llama-cli, llama-completion: no server flags
        raise EngineError(f"{binary} is not llama-server: its --help has no --host/--port (a llama.cpp tool that "
                          "does not serve?)", hint="give the llama-server binary of the same build (--llama-server PATH)")
    return dialect
