"""The private channel between the worker and the Rust kernel.

One JSON object per line, in both directions, over a socket the kernel passes
as an inherited file descriptor (``STEPKERNEL_CHANNEL_FD``). The message types
are documented in ``kernel/src/worker.rs`` (the single place for the protocol).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import sys
import select
import socket
import time
import _thread

from .raw_json import RawJSON, encode_seconds


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
        self._sock.sendall(_ENCODER.encode(message).encode() + b"\n")

    def send_encoded(self, data: bytes) -> None:
        """Send a message already encoded as one JSON line (with its newline)."""
        self._sock.sendall(data)

    def recv(self) -> dict:
        """Block until the next message (queued ones first)."""
        if self._pending:
            return self._pending.popleft()
        return self._read_line(block=True)

    def recv_matching(self, predicate, timeout: float | None = None) -> dict | None:
        """Block until a message satisfying ``predicate``; others are queued in order.

        With ``timeout`` (seconds), None when no such message came in time.
        """
        for index, message in enumerate(self._pending):
            if predicate(message):
                del self._pending[index]
                return message
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            if deadline is not None and not self._wait_readable(deadline):
                return None
            message = self._read_line(block=True)
            if predicate(message):
                return message
            self._pending.append(message)

    def _wait_readable(self, deadline: float) -> bool:
        """Whether a whole line is buffered or more bytes arrive before ``deadline``."""
        if self._buffer.find(b"\n", self._scanned) >= 0:
            return True
        while True:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                return False
            try:
                ready, _, _ = _select([self._sock], [], [], remaining)
            except InterruptedError:
                continue
            return bool(ready)

    def poll(self) -> None:
        """Read whatever is available without blocking into the queue."""
        while True:
            message = self._read_line(block=False)
            if message is None:
                return
            self._pending.append(message)

    def has_pending(self) -> bool:
        """Whether messages read early wait in the queue."""
        return bool(self._pending)

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
                ready, _, _ = _select([self._sock], [], [], 0)
                if not ready:
                    return None
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ChannelClosed()
            self._buffer += chunk


def path_fields(path: str, key: str = "path") -> dict:
    """``{key: path}``, plus ``{key}_bytes`` with its exact bytes when the
    name is not valid UTF-8 (``surrogateescape``): the kernel reads the bytes,
    the text is for display. See ``message_path`` in ``kernel/src/worker.rs``."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "replace")
        return {key: shown, f"{key}_bytes": list(os.fsencode(path))}
    return {key: path}


def message_path(message: dict, key: str) -> str | None:
    """The path the kernel sent as ``key`` (exact when it sent ``{key}_bytes``)."""
    raw = message.get(f"{key}_bytes")
    if isinstance(raw, list):
        return os.fsdecode(bytes(raw))
    return message.get(key)


def _fallback(value):
    return repr(value)


# Bound once: a test that mocks these (``mock.patch("os.getpid")``, the clock,
# ``json.dumps``) sees no call of the engine's, also when one of its steps fails.
_monotonic = time.monotonic
_select = select.select
_getpid = os.getpid
_dumps = json.dumps

# One encoder for every message: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=_fallback, separators=(",", ":"))


def _nested_encoder():
    """``_ENCODER.encode`` for a list or dict value, without its per-call set-up.

    ``JSONEncoder.encode`` makes a new C encoder for each call (about half the
    cost of a ``test_start``'s phases); this one is made once. Without the
    circular-reference markers: the values are the engine's own, and a cycle
    would end in RecursionError, which ``Engine.emit`` reports.
    """
    try:
        from json.encoder import c_make_encoder, encode_basestring_ascii
    except ImportError:  # pragma: no cover - an interpreter without _json
        c_make_encoder = None
    if c_make_encoder is None:
        return _ENCODER.encode
    encode = c_make_encoder(None, _fallback, encode_basestring_ascii, None, ":", ",", False, False, True)
    join = "".join
    return lambda value: join(encode(value, 0))


