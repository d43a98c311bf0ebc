"""A shopping cart with quantities and a percentage discount."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    """One line of the cart."""

    name: str
    unit_price: float
    quantity: int = 1


@dataclass
class Cart:
    """Items and a discount in percent (0-100)."""

    items: list[Item] = field(default_factory=list)
    discount_percent: float = 0.0

    def add(self, name: str, unit_price: float, quantity: int = 1) -> Item:
        """Add an item, merging with an existing line of the same name."""
        for item in self.items:
            if item.name == name:
                item.quantity += quantity
                return item
        item = Item(name, unit_price, quantity)
        self.items.append(item)
        return item

    def count(self) -> int:
        """Number of units in the cart."""
        return sum(item.quantity for item in self.items)

    def subtotal(self) -> float:
        """Price before the discount."""
        return sum(item.unit_price for item in self.items)

    def total(self) -> float:
        """Price after the discount, rounded to cents."""
        return round(self.subtotal() * (100 - self.discount_percent) / 100, 2)
