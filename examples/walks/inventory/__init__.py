"""A tiny stock keeper with a bug the walks find (see tests/test_inventory_walks.py)."""
