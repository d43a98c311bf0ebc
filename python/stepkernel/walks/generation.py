"""Which walks a model gives: the full product, a pairwise covering array, or a random sample."""

from __future__ import annotations

import itertools
import math
import random
from typing import Iterator, Sequence

from .actions import Action, Walk, WalkError
from .ids import option_ids
from .pairwise import pairwise_rows

STRATEGIES = ("product", "pairwise", "random")


class Model:
    """An action order with each action's options and their ids, checked."""

    def __init__(self, action_order: Sequence[type[Action]]) -> None:
        if isinstance(action_order, type) or not isinstance(action_order, (list, tuple)):
            raise WalkError(f"action_order must be a list of Action classes, not {action_order!r}")
        if not action_order:
            raise WalkError("action_order is empty: give at least one Action class")
        self.order = list(action_order)
        self.options: list[list[Action]] = []
        self.ids: list[list[str]] = []
        for cls in self.order:
            if not (isinstance(cls, type) and issubclass(cls, Action)):
                raise WalkError(f"{cls!r} in action_order is not an Action subclass")
            if getattr(cls, "run", None) is Action.run:
                raise WalkError(f"{cls.__qualname__} has no run(self, param, state) method")
            try:
                instances = list(cls.get_option_set())
            except WalkError:
                raise
            except Exception as exc:  # noqa: BLE001 - named for the user
                raise WalkError(f"{cls.__qualname__}.get_option_set() raised {type(exc).__name__}: {exc}") from None
            if not instances:
                raise WalkError(f"{cls.__qualname__} has no options (empty OPTIONS or get_option_set()): "
                                "no walk can hold it")
            bad = [a for a in instances if not isinstance(a, cls)]
            if bad:
                raise WalkError(f"{cls.__qualname__}.get_option_set() gave {bad[0]!r}, not a {cls.__qualname__}")
            self.options.append(instances)
            self.ids.append(option_ids(cls, [a.param for a in instances]))

    @property
    def sizes(self) -> list[int]:
        return [len(o) for o in self.options]

    def product_count(self) -> int:
        return math.prod(self.sizes)

    def walk(self, row: Sequence[int], index: int) -> Walk:
        actions = [self.options[k][i] for k, i in enumerate(row)]
        return Walk(actions, "-".join(self.ids[k][i] for k, i in enumerate(row)), index)

    def rows(self, strategy: str = "product", count: int | None = None, seed: int | None = 0) -> Iterator[tuple[int, ...]]:
        """Option indices of each walk, in a stable order."""
        sizes = self.sizes
        if strategy == "product":
            return itertools.product(*(range(n) for n in sizes))
        if strategy == "pairwise":
            return iter(pairwise_rows(sizes))
        if strategy == "random":
            if count is None or count < 0:
                raise WalkError('strategy="random" needs count=N (how many walks), and seed=S to vary them')
            total = self.product_count()
            picks = random.Random(seed).sample(range(total), min(count, total))
            return (_decode(p, sizes) for p in picks)
        raise WalkError(f"unknown strategy {strategy!r}: one of {', '.join(STRATEGIES)}")

    def walks(self, strategy: str = "product", count: int | None = None, seed: int | None = 0) -> list[Walk]:
        """The walks, without those an action's ``should_cancel`` rejects."""
        out = []
        for row in self.rows(strategy, count, seed):
            walk = self.walk(row, len(out))
            if any(a.should_cancel(walk, i) for i, a in enumerate(walk.actions)):
                continue
            out.append(walk)
        return out


def _decode(number: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """The ``number``-th row of the product (mixed radix, last action fastest, as itertools.product)."""
    row = []
    for n in reversed(sizes):
        number, digit = divmod(number, n)
        row.append(digit)
    return tuple(reversed(row))


def generate(action_order: Sequence[type[Action]], strategy: str = "product", count: int | None = None,
             seed: int | None = 0) -> list[Walk]:
    """The walks of ``action_order`` (see ``Model``)."""
    return Model(action_order).walks(strategy, count, seed)


def covered_pairs(rows: Sequence[Sequence[int]]) -> set[tuple[int, int, int, int]]:
    """Every ``(factor i, value a, factor j, value b)`` with i < j some row holds (for coverage checks)."""
    found = set()
    for row in rows:
        for i, j in itertools.combinations(range(len(row)), 2):
            found.add((i, row[i], j, row[j]))
    return found


def all_pairs(sizes: Sequence[int]) -> set[tuple[int, int, int, int]]:
    return {(i, a, j, b) for i, j in itertools.combinations(range(len(sizes)), 2)
            for a in range(sizes[i]) for b in range(sizes[j])}


__all__ = ["Model", "generate", "covered_pairs", "all_pairs", "STRATEGIES"]
