"""The core imports no face: no Textual, no rich, no argparse, no ggufpair.cli (checked in a fresh process)."""

from __future__ import annotations

import subprocess
import sys

CORE = ["ggufpair.format.model_info", "ggufpair.pairing.verdict", "ggufpair.pairing.llama_oracle", "ggufpair.report",
        "ggufpair.engine.process", "ggufpair.engine.binary"]
FORBIDDEN = ["textual", "rich", "argparse", "ggufpair.cli"]


def test_core_imports_no_ui():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or m.startswith('ggufpair.cli'))\n"
            + "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_import_linter_contract():
    out = subprocess.run([sys.executable, "-m", "importlinter.cli", "--config", "pyproject.toml"],
                         capture_output=True, text=True)
    if "No module named" in out.stderr:
        out = subprocess.run(["lint-imports"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
