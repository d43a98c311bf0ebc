"""A pre-imported worker for ``stepkernel watch``: imported once, forked once per cycle.

The watch starts this process exactly as the kernel starts a worker (the
same ``python -c BOOTSTRAP PACKAGE_DIR`` command line, working directory and
environment) plus ``$STEPKERNEL_ZYGOTE_FD``, a listening UNIX socket the
watch bound. It imports what every worker imports before ``pytest.main``
runs — this package's engine and pytest itself, nothing from the project
(checked, see :func:`_project_modules`), no pytest plugin of the project or
of site-packages (pytest imports those with its assertion rewriter, which
must see them first) — and then waits. Each cycle's kernel connects, sends
the environment it would have given a worker and the descriptors (stdout,
stderr, channel, event ring); this process checks that nothing it imported
changed (see :class:`_Snapshot`), forks, and the child returns from
:func:`serve` into the bootstrap, which goes on as in a worker it started
itself. The zygote then reports the child's exit on the connection, and
kills the child if the kernel goes away first.

Wire format (one connection per worker): the kernel sends one JSON line
``{"v": 1, "python", "package_dir", "cwd", "env_hex": [hex of KEY=VALUE],
"fds": [names]}`` with the descriptors attached (SCM_RIGHTS) in the order of
``fds``; the zygote answers ``{"pid": N}`` or ``{"refused": REASON, "stale":
bool}``, then ``{"exit": CODE}`` or ``{"signal": N}`` when the child ends.

Only modules the worker itself imports are used here (``socket``, ``select``,
``json``), so a child's ``sys.modules`` holds nothing a worker started
afresh would not.
"""

from __future__ import annotations

import os
import sys

FD_ENV = "STEPKERNEL_ZYGOTE_FD"
#: Variables that differ per cycle: the kernel's descriptors and the
#: recorder's output file, read by this package at run time only (never at
#: start-up or import), so a child may differ from the zygote in them.
PER_CYCLE_ENV = frozenset(
    {"STEPKERNEL_CHANNEL_FD", "STEPKERNEL_EVENTS_FD", "STEPKERNEL_EVENTS_SIZE", "STEPKERNEL_DEPS_FILE"}
)
#: Exit status: the zygote cannot serve at all (a project module or a thread
#: after the pre-import); the watch does not start another.
EXIT_REFUSED = 3
#: Exit status: something the zygote imported changed; the watch starts another.
EXIT_STALE = 75
#: The configuration files pytest reads from the project's directory.
INI_FILES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")
#: The line the zygote writes to its stdout once it serves.
READY = "stepkernel-zygote: ready"
#: How long a kernel may take to send its request once connected.
REQUEST_TIMEOUT_S = 5.0


class Refused(Exception):
    """This zygote cannot serve a request (``stale``: nor any later one)."""

    def __init__(self, reason: str, stale: bool = False):
        super().__init__(reason)
        self.stale = stale


def _preimport() -> None:
    """What a worker imports before ``pytest.main``: the engine, pytest, pytest's own always-on plugins."""
    from . import worker  # noqa: F401 - the bootstrap's own import

    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return  # the unittest runner: nothing heavy to share
    from . import stepping  # noqa: F401
    from .stepping import pytest_plugin  # noqa: F401

    # Only what a worker started afresh imports too: not the xdist controller
    # (a run with -n imports it), not step hooks (only when a plugin has one).
    # helpconfig is essential (pytest imports it even with `-p no:helpconfig`).
    import _pytest.helpconfig  # noqa: F401


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _module_file(module: object) -> str | None:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        spec = getattr(module, "__spec__", None)
        path = getattr(spec, "origin", None)
    if not isinstance(path, str) or not os.path.isabs(path):
        return None  # built in, frozen, or a namespace package
    return path


def _outside_project() -> list[str]:
    """Directories under the project that hold no project code: the interpreter's and this package's."""
    import site

    dirs = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.abspath(__file__))]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # pragma: no cover - a virtualenv's old site.py
        pass
    dirs.append(site.getusersitepackages() if site.ENABLE_USER_SITE else "")
    return [os.path.realpath(d) for d in dirs if d]


def _project_modules(rootdir: str) -> list[str]:
    """Modules loaded from files of the project (none may be in the zygote)."""
    outside = _outside_project()
    found = []
    for name, module in list(sys.modules.items()):
        path = _module_file(module)
        if path is None:
            continue
        real = os.path.realpath(path)
        if _under(real, rootdir) and not any(_under(real, o) for o in outside):
            found.append(f"{name} ({path})")
    return found


