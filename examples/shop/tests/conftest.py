import pytest

from shop.cart import Cart


@pytest.fixture
def cart():
    """An empty cart."""
    return Cart()
