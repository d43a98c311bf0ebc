"""pytest-asyncio tests (marked, so they run in strict and auto mode)."""
import asyncio
import contextvars

import pytest

VAR = contextvars.ContextVar("var", default="unset")


@pytest.mark.asyncio
async def test_await_across_steps():
    queue = asyncio.Queue()
    await queue.put(1)
    task = asyncio.current_task()
    item = await queue.get()
    assert item == 1 and asyncio.current_task() is task


@pytest.mark.asyncio
async def test_contextvar_across_steps():
    VAR.set("set-in-step-0")
    await asyncio.sleep(0)
    assert VAR.get() == "set-in-step-0"


@pytest.mark.asyncio
async def test_async_failure():
    value = await asyncio.sleep(0, result=1)
    assert value == 2


class TestAsyncClass:
    @pytest.mark.asyncio
    async def test_method(self):
        got = await asyncio.sleep(0, result="ok")
        assert got == "ok"
