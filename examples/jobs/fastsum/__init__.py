"""A tiny package for the jobs example."""


def total(values):
    """The sum of ``values``."""
    result = 0
    for value in values:
        result += value
    return result
