"""``python -m benchmarks`` — see docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks import automation, calls, mail, mime, mix, reports, webchat, webhooks
from benchmarks.report import table, write_json
from benchmarks.run import Options, quiet_logging, run_all

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "End-to-end omniroute benchmark: an embedded file-backed store, the service in "
            "this process, a load generator in another. Prints a table and writes JSON."
        ),
    )
    p.add_argument("--quick", action="store_true", help="a short run (20–30 s)")
    p.add_argument("--messages", "-n", type=int, help="messages per path at concurrency C")
    p.add_argument("--concurrency", "-c", type=int, help="concurrent POSTs (C)")
    p.add_argument(
        "--sequential-messages", type=int, help="lockstep messages per path at concurrency 1"
    )
    p.add_argument("--senders", type=int, help="conversations of the steady-state path (K)")
    p.add_argument("--raw-seconds", type=float, help="seconds per raw insert measurement")
    p.add_argument("--runs", type=int, default=1, help="repeat everything; report medians")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file")
    p.add_argument(
        "--webhooks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="afterwards, the webhook delivery benchmark (python -m benchmarks.webhooks) in "
        "its quick form unless sized below; its own table and JSON (default: on)",
    )
    webhooks.add_arguments(p, prefix="webhooks-")
    p.add_argument(
        "--webhooks-out", type=Path, default=webhooks.DEFAULT_OUT, help="its JSON output file"
    )
    p.add_argument(
        "--calls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="afterwards, the telephony benchmark (python -m benchmarks.calls) in its quick "
        "form unless sized below — 100k contacts, call reports against 1 and 3 service "
        "processes; its own table and JSON (default: on)",
    )
    calls.add_arguments(p, prefix="calls-")
    p.add_argument("--calls-out", type=Path, default=calls.DEFAULT_OUT, help="its JSON output file")
    for name, what in (
        ("automation", "the automation benchmark (python -m benchmarks.automation --quick)"),
        ("mail", "the e-mail intake benchmark (python -m benchmarks.mail --quick; needs Dovecot)"),
        ("mime", "the e-mail parser benchmark (python -m benchmarks.mime --repeat 20)"),
        (
            "webchat",
            "the website chat benchmark: the widget's gzipped size, 50 concurrent visitors' "
            "p50/p99 both ways (python -m benchmarks.webchat --visitors 50)",
        ),
        (
            "reports",
            "the reports benchmark at a tenth of full scale: 100k messages, each report's "
            "latency and the webhook p99 beside it (python -m benchmarks.reports --scale 0.1)",
        ),
        (
            "mix",
            "the mixed-load benchmark over every webhook channel, 1 and 3 service processes, "
            "10k and 100k contacts (python -m benchmarks.mix --quick; ~10 min)",
        ),
    ):
        p.add_argument(
            f"--{name}",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=f"afterwards, {what} (default: on)",
        )
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)

    def pick(value: int | float | None, default: int | float, quick_default: int | float) -> float:
        return value if value is not None else (quick_default if quick else default)

    opts = Options(
        messages=int(pick(args.messages, 500, 150)),
        concurrency=int(pick(args.concurrency, 32, 32)),
        sequential_messages=int(pick(args.sequential_messages, 50, 20)),
        steady_senders=int(pick(args.senders, 200, 50)),
        raw_seconds=float(pick(args.raw_seconds, 2.0, 1.0)),
        runs=max(1, int(args.runs)),
        pin=not args.no_pin,
        quick=quick,
    )
    if min(opts.messages, opts.concurrency, opts.sequential_messages, opts.steady_senders) < 1:
        raise SystemExit("--messages, --concurrency, --sequential-messages, --senders must be ≥ 1")
    return opts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = options(args)
    log_path = Path(tempfile.gettempdir()) / "omniroute-bench-service.log"
    quiet_logging(log_path)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    progress(f"service log: {log_path}")
    cpus = webhooks.allowed_cpus()  # before the run pins this process's threads
    result = asyncio.run(run_all(opts, progress))
    write_json(result, args.out)
    print(table(result))
    print(f"\nJSON: {args.out}")
    correct = True
    if args.webhooks:
        # The quick form keeps `make bench` short; --webhooks-* options size it.
        hooks = webhooks.options_from(
            args, quick=True, runs=opts.runs, pin=opts.pin, prefix="webhooks-"
        )
        print()
        correct = webhooks.run_and_report(hooks, args.webhooks_out, cpus)["correct"]
    if args.calls:
        phones = calls.options_from(args, quick=True, runs=opts.runs, pin=opts.pin, prefix="calls-")
        print()
        correct = calls.run_and_report(phones, args.calls_out, cpus)["correct"] and correct
    # The quick forms of the others; run each module directly to size it.
    later: list[tuple[bool, Callable[[list[str]], int], list[str]]] = [
        (args.automation, automation.main, ["--quick"]),
        (args.mail, mail.main, ["--quick"]),
        (args.mime, mime.main, ["--repeat", "20"]),
        (args.webchat, webchat.main, ["--visitors", "50"]),
        (args.reports, reports.main, ["--scale", "0.1"]),
        (args.mix, mix.main, ["--quick"]),
    ]
    for enabled, run, argv_ in later:
        if enabled:
            print()
            correct = run(argv_) == 0 and correct
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
