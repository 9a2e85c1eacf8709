"""The webhook consumer of ``python -m benchmarks.webhooks``: a separate process.

An aiohttp server on a free loopback port that answers every ``POST /hook/{n}`` with 200
at once (subscription ``n`` posts to ``/hook/n``) and records, per request, the event id
(``X-Omniroute-Event-Id``), the arrival time and whether the signature checks out. It runs
in its own process (``multiprocessing`` spawn context), pinned to its own core when the OS
allows it, like the load generator of the main benchmark, so that receiving does not steal
CPU from the delivery worker under test.

The parent drives it over a :class:`multiprocessing.connection.Connection`:

- child → parent, once at start: a :class:`Ready` (port, CPU affinity);
- parent → child: a :class:`Collect` — wait until ``expected`` distinct (subscription,
  event) pairs have arrived (or ``timeout_s`` passed), linger ``linger_s`` to catch
  anything sent twice, then answer with one :class:`Arrivals` and start afresh;
- parent → child: None to exit.

Arrival times are taken once the request body is read: ``time.time()`` (compared with the
events' ``written_at``, also wall clock) and ``time.monotonic()`` (CLOCK_MONOTONIC, shared by
every process on the machine, compared with the parent's own clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from aiohttp import web

from channels.signing import matches

EVENT_ID = "X-Omniroute-Event-Id"
TIMESTAMP = "X-Omniroute-Timestamp"
SIGNATURE = "X-Omniroute-Signature"


@dataclass(frozen=True, slots=True)
class Ready:
    port: int
    affinity: list[int] | None


@dataclass(frozen=True, slots=True)
class Collect:
    expected: int
    timeout_s: float
    linger_s: float = 0.3


@dataclass(slots=True)
class Arrivals:
    """Every request since the last collection, in arrival order (parallel lists)."""

    subscription: list[int] = field(default_factory=list)  # the n of /hook/n
    event_id: list[str] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)  # time.time()
    mono: list[float] = field(default_factory=list)  # time.monotonic()
    bad_signatures: int = 0
    timed_out: bool = False
    cpu_s: float = 0.0  # this process's CPU time since the last collection
    rss_kib: int = 0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_kib() -> int:
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pin(cpu: int | None) -> list[int] | None:
    """Pin this process to one CPU; returns the affinity in effect (None: unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


class Recorder:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.arrivals = Arrivals()
        self.distinct: set[tuple[int, str]] = set()
        self.expected = -1
        self.enough = asyncio.Event()
        self.cpu0 = cpu_seconds()

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        wall, mono = time.time(), time.monotonic()
        sub = int(request.match_info["n"])
        event_id = request.headers.get(EVENT_ID, "")
        a = self.arrivals
        a.subscription.append(sub)
        a.event_id.append(event_id)
        a.wall.append(wall)
        a.mono.append(mono)
        headers = request.headers
        if not matches(self.secret, headers.get(TIMESTAMP, ""), body, headers.get(SIGNATURE, "")):
            a.bad_signatures += 1
        self.distinct.add((sub, event_id))
        if len(self.distinct) >= self.expected >= 0:
            self.enough.set()
        return web.Response(status=200)

    async def collect(self, job: Collect) -> Arrivals:
        self.expected = job.expected
        if len(self.distinct) >= job.expected:
            self.enough.set()
        try:
            await asyncio.wait_for(self.enough.wait(), job.timeout_s)
        except TimeoutError:
            self.arrivals.timed_out = True
        await asyncio.sleep(job.linger_s)  # anything sent twice arrives meanwhile
        out = self.arrivals
        out.cpu_s = cpu_seconds() - self.cpu0
        out.rss_kib = rss_kib()
        self.arrivals = Arrivals()
        self.distinct = set()
        self.expected = -1
        self.enough.clear()
        self.cpu0 = cpu_seconds()
        return out


async def _serve(conn: Connection, cpu: int | None, secret: str) -> None:
    affinity = pin(cpu)
    recorder = Recorder(secret)
    app = web.Application()
    app.router.add_post("/hook/{n}", recorder.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a free loopback port, chosen by the OS and kept
    port = int(sock.getsockname()[1])
    await web.SockSite(runner, sock).start()
    conn.send(Ready(port, affinity))
    loop = asyncio.get_running_loop()
    try:
        while True:
            job = await loop.run_in_executor(None, conn.recv)
            if job is None:
                return
            assert isinstance(job, Collect)
            conn.send(await recorder.collect(job))
    finally:
        await runner.cleanup()


def main(conn: Connection, cpu: int | None, secret: str) -> None:
    """Child entry point: serve until the parent sends None."""
    asyncio.run(_serve(conn, cpu, secret))
