"""Stock and reservations of one warehouse."""

from __future__ import annotations


class Store:
    def __init__(self) -> None:
        self.stock: dict[str, int] = {}
        self.reserved: dict[str, int] = {}

    def receive(self, item: str, count: int) -> None:
        self.stock[item] = self.stock.get(item, 0) + count

    def available(self, item: str) -> int:
        return self.stock.get(item, 0) - self.reserved.get(item, 0)

    def reserve(self, item: str, count: int) -> int:
        """Reserve up to ``count`` of ``item``; returns how many were reserved."""
        self.reserved[item] = self.reserved.get(item, 0) + count
        return count

    def ship(self, item: str) -> int:
        """Ship every reserved ``item``; returns how many left."""
        count = self.reserved.pop(item, 0)
        self.stock[item] = self.stock.get(item, 0) - count
        return count
