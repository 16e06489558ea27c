"""The core imports no face: no Textual, no rich, no argparse, no ggufpair.cli (checked in a fresh process)."""

from __future__ import annotations

import os
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


def test_a_fix_starts_without_the_gguf_package_or_numpy(tmp_path):
    """`ggufpair fix` of a small file (header read, plan, rewrite, verification) loads gguf's constants file on its
    own: neither gguf's package (its __init__ imports numpy, yaml, its writer) nor numpy is imported."""
    from tests.ggufmake import model_kv, vocab_kv, write_gguf
    from gguf import GGUFValueType as T

    base = {**model_kv(), **vocab_kv()}
    model = write_gguf(tmp_path / "m.gguf", base)
    ref = write_gguf(tmp_path / "ref.gguf", {**base, "tokenizer.ggml.add_bos_token": (T.BOOL, False)})
    code = ("import sys\nfrom ggufpair.cli.main import main\n"
            f"rc = main(['fix', {str(model)!r}, '--reference', {str(ref)!r}, '--output', {str(tmp_path / 'out.gguf')!r}])\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('gguf', 'numpy', 'yaml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "GGUFPAIR_HOME": str(tmp_path / "home")})
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert (tmp_path / "out.gguf").exists()


def test_the_constants_are_ggufs_own_and_interchangeable():
    """Loaded on its own or shared with an imported gguf, each enum value equals and hashes as gguf's."""
    code = ("import ggufpair.format.gguf_constants as c, gguf\n"
            "print(c.GGUFValueType.BOOL == gguf.GGUFValueType.BOOL, {gguf.GGUFValueType.BOOL: 1}[c.GGUFValueType.BOOL],"
            " c.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K] == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K],"
            " c.Keys.General.ARCHITECTURE == gguf.Keys.General.ARCHITECTURE, c.GGUFValueType is gguf.GGUFValueType)")
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert alone == ["True", "1", "True", "True", "False"]
    shared = subprocess.run([sys.executable, "-c", "import gguf\n" + code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert shared == ["True", "1", "True", "True", "True"]  # gguf imported first: its very classes
