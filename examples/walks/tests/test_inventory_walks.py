"""Every combination of stocking, reserving and shipping, one pytest item per walk.

    stepkernel run tests/test_inventory_walks.py      # the first failing walk pauses
    pytest tests/test_inventory_walks.py -k "Reserve:2"
"""

from stepkernel.walks import Action, CancelWalk, walks

from inventory.store import Store


class Stock(Action):
    OPTIONS = [0, 1, 5]

    def run(self, param, state):
        state["store"].receive("apple", param)


class Reserve(Action):
    OPTIONS = [1, 2]

    def run(self, param, state):
        store = state["store"]
        if store.available("apple") == 0:
            raise CancelWalk("nothing to reserve")
        state["reserved"] = store.reserve("apple", param)


class Ship(Action):
    OPTIONS = [True, False]

    def run(self, param, state):
        if param:
            state["shipped"] = state["store"].ship("apple")


class Check(Action):
    OPTIONS = ["stock"]

    def run(self, param, state):
        store = state["store"]
        assert store.available("apple") >= 0, "reserved more than the stock"
        assert store.stock.get("apple", 0) >= 0, "shipped more than the stock"


class FreshStore(dict):
    """A state whose copy is a new store (copy.copy calls __copy__), and that a trace can hold."""

    def __init__(self):
        super().__init__(store=Store())

    def __copy__(self):
        return FreshStore()

    def to_json(self):
        return {}

    @classmethod
    def from_json(cls, obj):
        return cls()


test_inventory = walks([Stock, Reserve, Ship, Check], state=lambda: {"store": Store()}, log_dir="traces")
