"""`ggufpair fix`: plans, both routes, in-place vs rewrite, verification, and refusing to risk the file."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import gguf
import pytest
from gguf import GGUFValueType as T

from ggufpair.errors import UsageError
from ggufpair.fix import copier, verify
from ggufpair.fix import journal as journaling
from ggufpair.fix.apply import FixError, apply_plan, recover_interrupted, temp_name
from ggufpair.fix.journal import _journal_path
from ggufpair.fix.plan import Action, RouteChoice, plan_pair_fix, plan_self_fix
from ggufpair.format.model_info import read_model_info
from ggufpair.format.reader import read_header
from ggufpair.pairing.verdict import Route, inspect_pair, parse_override
from ggufpair.state import state_dir, write_json_atomic
from tests.ggufmake import DROP, bpe_tokens, model_kv, spm_tokens, tiny_model, vocab_kv, write_gguf
from tests.pair_cases import ADD_BOS, ADD_EOS, BOS

BIG_TENSORS = [("token_embd.weight", (256, 300)), ("blk.0.attn_q.weight", (256, 256)), ("output_norm.weight", (256,))]


@contextlib.contextmanager
def _locked_by_another_process(path):
    """Another process holds an exclusive flock on `path` (a fix at work, as ggufpair's lock or a rewrite's
    temp lock) until the block ends."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def _tensor_bytes(path):
    """Each tensor's data bytes, read through the reference library."""
    return {t.name: (tuple(int(x) for x in t.shape), int(t.tensor_type), bytes(t.data.tobytes()))
            for t in gguf.GGUFReader(path).tensors}


def _fields(path):
    out = {}
    for name, field in gguf.GGUFReader(path).fields.items():
        value = field.contents()
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _pair(tmp_path, draft_changes=None, tokens=None, tensors=None, tokenizer="llama"):
    t_kv = {**model_kv(), **vocab_kv(tokenizer)}
    d_kv = {**model_kv(), **vocab_kv(tokenizer, tokens=tokens)}
    for k, v in (draft_changes or {}).items():
        d_kv[k] = v
    t = write_gguf(tmp_path / "target.gguf", t_kv, tensors)
    d = write_gguf(tmp_path / "draft.gguf", d_kv, tensors)
    return t, d


def test_auto_route_prefers_no_copy_and_changes_no_file(tmp_path):
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    before = d.read_bytes()
    plan = plan_pair_fix(d, t)
    assert plan.route == Route.OVERRIDE_KV and plan.override_args == ("tokenizer.ggml.add_bos_token=bool:true",)
    assert [(c.key, c.action, c.old, c.new) for c in plan.changes] == [(ADD_BOS, Action.SET, False, True)]
    result = apply_plan(plan)
    assert result.mode == "override" and d.read_bytes() == before and result.override_args == plan.override_args
    assert inspect_pair(t, d, dict(parse_override(a) for a in result.override_args)).compatible


def test_in_place_patch_changes_only_the_value_bytes(tmp_path):
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    before = d.read_bytes()
    entry = read_header(d).kv[ADD_BOS]
    result = apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH))
    after = d.read_bytes()
    assert result.mode == "in-place" and len(after) == len(before)
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed == [entry.value_offset + 4]
    assert inspect_pair(t, d).compatible
    assert not _journal_path(d).exists()


def test_rewrite_for_token_texts_keeps_tensors_and_other_keys(tmp_path):
    tokens = spm_tokens(300)
    tokens[100], tokens[101] = "<much-longer-name>", "<x>"
    t, d = _pair(tmp_path, tokens=tokens, tensors=BIG_TENSORS)
    tensors_before, fields_before = _tensor_bytes(d), _fields(d)
    plan = plan_pair_fix(d, t)
    assert plan.route == Route.PATCH and "no --override-kv" in plan.why
    assert "id 100: b'<much-longer-name>' -> b'<0x61>'" in "\n".join(plan.diff())
    result = apply_plan(plan)
    assert result.mode == "rewrite" and result.data_verified
    assert _tensor_bytes(d) == tensors_before
    fields_after = _fields(d)
    assert fields_after["tokenizer.ggml.tokens"] == tuple(spm_tokens(300))
    changed = {k for k in fields_before if fields_before[k] != fields_after.get(k)}
    assert changed == {"tokenizer.ggml.tokens"}
    assert inspect_pair(t, d).compatible
    assert [p.name for p in tmp_path.iterdir() if ".ggufpair-" in p.name] == []


def test_a_rewrite_parses_each_header_once_per_read_it_needs(tmp_path, monkeypatch):
    """A real Gemma header takes ~45 ms to parse (262k tokens): the rewrite's check judges the pair against the
    reference as the plan read it, and reads the written copy once; the source is read again under its lock."""
    from ggufpair.format import reader

    tokens = spm_tokens(300)
    tokens[100] = "<much-longer-name>"
    t, d = _pair(tmp_path, tokens=tokens, tensors=BIG_TENSORS)
    plan = plan_pair_fix(d, t)
    seen: list[str] = []
    parse = reader.parse_header
    monkeypatch.setattr(reader, "parse_header", lambda buf, path: seen.append(Path(path).name) or parse(buf, path))
    result = apply_plan(plan)
    assert result.mode == "rewrite" and result.data_verified
    assert t.name not in seen and seen.count(d.name) == 1 and len(seen) == 2, seen  # the source, then the copy
    assert inspect_pair(t, d).compatible


def test_a_reference_changed_after_the_plan_is_judged_as_it_is_now(tmp_path):
    """The written copy's check reuses the reference the plan read only while that file is unchanged: a target
    replaced meanwhile (another token at id 200) is read again, and the fix is refused as still incompatible,
    the draft left as it was."""
    tokens = spm_tokens(300)
    tokens[100] = "<much-longer-name>"
    t, d = _pair(tmp_path, tokens=tokens, tensors=BIG_TENSORS)
    plan = plan_pair_fix(d, t)
    before = d.read_bytes()
    other = spm_tokens(300)
    other[200] = "<another-token>"
    write_gguf(tmp_path / "target.gguf", {**model_kv(), **vocab_kv(tokens=other)}, BIG_TENSORS)
    with pytest.raises(FixError, match="after the fix the pair is still incompatible"):
        apply_plan(plan)
    assert d.read_bytes() == before and [p.name for p in tmp_path.iterdir() if ".ggufpair-" in p.name] == []


