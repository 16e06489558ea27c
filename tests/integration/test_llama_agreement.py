"""ggufpair's verdict equals the one computed from llama.cpp's own vocab loader (llama-cpp-python,
vocab-only load, in a child process) on every generated pair."""

from __future__ import annotations

import pytest

from ggufpair.pairing.llama_oracle import llama_verdict
from ggufpair.pairing.verdict import inspect_pair
from tests.pair_cases import CASES, LLAMA_CHECK, build

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verdict_matches_llama_cpp_loader(case, tmp_path):
    target, draft = build(case, tmp_path)
    ours = inspect_pair(target, draft, case.overrides)
    theirs = llama_verdict(target, draft, case.overrides)
    assert theirs.compatible == ours.compatible, theirs.detail
    assert theirs.failed_check == LLAMA_CHECK[ours.llama_check], theirs.detail
    assert ours.llama_check == case.expected


def test_effective_vocab_values_match_llama_cpp_on_real_models(gemma_q4, smollm2):
    for path in (gemma_q4, smollm2):
        theirs = llama_verdict(path, path).detail["target"]
        v = inspect_pair(path, path).target.vocab
        assert (theirs["vocab_type"], theirs["add_bos"], theirs["add_eos"], theirs["bos"], theirs["eos"],
                theirs["n_tokens"]) == (int(v.vocab_type), v.add_bos, v.add_eos, v.bos_id, v.eos_id, v.n_tokens)


def test_real_pair_of_different_families(gemma_q4, smollm2):
    ours = inspect_pair(gemma_q4, smollm2)
    theirs = llama_verdict(gemma_q4, smollm2)
    assert ours.llama_check == "vocab_type" and theirs.failed_check == "vocab_type"
