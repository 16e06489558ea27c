"""`ModelInfo`: what ggufpair needs to know about one model, read from its GGUF header alone."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ggufpair.format.gguf_constants import GGUFValueType, Keys, LlamaFileType
from ggufpair.format.reader import GGUFHeader, read_header
from ggufpair.format.shards import shard_paths
from ggufpair.format.vocab import VocabInfo, read_vocab

# Default sliding-window layer patterns for architectures whose GGUF may omit the pattern key
# (llama.cpp's load_swa_pattern(ml, n_pattern) calls): layer il uses SWA iff il % n < n - 1.
SWA_DEFAULT_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
EAGLE3_ARCH = "eagle3"


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    shards: tuple[Path, ...]
    file_size: int  # all shards
    gguf_version: int
    n_kv: int
    n_tensors: int
    architecture: str | None
    name: str | None
    basename: str | None
    size_label: str | None
    finetune: str | None
    file_type: int | None
    quant: str  # Q4_K_M, F16, ... (from general.file_type, else the dominant tensor type)
    parameter_count: int
    weight_bytes: int
    output_bytes: int  # the output layer (output.weight, or the token embedding it is tied to)
    step_bytes: int  # weights read per generated token: all but the embedding table, unless tied to the output
    n_layers: int | None
    n_embd: int | None
    n_head: tuple[int, ...]  # per layer (llama.cpp accepts a scalar or an array)
    n_head_kv: tuple[int, ...]
    head_dim_k: int | None
    head_dim_v: int | None
    head_dim_k_swa: int | None
    head_dim_v_swa: int | None
    sliding_window: int | None
    swa_layers: tuple[int, ...]
    shared_kv_layers: int  # the last N layers reuse earlier layers' KV (Gemma 4)
    context_length: int | None
    vocab: VocabInfo
    chat_template_sha256: str | None
    draft_kind: str | None  # "eagle3", "mtp" (NextN layers), "dflash" or "dspark", for special drafts
    header: GGUFHeader
    n_nextn: int = 0  # NextN (MTP) blocks at the end of the block count ({arch}.nextn_predict_layers)
    max_draft: int | None = None  # the longest draft llama.cpp lets this file make (DFlash/DSpark: its block)
    takes_p_min: bool = True  # False: llama.cpp refuses --spec-draft-p-min above 0 with it (a DSpark draft
    # whose dflash.has_confidence_head is false; common/speculative.cpp, the DFlash drafter, N1057-1065)

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template_sha256 is not None

    @property
    def display_name(self) -> str:
        parts = [p for p in (self.basename or self.name, self.size_label, self.finetune) if p]
        return " ".join(parts) if parts else self.path.name

    @property
    def kv_layers(self) -> tuple[int, ...]:
        """Layers that own a KV cache in the target's context (shared-KV layers at the end reuse earlier ones;
        NextN blocks have theirs in the MTP context)."""
        n = (self.n_layers or 0) - self.n_nextn
        return tuple(range(n - self.shared_kv_layers))


def read_model_info(path: str | Path, overrides: Mapping[str, Any] | None = None, *,
                    whole_model: bool = True, header: GGUFHeader | None = None) -> ModelInfo:
    """Read a model's header (the first shard of a split model) into a `ModelInfo`.

    `overrides` are `--override-kv` values (key -> bool/int/float/str) applied as llama.cpp would.
    `whole_model=False` reads one file as it is, without requiring its split siblings (a fix's temporary
    copy of a first shard). `header`: the first file's header, already read (a file is not parsed twice).
    """
    paths = shard_paths(path)
    if header is None or Path(header.path) != Path(paths[0]):
        header = read_header(paths[0])
    count = header.get("split.count")
    if whole_model and isinstance(count, int) and count > 1 and len(paths) != count:
        from ggufpair.errors import MissingShardError

        raise MissingShardError(paths[0], f"this is shard {int(header.get('split.no') or 0) + 1} of a split model of "
                                f"{count} shards, but its name does not follow llama.cpp's NAME-0000N-of-0000{count} "
                                "pattern, so llama.cpp cannot find the others",
                                hint="give every shard its split name (as gguf-split wrote them), in one folder")
    tensors = list(header.tensors)
    file_size = header.file_size
    for extra in paths[1:]:
        shard = read_header(extra)
        tensors.extend(shard.tensors)
        file_size += shard.file_size
    arch = _str(header, Keys.General.ARCHITECTURE)

    def arch_key(template: str) -> str:
        return template.format(arch=arch)

    n_layers = _int(header, arch_key(Keys.LLM.BLOCK_COUNT))
    n_embd = _int(header, arch_key(Keys.LLM.EMBEDDING_LENGTH))
    n_head = _per_layer(header, arch_key(Keys.Attention.HEAD_COUNT), n_layers)
    n_head_kv = _per_layer(header, arch_key(Keys.Attention.HEAD_COUNT_KV), n_layers) or n_head
    head_k = _int(header, arch_key(Keys.Attention.KEY_LENGTH))
    head_v = _int(header, arch_key(Keys.Attention.VALUE_LENGTH))
    if head_k is None and n_embd and n_head and n_head[0]:
        head_k = n_embd // n_head[0]
    if head_v is None:
        head_v = head_k
    sliding_window = _int(header, arch_key(Keys.Attention.SLIDING_WINDOW))
    shared_kv = _int(header, arch_key(Keys.Attention.SHARED_KV_LAYERS)) or 0
    file_type = _int(header, Keys.General.FILE_TYPE)
    template = header.get(Keys.Tokenizer.CHAT_TEMPLATE)

    by_name = {t.name: t.n_bytes for t in tensors}
    weight_bytes = sum(t.n_bytes for t in tensors)
    kind = _draft_kind(header, arch, n_layers, tensors)
    return ModelInfo(
        path=paths[0],
        shards=paths,
        file_size=file_size,
        gguf_version=header.version,
        n_kv=len(header.kv),
        n_tensors=len(tensors),
        architecture=arch,
        name=_str(header, Keys.General.NAME),
        basename=_str(header, Keys.General.BASENAME),
        size_label=_str(header, Keys.General.SIZE_LABEL),
        finetune=_str(header, Keys.General.FINETUNE),
        file_type=file_type,
        quant=_quant_name(file_type, tensors),
        parameter_count=sum(t.n_elements for t in tensors),
        weight_bytes=weight_bytes,
        output_bytes=(by_name.get("output.weight") or by_name.get("token_embd.weight", 0)),
        step_bytes=weight_bytes - (by_name.get("token_embd.weight", 0) if "output.weight" in by_name else 0),
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        head_dim_k_swa=_int(header, arch_key(Keys.Attention.KEY_LENGTH_SWA)) or (head_k if sliding_window else None),
        head_dim_v_swa=_int(header, arch_key(Keys.Attention.VALUE_LENGTH_SWA)) or (head_v if sliding_window else None),
        sliding_window=sliding_window,
        swa_layers=_swa_layers(header, arch, n_layers or 0, sliding_window, arch_key(Keys.Attention.SLIDING_WINDOW_PATTERN)),
        shared_kv_layers=shared_kv,
        context_length=_int(header, arch_key(Keys.LLM.CONTEXT_LENGTH)),
        vocab=read_vocab(header, overrides),
        chat_template_sha256=hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None,
        draft_kind=kind,
        header=header,
        n_nextn=_int(header, arch_key("{arch}.nextn_predict_layers")) or 0,
        max_draft=_block_draft(header, kind) if arch == DFLASH_ARCH else None,
        # llama.cpp reads the key as text: absent, or "true", is a confidence head
        takes_p_min=not (kind == "dspark" and meta_text(header, "dflash.has_confidence_head") not in (None, "true")),
    )


def _str(header: GGUFHeader, key: str) -> str | None:
    entry = header.kv.get(key)
    return entry.value if entry is not None and entry.type == GGUFValueType.STRING else None


def _int(header: GGUFHeader, key: str) -> int | None:
    entry = header.kv.get(key)
    if entry is None or isinstance(entry.value, (str, bool, float)) or entry.type == GGUFValueType.ARRAY:
        return None
    return int(entry.value)


def _per_layer(header: GGUFHeader, key: str, n_layers: int | None) -> tuple[int, ...]:
    entry = header.kv.get(key)
    if entry is None:
        return ()
    if entry.type == GGUFValueType.ARRAY:
        return tuple(int(v) for v in entry.value.items())
    if isinstance(entry.value, int) and not isinstance(entry.value, bool):
        return (entry.value,) * (n_layers or 1)
    return ()


def _swa_layers(header: GGUFHeader, arch: str | None, n_layers: int, window: int | None, pattern_key: str) -> tuple[int, ...]:
    entry = header.kv.get(pattern_key)
    if entry is not None and entry.type == GGUFValueType.ARRAY:
        flags = entry.value.items()
        return tuple(i for i in range(min(n_layers, len(flags))) if flags[i])
    if not window:
        return ()
    n_pattern = SWA_DEFAULT_PATTERN.get(arch or "")
    if entry is not None and isinstance(entry.value, int):
        n_pattern = entry.value
    if n_pattern is None:
        return ()
    return tuple(i for i in range(n_layers) if n_pattern == 0 or i % n_pattern < n_pattern - 1)


def _quant_name(file_type: int | None, tensors) -> str:
    if file_type is not None:
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    by_type: Counter[str] = Counter()
    for t in tensors:
        if len(t.shape) >= 2:
            by_type[t.type.name] += t.n_bytes
    return by_type.most_common(1)[0][0] if by_type else "unknown"


DFLASH_ARCH = "dflash"
"""DFlash and DSpark drafts share the architecture; the Markov head (`markov_w1.weight`) makes a DSpark one, as
llama.cpp tells them apart (common/speculative.cpp, common_speculative_types_from_gguf, N2351-2385)."""


def _draft_kind(header: GGUFHeader, arch: str | None, n_layers: int | None, tensors) -> str | None:
    if arch == EAGLE3_ARCH:
        return "eagle3"
    if arch == DFLASH_ARCH:
        return "dspark" if any(t.name == "markov_w1.weight" for t in tensors) else "dflash"
    if n_layers and any(t.name == f"blk.{n_layers - 1}.nextn.eh_proj.weight" for t in tensors):
        return "mtp"
    return None


def _block_draft(header: GGUFHeader, kind: str | None) -> int:
    """A DFlash draft denoises one block of `dflash.block_size` positions (16 when the key is absent), the first
    of which is the last accepted token: llama.cpp clamps --spec-draft-n-max to the block less one, or to the
    whole block for a DSpark draft that samples from its anchor, as it does unless `dflash.sample_from_anchor`
    reads other than "true" (common/speculative.cpp, the DFlash drafter: its members N1010, its constructor
    N1039-1082, which reads both keys as text)."""
    text = meta_text(header, "dflash.block_size")
    atoi = re.match(r"\s*[+-]?\d+", text or "")  # std::atoi of the text: its leading integer, else 0
    block = 16 if text is None else int(atoi.group()) if atoi else 0
    anchor = meta_text(header, "dflash.sample_from_anchor")
    return block if kind == "dspark" and anchor in (None, "true") else block - 1


def meta_text(header: GGUFHeader, key: str) -> str | None:
    """A scalar key as llama_model_meta_val_str gives it to the code that reads metadata as text (gguf_kv_to_str:
    a bool as true/false, a number in decimal, a string as it is); None when absent."""
    entry = header.kv.get(key)
    if entry is None or entry.type == GGUFValueType.ARRAY:
        return None
    v = entry.value
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v if isinstance(v, str) else f"{v:f}" if isinstance(v, float) else str(v)  # std::to_string
