"""The check of a written file against its source and the plan: tensor infos and data bytes identical, the
planned keys at their new values, every other key unchanged, and the pair verdict compatible."""

from __future__ import annotations

from ggufpair.fix.errors import FixError
from ggufpair.fix.plan import Action, FixPlan, KeyChange, _stat
from ggufpair.format.reader import GGUFHeader, _open_map
from ggufpair.format.writer import encode_value

COMPARE_CHUNK = 8 << 20  # compared at a time
SMALL_COMPARE = 1 << 20  # compared without numpy


def encoded_change(change: KeyChange) -> bytes:
    return encode_value(change.type, change.new, change.item_type)


def _value_bytes(header: GGUFHeader, key: str, buf) -> bytes:
    entry = header.kv[key]
    return bytes(buf[entry.value_offset:entry.end])


def header_snapshot(header: GGUFHeader) -> bytes:
    """The source's header bytes, kept before writing so the result can be compared with them."""
    with _open_map(header.path) as buf:
        return bytes(buf[:header.header_end])


def verify_written(old: GGUFHeader, old_head: bytes, new: GGUFHeader, plan: FixPlan, data_offset: int,
            data_equal: bool = True) -> None:
    """Check the written file against the source and the plan; raise FixError on any difference.

    `data_offset`: where the tensor data was written; `data_equal`: whether its bytes compared equal to the
    source's (the rewrite compares them while copying; an in-place patch does not touch them)."""
    problems = []
    if new.data_offset != data_offset or new.file_size - new.data_offset != old.file_size - old.data_offset:
        problems.append("its tensor data is not where it was written")
    if not data_equal:
        problems.append("tensor data bytes differ from the source")
    if [(t.name, t.shape, t.type, t.offset) for t in old.tensors] != [(t.name, t.shape, t.type, t.offset) for t in new.tensors]:
        problems.append("tensor infos differ from the source")
    if new.alignment != old.alignment or new.data_offset % new.alignment:
        problems.append("tensor data is not aligned as in the source")
    by_key = {c.key: c for c in plan.changes}
    with _open_map(new.path) as nb:
        for key in set(old.kv) | set(new.kv):
            change = by_key.get(key)
            if change is None:
                if key not in new.kv or key not in old.kv or _value_bytes(old, key, old_head) != _value_bytes(new, key, nb):
                    problems.append(f"key {key} changed but was not planned to")
            elif change.action == Action.REMOVE:
                if key in new.kv:
                    problems.append(f"key {key} is still present")
            elif key not in new.kv or _value_bytes(new, key, nb) != encoded_change(change):
                problems.append(f"key {key} does not hold its planned value")
    if problems:
        raise FixError(f"{plan.path}: verification of the fixed file failed ({'; '.join(problems)}); "
                       "the original is left as it was")
    if plan.reference is not None:
        from ggufpair.format.model_info import read_model_info
        from ggufpair.pairing.verdict import check_pair

        try:
            unchanged = plan.reference_stat is not None and _stat(plan.reference) == plan.reference_stat
        except OSError:
            unchanged = False  # gone: the read below says so
        reference = plan.reference_info if unchanged and plan.reference_info is not None else \
            read_model_info(plan.reference)  # changed since the plan: judged as it is now
        verdict = check_pair(reference, read_model_info(new.path, whole_model=False, header=new))
        if not verdict.compatible:
            raise FixError(f"{plan.path}: after the fix the pair is still incompatible ({verdict.summary}); "
                           "the original is left as it was")


def same_data(a, a_off: int, b, b_off: int, length: int) -> bool:
    """Every byte of two ranges compared, streamed in chunks (as 64-bit words with numpy: ~5 GB/s warm).

    A byte-for-byte comparison is stronger than comparing hashes of the two ranges, and cheaper. A range of up to
    SMALL_COMPARE bytes is compared as bytes: importing numpy (about 90 ms) would cost more than the comparison."""
    if length <= SMALL_COMPARE:
        return a[a_off:a_off + length] == b[b_off:b_off + length]
    import numpy as np

    va = np.frombuffer(a, dtype=np.uint8, count=length, offset=a_off)
    vb = np.frombuffer(b, dtype=np.uint8, count=length, offset=b_off)
    try:
        for pos in range(0, length, COMPARE_CHUNK):
            end = min(pos + COMPARE_CHUNK, length)
            x, y = va[pos:end], vb[pos:end]
            words = (end - pos) // 8 * 8
            if not np.array_equal(x[:words].view(np.uint64), y[:words].view(np.uint64)):
                return False
            if not np.array_equal(x[words:], y[words:]):
                return False
        return True
    finally:
        del va, vb