@pytest.mark.parametrize("mode", ["in-place", "rewrite"])
def test_a_fix_through_a_link_fixes_the_file_it_names_and_keeps_the_link(tmp_path, mode, capsys):
    """A Hugging Face cache snapshot links to its blobs: the blob is fixed, the link stays a link (a rename
    next to the link used to replace it with a fixed copy and leave the blob, and every other link, unfixed)."""
    from ggufpair.cli.main import main

    kv = {**model_kv(), **vocab_kv("gpt2")}
    t = write_gguf(tmp_path / "t.gguf", {**kv, ADD_BOS: (T.BOOL, True)}, BIG_TENSORS)
    (tmp_path / "blobs").mkdir()
    (tmp_path / "snapshot").mkdir()
    tokens = bpe_tokens(300)
    tokens[100] = "a-token-text-longer-than-any-header-padding"  # the header grows: a rewrite
    draft_kv = {**kv, ADD_BOS: (T.BOOL, False)} if mode == "in-place" else {**kv, **vocab_kv("gpt2", tokens=tokens)}
    blob = write_gguf(tmp_path / "blobs" / "3f2a9c", draft_kv, BIG_TENSORS)
    link = tmp_path / "snapshot" / "draft.gguf"
    link.symlink_to("../blobs/3f2a9c")
    tensors_before = _tensor_bytes(blob)
    assert main(["fix", str(link), "-r", str(t), "--route", "patch", "--json"]) == 0
    captured = capsys.readouterr()
    applied = json.loads(captured.out)["applied"]
    assert (applied["path"], applied["mode"]) == (str(blob), mode)
    assert "stays one" in captured.err
    assert link.is_symlink() and os.readlink(link) == "../blobs/3f2a9c"
    assert inspect_pair(t, blob).compatible and _tensor_bytes(blob) == tensors_before
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == ["3f2a9c"]
    assert sorted(p.name for p in (tmp_path / "snapshot").iterdir()) == ["draft.gguf"]


def test_a_rewrite_keeps_owner_group_mode_and_extended_attributes(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another owner needs root")
    t = tiny_model(tmp_path / "t.gguf", "gpt2", changes={ADD_BOS: (T.BOOL, True)})
    d = tiny_model(tmp_path / "d.gguf", "gpt2", changes={ADD_BOS: DROP})
    os.chown(d, 65534, 65533)
    os.chmod(d, 0o640)
    os.setxattr(d, "user.ggufpair.test", b"kept")
    old_umask = os.umask(0o077)  # a umask that would make a new file 0600
    try:
        assert apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH)).mode == "rewrite"
    finally:
        os.umask(old_umask)
    st = os.stat(d)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65533, 0o640)
    assert os.getxattr(d, "user.ggufpair.test") == b"kept" and inspect_pair(t, d).compatible


def test_a_rewrite_that_would_change_the_owner_is_refused(tmp_path, monkeypatch):
    """A user who does not own the file (and cannot give the new one away) is refused before any copying.
    The suite runs as root here, so the file is given to another owner and chown's refusal of a non-root
    user is stood in for."""
    import errno as errno_

    if os.geteuid() != 0:
        pytest.skip("giving a file to another owner needs root")
    t = tiny_model(tmp_path / "t.gguf", "gpt2", changes={ADD_BOS: (T.BOOL, True)})
    d = tiny_model(tmp_path / "d.gguf", "gpt2", changes={ADD_BOS: DROP})
    os.chown(d, 4242, 4242)

    def refuse(*_):
        raise PermissionError(errno_.EPERM, "Operation not permitted")

    plan = plan_pair_fix(d, t, RouteChoice.PATCH)
    before = d.read_bytes()
    monkeypatch.setattr(os, "fchown", refuse)
    with pytest.raises(FixError, match="belongs to uid 4242.*nothing was written"):
        apply_plan(plan)
    assert d.read_bytes() == before and [p.name for p in tmp_path.iterdir() if ".ggufpair-" in p.name] == []


def test_adding_a_missing_key_rewrites(tmp_path):
    t = tiny_model(tmp_path / "t.gguf", "gpt2", changes={ADD_BOS: (T.BOOL, True)})
    d = tiny_model(tmp_path / "d.gguf", "gpt2", changes={ADD_BOS: DROP})
    plan = plan_pair_fix(d, t, RouteChoice.PATCH)
    assert [(c.key, c.action) for c in plan.changes] == [(ADD_BOS, Action.ADD)]
    assert apply_plan(plan).mode == "rewrite"
    assert _fields(d)[ADD_BOS] is True and inspect_pair(t, d).compatible


def test_removing_a_key_and_changing_an_array(tmp_path):
    from ggufpair.fix.apply import apply_plan as apply_
    from ggufpair.fix.plan import FixPlan, KeyChange

    d = tiny_model(tmp_path / "d.gguf")
    st = os.stat(d)
    types = tuple([2] * 300)
    plan = FixPlan(d, Route.PATCH, (
        KeyChange("general.size_label", Action.REMOVE, "1M", None),
        KeyChange("tokenizer.ggml.token_type", Action.SET, None, types, T.ARRAY, T.INT32),
        KeyChange("general.note", Action.ADD, None, "fixed", T.STRING),
    ), (), "test", st.st_size, st.st_mtime_ns)
    apply_(plan)
    fields = _fields(d)
    assert "general.size_label" not in fields and fields["general.note"] == "fixed"
    assert fields["tokenizer.ggml.token_type"] == types


def test_output_leaves_the_original_untouched(tmp_path):
    tokens = spm_tokens(300)
    tokens[50] = "<other>"
    t, d = _pair(tmp_path, tokens=tokens)
    before = d.read_bytes()
    out = tmp_path / "fixed" / "draft.gguf"
    out.parent.mkdir()
    result = apply_plan(plan_pair_fix(d, t), output=out)
    assert result.path == out and d.read_bytes() == before
    assert inspect_pair(t, out).compatible and not inspect_pair(t, d).compatible


def test_backup_keeps_the_original_bytes(tmp_path):
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    before = d.read_bytes()
    result = apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), backup=True)
    assert result.mode == "rewrite"  # a hard-link backup needs a new inode for the fixed file
    assert result.backup.read_bytes() == before and d.read_bytes() != before


def test_a_file_changed_after_planning_is_refused(tmp_path):
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    plan = plan_pair_fix(d, t, RouteChoice.PATCH)
    with open(d, "ab") as f:
        f.write(b"\0" * 32)
    before = d.read_bytes()
    with pytest.raises(FixError, match="changed since the fix was planned"):
        apply_plan(plan)
    assert d.read_bytes() == before


def test_a_half_patched_file_is_explained_and_rolled_back_from_any_home(tmp_path, monkeypatch, capsys):
    """An in-place patch cut short (a write of many header bytes is not atomic) leaves its journal beside the
    model: inspect and list point to the rollback, and a fix from another $GGUFPAIR_HOME (sudo, another user)
    finds the journal and rolls back."""
    from ggufpair.cli.main import main

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    original = d.read_bytes()
    torn = b"\xff" * 8  # a tensor count no reader accepts: the cut-short write of a header stands for it
    journal = journaling._journal_path(d)
    assert journal.parent == d.parent  # beside the model, its folder being writable
    write_json_atomic(journal, {"path": str(d), "inode": os.stat(d).st_ino, "size": len(original),
                                "patches": [(8, original[8:16].hex(), torn.hex())]})
    with open(d, "r+b") as f:
        f.seek(8)
        f.write(torn)
    assert main(["inspect", str(d)]) == 4
    assert f"`ggufpair fix {d}` rolls it back" in capsys.readouterr().err
    assert main(["list", "--dir", str(tmp_path), "--json"]) == 0
    (skipped,) = json.loads(capsys.readouterr().out)["skipped"]
    assert skipped["path"] == str(d) and "rolls it back" in skipped["why"]
    monkeypatch.setenv("GGUFPAIR_HOME", str(tmp_path / "another-home"))
    assert main(["fix", str(d), "-r", str(t), "--dry-run"]) == 2  # a dry run writes nothing, a rollback neither
    assert main(["fix", str(d), "-r", str(t), "--route", "override"]) == 0
    assert "rolled back an interrupted in-place fix" in capsys.readouterr().out
    assert d.read_bytes() == original and not journal.exists()


