"""A file's blocks on its backing device: page index -> content word.

The disk of a regular file system is the only copy of a page that is not
in the page cache.  A page never written reads 0 (a hole).  The words live
in numpy chunks of ``PMD_NR`` pages, created when a page in them is first
written: a sparse file costs what it holds, and writeback stores a run of
pages with one slice assignment instead of one dict entry per page.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from pygup._native import C

CHUNK_PAGES = C.PMD_NR
_SHIFT = CHUNK_PAGES.bit_length() - 1
_MASK = CHUNK_PAGES - 1
_WORD_LIMIT = 1 << 64


def _index(index, name: str = "index") -> int:
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
        raise TypeError(f"{name} must be an int, got {type(index).__name__}")
    if index < 0:
        raise ValueError(f"{name} must be >= 0, got {index}")
    return int(index)


class DiskImage:
    """The blocks of one inode.  ``get`` / ``[]`` read a page's word (0 for
    a hole), ``[] =`` writes one, ``write_many`` writes a run, ``discard``
    punches [first, last) back to holes."""

    def __init__(self) -> None:
        self._chunks: dict[int, np.ndarray] = {}

    def _chunk(self, c: int) -> np.ndarray:
        arr = self._chunks.get(c)
        if arr is None:
            arr = self._chunks[c] = np.zeros(CHUNK_PAGES, np.uint64)
        return arr

    def get(self, index: int, default: int = 0) -> int:
        """The word of page ``index``; ``default`` for a hole."""
        index = _index(index)
        arr = self._chunks.get(index >> _SHIFT)
        value = 0 if arr is None else int(arr[index & _MASK])
        return value if value else default

    def __getitem__(self, index: int) -> int:
        return self.get(index)

    def __setitem__(self, index: int, value: int) -> None:
        index = _index(index)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"value must be an int, got {type(value).__name__}")
        if not 0 <= value < _WORD_LIMIT:
            raise ValueError(f"value must be a 64-bit content word, got {value:#x}")
        self._chunk(index >> _SHIFT)[index & _MASK] = value

    def write_many(self, indices: np.ndarray, values: np.ndarray) -> None:
        """disk[indices[i]] = values[i] for every i (writeback's copy of a
        run of pages); indices in any order, each at most once."""
        idx = np.asarray(indices, dtype=np.int64)
        vals = np.asarray(values, dtype=np.uint64)
        if idx.shape != vals.shape or idx.ndim != 1:
            raise ValueError(f"indices and values must be 1-D of one length, got "
                             f"{idx.shape} and {vals.shape}")
        if len(idx) == 0:
            return
        if idx.min() < 0:
            raise ValueError(f"indices must be >= 0, got {int(idx.min())}")
        chunks = idx >> _SHIFT
        cuts = np.flatnonzero(np.diff(chunks)) + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(idx)]):
            self._chunk(int(chunks[lo]))[idx[lo:hi] & _MASK] = vals[lo:hi]

    def discard(self, first: int, last: Optional[int] = None) -> None:
        """Pages [first, last) (to the end without ``last``) become holes:
        truncate and hole punch free their blocks."""
        first = _index(first, "first")
        last = None if last is None else _index(last, "last")
        for c in list(self._chunks):
            lo, hi = c << _SHIFT, (c + 1) << _SHIFT
            a, b = max(lo, first), hi if last is None else min(hi, last)
            if a >= b:
                continue
            if a == lo and b == hi:
                del self._chunks[c]
            else:
                self._chunks[c][a - lo:b - lo] = 0

    def items(self) -> Iterator[tuple[int, int]]:
        """(index, word) of every page that holds a non-zero word, in
        index order."""
        for c in sorted(self._chunks):
            arr = self._chunks[c]
            for off in np.flatnonzero(arr).tolist():
                yield (c << _SHIFT) + off, int(arr[off])

    def __repr__(self) -> str:
        return f"DiskImage({dict(self.items())!r})"
