"""ModelInfo fields from metadata: Gemma 4 style attention layout, special drafts, quant names."""

from __future__ import annotations

from gguf import GGUFValueType as T

from ggufpair.format.model_info import read_model_info
from tests.ggufmake import model_kv, vocab_kv, write_gguf


def test_gemma4_layout_swa_pattern_array_head_dims_and_shared_kv(tmp_path):
    arch = "gemma4"
    kv = {**model_kv(n_layers=6, arch=arch), **vocab_kv(),
          f"{arch}.attention.sliding_window": (T.UINT32, 512),
          f"{arch}.attention.sliding_window_pattern": (T.ARRAY, [True, True, False, True, True, False], T.BOOL),
          f"{arch}.attention.key_length": (T.UINT32, 512),
          f"{arch}.attention.value_length": (T.UINT32, 512),
          f"{arch}.attention.key_length_swa": (T.UINT32, 256),
          f"{arch}.attention.value_length_swa": (T.UINT32, 256),
          f"{arch}.attention.shared_kv_layers": (T.UINT32, 2),
          f"{arch}.attention.head_count_kv": (T.ARRAY, [2, 2, 1, 2, 2, 1], T.INT32)}
    info = read_model_info(write_gguf(tmp_path / "g4.gguf", kv))
    assert info.swa_layers == (0, 1, 3, 4)
    assert (info.head_dim_k, info.head_dim_v, info.head_dim_k_swa, info.head_dim_v_swa) == (512, 512, 256, 256)
    assert info.shared_kv_layers == 2 and info.kv_layers == (0, 1, 2, 3)
    assert info.n_head_kv == (2, 2, 1, 2, 2, 1)


def test_head_dim_defaults_to_embd_over_heads(tmp_path):
    info = read_model_info(write_gguf(tmp_path / "m.gguf", {**model_kv(n_embd=64, n_head=4), **vocab_kv()}))
    assert (info.head_dim_k, info.head_dim_v, info.swa_layers) == (16, 16, ())


def test_special_drafts_are_recognised(tmp_path):
    eagle = read_model_info(write_gguf(tmp_path / "e.gguf", {**model_kv(arch="eagle3"), **vocab_kv()}))
    assert eagle.draft_kind == "eagle3"
    mtp = read_model_info(write_gguf(tmp_path / "m.gguf", {**model_kv(n_layers=2), **vocab_kv()},
                                     [("token_embd.weight", (8, 4)), ("blk.1.nextn.eh_proj.weight", (8, 8))]))
    assert mtp.draft_kind == "mtp"
    # DFlash and DSpark share llama.cpp's `dflash` architecture; the Markov head makes a DSpark draft
    # (common_speculative_types_from_gguf). Their longest draft is one block less its anchor token, or the whole
    # block for a DSpark draft sampling from its anchor (the default), as llama.cpp clamps --spec-draft-n-max.
    head = [("token_embd.weight", (8, 4)), ("markov_w1.weight", (8, 300))]
    cases = [("dflash", {}, None, "dflash", 15), ("dflash-4", {"dflash.block_size": (T.UINT32, 4)}, None, "dflash", 3),
             ("dflash-anchor", {"dflash.block_size": (T.UINT32, 4), "dflash.sample_from_anchor": (T.BOOL, True)}, None,
              "dflash", 3),  # only DSpark drafts a whole block from its anchor
             ("dflash-as-text", {"dflash.block_size": (T.STRING, "6")}, None, "dflash", 5),  # read as text by llama.cpp
             ("dspark", {}, head, "dspark", 16),
             ("dspark-4-no-anchor", {"dflash.block_size": (T.UINT32, 4), "dflash.sample_from_anchor": (T.BOOL, False)},
              head, "dspark", 3)]
    for name, kv, tensors, kind, longest in cases:
        info = read_model_info(write_gguf(tmp_path / f"{name}.gguf", {**model_kv(arch="dflash"), **vocab_kv(), **kv},
                                          tensors))
        assert (info.draft_kind, info.max_draft) == (kind, longest), name
    # whether llama.cpp takes a p_min above 0 from a DSpark draft: its confidence head, read as text ("true")
    for value, takes in (((T.BOOL, True), True), ((T.BOOL, False), False), ((T.UINT8, 1), False),
                         ((T.STRING, "false"), False), ((T.STRING, "true"), True), (None, True)):
        kv = {} if value is None else {"dflash.has_confidence_head": value}
        info = read_model_info(write_gguf(tmp_path / "conf.gguf", {**model_kv(arch="dflash"), **vocab_kv(), **kv}, head))
        assert info.takes_p_min is takes, value
    # an architecture llama.cpp does not have is no special draft
    assert read_model_info(write_gguf(tmp_path / "x.gguf", {**model_kv(arch="dspark"), **vocab_kv()})).draft_kind is None


