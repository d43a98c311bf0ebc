"""A tiny shop: the bundled example for stepkernel."""
