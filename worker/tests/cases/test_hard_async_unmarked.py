"""Unmarked async tests and an async fixture: run in auto mode, fail alike in strict mode."""
import asyncio

import pytest_asyncio


@pytest_asyncio.fixture
async def resource():
    await asyncio.sleep(0)
    yield {"open": True}
    await asyncio.sleep(0)


async def test_unmarked_uses_async_fixture(resource):
    assert resource["open"]
    value = await asyncio.sleep(0, result=3)
    assert value == 3


async def test_unmarked_fails(resource):
    value = await asyncio.sleep(0, result=3)
    assert value == 4
