"""The private channel between the worker and the Rust kernel.

One JSON object per line, in both directions, over a socket the kernel passes
as an inherited file descriptor (``STEPKERNEL_CHANNEL_FD``). The message types
are documented in ``kernel/src/worker.rs`` (the single place for the protocol).
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket


class ChannelClosed(Exception):
    """The kernel closed the channel: the worker should exit."""


class Channel:
    """Line-delimited JSON over a socket, with a queue for messages read early."""

    def __init__(self, fd: int):
        self._sock = socket.socket(fileno=fd)
        self._sock.setblocking(True)
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline
        self._pending: collections.deque[dict] = collections.deque()

    def send(self, message: dict) -> None:
        """Send one message (thread-unsafe by design: the worker is single-threaded)."""
        data = json.dumps(message, default=_fallback, separators=(",", ":")).encode() + b"\n"
        self._sock.sendall(data)

    def recv(self) -> dict:
        """Block until the next message (queued ones first)."""
        if self._pending:
            return self._pending.popleft()
        return self._read_line(block=True)

    def recv_matching(self, predicate) -> dict:
        """Block until a message satisfying ``predicate``; others are queued in order."""
        for index, message in enumerate(self._pending):
            if predicate(message):
                del self._pending[index]
                return message
        while True:
            message = self._read_line(block=True)
            if predicate(message):
                return message
            self._pending.append(message)

    def poll(self) -> None:
        """Read whatever is available without blocking into the queue."""
        while True:
            message = self._read_line(block=False)
            if message is None:
                return
            self._pending.append(message)

    def take_pending(self, predicate) -> dict | None:
        """Remove and return the first queued message matching ``predicate``."""
        for index, message in enumerate(self._pending):
            if predicate(message):
                del self._pending[index]
                return message
        return None

    def _read_line(self, block: bool):
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                return json.loads(line)
            self._scanned = len(self._buffer)
            if not block:
                ready, _, _ = select.select([self._sock], [], [], 0)
                if not ready:
                    return None
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ChannelClosed()
            self._buffer += chunk


def _fallback(value):
    return repr(value)


def from_environment() -> Channel:
    """The channel the kernel handed to this process."""
    fd = int(os.environ["STEPKERNEL_CHANNEL_FD"])
    return Channel(fd)