_encode_nested = _nested_encoder()

#: Keys whose float values are seconds: written with microsecond precision
#: (``%.6f``), several times cheaper than the shortest ``repr``.
_SECONDS = frozenset(("time", "duration_s"))
_micro = encode_seconds


class EventRing:
    """The worker's side of the shared event ring (layout: ``kernel/src/event_ring.rs``).

    ``append`` copies one JSON line into shared memory and publishes it by
    advancing the write position; the kernel drains the ring every few
    milliseconds and before each channel message, so events need no system
    call. Only the process that created the ring writes to it (a test that
    forks must not interleave its child's events with ours).
    """

    DATA_OFFSET = 64

    def __init__(self, fd: int, size: int):
        self._map = _map_shared(fd, size)
        os.close(fd)
        view = memoryview(self._map)
        self._positions = view[:16].cast("Q")  # [write_pos, read_pos]
        #: Byte 16: non-zero asks running tests to look at step boundaries. The
        #: kernel sets it when it sends ``pause_request`` or ``breakpoints``.
        self.flag = view[16:17]
        #: Byte 17: the kernel sets it before it sends SIGINT for a client's interrupt.
        self.interrupted = view[17:18]
        self._data = view[self.DATA_OFFSET :]
        self._capacity = size - self.DATA_OFFSET
        self._pid = _getpid()
        # Released then re-acquired around each publish: a lock's release and
        # acquire are memory barriers, so on weakly ordered CPUs the line is
        # visible before the position that publishes it.
        self._fence = _thread.allocate_lock()
        self._fence.acquire()

    def append(self, line: bytes) -> bool:
        """Publish ``line`` (ending in a newline); False when full or in a forked child."""
        n = len(line)
        write = self._positions[0]
        if write + n - self._positions[1] > self._capacity or _getpid() != self._pid:
            return False
        start = write % self._capacity
        end = start + n
        if end <= self._capacity:
            self._data[start:end] = line
        else:
            first = self._capacity - start
            self._data[start:] = line[:first]
            self._data[: n - first] = line[first:]
        self._fence.release()
        self._fence.acquire()
        self._positions[0] = write + n
        return True


def ring_from_environment() -> EventRing | None:
    """The event ring the kernel shared with this process, if any."""
    try:
        fd = int(os.environ.pop("STEPKERNEL_EVENTS_FD"))
        size = int(os.environ.pop("STEPKERNEL_EVENTS_SIZE"))
    except (KeyError, ValueError):
        return None
    try:
        return EventRing(fd, size)
    except (OSError, ValueError):
        return None


def _high_free_fd() -> int | None:
    """A free descriptor number near the limit (None: none free up there)."""
    try:
        limit = min(os.sysconf("SC_OPEN_MAX"), 1024)
    except (OSError, ValueError):
        limit = 256
    for target in range(limit - 1, max(limit - 64, 2), -1):
        try:
            os.fstat(target)
        except OSError:
            return target
    return None


def _map_shared(fd: int, size: int) -> mmap.mmap:
    """``fd``'s memory mapped, leaving ``mmap`` out of ``sys.modules`` as under plain pytest.

    (The map keeps working; a test's own ``import mmap`` loads the module afresh.)
    """
    imported = "mmap" in sys.modules
    import mmap

    try:
        return _map_high(mmap, fd, size)
    finally:
        if not imported:
            sys.modules.pop("mmap", None)


def _map_high(mmap: types.ModuleType, fd: int, size: int) -> mmap.mmap:
    """``fd``'s memory mapped; no descriptor of it stays among those a test gets.

    Python 3.13+ maps without keeping a descriptor; before, mmap keeps a copy
    at the lowest free number, so every free number below a high one is taken
    for that moment and the copy lands up there.
    """
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, trackfd=False)
    target = _high_free_fd()
    fillers: list[int] = []
    try:
        if target is not None:
            fillers = _fill_below(fd, target)
        return mmap.mmap(fd, size)
    except OSError:  # out of descriptors: map it where it lands
        _close_all(fillers)
        fillers = []
        return mmap.mmap(fd, size)
    finally:
        _close_all(fillers)


