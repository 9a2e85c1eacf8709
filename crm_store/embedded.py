"""Launcher for the embedded MongoDB-wire server (SecantusDB) used by zero-setup runs and tests.

SecantusDB is GPL-2.0-only, so it is never imported from project code: it is installed by
the optional ``omniroute[embedded]`` extra and run here as a separate process
(``secantusd-py``) that the application reaches over TCP with the ordinary PyMongo driver,
exactly as it reaches a production MongoDB replica set.

The child runs in its own session / process group, so a Ctrl-C in the terminal reaches only
the service, which then stops the store cleanly (SIGTERM; SIGKILL after a timeout).
File-backed stores always run with ``--sync-on-commit`` so that an acknowledged write
survives a SIGKILL of the server.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import PyMongoError

__all__ = [
    "SERVER_EXECUTABLE",
    "EmbeddedStore",
    "EmbeddedStoreError",
    "find_server_executable",
    "pick_free_port",
]

SERVER_EXECUTABLE = "secantusd-py"
_INSTALL_HINT = (
    "install omniroute[embedded] (in a checkout: `make venv`, or "
    "`pip install -e '.[embedded]'`), or point OMNIROUTE_MONGODB_URI at a MongoDB server"
)
_LOG_TAIL_BYTES = 4000
_POLL_INTERVAL = 0.05

# Stores whose server is still running; stopped at interpreter exit as a safety net so an
# aborted test run or a crashed CLI does not leave orphan servers behind. (Strong refs: a
# store dropped without stop() must still be stopped.)
_running: set[EmbeddedStore] = set()


class EmbeddedStoreError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


# How long a store with history may take to open (its WiredTiger recovery grows with its
# size: 1.38M documents, 1.4 GB, open in ~28 s on a 2-core machine). The wait ends at once
# if the server exits, so a generous bound costs nothing when something is wrong.
OPEN_S = 900.0


def find_server_executable() -> Path | None:
    """Locate ``secantusd-py``: next to the running interpreter first (a venv), then on PATH."""
    candidate = Path(sys.executable).parent / SERVER_EXECUTABLE
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(SERVER_EXECUTABLE)
    return Path(found) if found else None


def pick_free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a currently unused TCP port on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedStore:
    """One ``secantusd-py`` server process, restartable on the same port and data.

    ``storage_path=None`` runs an ephemeral in-memory store (``--storage-path :memory:``)
    whose log and config live in a temp dir removed at stop; a path runs a file-backed store
    with ``--sync-on-commit``, its log in ``storage_path/secantusd.log``.
    """

    def __init__(
        self,
        *,
        storage_path: Path | None,
        port: int | None = None,
        host: str = "127.0.0.1",
        # One write must fit in the server's cache with its oplog copy: a transaction
        # bigger than the cache stalls the storage engine (an intake batch of raw mail
        # is several MiB).
        cache_size: str = "256M",
        log_path: Path | None = None,
    ) -> None:
        self.storage_path = Path(storage_path) if storage_path is not None else None
        self.host = host
        self.port = port if port is not None else pick_free_port(host)
        self.cache_size = cache_size
        self._explicit_log_path = Path(log_path) if log_path is not None else None
        self._scratch: Path | None = None  # temp dir of a :memory: store
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # ------------------------------------------------------------------ properties

    @property
    def uri(self) -> str:
        """The server's URI, without retryable writes: SecantusDB keeps the reply of
        every retryable write of the last 30 minutes and re-scans (past 10,000: sorts)
        that list on each write, which took 30 % of its CPU and two thirds of a
        5,000-mail sync's time (docs/benchmarks.md, E-mail). A single server on
        loopback has no failover to retry through, and every write path here is
        idempotent on its own (docs/store.md)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mongodb://{host}:{self.port}/?directConnection=true&retryWrites=false"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status of the last server process (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def log_path(self) -> Path | None:
        """Where the server's stdout/stderr go (None for a :memory: store that is not running)."""
        if self._explicit_log_path is not None:
            return self._explicit_log_path
        base = self.storage_path if self.storage_path is not None else self._scratch
        return base / "secantusd.log" if base is not None else None

    def command(self, executable: Path | str = SERVER_EXECUTABLE) -> list[str]:
        """The server's command line."""
        cmd = [
            str(executable),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage_path) if self.storage_path is not None else ":memory:",
            "--cache-size",
            self.cache_size,
        ]
        if self.storage_path is not None:
            cmd.append("--sync-on-commit")
        return cmd

    def __repr__(self) -> str:
        where = self.storage_path if self.storage_path is not None else ":memory:"
        return f"<EmbeddedStore {self.uri} storage={where} pid={self.pid}>"

    # ------------------------------------------------------------------ async API

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - part of the API
        """Spawn the server; return once a driver ping succeeds. No-op if it is running."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self._spawn()
        try:
            # Polling: a Popen child and a TCP port offer nothing to await on.
            while not self._listening(deadline, timeout):  # noqa: ASYNC110
                await asyncio.sleep(_POLL_INTERVAL)
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                self.uri, serverSelectionTimeoutMS=_ms_left(deadline)
            )
            try:
                while True:
                    self._check_alive()
                    try:
                        status = await client.admin.command("serverStatus")
                        break
                    except PyMongoError as exc:
                        self._check_deadline(deadline, timeout, exc)
                        await asyncio.sleep(_POLL_INTERVAL)
            finally:
                await client.close()
            self._check_server_pid(status)
        except BaseException:
            self._abort()
            raise
        _running.add(self)

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - part of the API
        """SIGTERM the server and wait for it; SIGKILL after ``timeout``. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(_POLL_INTERVAL)
                self._nudge()
            if proc.poll() is None:
                self._signal(signal.SIGKILL)
                while proc.poll() is None:  # noqa: ASYNC110 - Popen has nothing to await
                    await asyncio.sleep(_POLL_INTERVAL)
        self._finish()

    def kill(self) -> None:
        """SIGKILL the server at once (crash drills) and reap it. The data dir is kept."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        _running.discard(self)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ sync API (CLI)

    def start_sync(self, timeout: float = 30.0) -> None:
        """Blocking :meth:`start`, for callers without an event loop."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self._spawn()
        try:
            while not self._listening(deadline, timeout):
                time.sleep(_POLL_INTERVAL)
            client: MongoClient[dict[str, Any]] = MongoClient(
                self.uri, serverSelectionTimeoutMS=_ms_left(deadline)
            )
            try:
                while True:
                    self._check_alive()
                    try:
                        status = client.admin.command("serverStatus")
                        break
                    except PyMongoError as exc:
                        self._check_deadline(deadline, timeout, exc)
                        time.sleep(_POLL_INTERVAL)
            finally:
                client.close()
            self._check_server_pid(status)
        except BaseException:
            self._abort()
            raise
        _running.add(self)

    def stop_sync(self, timeout: float = 10.0) -> None:
        """Blocking :meth:`stop`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL)
                self._nudge()
            if proc.poll() is None:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._finish()

    # ------------------------------------------------------------------ internals

    def _spawn(self) -> None:
        executable = find_server_executable()
        if executable is None:
            raise EmbeddedStoreError(
                f"{SERVER_EXECUTABLE} was not found next to {sys.executable} nor on PATH; "
                + _INSTALL_HINT
            )
        if _port_accepts(self.host, self.port):
            raise EmbeddedStoreError(
                f"cannot start the embedded store: {self.host}:{self.port} is already in use"
            )
        env: dict[str, str] | None = None
        if self.storage_path is not None:
            self.storage_path.mkdir(parents=True, exist_ok=True)
            home = self.storage_path
        else:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="secantusd-"))
            home = self._scratch
            # ":memory:" is a WiredTiger dir under $TMPDIR: keep it inside our scratch dir so
            # it is removed at stop even when the server was killed and could not clean up.
            env = {**os.environ, "TMPDIR": str(self._scratch)}
        # An explicit, empty config file: without --config the server would pick up any
        # ./secantusd.toml, ~/.secantus/secantusd.toml or /etc/secantus/secantusd.toml.
        config = home / "secantusd.toml"
        config.write_text("# Written by omniroute: every setting is on the command line.\n")
        log_path = self.log_path
        assert log_path is not None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes]
        with open(log_path, "ab") as log:
            self._log_offset = log.tell()
            # Own session => own process group: a terminal's Ctrl-C (SIGINT to the
            # foreground group) does not reach the server; we stop it ourselves.
            self._proc = subprocess.Popen(
                [*self.command(executable), "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
            )

    def _listening(self, deadline: float, timeout: float) -> bool:
        self._check_alive()
        if _port_accepts(self.host, self.port):
            return True
        if time.monotonic() >= deadline:
            raise self._error(f"did not listen on {self.host}:{self.port} within {timeout}s")
        return False

    def _check_deadline(self, deadline: float, timeout: float, exc: Exception) -> None:
        if time.monotonic() >= deadline:
            raise self._error(f"did not answer a ping within {timeout}s: {exc}") from exc

    def _check_server_pid(self, status: dict[str, Any]) -> None:
        """Make sure the server that answered is ours, not a stranger on the same port."""
        self._check_alive()
        server_pid = status.get("pid")
        if self._proc is not None and isinstance(server_pid, int) and server_pid != self._proc.pid:
            raise self._error(
                f"{self.host}:{self.port} is served by another process (pid {server_pid})"
            )

    def _check_alive(self) -> None:
        proc = self._proc
        if proc is None:
            raise EmbeddedStoreError("the embedded store was stopped while starting")
        code = proc.poll()
        if code is not None:
            raise self._error(f"exited with code {code} while starting")

    def _error(self, what: str) -> EmbeddedStoreError:
        where = self.storage_path if self.storage_path is not None else ":memory:"
        msg = f"embedded store ({SERVER_EXECUTABLE}, storage {where}, port {self.port}) {what}"
        tail = self.log_tail()
        if tail:
            msg += f"\n--- tail of {self.log_path} ---\n{tail}"
        else:
            msg += f" (no output in {self.log_path})"
        return EmbeddedStoreError(msg)

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The end of the server's output since the last start."""
        log_path = self.log_path
        if log_path is None:
            return ""
        try:
            with open(log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - max_bytes))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if sig == signal.SIGTERM and _signal_main_thread(proc.pid, sig):
            return
        # The server leads its own process group (start_new_session): signal the group.
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _nudge(self) -> None:
        """Poke the port while the server shuts down.

        On SIGTERM the server closes its listening socket and then waits up to 2 s for its
        accept thread, which stays blocked in accept() until a connection arrives; one
        connection lets it notice the stop at once. Refused connections are harmless.
        """
        with contextlib.suppress(OSError):
            socket.create_connection((self.host, self.port), timeout=0.05).close()

    def _abort(self) -> None:
        """Tear down a half-started server (the log tail is already in the error)."""
        self.kill()
        self._finish()

    def _finish(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        _running.discard(self)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _signal_main_thread(pid: int, sig: int) -> bool:
    """Send ``sig`` to the main thread of process ``pid`` (Linux ``tgkill``); False if we can't.

    The server installs its SIGTERM handler in Python and then parks its main thread in
    ``Event.wait()``. A process-directed signal may be delivered to any of its threads; when
    it lands on a worker thread, CPython only flags it for the main thread, which never wakes
    up to run the handler, so the server ignores the SIGTERM (about 1 stop in 15 measured).
    Aimed at the main thread (whose tid is the pid), the signal interrupts the wait and the
    handler runs at once.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        tgkill = libc.tgkill  # glibc >= 2.30, musl
    except (OSError, AttributeError):
        return False
    return int(tgkill(ctypes.c_int(pid), ctypes.c_int(pid), ctypes.c_int(sig))) == 0


def _ms_left(deadline: float) -> int:
    return max(100, int((deadline - time.monotonic()) * 1000))


@atexit.register
def _stop_leftovers() -> None:
    for store in list(_running):
        with contextlib.suppress(Exception):
            store.stop_sync(timeout=5.0)
