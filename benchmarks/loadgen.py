"""The load generator: a separate process that posts signed webhooks with aiohttp.

It runs in its own process (``multiprocessing`` spawn context), pinned to its own core
when the OS allows it, so that building and signing requests does not steal CPU from the
service under test. The parent drives it over a :class:`multiprocessing.connection.Connection`:

- parent → child: a :class:`Job` (bodies to post, concurrency, lockstep or not), or None
  to exit;
- child → parent: in lockstep mode an :class:`Acked` after every response, to which the
  parent answers ``True`` once that message is routed (so the next POST starts only then);
  at the end of a job one :class:`JobResult`.

All timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on the
machine), so the parent can compare them with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import aiohttp

from channels.api import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


@dataclass(frozen=True, slots=True)
class Job:
    url: str
    secret: str
    bodies: list[bytes]
    concurrency: int
    # Lockstep: one request at a time, and the next only after the parent says the
    # previous message is routed — the unbatched cost of one message.
    lockstep: bool = False
    # Open loop: request i starts at i / rate seconds (``concurrency`` bounds those in
    # flight); 0: closed loop, each worker posts its next as soon as the last is answered.
    rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Acked:
    index: int
    started: float
    status: int


@dataclass(slots=True)
class JobResult:
    first_start: float = 0.0
    last_end: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    rss_kib: int = 0
    cpu_s: float = 0.0  # this process's CPU time during the job


def proc_status_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM of a process from /proc, in KiB (empty where /proc is missing)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def pin(cpu: int | None) -> list[int] | None:
    """Pin this process to one CPU; returns the affinity in effect (None: unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


def _signed(secret: str, bodies: list[bytes]) -> list[dict[str, str]]:
    stamp = str(int(time.time()))
    return [
        {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(secret, stamp, body),
        }
        for body in bodies
    ]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run(job: Job, conn: Connection) -> JobResult:
    cpu0 = cpu_seconds()
    headers = _signed(job.secret, job.bodies)  # before the clock starts
    result = JobResult(latencies=[0.0] * len(job.bodies))
    statuses: Counter[int] = Counter()
    concurrency = 1 if job.lockstep else job.concurrency
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    next_index = iter(range(len(job.bodies)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        # Open the keep-alive connections first, so the phase measures requests only.
        async def warm() -> None:
            async with http.get(job.url.split("/webhooks/")[0] + "/healthz") as r:
                await r.read()

        await asyncio.gather(*(warm() for _ in range(concurrency)))

        t0 = time.monotonic()

        async def worker() -> None:
            for i in next_index:
                if job.rate:
                    await asyncio.sleep(max(0.0, t0 + i / job.rate - time.monotonic()))
                started = time.monotonic()
                try:
                    async with http.post(job.url, data=job.bodies[i], headers=headers[i]) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = 0
                    if len(result.errors) < 10:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
                ended = time.monotonic()
                result.latencies[i] = ended - started
                statuses[status] += 1
                if result.first_start == 0.0 or started < result.first_start:
                    result.first_start = started
                result.last_end = max(result.last_end, ended)
                if job.lockstep:
                    conn.send(Acked(i, started, status))
                    conn.recv()  # the parent answers once message i is routed

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.statuses = dict(statuses)
    result.rss_kib = proc_status_kib().get("VmRSS", 0)
    result.cpu_s = cpu_seconds() - cpu0
    return result


def main(conn: Connection, cpu: int | None) -> None:
    """Child entry point: serve jobs until the parent sends None."""
    conn.send(pin(cpu))
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(asyncio.run(_run(job, conn)))


def stop(conn: Connection, proc: BaseProcess) -> None:
    """Tell the load generator process to exit (``None`` on its pipe) and wait for it;
    terminate it if it has not exited within 10 s."""
    with contextlib.suppress(OSError):
        conn.send(None)
    proc.join(timeout=10)
    if proc.is_alive():
        proc.terminate()
