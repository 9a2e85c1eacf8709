"""A small model of routing throughput against service processes and shards
(docs/scaling.md): ``python -m benchmarks.shard_model [--results PATH] [--new-share F]
[--shard-docs-per-s W]``.

It is fed with the per-message costs ``make bench`` measured (benchmarks/results/latest.json:
the service's CPU ms per message and the documents the store writes per message, for new
leads and for the steady state) and a store capacity per shard, and it assumes:

1. a service process is one core: it routes at most ``1000 / cpu_ms`` messages/s, and
   processes add up (they share nothing but the store — docs/deployment.md);
2. the store is bound by documents written (each an insert or update with its index
   entries and its share of the journal): a shard (a replica set) writes ``W`` documents/s;
   reads and round trips are assumed to fit beside them (both are lower per message);
3. the sharded collections' writes spread evenly over the shards (hashed or hash-like
   keys: crm_store/sharding.py), while the unsharded ones — the event log and the counters,
   ``EVENTS_PER_MSG`` documents per message — all land on the primary shard, which also
   carries its 1/S share of the rest;
4. nothing else limits: network, the load balancer, the providers, the consumers of the
   feed; batches as large as the benchmark's.

So throughput(P, S) = min(P × 1000 / cpu_ms, W / (sharded_docs / S + unsharded_docs)).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RESULTS = Path(__file__).parent / "results" / "latest.json"
# Events per message: steady — message.attached; new lead — contact.created, lead.created,
# conversation.opened, message.attached (docs/events.md). Counters: one event-sequence
# $inc per routing batch (and one round-robin $inc per line and batch): about 2 / batch.
EVENTS_PER_MSG = {"steady": 1.0, "new_lead": 4.0}
COUNTER_DOCS_PER_BATCH = 2.0
# A MongoDB replica set primary writing small documents with w: majority, j: true (group
# commit), 8 vCPU and NVMe: an assumption, not a measurement here — set your own figure.
MONGODB_DOCS_PER_S = 10_000.0
PROCESSES = (1, 2, 4, 8, 16, 32)
SHARDS = (1, 2, 4, 8)


@dataclass(frozen=True, slots=True)
class Costs:
    """Per-message costs of one path (measured)."""

    cpu_ms: float  # the service's CPU per message
    docs: float  # documents the store writes per message
    unsharded_docs: float  # of those, on the primary shard only (events, counters)


def load_costs(path: Path) -> tuple[dict[str, Costs], str, float]:
    """Costs per path from a ``make bench`` result, its provenance, and the documents/s
    its store wrote while routing (the faster path: routed msgs/s × docs per message — a
    lower bound of what that store can write)."""
    data = json.loads(path.read_text())
    run = data["runs"][0]
    out: dict[str, Costs] = {}
    written = 0.0
    for p in ("steady", "new_lead"):
        c = run[p]["concurrent"]
        written = max(written, float(c["routed_per_s"]) * float(c["documents_written_per_msg"]))
        batch = max(1.0, float(c["batches"]["mean_size"]))
        unsharded = EVENTS_PER_MSG[p] + COUNTER_DOCS_PER_BATCH / batch
        docs = float(c["documents_written_per_msg"])
        out[p] = Costs(float(c["cpu_ms_per_msg"]["service"]), docs, min(docs, unsharded))
    code = data["machine"].get("git_commit") or "?"
    where = f"{path} ({data['generated_at']}, code {code})"
    return out, where, written


def mixed(costs: dict[str, Costs], new_share: float) -> Costs:
    s, n = costs["steady"], costs["new_lead"]

    def mix(a: float, b: float) -> float:
        return (1 - new_share) * a + new_share * b

    return Costs(
        mix(s.cpu_ms, n.cpu_ms), mix(s.docs, n.docs), mix(s.unsharded_docs, n.unsharded_docs)
    )


def throughput(c: Costs, processes: int, shards: int, docs_per_s: float) -> tuple[float, str]:
    """Messages/s and what limits them: ``service``, ``primary`` (the unsharded writes
    dominate the busiest shard) or ``shards``."""
    service = processes * 1000.0 / c.cpu_ms
    sharded = c.docs - c.unsharded_docs
    store = docs_per_s / (sharded / shards + c.unsharded_docs)
    if service <= store:
        return service, "service"
    return store, "primary" if c.unsharded_docs >= sharded / shards else "shards"


def table(c: Costs, docs_per_s: float) -> list[str]:
    mark = {"service": "s", "primary": "p", "shards": "d"}
    lines = ["processes " + "".join(f"{f'{s} shard' + ('s' if s > 1 else ''):>14}" for s in SHARDS)]
    for p in PROCESSES:
        cells = []
        for s in SHARDS:
            t, why = throughput(c, p, s, docs_per_s)
            cells.append(f"{t:>12,.0f} {mark[why]}")
        lines.append(f"{p:>9} " + "".join(cells))
    lines.append("(s: the service processes limit; d: the shards' writes limit; p: likewise, but")
    lines.append(" most of the busiest shard's load is the unsharded event log: shards help less)")
    return lines


def report(costs: dict[str, Costs], where: str, measured: float, new_share: float, w: float) -> str:
    c = mixed(costs, new_share)
    out = [f"inputs: {where}"]
    for p, k in costs.items():
        out.append(
            f"  {p:<9} service CPU {k.cpu_ms:.2f} ms/msg · store writes {k.docs:.2f} docs/msg "
            f"(unsharded {k.unsharded_docs:.2f})"
        )
    out.append(f"mix: {new_share:.0%} new leads → {c.cpu_ms:.2f} ms/msg, {c.docs:.2f} docs/msg")
    for label, docs_per_s in (
        (f"MongoDB shard at {w:,.0f} docs/s (assumed)", w),
        (f"a shard as fast as the benchmark's embedded store ({measured:,.0f} docs/s)", measured),
    ):
        out.append("")
        out.append(f"routed msgs/s — {label}:")
        out += table(c, docs_per_s)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shard_model", description=__doc__)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="a make bench JSON")
    p.add_argument("--new-share", type=float, default=0.2, help="share of new leads (0–1)")
    p.add_argument(
        "--shard-docs-per-s",
        type=float,
        default=MONGODB_DOCS_PER_S,
        help="documents one shard writes per second",
    )
    args = p.parse_args(argv)
    costs, where, measured = load_costs(args.results)
    print(report(costs, where, measured, args.new_share, args.shard_docs_per_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