def test_a_journal_goes_to_the_state_folder_when_the_model_folder_is_not_writable(tmp_path, monkeypatch):
    """A writable model in a folder the user cannot write to. The suite runs as root, for whom every folder
    is writable: the folder's refusal (access(2)) is stood in for."""

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    plan = plan_pair_fix(d, t, RouteChoice.PATCH)
    real_access, real_write = os.access, journaling._write_durably
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != tmp_path and real_access(p, mode, **kw))
    seen = []

    def watch(f, pieces):
        seen.append(journaling._journal_path(d))
        assert seen[-1].exists()  # the journal is durable before the model is written
        real_write(f, pieces)

    monkeypatch.setattr(journaling, "_write_durably", watch)
    assert apply_plan(plan).mode == "in-place"
    assert seen and seen[0].parent == state_dir("journals") and not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_override_route_refused_when_it_cannot_fix(tmp_path):
    tokens = spm_tokens(300)
    tokens[50] = "<other>"
    t, d = _pair(tmp_path, tokens=tokens)
    with pytest.raises(UsageError, match="no-copy route cannot fix"):
        plan_pair_fix(d, t, RouteChoice.OVERRIDE)


def test_vocab_size_difference_is_explained_not_attempted(tmp_path):
    t = tiny_model(tmp_path / "t.gguf", n_tokens=300)
    d = tiny_model(tmp_path / "d.gguf", n_tokens=500)
    plan = plan_pair_fix(d, t)
    assert plan.empty and plan.route is None
    assert "vocab_size" in plan.unfixable[0] and "Metadata cannot fix this" in plan.unfixable[0]
    with pytest.raises(FixError):
        apply_plan(plan)


@pytest.mark.parametrize("route", ["auto", "patch", "override"])
def test_partly_fixable_pair_writes_nothing_and_says_why(tmp_path, route):
    # add_bos alone is fixable, but 40 of 295 token texts differ: too many for one tokenizer. Fixing add_bos
    # alone would leave llama.cpp without speculation, so nothing is applied, by any route (exit 10).
    from ggufpair.cli.main import main

    tokens = spm_tokens(300)
    for i in range(100, 140):
        tokens[i] = f"<other{i}>"
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tokens=tokens, tensors=BIG_TENSORS)
    plan = plan_pair_fix(d, t, RouteChoice(route))
    assert plan.route is None and plan.empty and not plan.override_args
    assert "token_text" in plan.unfixable[0] and ADD_BOS in plan.why and "nothing is changed" in plan.why
    before = d.read_bytes()
    assert main(["fix", str(d), "-r", str(t), "--route", route]) == 10
    assert main(["fix", str(d), "-r", str(t), "--route", route, "--dry-run"]) == 10
    assert d.read_bytes() == before and not list(tmp_path.glob(".*tmp"))


def test_draft_with_duplicate_texts_is_repaired_from_the_target(tmp_path):
    # Two ids of the draft given texts the vocabulary already has: llama.cpp's loader aborts on it; the
    # target's texts for those ids repair it (both routes' verdicts say fixable; inspect exits 9).
    from ggufpair.cli.main import main

    tokens = spm_tokens(300)
    tokens[120], tokens[2] = tokens[30], tokens[31]  # one duplicate past id 5, one below it
    t, d = _pair(tmp_path, tokens=tokens, tensors=BIG_TENSORS)
    verdict = inspect_pair(t, d)
    assert [f.check for f in verdict.blockers][0] == "draft_duplicate_tokens" and all(f.fixes for f in verdict.blockers)
    assert main(["inspect", str(t), str(d)]) == 9
    plan = plan_pair_fix(d, t)
    assert plan.route == Route.PATCH and [c.key for c in plan.changes] == ["tokenizer.ggml.tokens"]
    assert sorted(plan.array_edits["tokenizer.ggml.tokens"]) == [2, 120]
    apply_plan(plan)
    assert inspect_pair(t, d).compatible and _fields(d)["tokenizer.ggml.tokens"] == _fields(t)["tokenizer.ggml.tokens"]


def test_draft_duplicates_of_another_size_are_not_fixable(tmp_path):
    tokens = spm_tokens(310)
    tokens[120] = tokens[30]
    t = tiny_model(tmp_path / "t.gguf", n_tokens=300)
    d = tiny_model(tmp_path / "d.gguf", n_tokens=310, tokens=tokens)
    plan = plan_pair_fix(d, t)
    assert plan.route is None and "duplicate" in plan.unfixable[0]


def test_self_fix_repairs_out_of_range_ids_and_needed_bos(tmp_path):
    kv = {**model_kv(arch="gemma3"), **vocab_kv()}
    kv[BOS] = (T.UINT32, 70000)
    kv[ADD_BOS] = (T.BOOL, False)
    m = write_gguf(tmp_path / "m.gguf", kv)
    plan = plan_self_fix(m)
    assert {(c.key, c.new) for c in plan.changes} == {(BOS, 1), (ADD_BOS, True)}
    apply_plan(plan)
    v = read_model_info(m).vocab
    assert (v.bos_id_stored, v.add_bos) == (1, True)


def test_only_the_first_shard_of_a_split_model_is_rewritten(tmp_path):
    split = {"split.count": (T.UINT16, 2), "split.tensors.count": (T.INT32, 2)}
    t = tiny_model(tmp_path / "t.gguf")
    kv = {**model_kv(), **vocab_kv(), ADD_BOS: (T.BOOL, False), "split.no": (T.UINT16, 0), **split}
    first = write_gguf(tmp_path / "d-00001-of-00002.gguf", kv, [("token_embd.weight", (8, 4))])
    second = write_gguf(tmp_path / "d-00002-of-00002.gguf", {"split.no": (T.UINT16, 1), **split},
                        [("output_norm.weight", (8,))])
    second_before, second_stat = second.read_bytes(), os.stat(second)
    plan = plan_pair_fix(second, t, RouteChoice.PATCH)
    assert plan.path == first
    first_before = first.read_bytes()
    out = tmp_path / "copies"
    out.mkdir()
    with pytest.raises(UsageError, match="split model"):  # a copy of the first shard alone could not load
        apply_plan(plan, output=out)
    assert first.read_bytes() == first_before and list(out.iterdir()) == []
    apply_plan(plan, backup=True)
    assert second.read_bytes() == second_before and os.stat(second).st_mtime_ns == second_stat.st_mtime_ns
    assert read_model_info(first).vocab.add_bos is True