def _threads() -> int:
    """Threads of this process (a fork copies only the calling one)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Snapshot:
    """What the zygote's imports depend on, to tell when a child would differ from a fresh worker.

    - every file a module in ``sys.modules`` was loaded from, the
      interpreter's executable and the project's pytest configuration files
      (device, inode, size and mtime: an upgrade, an edit, a removal);
    - every ``sys.path`` directory's mtime: a directory outside the project
      that changes (a package installed or removed, a ``.pth`` file) makes the
      zygote stale; one in the project is looked into, and is stale only when
      it now holds a module of a name the zygote imported from elsewhere
      (a new ``json.py`` in the project would shadow the standard library's
      in a fresh worker, whose ``sys.path[0]`` is the project).
    """

    def __init__(self, rootdir: str) -> None:
        self.rootdir = rootdir
        self.files: dict[str, tuple | None] = {}
        for module in list(sys.modules.values()):
            path = _module_file(module)
            if path is not None:
                self.files[path] = _stat(path)
        for path in (sys.executable, os.path.realpath(sys.executable)):
            self.files[path] = _stat(path)
        for name in INI_FILES:
            path = os.path.join(rootdir, name)
            self.files[path] = _stat(path)
        outside = _outside_project()
        #: sys.path directories of the project itself (not a virtualenv in it).
        self.project_dirs: set[str] = set()
        self.dirs: dict[str, int | None] = {}
        for entry in sys.path:
            path = os.path.realpath(entry or os.getcwd())
            if os.path.isdir(path):
                st = _stat(path)
                self.dirs[path] = st[3] if st else None
                if _under(path, rootdir) and not any(_under(path, o) for o in outside):
                    self.project_dirs.add(path)
        # Top-level modules imported from files, by where they were found.
        self.top: dict[str, str] = {}
        for name, module in list(sys.modules.items()):
            path = _module_file(module)
            if "." not in name and path is not None:
                self.top[name] = os.path.realpath(path)

    def stale(self) -> str | None:
        """Why a child forked now could differ from a fresh worker (None: it would not)."""
        for path, before in self.files.items():
            if _stat(path) != before:
                what = "appeared" if before is None else "was removed" if not os.path.exists(path) else "changed"
                return f"{path} {what}"
        for path, before in list(self.dirs.items()):
            st = _stat(path)
            now = st[3] if st else None
            if now == before:
                continue
            if path not in self.project_dirs:
                return f"{path} changed (a package installed or removed?)"
            shadow = self._shadowing(path)
            if shadow is not None:
                return shadow
            self.dirs[path] = now  # looked into: nothing shadows
        return None

    def _shadowing(self, directory: str) -> str | None:
        try:
            names = os.listdir(directory)
        except OSError:
            return f"{directory} cannot be read"
        for entry in names:
            stem = entry.split(".", 1)[0]
            origin = self.top.get(stem)
            if origin is None or _under(origin, directory):
                continue
            full = os.path.join(directory, entry)
            module = entry.endswith((".py", ".pyc", ".so", ".pyd")) or os.path.isfile(
                os.path.join(full, "__init__.py")
            )
            if module:
                return f"{full} would shadow the module {stem} the zygote imported from {origin}"
        return None


def _recv_request(conn) -> tuple[dict, list[int]]:
    """One JSON line and the descriptors sent with it."""
    import json
    import socket

    conn.settimeout(REQUEST_TIMEOUT_S)
    data = b""
    fds: list[int] = []
    size = 4 * 16
    while not data.endswith(b"\n"):
        chunk, ancdata, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(size))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
        if not chunk:
            for fd in fds:
                os.close(fd)
            raise Refused("the kernel closed the connection before its request ended")
        data += chunk
    conn.settimeout(None)
    return json.loads(data), fds


def _reply(conn, message: dict) -> None:
    import json

    try:
        conn.sendall((json.dumps(message) + "\n").encode())
    except OSError:
        pass  # the kernel is gone; its child is killed when its connection is seen closed


def _environment(request: dict) -> dict[bytes, bytes]:
    env = {}
    for item in request.get("env_hex", []):
        key, _, value = bytes.fromhex(item).partition(b"=")
        env[key] = value
    return env


def _comparable(env: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v for k, v in env.items() if os.fsdecode(k) not in PER_CYCLE_ENV}


class _Zygote:
    """The serving loop: one connection per requested worker."""

    def __init__(self, listener, rootdir: str, package_dir: str) -> None:
        self.listener = listener
        self.rootdir = rootdir
        self.package_dir = package_dir
        self.python = sys.orig_argv[0] if getattr(sys, "orig_argv", None) else sys.executable
        self.env = _comparable(dict(os.environb))
        self.cwd = os.getcwd()
        self.snapshot = _Snapshot(rootdir)
        #: Running children: pid -> (connection to their kernel, pidfd or None).
        self.children: dict[int, tuple] = {}
        #: Descriptors polled for a child (its kernel's connection, its pidfd) -> its pid.
        self.watched: dict[int, int] = {}
        self.stale: str | None = None

    def check(self, request: dict, fds: list[int]) -> None:
        """Refuse a request this zygote cannot serve as a fresh worker would be started."""
        if request.get("v") != 1:
            raise Refused(f"unknown request version {request.get('v')!r}")
        if request.get("python") != self.python:
            raise Refused(f"another interpreter ({request.get('python')}; this one is {self.python})")
        if request.get("package_dir") != self.package_dir:
            raise Refused("another worker package (another stepkernel)")
        if request.get("cwd") != self.cwd:
            raise Refused(f"another working directory ({request.get('cwd')})")
        names = request.get("fds", [])
        if len(names) != len(fds) or not {"stdout", "stderr", "channel"} <= set(names):
            raise Refused("the request's descriptors do not match their names")
        env = _comparable(_environment(request))
        if env != self.env:
            differ = sorted(os.fsdecode(k) for k in set(env) | set(self.env) if env.get(k) != self.env.get(k))
            raise Refused(f"another environment ({', '.join(differ[:5])})")
        self.check_fresh()

    def check_fresh(self) -> None:
        reason = self.snapshot.stale()
        if reason is not None:
            raise Refused(reason, stale=True)
        threads = _threads()
        if threads != 1:
            raise Refused(f"{threads} threads in the zygote (a fork copies only the calling one)", stale=True)

    def serve(self):
        """Serve until stale; returns, in a forked child, the request it was forked for."""
        import select

        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        while self.children or self.listener is not None:
            # Without pidfds, ended children are looked for now and then;
            # while idle, whether something imported changed.
            waiting = any(pidfd is None for _conn, pidfd in self.children.values())
            ready = poller.poll(CHILD_POLL_MS if waiting else IDLE_CHECK_MS)
            if not ready and self.listener is not None and not self.children:
                try:
                    self.check_fresh()
                except Refused as exc:
                    self.stop(poller, str(exc))
            for fd, _events in ready:
                if self.listener is not None and fd == self.listener.fileno():
                    forked = self._accept(poller)
                    if forked is not None:
                        return forked
                elif fd in self.watched:
                    self._child_event(fd, poller)
            self._reap(poller)
        return None

    def _accept(self, poller):
        import socket
        import time

        try:
            conn, _ = self.listener.accept()
        except OSError:
            return None
        accepted = time.perf_counter()
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if int.from_bytes(creds[4:8], sys.byteorder) != os.getuid():
                conn.close()  # only this user's kernels get a worker
                return None
            request, fds = _recv_request(conn)
        except (OSError, ValueError, Refused):
            conn.close()
            return None
        try:
            self.check(request, fds)
            if conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                raise Refused("the kernel gave up waiting")
        except BlockingIOError:
            pass  # still connected, nothing more sent: as it should be
        except (Refused, OSError) as exc:
            for fd in fds:
                os.close(fd)
            stale = isinstance(exc, Refused) and exc.stale
            _reply(conn, {"refused": str(exc), "stale": stale})
            conn.close()
            if stale:
                self.stop(poller, str(exc))
            return None
        checked = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            return self._in_child(conn, request, dict(zip(request["fds"], fds)))
        forked = time.perf_counter()
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None  # Python < 3.9 or Linux < 5.3: polled with waitpid
        self.children[pid] = (conn, pidfd)
        for fd in (conn.fileno(), pidfd):
            if fd is not None:
                self.watched[fd] = pid
                poller.register(fd, select_in())
        _reply(conn, {"pid": pid})
        # For zygote.log (stdout: the watch takes stderr's last line as the reason the zygote ended).
        os.write(1, f"stepkernel-zygote: forked {pid} (request and checks {1000 * (checked - accepted):.1f} ms, "
                    f"fork {1000 * (forked - checked):.1f} ms)\n".encode())
        return None

    def stop(self, poller, reason: str) -> None:
        """Accept no more requests (the running children are still reported)."""
        os.write(2, f"stepkernel: {reason}\n".encode(errors="replace"))
        self.stale = reason
        if self.listener is not None:
            try:
                poller.unregister(self.listener.fileno())
            except KeyError:
                pass
            self.listener.close()
            self.listener = None

    def _child_event(self, fd: int, poller) -> None:
        import socket

        pid = self.watched[fd]
        conn, _pidfd = self.children[pid]
        if fd != conn.fileno():
            return  # the pidfd: reaped below
        try:
            gone = conn.recv(1, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return
        except OSError:
            gone = True
        if gone:
            # The kernel ended (or gave up): as a worker dies with its kernel, so does this child.
            self.watched.pop(fd, None)
            poller.unregister(fd)
            try:
                os.killpg(pid, 9)
            except OSError:
                pass

    def _reap(self, poller) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            conn, pidfd = self.children.pop(pid)
            if os.WIFSIGNALED(status):
                _reply(conn, {"signal": os.WTERMSIG(status)})
            else:
                _reply(conn, {"exit": os.waitstatus_to_exitcode(status)})
            for fd in (conn.fileno(), pidfd):
                if fd is not None and self.watched.pop(fd, None) is not None:
                    poller.unregister(fd)
            conn.close()
            if pidfd is not None:
                os.close(pidfd)

    def _in_child(self, conn, request: dict, fds: dict[str, int]) -> dict:
        """Become the worker the kernel would have started: its process group, descriptors, environment."""
        os.setpgid(0, 0)
        # The zygote's own descriptors are closed through their objects (so
        # none closes a number reused later).
        if self.listener is not None:
            self.listener.close()
        conn.close()
        for other, pidfd in self.children.values():
            other.close()
            if pidfd is not None:
                os.close(pidfd)
        self.children.clear()
        for name, target in (("stdout", 1), ("stderr", 2)):
            fd = fds.pop(name)
            os.dup2(fd, target)
            os.close(fd)
        env = _environment(request)
        # The channel and the ring at the numbers the kernel gave them, so
        # every descriptor a test opens gets the number it would in a worker
        # the kernel started (those numbers are free here: the zygote's own
        # are closed); out of the way first, as one may sit on the other's.
        parked = {}
        for name in ("channel", "ring"):
            if name in fds:
                parked[name] = _park(fds.pop(name))
        for name, variable in (("channel", b"STEPKERNEL_CHANNEL_FD"), ("ring", b"STEPKERNEL_EVENTS_FD")):
            if name not in parked:
                continue
            fd, asked = parked[name], env.get(variable, b"")
            if asked.isdigit() and int(asked) > 2 and not _is_open(int(asked)):
                os.dup2(fd, int(asked))  # inheritable, as the kernel passes them
                os.close(fd)
                fd = int(asked)
            else:
                os.set_inheritable(fd, True)
            env[variable] = str(fd).encode()
        os.environb.clear()
        os.environb.update(env)
        return request


#: Poll interval while a child runs and no pidfd reports its end.
CHILD_POLL_MS = 50
#: How often an idle zygote checks that nothing it imported changed (so a
#: change is noticed, and a fresh zygote is ready, before the next cycle).
IDLE_CHECK_MS = 2000


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _park(fd: int) -> int:
    """``fd`` moved to a high free number (closing ``fd``)."""
    target = 1000
    while _is_open(target):
        target += 1
    os.dup2(fd, target, inheritable=False)
    os.close(fd)
    return target


def select_in() -> int:
    import select

    return select.POLLIN | select.POLLHUP


def serve() -> bool:
    """The zygote's life: pre-import, then fork per request. Returns (True) only in a forked child."""
    listen_fd = int(os.environ.pop(FD_ENV))
    rootdir = os.path.realpath(os.getcwd())
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        _preimport()
    except BaseException as exc:  # noqa: BLE001 - a fresh worker shows this error itself
        _exit_refused(f"the pre-import failed ({type(exc).__name__}: {exc})")
    found = _project_modules(rootdir)
    if found:
        _exit_refused(f"the pre-import loaded modules of the project: {', '.join(found[:3])}")
    threads = _threads()
    if threads != 1:
        _exit_refused(f"the pre-import started {threads - 1} thread(s)")
    preimported = set(sys.modules)
    import socket

    listener = socket.socket(fileno=listen_fd)
    os.set_inheritable(listen_fd, False)
    zygote = _Zygote(listener, rootdir, package_dir)
    # The watch reads this line (its own pipe; a child gets the kernel's).
    os.write(1, f"{READY} {len(sys.modules)} modules\n".encode())
    forked = zygote.serve()
    if forked is None:
        os._exit(EXIT_STALE if zygote.stale else 0)
    # In the child: as a worker that imported the same modules. Anything the
    # zygote itself imported (nothing, as written) goes, and so does this module.
    for name in set(sys.modules) - preimported:
        sys.modules.pop(name, None)
    sys.modules.pop(__name__, None)
    parent = sys.modules.get(__package__ or "")
    if parent is not None and "zygote" in vars(parent):
        delattr(parent, "zygote")
    import importlib
    import linecache

    # A fresh process has looked at no directory yet: neither has this one now.
    importlib.invalidate_caches()
    linecache.clearcache()
    return True


def _exit_refused(reason: str) -> None:
    os.write(2, f"stepkernel: {reason}\n".encode(errors="replace"))
    os._exit(EXIT_REFUSED)
