"""Pairwise covering arrays: every pair of option values of two actions appears in some walk.

allpairspy (a well-kept implementation) is used when it is installed and
gives fewer rows; otherwise IPOG (Lei & Tai's in-parameter-order generation), which is short
and deterministic: start from the product of the two largest factors, then
add one factor at a time, choosing each row's new value to cover the most
uncovered pairs and adding rows for the pairs left.
"""

from __future__ import annotations

from typing import Sequence


def pairwise_rows(sizes: Sequence[int], use_library: bool = True) -> list[tuple[int, ...]]:
    """Rows of option indices covering every pair of values of any two factors."""
    sizes = list(sizes)
    if len([n for n in sizes if n > 1]) <= 2:
        # Nothing to save: the product is the smallest covering array.
        import itertools

        return list(itertools.product(*(range(n) for n in sizes)))
    own = ipog(sizes)
    if use_library:
        rows = _allpairspy(sizes)
        # Neither is always smaller (320 -> 20 here vs 22; 3^13 -> 34 vs 17): take the smaller.
        if rows is not None and len(rows) <= len(own):
            return rows
    return own


def _allpairspy(sizes: list[int]) -> list[tuple[int, ...]] | None:
    try:
        from allpairspy import AllPairs
    except ImportError:
        return None
    return [tuple(row) for row in AllPairs([list(range(n)) for n in sizes])]


def ipog(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """IPOG over factors of ``sizes`` values (deterministic)."""
    k = len(sizes)
    # Largest factors first gives smaller arrays; rows are mapped back at the end.
    order = sorted(range(k), key=lambda f: (-sizes[f], f))
    sz = [sizes[f] for f in order]
    rows: list[list[int | None]] = [[a, b] for a in range(sz[0]) for b in range(sz[1])]
    for i in range(2, k):
        uncovered = {(j, a, v) for j in range(i) for a in range(sz[j]) for v in range(sz[i])}
        for row in rows:
            best, gain = 0, -1
            for v in range(sz[i]):
                g = sum(1 for j in range(i) if row[j] is not None and (j, row[j], v) in uncovered)
                if g > gain:
                    best, gain = v, g
            row.append(best)
            for j in range(i):
                if row[j] is not None:
                    uncovered.discard((j, row[j], best))
        added: list[list[int | None]] = []
        for j, a, v in sorted(uncovered):
            for row in added:
                if row[i] == v and row[j] is None:
                    row[j] = a
                    break
            else:
                row = [None] * (i + 1)
                row[i], row[j] = v, a
                added.append(row)
        rows.extend(added)
    out = []
    for row in rows:
        filled = [0 if x is None else x for x in row]
        back = [0] * k
        for pos, f in enumerate(order):
            back[f] = filled[pos]
        out.append(tuple(back))
    # Same rows, stable order, no duplicates.
    return list(dict.fromkeys(out))