def test_interrupted_in_place_patch_is_rolled_back(tmp_path):
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    before = d.read_bytes()
    entry = read_header(d).kv[ADD_BOS]
    # What a fix killed between journal and fsync leaves: the journal, and the file already patched.
    from ggufpair.state import write_json_atomic

    write_json_atomic(_journal_path(d), {"path": str(d), "patches": [(entry.value_offset + 4, "00", "01")]})
    with open(d, "r+b") as f:
        f.seek(entry.value_offset + 4)
        f.write(b"\x01")
    assert recover_interrupted(d) and d.read_bytes() == before
    assert not _journal_path(d).exists()


def test_stale_temporary_files_are_removed_by_the_next_fix(tmp_path):
    tokens = spm_tokens(300)
    tokens[50] = "<other>"
    t, d = _pair(tmp_path, tokens=tokens)
    stale = temp_name(d)
    stale.write_bytes(b"half a model")
    apply_plan(plan_pair_fix(d, t))
    assert not stale.exists()


def test_one_fix_at_a_time_per_file(tmp_path):
    import fcntl

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    plan = plan_pair_fix(d, t, RouteChoice.PATCH)
    with open(d, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        with pytest.raises(FixError, match="another ggufpair fix"):
            apply_plan(plan)


def test_eos_fix_by_both_routes(tmp_path):
    t, d = _pair(tmp_path, {ADD_EOS: (T.BOOL, True)})
    plan = plan_pair_fix(d, t)
    assert plan.override_args == ("tokenizer.ggml.add_eos_token=bool:false",)
    apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH))
    assert inspect_pair(t, d).compatible


def _token_text_rewrite(tmp_path):
    tokens = spm_tokens(300)
    tokens[100] = "<" + "a-name-longer-than-the-header-padding-" * 2 + ">"
    t, d = _pair(tmp_path, tokens=tokens, tensors=BIG_TENSORS)
    return t, d, d.read_bytes()


@pytest.mark.parametrize("refused", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_rewrite_in_many_chunks_by_each_copy_method(tmp_path, monkeypatch, refused):
    """Hundreds of chunks, each compared while the next copies; the kernel copy refused (EXDEV, as across
    filesystems) falls back to sendfile, then to plain reads, and the result is the same."""
    import errno as errno_


    monkeypatch.setattr(copier, "REWRITE_CHUNK", 4096)
    for name in refused:
        def refuse(*a, **k):
            raise OSError(errno_.EXDEV, "refused by the test")
        monkeypatch.setattr(os, name, refuse)
    t, d, _ = _token_text_rewrite(tmp_path)
    tensors_before = _tensor_bytes(d)
    result = apply_plan(plan_pair_fix(d, t))
    assert result.mode == "rewrite" and result.data_verified and result.bytes_copied > 100 * 4096
    assert _tensor_bytes(d) == tensors_before and inspect_pair(t, d).compatible


def test_a_byte_corrupted_during_the_copy_fails_verification(tmp_path, monkeypatch):
    """One byte of one chunk in the middle goes wrong on its way to the new file: the comparison catches it,
    the original stays byte for byte, no temporary file is left."""

    monkeypatch.setattr(copier, "REWRITE_CHUNK", 4096)
    real_copy, calls = copier._copy_range, []

    def corrupting(src_fd, dst_fd, src_off, dst_off, length, method):
        real_copy(src_fd, dst_fd, src_off, dst_off, length, method)
        calls.append(dst_off)
        if len(calls) == 40:
            byte = os.pread(src_fd, 1, src_off + 17)
            os.pwrite(dst_fd, bytes([byte[0] ^ 0xFF]), dst_off + 17)

    monkeypatch.setattr(copier, "_copy_range", corrupting)
    t, d, original = _token_text_rewrite(tmp_path)
    with pytest.raises(FixError, match="tensor data bytes differ"):
        apply_plan(plan_pair_fix(d, t))
    assert d.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir() if ".ggufpair-" in p.name] == []


def test_an_error_in_the_comparing_thread_leaves_the_original(tmp_path, monkeypatch):

    monkeypatch.setattr(copier, "REWRITE_CHUNK", 4096)

    def broken(*a, **k):
        raise MemoryError("the comparison failed")

    monkeypatch.setattr(verify, "same_data", broken)
    t, d, original = _token_text_rewrite(tmp_path)
    with pytest.raises(MemoryError):
        apply_plan(plan_pair_fix(d, t))
    assert d.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir() if ".ggufpair-" in p.name] == []


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_header_that_still_fits_its_padding_is_patched_in_place(tmp_path, delta):
    """A token text one byte shorter or longer than the target's, where the header's padding before the
    (32-aligned) tensor data absorbs the difference: patched in place, no tensor byte moves."""
    t, _ = _pair(tmp_path, tensors=BIG_TENSORS)
    h = read_header(t)
    end = h.header_end - delta  # the draft's header end, so that the fix moves it back to the target's
    if not (h.data_offset - h.alignment < end <= h.data_offset):
        pytest.skip("this model's padding cannot absorb the change")
    tokens = spm_tokens(300)
    tokens[100] = "Q" * (len(tokens[100].encode()) - delta)
    t, d = _pair(tmp_path, tokens=tokens, tensors=BIG_TENSORS)
    assert read_header(d).data_offset == read_header(t).data_offset and read_header(d).header_end != h.header_end
    tensors_before, inode = _tensor_bytes(d), d.stat().st_ino
    result = apply_plan(plan_pair_fix(d, t))
    assert result.mode == "in-place" and d.stat().st_ino == inode
    assert _tensor_bytes(d) == tensors_before and read_header(d).data_offset == h.data_offset
    assert _fields(d)["tokenizer.ggml.tokens"] == tuple(spm_tokens(300)) and inspect_pair(t, d).compatible
    assert not _journal_path(d).exists()


@pytest.mark.parametrize("case", ["same-size header to --output", "header moved by a whole block", "header moved"])
def test_the_kernel_copy_is_block_aligned_when_the_data_moves_by_whole_blocks(tmp_path, monkeypatch, case):
    """A reflink (btrfs, XFS) needs the source and the copy at the same offset within a block. When the tensor
    data keeps its offset, or moves by a multiple of 4096 bytes, every copy call starts and (but for the
    file's end) ends on a block boundary; otherwise the data is copied from where it starts. Either way the
    result holds the new header and the same tensors."""

    monkeypatch.setattr(copier, "REWRITE_CHUNK", 3 * 4096 + 100)  # not a multiple of the block: rounded down
    tokens = spm_tokens(300)
    if case == "same-size header to --output":
        t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    else:
        h = read_header(_pair(tmp_path, tensors=BIG_TENSORS)[0])
        grow = 4096 if case == "header moved by a whole block" else 40
        tokens[100] = "Q" * (len(tokens[100].encode()) + grow)  # the draft's header is `grow` bytes longer
        t, d = _pair(tmp_path, tokens=tokens, tensors=BIG_TENSORS)
        moved = read_header(d).data_offset - h.data_offset
        assert moved == 4096 if grow == 4096 else moved % 4096
    src_data = read_header(d).data_offset
    calls = []
    real = os.copy_file_range

    def spy(src_fd, dst_fd, count, offset_src, offset_dst):
        calls.append((offset_src, offset_dst, count))
        return real(src_fd, dst_fd, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", spy)
    before, tensors_before = d.read_bytes(), _tensor_bytes(d)
    out = tmp_path / "out.gguf"
    result = apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), output=out)
    new_data = read_header(out).data_offset
    assert result.mode == "rewrite" and result.data_verified and len(calls) > 3
    size = out.stat().st_size
    if (new_data - src_data) % 4096 == 0:
        assert case != "header moved"
        assert all(s % 4096 == 0 and o % 4096 == 0 and (o + n == size or n % 4096 == 0) for s, o, n in calls), calls
        assert calls[0][1] == new_data // 4096 * 4096 < new_data  # from the block holding the data's first byte
    else:
        assert case == "header moved" and calls[0][:2] == (src_data, new_data)
    assert _tensor_bytes(out) == tensors_before and inspect_pair(t, out).compatible
    assert d.read_bytes() == before


