"""After a fix by the no-copy route, `inspect` of the same files says an override was planned and how to
make it permanent (the files are unchanged, so the verdict alone would still call the pair broken)."""

from __future__ import annotations

import json
import os

from gguf import GGUFValueType as T

from ggufpair.cli.main import main
from tests.pair_cases import ADD_BOS
from tests.unit.test_fix import _pair


def test_inspect_after_a_no_copy_fix_says_it_was_planned(tmp_path, capsys):
    t, d = _pair(tmp_path, {ADD_BOS: (T.BOOL, False)})
    assert main(["inspect", str(t), str(d)]) != 0
    assert "was planned" not in capsys.readouterr().out  # nothing planned yet
    assert main(["fix", str(d), "--reference", str(t), "--route", "override"]) == 0
    capsys.readouterr()
    code = main(["inspect", str(t), str(d)])
    out = capsys.readouterr().out.replace("\n", " ")
    assert code != 0  # the files themselves still disagree
    assert "A no-copy fix of this pair was planned" in out and "--override-kv tokenizer.ggml.add_bos_token=bool:true" in out
    assert f"ggufpair fix {d} --reference {t} --route patch" in out
    assert main(["inspect", str(t), str(d), "--json"]) != 0
    assert json.loads(capsys.readouterr().out)["planned_override"] == ["tokenizer.ggml.add_bos_token=bool:true"]
    st = os.stat(d)
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the draft changed since: the plan is not for it
    main(["inspect", str(t), str(d)])
    assert "was planned" not in capsys.readouterr().out
