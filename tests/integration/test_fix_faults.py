"""Fault tests for `ggufpair fix`: SIGKILL at random moments of a rewrite, a full disk, a read-only folder.
Whatever happens, the original model is byte-identical (or, past the atomic rename, exactly the fixed file)."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from gguf import GGUFValueType as T

from ggufpair.fix.plan import RouteChoice, plan_pair_fix
from ggufpair.pairing.verdict import inspect_pair
from tests.ggufmake import model_kv, spm_tokens, vocab_kv, write_gguf
from tests.pair_cases import ADD_BOS

pytestmark = pytest.mark.integration
KILLS = 24


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _make_pair(folder: Path, tensor_shape=(4096, 8192)) -> tuple[Path, Path]:
    """A target and a draft whose token 50 differs (fixable only by a rewrite), with a large tensor."""
    tokens = spm_tokens(300)
    tokens[50] = "<a-longer-different-name>"
    tensors = [("token_embd.weight", tensor_shape), ("output_norm.weight", (64,))]
    target = write_gguf(folder / "target.gguf", {**model_kv(), **vocab_kv()}, [("output_norm.weight", (64,))])
    draft = write_gguf(folder / "draft.gguf", {**model_kv(), **vocab_kv(tokens=tokens)}, tensors)
    return target, draft


def _fix_cmd(draft: Path, target: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ggufpair.cli.main", "fix", str(draft), "--reference", str(target), *extra]


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".ggufpair-" in p.name]


def test_sigkill_during_rewrite_never_damages_the_original(tmp_path):
    target, draft = _make_pair(tmp_path)  # a 128 MiB draft
    original_crc = _crc(draft)
    expected = tmp_path / "expected" / "draft.gguf"
    expected.parent.mkdir()
    subprocess.run(_fix_cmd(draft, target, "--output", str(expected)), check=True, capture_output=True)
    fixed_crc = _crc(expected)
    rng = random.Random(20261123)
    mid_write = outcomes_fixed = 0
    for i in range(KILLS):
        proc = subprocess.Popen(_fix_cmd(draft, target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not _temps(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)  # wait for the rewrite to start ...
        time.sleep(rng.uniform(0, 0.15))  # ... then kill at a random moment of it
        saw_temp = bool(_temps(tmp_path))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        crc = _crc(draft)
        assert crc in (original_crc, fixed_crc), f"kill {i}: the model is neither the original nor the fixed file"
        mid_write += saw_temp and crc == original_crc
        if crc == fixed_crc:
            outcomes_fixed += 1
            _make_pair(tmp_path)  # start again from the broken draft
            assert _crc(draft) == original_crc
    print(f"{KILLS} kills: {mid_write} during a rewrite with the original intact, {outcomes_fixed} after the rename")
    assert mid_write >= KILLS // 2, f"only {mid_write} of {KILLS} kills landed during a rewrite"
    # The next run removes what the killed runs left behind, and fixes the file.
    out = subprocess.run(_fix_cmd(draft, target), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _temps(tmp_path) == []
    assert _crc(draft) == fixed_crc


def _mount_tmpfs(folder: Path, size_bytes: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                         capture_output=True)
    return out.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("aligned", [False, True], ids=["data-moves", "data-keeps-its-offset"])
def test_full_disk_gives_a_clear_error_and_keeps_the_original(tmp_path, aligned):
    """The data moving (a longer token text), or keeping its offset (add_bos flipped, kept with --backup),
    where a reflink filesystem would clone it: tmpfs cannot, so the block reservation fails before any
    copying either way."""
    disk = tmp_path / "disk"
    target, draft = _make_pair(tmp_path, (1024, 2048))  # an 8 MiB draft
    extra = ()
    if aligned:
        draft = write_gguf(tmp_path / "draft.gguf", {**model_kv(), **vocab_kv(), ADD_BOS: (T.BOOL, False)},
                           [("token_embd.weight", (1024, 2048))])
        extra = ("--route", "patch", "--backup")
    mounted = _mount_tmpfs(disk, 12 << 20)  # room for the draft, not for a second copy
    try:
        if mounted:
            draft = Path(shutil.copy(draft, disk / "draft.gguf"))
            preexec = None
        else:  # no mount here: a file size limit makes the copy fail the same way
            disk.mkdir(exist_ok=True)
            draft = Path(shutil.copy(draft, disk / "draft.gguf"))

            def preexec():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
        before = _crc(draft)
        out = subprocess.run(_fix_cmd(draft, target, *extra), capture_output=True, text=True, preexec_fn=preexec)
        assert out.returncode == 6, out.stderr
        assert "no space left" in out.stderr and "the original is untouched" in out.stderr
        assert "Traceback" not in out.stderr
        assert _crc(draft) == before
        assert _temps(disk) == [] and list(disk.glob("*.bak*")) == []
    finally:
        if mounted:
            _umount(disk)


def test_read_only_folder_gives_a_clear_error_and_keeps_the_original(tmp_path):
    ro = tmp_path / "ro"
    target, draft = _make_pair(tmp_path, (256, 256))
    mounted = _mount_tmpfs(ro, 16 << 20)
    ro.mkdir(exist_ok=True)
    draft = Path(shutil.copy(draft, ro / "draft.gguf"))
    before = _crc(draft)
    try:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        else:
            os.chmod(ro, 0o555)
            os.chmod(draft, 0o444)
        for extra in ((), ("--route", "patch")):
            out = subprocess.run(_fix_cmd(draft, target, *extra), capture_output=True, text=True)
            assert out.returncode == 6, out.stderr
            assert "not writable" in out.stderr and "the original is untouched" in out.stderr
            assert _crc(draft) == before
    finally:
        if mounted:
            _umount(ro)
        else:
            os.chmod(ro, 0o755)


def test_read_only_file_in_place_route_is_refused_cleanly(tmp_path):
    """The in-place route on a file that cannot be opened for writing fails before writing anything."""
    from ggufpair.fix.apply import FixError, apply_plan

    tgt = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    kv = {**model_kv(), **vocab_kv(), "tokenizer.ggml.add_bos_token": (T.BOOL, False)}
    d = write_gguf(tmp_path / "d.gguf", kv)
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, 1 << 20):
        pytest.skip("needs a tmpfs mount to make a file read-only for root")
    try:
        d = Path(shutil.copy(d, ro / "d.gguf"))
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        before = _crc(d)
        with pytest.raises(FixError, match="not writable"):
            apply_plan(plan_pair_fix(d, tgt, RouteChoice.PATCH))
        assert _crc(d) == before
    finally:
        _umount(ro)


def test_an_in_place_patch_on_a_full_disk_journals_in_the_state_folder(tmp_path):
    """A full disk leaves no room for the journal beside the model; the patch itself needs none: the journal
    goes to the state folder and the flip is made (and its journal removed)."""
    from ggufpair.fix.apply import apply_plan
    from ggufpair.state import state_dir

    tgt = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    d = write_gguf(tmp_path / "d.gguf", {**model_kv(), **vocab_kv(), ADD_BOS: (T.BOOL, False)},
                   [("token_embd.weight", (64, 300))])
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 1 << 20):
        pytest.skip("needs a tmpfs mount")
    try:
        d = Path(shutil.copy(d, disk / "d.gguf"))
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        plan = plan_pair_fix(d, tgt, RouteChoice.PATCH)
        assert apply_plan(plan).mode == "in-place"
        assert inspect_pair(tgt, d).compatible
        assert sorted(p.name for p in disk.iterdir()) == ["d.gguf", "filler"]
        assert list(state_dir("journals").iterdir()) == []
    finally:
        _umount(disk)