def _fill_below(fd: int, target: int) -> list[int]:
    """Copies of ``fd`` on every free number below ``target``, which stays free (the lowest then).

    About a thousand copies: made in one ``map`` (no Python frame each), as
    many as ``/proc/self/fd`` says are free, then one at a time for the rest.
    """
    try:
        before = {int(name) for name in os.listdir("/proc/self/fd")}
    except (OSError, ValueError):
        before = None  # no /proc: one at a time
    fillers: list[int] = []
    if before is not None:
        try:
            fillers = list(map(os.dup, itertools.repeat(fd, max(target - sum(n < target for n in before), 0))))
        except OSError:
            # Some copies were made before the error: those are the new numbers.
            _close_all([n for n in map(int, os.listdir("/proc/self/fd")) if n not in before and n != fd])
            raise
    try:
        while not fillers or fillers[-1] < target - 1:
            copy = os.dup(fd)
            fillers.append(copy)
            if copy >= target:
                break
    except OSError:
        _close_all(fillers)
        raise
    # Copies at or above the target: closed, so the target is the lowest free number.
    above = [copy for copy in fillers if copy >= target]
    if above:
        _close_all(above)
        fillers = [copy for copy in fillers if copy < target]
    return fillers


def _close_all(fds: list[int]) -> None:
    """Closes ``fds`` (copies the caller made): runs of consecutive numbers in one call each."""
    fds = sorted(fds)
    start = 0
    for i in range(1, len(fds) + 1):
        if i == len(fds) or fds[i] != fds[i - 1] + 1:
            os.closerange(fds[start], fds[i - 1] + 1)
            start = i


def high_fd(fd: int) -> int:
    """``fd`` moved to a free number near the descriptor limit (not inheritable), the original closed.

    Descriptors a test opens then get the numbers they get under plain pytest.
    Where no number up there is free, ``fd`` stays as it is.
    """
    target = _high_free_fd()
    if target is None or target <= fd:
        os.set_inheritable(fd, False)
        return fd
    os.dup2(fd, target, inheritable=False)
    os.close(fd)
    return target


def from_environment() -> Channel:
    """The channel the kernel handed to this process."""
    fd = int(os.environ.pop("STEPKERNEL_CHANNEL_FD"))
    # Subprocesses of tests inherit neither the descriptor nor the variable.
    return Channel(high_fd(fd))


_strings: dict[str, str] = {}


def _json_string(text: str) -> str:
    # Test ids, phases and step names repeat for every step: encode each once.
    encoded = _strings.get(text)
    if encoded is None:
        if len(_strings) > 50_000:
            _strings.clear()
        encoded = _strings[text] = _dumps(text)
    return encoded


def encode_flat(obj: dict) -> str:
    """JSON for a dict of strings, ints, floats, bools and None (other values: the full encoder).

    Step events are most of what the worker sends; this is several times
    cheaper than ``json.dumps`` for them and gives the same JSON. A list or
    dict value is encoded on its own, not the whole event again; a ``RawJSON``
    value (``test_start``'s phases) is written as it is.
    """
    parts = []
    known = _strings.get
    for key, value in obj.items():
        if type(key) is not str:
            return _ENCODER.encode(obj)
        kind = type(value)
        # (The cache looked up here, not through _json_string: a call per string less.)
        if kind is str:
            text = known(value) or _json_string(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float and value - value == 0.0:  # finite
            text = _micro(value) if key in _SECONDS else float.__repr__(value)
        elif value is None:
            text = "null"
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is RawJSON:
            text = value
        else:
            text = _encode_nested(value)
        parts.append(f"{known(key) or _json_string(key)}:{text}")
    return "{" + ",".join(parts) + "}"