def test_quant_falls_back_to_dominant_tensor_type(tmp_path):
    kv = {**model_kv(), **vocab_kv()}
    del kv["general.file_type"]
    info = read_model_info(write_gguf(tmp_path / "m.gguf", kv))
    assert info.quant == "F32"
    assert info.parameter_count == 8 * 4 + 8 and info.weight_bytes == 4 * (8 * 4 + 8)


def test_chat_template_hash(tmp_path):
    kv = {**model_kv(), **vocab_kv(), "tokenizer.chat_template": (T.STRING, "{{ x }}")}
    info = read_model_info(write_gguf(tmp_path / "m.gguf", kv))
    assert info.has_chat_template and len(info.chat_template_sha256) == 64


def test_step_and_output_bytes_follow_tied_and_untied_output_layers(tmp_path):
    """Per generated token a model reads every weight but its embedding table, which is read only when it
    doubles as the output layer (tied, as Gemma's): what the demo's explanation is computed from."""
    from ggufpair.demo import step_cost_note
    from tests.ggufmake import model_kv, vocab_kv, write_gguf

    kv = {**model_kv(), **vocab_kv()}
    embd, out, layer = ("token_embd.weight", (64, 300)), ("output.weight", (64, 300)), ("blk.0.attn_q.weight", (64, 64))
    tied = read_model_info(write_gguf(tmp_path / "tied.gguf", kv, [embd, layer]))
    untied = read_model_info(write_gguf(tmp_path / "untied.gguf", kv, [embd, out, layer]))
    f32 = 4
    assert (tied.output_bytes, tied.step_bytes) == (64 * 300 * f32, (64 * 300 + 64 * 64) * f32)
    assert (untied.output_bytes, untied.step_bytes) == (64 * 300 * f32, (64 * 300 + 64 * 64) * f32)
    assert untied.weight_bytes == untied.step_bytes + 64 * 300 * f32
    small = read_model_info(write_gguf(tmp_path / "small.gguf", kv, [embd, ("blk.0.attn_q.weight", (64, 16))]))
    note = step_cost_note(tied, small)
    assert "a draft step reads 87% of the weight bytes" in note  # (19200 + 1024) / (19200 + 4096)
    assert "is 95% of the draft's reads and 82% of the target's" in note


def test_inspect_shows_a_models_mtp_layers_as_drafting_for_itself_and_a_head_as_a_special_draft(tmp_path):
    from ggufpair.cli.render import model_rows
    from tests.ggufmake import random_model

    mtp = dict(model_rows(read_model_info(random_model(tmp_path / "mtp.gguf", "mtp", n_layers=2))))
    assert mtp["MTP layers"] == "1 NextN layer: drafts for itself as the target (tune --kinds mtp)"
    assert "special draft" not in mtp
    eagle = dict(model_rows(read_model_info(random_model(tmp_path / "eagle.gguf", "eagle3", target_hidden=64))))
    assert eagle["special draft"] == "eagle3" and "MTP layers" not in eagle
    assert not {"special draft", "MTP layers"} & set(dict(model_rows(read_model_info(
        random_model(tmp_path / "plain.gguf")))))