@pytest.mark.parametrize("route", [RouteChoice.OVERRIDE, RouteChoice.PATCH])
def test_a_bos_id_mismatch_behind_an_add_bos_mismatch_is_fixed_too(tmp_path, route):
    """llama.cpp reports only add_bos, but once the flag is the target's (true) it compares the BOS ids: the
    verdict names both and the fix sets both, by either route."""
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False), BOS: (T.UINT32, 3)})
    verdict = inspect_pair(t, d)
    assert [(f.check, f.llama_reports) for f in verdict.blockers] == [("add_bos", True), ("bos_id", False)]
    plan = plan_pair_fix(d, t, route)
    assert {c.key for c in plan.changes} == {ADD_BOS, BOS}
    result = apply_plan(plan)
    overrides = dict(parse_override(a) for a in result.override_args)
    assert inspect_pair(t, d, overrides).compatible


@pytest.mark.parametrize("defect", ["no tokens", "duplicate texts"])
def test_a_vocabulary_llama_cpp_cannot_load_is_not_touched(tmp_path, defect, capsys):
    """No tokens (every special id is then 'outside the vocabulary'), or two ids with one text (llama.cpp
    aborts): metadata cannot make the file loadable, so fix writes nothing, and inspect does not call it loadable."""
    from ggufpair.cli.main import main

    kv = {**model_kv(), **vocab_kv()}
    if defect == "no tokens":
        kv["tokenizer.ggml.tokens"] = DROP
    else:
        tokens = spm_tokens(300)
        tokens[200] = tokens[100]
        kv = {**model_kv(), **vocab_kv(tokens=tokens)}
    path = write_gguf(tmp_path / "m.gguf", kv)
    before = path.read_bytes()
    assert main(["fix", str(path)]) == 10
    assert path.read_bytes() == before and "rewritten" not in capsys.readouterr().out
    assert main(["inspect", str(path)]) == 10
    assert "cannot load" in capsys.readouterr().out


def test_output_writes_the_fixed_copy_whatever_the_route_asked(tmp_path, capsys):
    """--output asks for a fixed copy: the automatic route writes it (it chose the no-copy route and wrote
    nothing), the no-copy route with it is refused, a folder gets the model's name, an existing file is kept."""
    from ggufpair.cli.main import main

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    before = d.read_bytes()
    out = tmp_path / "fixed.gguf"
    assert main(["fix", str(d), "-r", str(t), "--output", str(out)]) == 0
    assert "a fixed copy is written to" in capsys.readouterr().out
    assert inspect_pair(t, out).compatible and d.read_bytes() == before
    assert main(["fix", str(d), "-r", str(t), "--route", "override", "--output", str(tmp_path / "x.gguf")]) == 2
    assert not (tmp_path / "x.gguf").exists()
    kept = out.read_bytes()
    assert main(["fix", str(d), "-r", str(t), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == kept
    folder = tmp_path / "copies"
    folder.mkdir()
    assert main(["fix", str(d), "-r", str(t), "--output", str(folder)]) == 0
    assert inspect_pair(t, folder / d.name).compatible and d.read_bytes() == before


def test_json_plan_summarises_arrays(tmp_path, capsys):
    """Two copies of the vocabulary are no plan: the JSON names the array's length and the ids that change."""
    from ggufpair.cli.main import main

    tokens = spm_tokens(3000)
    tokens[100] = "<other>"
    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv(n_tokens=3000)})
    d = write_gguf(tmp_path / "d.gguf", {**model_kv(), **vocab_kv(tokens=tokens)})
    assert main(["fix", str(d), "-r", str(t), "--dry-run", "--json"]) == 0
    out = capsys.readouterr().out
    change = json.loads(out)["plan"]["changes"][0]
    assert change["key"] == "tokenizer.ggml.tokens" and change["items"] == 3000
    assert change["changed_ids"]["100"]["old"] == "<other>" and len(out) < 5000


@pytest.mark.parametrize("stored", [(T.STRING, "true"), (T.INT32, 1)], ids=["add_bos-as-string", "bos-id-as-int32"])
def test_a_flag_or_id_of_the_wrong_type_is_fixed_by_both_routes_and_alone(tmp_path, stored):
    """llama.cpp's loader refuses the file (it throws on the type); an override of the right kind wins over
    the stored key, and a patch rewrites it with the right type, whether fixed against a target or alone."""
    key = ADD_BOS if stored[0] == T.STRING else BOS
    t, d = _pair(tmp_path, {key: stored})
    verdict = inspect_pair(t, d)
    assert [f.check for f in verdict.blockers] == ["draft_key_type"] and verdict.blockers[0].fixes
    for route in (RouteChoice.OVERRIDE, RouteChoice.PATCH):
        copy = tmp_path / f"{route.value}.gguf"
        copy.write_bytes(d.read_bytes())
        result = apply_plan(plan_pair_fix(copy, t, route))
        overrides = dict(parse_override(a) for a in result.override_args)
        assert inspect_pair(t, copy, overrides).compatible, route
        if route == RouteChoice.PATCH:
            assert read_header(copy).kv[key].type == (T.BOOL if key == ADD_BOS else T.UINT32)
            assert _fields(copy)[key] == (True if key == ADD_BOS else 1)
    alone = tmp_path / "alone.gguf"
    alone.write_bytes(d.read_bytes())
    plan = plan_self_fix(alone)
    assert [c.key for c in plan.changes] == [key] and not plan.unfixable
    apply_plan(plan)
    assert read_model_info(alone).vocab.load_error is None and _fields(alone)[key] == (True if key == ADD_BOS else 1)


