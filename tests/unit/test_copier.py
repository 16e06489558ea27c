"""The copy engine's proof that a clone shares the source's blocks (FIEMAP): a real copy is never taken for
one, and where the filesystem cannot show it the answer is no (the bytes are then compared)."""

from __future__ import annotations

import os

import pytest

from ggufpair.fix import copier


def _file(path, data: bytes):
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_a_copy_with_the_same_bytes_is_not_the_same_blocks(tmp_path):
    data = os.urandom(3 * 4096 + 100)
    a, b = _file(tmp_path / "a", data), _file(tmp_path / "b", data)
    try:
        if copier._extents(a, 0, len(data)) is None:
            pytest.skip(f"{tmp_path}: this filesystem does not answer FIEMAP")
        assert copier.same_blocks(a, a, 0, 0, len(data))  # a span is on its own blocks
        assert not copier.same_blocks(a, b, 0, 0, len(data))  # equal bytes elsewhere on the disk: not a clone
        assert not copier.same_blocks(a, a, 0, 4096, len(data) - 4096)  # the same file, shifted by a block
    finally:
        os.close(a)
        os.close(b)


def test_a_hole_or_an_unanswering_filesystem_is_no_proof(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(1 << 20)  # all hole: no extent holds these bytes
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not copier.same_blocks(fd, fd, 0, 0, 1 << 20)
    finally:
        os.close(fd)
    r, w = os.pipe()  # no FIEMAP at all
    try:
        assert copier._extents(r, 0, 4096) is None and not copier.same_blocks(r, r, 0, 0, 4096)
    finally:
        os.close(r)
        os.close(w)


def test_only_the_pieces_off_the_sources_blocks_are_left_to_compare(tmp_path):
    data = os.urandom(4 * 4096)
    a = _file(tmp_path / "a", data)
    try:
        if copier._extents(a, 0, len(data)) is None:
            pytest.skip(f"{tmp_path}: this filesystem does not answer FIEMAP")
        assert copier.unproven_spans(a, a, 0, 0, len(data)) == []
        b = _file(tmp_path / "b", data)
        try:
            assert copier.unproven_spans(a, b, 0, 0, len(data)) == [(0, len(data))]
        finally:
            os.close(b)
    finally:
        os.close(a)
