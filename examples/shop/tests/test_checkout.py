"""pytest tests with fixtures and named steps."""

from shop.cart import Cart


def test_empty_cart_costs_nothing(cart):
    assert cart.total() == 0


def test_single_items(cart):
    cart.add("bread", 2.50)
    cart.add("milk", 1.20)
    assert cart.count() == 2
    assert cart.total() == 3.70


def test_checkout_with_discount(cart):
    # step: fill the cart
    cart.add("apple", 0.50, quantity=4)
    cart.add("bread", 2.50)
    # step: apply a 10 % discount
    cart.discount_percent = 10
    # step: check the total
    expected = round((4 * 0.50 + 2.50) * 0.90, 2)
    assert cart.total() == expected
    # step: receipt
    lines = [f"{item.name} x {item.quantity}" for item in cart.items]
    assert lines == ["4 x apple", "1 x bread"]


def test_merging_lines():
    cart = Cart()
    cart.add("tea", 3.00)
    cart.add("tea", 3.00)
    assert len(cart.items) == 1
    assert cart.count() == 2