def test_inspect_of_one_model_says_what_fix_model_repairs(tmp_path, capsys):
    """An unloadable file that `fix MODEL` repairs is "fixable" (9), with the repair named; a file llama.cpp
    loads but `fix MODEL` would still repair (a Gemma without BOS) exits 0 and names it; a clean file names none."""
    from ggufpair.cli.main import main

    unloadable = write_gguf(tmp_path / "s.gguf", {**model_kv(), **vocab_kv(), ADD_BOS: (T.STRING, "true")})
    assert main(["inspect", str(unloadable)]) == 9
    out = capsys.readouterr().out
    assert f"ggufpair fix {unloadable}` repairs: {ADD_BOS}" in out.replace("\n", "")
    assert main(["inspect", str(unloadable), "--json"]) == 9
    assert [r["key"] for r in json.loads(capsys.readouterr().out)["repairs"]] == [ADD_BOS]
    gemma = write_gguf(tmp_path / "g.gguf", {**model_kv(arch="gemma3"), **vocab_kv(), ADD_BOS: (T.BOOL, False)})
    assert main(["inspect", str(gemma)]) == 0 and "repairs: " + ADD_BOS in capsys.readouterr().out.replace("\n", "")
    clean = tiny_model(tmp_path / "c.gguf")
    assert main(["inspect", str(clean)]) == 0 and "repairs" not in capsys.readouterr().out


def test_wrong_types_next_to_duplicate_texts_are_not_fixable(tmp_path, capsys):
    """Rewriting the wrongly typed key would leave a file llama.cpp still aborts on: nothing is written, and a
    pair with such a draft is not called fixable."""
    from ggufpair.cli.main import main

    tokens = spm_tokens(300)
    tokens[200] = tokens[100]
    kv = {**model_kv(), **vocab_kv(tokens=tokens), ADD_BOS: (T.STRING, "true")}
    d = write_gguf(tmp_path / "d.gguf", kv)
    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    before = d.read_bytes()
    assert main(["fix", str(d)]) == 10 and d.read_bytes() == before
    assert main(["inspect", str(t), str(d)]) == 10


@pytest.mark.parametrize("case", ["gemma add_bos 'false'", "INT32 bos id outside the vocabulary"])
def test_fixing_one_file_twice_changes_nothing_the_second_time(tmp_path, case):
    """The checks after a type repair see the repaired value: a Gemma model's add_bos stored as the string
    'false' becomes true at once (Gemma needs BOS), an out-of-range INT32 id is repaired to the usual BOS text."""
    if case.startswith("gemma"):
        kv = {**model_kv(arch="gemma3"), **vocab_kv(), ADD_BOS: (T.STRING, "false")}
    else:
        kv = {**model_kv(), **vocab_kv(), BOS: (T.INT32, 5000)}
    path = write_gguf(tmp_path / "m.gguf", kv)
    apply_plan(plan_self_fix(path))
    assert read_model_info(path).vocab.load_error is None
    assert plan_self_fix(path).empty, [c.key for c in plan_self_fix(path).changes]
    fields = _fields(path)
    assert fields[ADD_BOS] is True if case.startswith("gemma") else fields[BOS] < 300


def test_an_aligned_span_is_cloned_where_the_filesystem_can_and_reserved_where_not(tmp_path, monkeypatch):
    """On this machine's filesystems FICLONERANGE is refused: the blocks are reserved, the data copied. Where a
    filesystem clones (btrfs, XFS: none here, so the clone is stood in for by a plain kernel copy), nothing is
    reserved or copied chunk by chunk, and the cloned span is still compared byte for byte."""

    reserved, copied = [], []
    real_reserve, real_copy = copier.reserve, copier._copy_range
    monkeypatch.setattr(copier, "reserve", lambda fd, size: reserved.append(size) or real_reserve(fd, size))
    monkeypatch.setattr(copier, "_copy_range", lambda *a: copied.append(a[4]) or real_copy(*a))
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    tensors_before = _tensor_bytes(d)
    apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), output=tmp_path / "here.gguf")
    assert reserved and copied  # no reflink on this filesystem

    def clone(src_fd, dst_fd, src_off, dst_off, length):
        assert src_off % 4096 == 0 and dst_off % 4096 == 0
        done = 0
        while done < length:
            done += os.copy_file_range(src_fd, dst_fd, length - done, src_off + done, dst_off + done)
        return True

    monkeypatch.setattr(copier, "clone_range", clone)
    reserved.clear(), copied.clear()
    result = apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), output=tmp_path / "cloned.gguf")
    assert result.data_verified and reserved == [] and copied == []
    assert _tensor_bytes(tmp_path / "cloned.gguf") == tensors_before and inspect_pair(t, tmp_path / "cloned.gguf").compatible

    def bad_clone(src_fd, dst_fd, src_off, dst_off, length):  # a clone gone wrong: one tensor byte differs
        clone(src_fd, dst_fd, src_off, dst_off, length)
        last = os.pread(src_fd, 1, src_off + length - 1)
        os.pwrite(dst_fd, bytes([last[0] ^ 0xFF]), dst_off + length - 1)
        return True

    monkeypatch.setattr(copier, "clone_range", bad_clone)
    before = d.read_bytes()
    with pytest.raises(FixError, match="tensor data bytes differ from the source"):
        apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), output=tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists() and d.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".ggufpair-" in p.name and p.name.endswith(".tmp")] == []


def test_output_that_is_the_model_or_a_dangling_link_is_refused(tmp_path, capsys):
    from ggufpair.cli.main import main

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    before = d.read_bytes()
    assert main(["fix", str(d), "-r", str(t), "--output", str(tmp_path)]) == 2  # the folder holds the model
    assert "the model itself" in capsys.readouterr().err and d.read_bytes() == before
    link = tmp_path / "dangling.gguf"
    link.symlink_to(tmp_path / "nowhere.gguf")
    assert main(["fix", str(d), "-r", str(t), "--output", str(link)]) == 2
    assert link.is_symlink() and not (tmp_path / "nowhere.gguf").exists() and d.read_bytes() == before



def test_a_rollback_never_undoes_a_running_fix_nor_writes_into_a_replaced_file(tmp_path, capsys):
    """While another process holds the file's lock (a fix at work), fix neither rolls back its journal nor
    removes its temporary file, and a dry run writes nothing; a journal whose file was replaced since (other
    bytes where the patch was) is refused and kept."""
    from ggufpair.cli.main import main
    from ggufpair.state import write_json_atomic

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    entry = read_header(d).kv[ADD_BOS]
    write_json_atomic(_journal_path(d), {"path": str(d), "patches": [(entry.value_offset + 4, "00", "01")]})
    with open(d, "r+b") as f:
        f.seek(entry.value_offset + 4)
        f.write(b"\x01")  # the running fix's patch
    stale = temp_name(d)
    stale.write_bytes(b"x")
    patched = d.read_bytes()
    with _locked_by_another_process(d):
        assert main(["fix", str(d), "-r", str(t)]) == 6  # another fix is working on this file
        assert main(["fix", str(d), "-r", str(t), "--dry-run"]) == 2  # a rollback waits: no plan of a half-patched file
        assert d.read_bytes() == patched and _journal_path(d).exists() and stale.exists()
    # The file is replaced by another one (bytes at the journal's offset are neither old nor new): refused, kept.
    other = bytearray(patched)
    other[entry.value_offset + 4] = 0x07
    d.write_bytes(bytes(other))
    with pytest.raises(FixError, match="does not match this file"):
        recover_interrupted(d)
    assert d.read_bytes() == bytes(other) and _journal_path(d).exists()


