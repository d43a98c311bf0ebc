"""unittest tests: setUp, tearDown and zero-argument super()."""

import unittest

from shop.cart import Cart


class CartTestCase(unittest.TestCase):
    def setUp(self):
        self.cart = Cart()
        self.cart.add("tea", 3.00)

    def tearDown(self):
        self.cart.items.clear()


class TestDiscounts(CartTestCase):
    def setUp(self):
        super().setUp()
        self.cart.discount_percent = 50

    def test_half_price(self):
        total = self.cart.total()
        self.assertEqual(total, 1.50)

    def test_no_discount(self):
        self.cart.discount_percent = 0
        self.assertEqual(self.cart.total(), 3.00)
