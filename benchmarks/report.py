"""The readable table and the JSON file of a benchmark result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` atomically (a ``.tmp`` beside it, then rename): stable, indented."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, path)


def num(v: float) -> str:
    """A figure with as many decimals as its size deserves."""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(result: dict[str, Any]) -> str:
    m: dict[str, float] = result["median"]
    spread: dict[str, list[float]] | None = result["spread"]
    o = result["options"]
    mach = result["machine"]
    runs = result["runs"]
    c = o["concurrency"]

    def f(key: str, unit: str = "") -> str:
        text = num(m[key]) + unit
        if spread:
            lo, hi = spread[key]
            text += f" [{num(lo)}–{num(hi)}]"
        return text

    lines: list[str] = []
    add = lines.append
    aff = mach["affinity"]
    add(
        f"omniroute benchmark · {result['generated_at']} · {mach['cpu_count']} CPU "
        f"({mach['cpu_model'] or 'unknown CPU'}) · Python {mach['python']} · "
        f"pymongo {mach['pymongo']} · SecantusDB {mach['secantusdb']}"
    )
    if mach.get("git_commit"):
        dirty = " + uncommitted changes" if mach.get("git_uncommitted_changes") else ""
        add(f"code: {mach['git_commit']}{dirty}")
    add(
        "store: embedded SecantusDB, file-backed in a temp dir, --sync-on-commit, "
        "w=majority j=true, fresh per run"
    )
    if aff["pinned"]:
        add(
            f"CPUs: service {aff['service']}, load generator {aff['load_generator']}, "
            f"store {runs[0]['store_affinity']} (unpinned)"
        )
    else:
        add("CPUs: not pinned")
    n_runs = o["runs"]
    add(
        f"{n_runs} run(s){' — medians [min–max]' if n_runs > 1 else ''}; "
        f"N={o['messages']} messages per path at concurrency C={c}, "
        f"{o['sequential_messages']} lockstep messages at concurrency 1, "
        f"{o['steady_senders']} steady-state conversations"
    )
    add("")
    raw = runs[0]["raw_insert"]
    add(
        f"Store raw insert_one of a stored intake record ({raw['doc_bytes']} bytes BSON), "
        "fresh collection"
    )
    add(f"  {'sequential':<36}{f('raw_sequential_docs_per_s', ' docs/s')}")
    add(f"  {f'{c} concurrent tasks':<36}{f('raw_concurrent_docs_per_s', ' docs/s')}")
    cpu = raw["store_cpu_ms_per_doc"]
    add(
        f"  (run 1: with intake's 2 secondary indexes "
        f"{num(raw['indexed_sequential_docs_per_s'])} seq / "
        f"{num(raw['indexed_concurrent_docs_per_s'])} conc docs/s; "
        f"store CPU {cpu.get('raw_seq', 0):.2f} ms per sequential insert)"
    )
    add("")
    w = 24
    add(f"{'':<38}{'new lead':<{w}}{'steady state'}")

    def row(label: str, key: str, unit: str = "") -> None:
        add(f"  {label:<36}{f('new_lead_' + key, unit):<{w}}{f('steady_' + key, unit)}")

    row(f"routed msgs/s (C={c})", "routed_per_s")
    row(f"acknowledged msgs/s (C={c})", "acked_per_s")
    row("× raw sequential insert rate", "ratio_to_raw_sequential")
    row("× raw concurrent insert rate", "ratio_to_raw_concurrent")
    row("ack latency p50 (ms)", "ack_p50_ms")
    row("ack latency p95 (ms)", "ack_p95_ms")
    row("ack latency p99 (ms)", "ack_p99_ms")
    row(f"round trips / msg (C={c})", "round_trips_per_msg")
    row("round trips / msg (c=1, unbatched)", "round_trips_per_msg_c1")
    row(f"documents written / msg (C={c})", "docs_written_per_msg")
    row(f"mean routing batch (C={c})", "mean_batch")
    row("service CPU ms / msg", "service_cpu_ms_per_msg")
    row("store CPU ms / msg", "store_cpu_ms_per_msg")
    row("c=1: POST → routed p50 (ms)", "c1_post_to_routed_p50_ms")
    row("c=1: routed msgs/s (lockstep)", "c1_routed_per_s")
    row("other processes' CPU share", "other_cpu_share")
    add("")
    add(f"Round trips per message by command (run 1, C={c}):")
    for path, phase, label in (
        ("new_lead", "concurrent", f"new lead C={c}"),
        ("steady", "concurrent", f"steady C={c}"),
        ("new_lead", "sequential", "new lead c=1"),
        ("steady", "sequential", "steady c=1"),
    ):
        p = runs[0][path][phase]
        split = p["round_trips_per_msg_by_origin"]
        recovery = f" + recovery {split['recovery']:.2f}" if split.get("recovery") else ""
        add(
            f"  {label}: {p['round_trips_per_msg']:.2f} = ack path {split['http']:.2f} "
            f"+ routing {split['routing']:.2f}{recovery}"
        )
        add("      " + " · ".join(f"{k} {v:.2f}" for k, v in p["commands_per_msg"].items()))
    bg: dict[str, int] = {}
    for path in ("new_lead", "steady"):
        for phase in ("sequential", "concurrent"):
            for k, v in runs[0][path][phase]["background_commands"].items():
                bg[k] = bg.get(k, 0) + v
    if bg:
        add(
            "  not counted (background loops, during the measured phases): "
            + " · ".join(f"{k} ×{v}" for k, v in sorted(bg.items()))
        )
    add("")
    add(
        f"Service process RSS: peak (VmHWM) {f('service_rss_peak_mib', ' MiB')}; "
        f"store process RSS {f('store_rss_mib', ' MiB')}"
    )
    add("")
    add("Targets (medians):")
    for t in result["targets"]:
        verdict = "PASS" if t["pass"] else "MISS"
        add(f"  {verdict}  {t['target']}: {num(t['value'])} (limit {num(t['limit'])})")
    problems = []
    expected_rule = {"new_lead": "new_lead", "steady": "conversation"}
    for i, r in enumerate(runs, 1):
        for path in ("new_lead", "steady"):
            for phase in ("sequential", "concurrent"):
                p = r[path][phase]
                if p["ok"] != p["messages"] or p["intake_pending_after"]:
                    problems.append(
                        f"run {i} {path}/{phase}: {p['ok']}/{p['messages']} acknowledged, "
                        f"statuses {p['statuses']}, {p['intake_pending_after']} still pending"
                    )
                if p["routed_again"]:
                    problems.append(
                        f"run {i} {path}/{phase}: {p['routed_again']} message(s) routed twice — "
                        "their intake lease ran out while they waited in the routing queue, "
                        "and the recovery sweep claimed them again"
                    )
                if p["rules"] != {expected_rule[path]: p["ok"]}:
                    problems.append(f"run {i} {path}/{phase}: routed by rule {p['rules']}")
                if p["other_cpu_share"] > 0.1:
                    problems.append(
                        f"run {i} {path}/{phase}: other processes used "
                        f"{p['other_cpu_share']:.0%} of the machine's CPU — figures are noisy"
                    )
    if problems:
        add("")
        add("PROBLEMS:")
        lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)