def test_a_backup_never_writes_through_a_dangling_link(tmp_path):
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    before = d.read_bytes()
    (tmp_path / "draft.gguf.bak").symlink_to(tmp_path / "elsewhere.gguf")
    result = apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), backup=True)
    assert result.backup == tmp_path / "draft.gguf.bak1" and result.backup.read_bytes() == before
    assert not (tmp_path / "elsewhere.gguf").exists()


def test_output_arguments_that_cannot_mean_what_they_say_are_refused(tmp_path, capsys):
    from ggufpair.cli.main import main

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    assert main(["fix", str(d), "-r", str(t), "--output", str(tmp_path / "x.gguf"), "--backup"]) == 2
    assert main(["fix", str(d), "-r", str(t), "--output", str(tmp_path / "newdir") + "/"]) == 2
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "newdir").exists()


def test_a_split_shard_renamed_out_of_the_pattern_is_a_clear_error(tmp_path):
    from ggufpair.errors import MissingShardError

    split = {"split.count": (T.UINT16, 2), "split.tensors.count": (T.INT32, 2), "split.no": (T.UINT16, 0)}
    path = write_gguf(tmp_path / "renamed.gguf", {**model_kv(), **vocab_kv(), **split}, [("token_embd.weight", (8, 4))])
    with pytest.raises(MissingShardError, match="does not follow"):
        read_model_info(path)


def test_stale_temps_are_removed_but_not_those_of_a_running_fix(tmp_path):
    """Two fixes of different models may write copies to one --output name: each holds only its own model's
    lock, but a rewrite holds an flock on its temporary file, so the cleanup spares one still being written
    (another process holds it here) and removes one whose writer is gone, whatever its name's pid says
    (pid 1 is always alive: a pid check would have kept it)."""
    from ggufpair.fix.apply import remove_stale_temps

    dest = tmp_path / "out.gguf"
    live = tmp_path / ".out.gguf.ggufpair-4242-abcd1234.tmp"
    dead = tmp_path / ".out.gguf.ggufpair-1-abcd1234.tmp"
    journal_temp = tmp_path / "..out.gguf.ggufpair-journal.json.x1y2.tmp"
    for p in (live, dead, journal_temp):
        p.write_bytes(b"partial")
    with _locked_by_another_process(live):
        assert sorted(remove_stale_temps(dest)) == sorted([dead, journal_temp])
        assert live.exists()
    assert remove_stale_temps(dest) == [live]


def test_a_journal_whose_folder_sync_failed_is_not_left_to_undo_the_fix(tmp_path, monkeypatch):
    """The journal was renamed beside the model, then its folder's fsync failed (a transient EIO, a FUSE
    filesystem): it is removed before the state folder takes the journal, so no stale journal is left for
    the next run to roll the finished fix back with."""
    import ggufpair.state as state
    from ggufpair.fix.apply import pending_recovery, recover

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    real_sync, failed = state.fsync_dir, []

    def sync_fails_once_in_the_model_folder(folder):
        if Path(folder) == tmp_path and not failed:
            failed.append(folder)
            raise OSError(5, "Input/output error")
        real_sync(folder)

    monkeypatch.setattr(state, "fsync_dir", sync_fails_once_in_the_model_folder)
    assert apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH)).mode == "in-place" and failed
    assert not pending_recovery(d) and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert recover(d) == [] and inspect_pair(t, d).compatible


def test_a_journal_belongs_to_the_model_s_owner_and_a_stuck_one_is_explained(tmp_path, monkeypatch):
    """A fix run as root on a user's model leaves (if cut short) a journal that user can read: same owner,
    group and read bits as the model. A rollback whose journal cannot be removed says the file is whole."""
    from ggufpair.fix import apply

    if os.geteuid() != 0:
        pytest.skip("giving a file to another owner needs root")
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    os.chown(d, 65534, 65533)
    os.chmod(d, 0o640)
    original = d.read_bytes()
    entry = read_header(d).kv[ADD_BOS]
    # the journal a patch writes first, then the patch's byte, then a power cut
    journal = journaling._write_journal(d, {"path": str(d), "inode": os.stat(d).st_ino, "size": len(original),
                                       "patches": [(entry.value_offset + 4, "00", "01")]})
    with open(d, "r+b") as f:
        f.seek(entry.value_offset + 4)
        f.write(b"\x01")
    assert journal == journaling._journal_path(d)
    st = os.stat(journal)
    assert journal.parent == tmp_path and (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65533, 0o640)

    def cannot_remove(path):
        raise PermissionError(13, "Permission denied")  # root is never refused: a user would be

    monkeypatch.setattr(journaling, "_unlink_durably", cannot_remove)
    with pytest.raises(FixError, match="rolled back an interrupted fix .the file is whole again.*could not be removed"):
        apply.recover(d)
    assert d.read_bytes() == original


def test_reading_never_needs_a_writable_state_folder(tmp_path, monkeypatch, capsys):
    """inspect and list only look for a journal; an unusable $GGUFPAIR_HOME (a read-only home, a service
    account's /nonexistent) is no error."""
    from ggufpair.cli.main import main

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    monkeypatch.setenv("GGUFPAIR_HOME", "/proc/ggufpair-home")
    assert main(["inspect", str(t), str(d)]) == 9
    assert main(["inspect", str(t)]) == 0
    capsys.readouterr()
    assert main(["list", "--dir", str(tmp_path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["models"]) == 2


def test_a_model_name_too_long_for_a_journal_beside_it(tmp_path):
    """A name of 240 bytes leaves no room for `.NAME.ggufpair-journal.json` (255 at most): the journal goes to
    the state folder; inspect and fix work as for any name."""
    from ggufpair.cli.main import main

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    long = d.rename(tmp_path / ("d" * 235 + ".gguf"))
    assert main(["inspect", str(t), str(long)]) == 9
    assert main(["fix", str(long), "-r", str(t), "--route", "patch"]) == 0
    assert inspect_pair(t, long).compatible and not list(state_dir("journals").iterdir())


def test_a_tokenless_target_and_a_draft_with_duplicate_texts(tmp_path):
    """No vocabulary in the target: nothing to copy texts from; the duplicates stay unfixable (no crash)."""
    tokens = spm_tokens(300)
    tokens[120] = tokens[30]
    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), "tokenizer.ggml.model": (T.STRING, "none")})
    d = tiny_model(tmp_path / "d.gguf", tokens=tokens)
    verdict = inspect_pair(t, d)
    assert not verdict.compatible and not all(f.fixes for f in verdict.blockers)
    assert plan_pair_fix(d, t).route is None


def test_list_names_a_half_patched_model_it_can_still_read(tmp_path, capsys):
    from ggufpair.cli.main import main

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    entry = read_header(d).kv[ADD_BOS]
    write_json_atomic(journaling._journal_path(d), {"path": str(d), "patches": [(entry.value_offset + 4, "00", "01")]})
    assert main(["list", "--dir", str(tmp_path), "--json"]) == 0
    models = {m["path"]: m["half_patched"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert models == {str(d): True, str(t): False}
    assert main(["list", "--dir", str(tmp_path)]) == 0
    assert "rolls it back" in capsys.readouterr().out


def test_ctrl_c_during_an_in_place_patch_rolls_back_at_once(tmp_path, monkeypatch):
    """KeyboardInterrupt in the middle of the patch's write: the bytes written so far are undone before the
    interrupt goes on, and no journal is left for a later run."""
    from ggufpair.fix import apply

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)}, tensors=BIG_TENSORS)
    original = d.read_bytes()
    real_write = journaling._write_durably

    def interrupted(f, pieces):
        if pieces and pieces[0][1] != original[pieces[0][0]:pieces[0][0] + len(pieces[0][1])]:  # the patch
            f.seek(pieces[0][0])
            f.write(pieces[0][1])
            f.flush()
            raise KeyboardInterrupt
        real_write(f, pieces)  # the rollback

    monkeypatch.setattr(journaling, "_write_durably", interrupted)
    with pytest.raises(KeyboardInterrupt):
        apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH))
    assert d.read_bytes() == original and not apply.pending_recovery(d)


def test_a_failed_backup_rewrite_leaves_no_backup_and_an_immutable_model_is_refused_first(tmp_path, monkeypatch):
    import subprocess

    from ggufpair.fix import apply

    t = tiny_model(tmp_path / "t.gguf", "gpt2", changes={ADD_BOS: (T.BOOL, True)})
    d = tiny_model(tmp_path / "d.gguf", "gpt2", changes={ADD_BOS: DROP})
    real_replace = os.replace

    def replace_refused(a, b):
        if Path(b) == d:
            raise PermissionError(1, "Operation not permitted")
        real_replace(a, b)

    monkeypatch.setattr(apply.os, "replace", replace_refused)
    with pytest.raises(FixError, match="d.gguf: cannot be replaced by the fixed copy.*the original is untouched"):
        apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), backup=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.gguf", "t.gguf"]  # no .bak, no temp
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is refused on this filesystem")
    try:
        copied = []
        monkeypatch.setattr(copier, "copy_and_compare", lambda *a, **k: copied.append(1))
        with pytest.raises(FixError, match="is immutable .chattr.*nothing was written"):
            apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH))
        assert copied == []
    finally:
        subprocess.run(["chattr", "-i", str(d)])


def test_a_killed_copy_to_another_name_is_cleaned_by_the_next_fix_in_that_folder(tmp_path):
    """A temp of a killed --output fix (its writer gone: no lock on it) is removed by any later fix writing
    in that folder, not only by one writing to the same name; long model names get short temp names."""
    from ggufpair.fix.apply import temp_name

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    out = tmp_path / "out"
    out.mkdir()
    stale = temp_name(out / "k.gguf")
    stale.write_bytes(b"\0" * 4096)
    apply_plan(plan_pair_fix(d, t, RouteChoice.PATCH), output=out / "k2.gguf")
    assert sorted(p.name for p in out.iterdir()) == ["k2.gguf"]
    assert len(temp_name(tmp_path / ("m" * 240 + ".gguf")).name.encode()) < 255


def test_the_journal_note_tells_a_fix_at_work_and_an_untouched_file_from_a_half_patched_one(tmp_path):
    from ggufpair.fix import apply

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    entry = read_header(d).kv[ADD_BOS]
    write_json_atomic(journaling._journal_path(d), {"path": str(d), "patches": [(entry.value_offset + 4, "00", "01")]})
    assert "left " + str(d) + " unchanged (cut short before writing)" in apply.recovery_note(d)
    with open(d, "r+b") as f:
        f.seek(entry.value_offset + 4)
        f.write(b"\x01")
    assert f"left {d} half-patched" in apply.recovery_note(d)
    with _locked_by_another_process(d):
        assert "is patching " + str(d) + " right now" in apply.recovery_note(d)


def test_a_usage_error_comes_before_any_rollback(tmp_path, capsys):
    """A fix cut short left a journal; a later `fix` with bad arguments (or a missing reference) says so
    without writing anything, the rollback included."""
    from ggufpair.cli.main import main
    from ggufpair.fix import apply

    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    entry = read_header(d).kv[ADD_BOS]
    write_json_atomic(journaling._journal_path(d), {"path": str(d), "patches": [(entry.value_offset + 4, "00", "01")]})
    with open(d, "r+b") as f:
        f.seek(entry.value_offset + 4)
        f.write(b"\x01")
    half = d.read_bytes()
    assert main(["fix", str(d), "-r", str(t), "--output", str(tmp_path / "o.gguf"), "--backup"]) == 2
    assert main(["fix", str(d), "-r", str(tmp_path / "missing.gguf")]) == 3
    assert main(["fix", str(d), "--route", "override"]) == 2
    assert d.read_bytes() == half and apply.pending_recovery(d)
    assert "rolled back" not in capsys.readouterr().out
    assert main(["fix", str(d), "-r", str(t)]) == 0 and not apply.pending_recovery(d)


def test_asking_for_a_backup_takes_the_patch_route_or_is_refused(tmp_path, capsys):
    """Issue 18: `fix D -r T --backup` took the no-copy route, wrote nothing and made no .bak, exit 0; and
    `--route override --backup` was accepted while `--route override --output` was refused."""
    from ggufpair.cli.main import main

    t = tiny_model(tmp_path / "t.gguf")
    d = tiny_model(tmp_path / "d.gguf", changes={ADD_BOS: (T.BOOL, False)})
    before = d.read_bytes()
    assert main(["fix", str(d), "-r", str(t), "--route", "override", "--backup"]) == 2
    assert "no-copy route changes none" in capsys.readouterr().err and d.read_bytes() == before
    assert main(["fix", str(d), "-r", str(t), "--backup"]) == 0
    assert inspect_pair(t, d).compatible  # the file itself was fixed...
    (bak,) = [p for p in tmp_path.iterdir() if p.name.startswith("d.gguf") and p.name.endswith(".bak")] or [None]
    assert bak is not None and bak.read_bytes() == before  # ...and its original kept


def test_first_difference_finds_the_first_changed_byte():
    from ggufpair.fix.apply import _first_difference

    a = bytes(range(256)) * 4096
    assert _first_difference(a, a) is None
    for i in (0, 1, 4095, 4096, len(a) - 1):
        b = bytearray(a)
        b[i] ^= 0xFF
        if i + 7 < len(a):
            b[i + 7] ^= 0x01  # a later difference does not hide the first
        assert _first_difference(a, bytes(b)) == i


def test_same_data_small_and_large_ranges_decide(tmp_path):
    from ggufpair.fix.verify import SMALL_COMPARE, same_data

    for length in (0, 100, SMALL_COMPARE, SMALL_COMPARE + 4099):
        a = os.urandom(length + 10)
        b = bytearray(b"xyz" + a)
        assert same_data(a, 5, bytes(b), 8, length)
        if length:
            b[8 + length - 1] ^= 1  # the last byte of the range
            assert not same_data(a, 5, bytes(b), 8, length)
            assert same_data(a, 5, bytes(b), 8, length - 1)
