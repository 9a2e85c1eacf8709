"""E-mail parsing: ``python -m benchmarks.mime`` — the cost of ``channels.email.mime.parse_mail``.

Parses, in this process and one at a time, (1) three synthetic "typical" mails of about
50 KB — a plain-text reply with a quoted history and a 40 KB PDF, a text+HTML newsletter,
an HTML-only Outlook reply — and (2) every Chatwoot ``.eml`` fixture in
``tests/fixtures/email/chatwoot``. Each mail is parsed ``--repeat``
times; the table shows the median and p95 wall time per parse and the median CPU time
(``time.process_time``, less sensitive to other load on a shared machine). With ``--out``
the figures are also written as JSON.

Figures depend on the machine; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from benchmarks.mail import WORDS
from benchmarks.report import num, write_json
from channels.email.mime import parse_mail

CHATWOOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "email" / "chatwoot"


def _prose(rnd: random.Random, lines: int) -> str:
    return "\n".join(" ".join(rnd.choice(WORDS) for _ in range(12)) for _ in range(lines))


def synthetic() -> dict[str, bytes]:
    """Three mails of about 50 KB, the same every run."""
    rnd = random.Random(2024)
    mails: dict[str, bytes] = {}

    reply = EmailMessage()
    reply["From"] = "Ivan Petrov <ivan.petrov@example.ru>"
    reply["To"] = "Kitchen Sales <sales@kuhni.example>"
    reply["Subject"] = "Re: Kitchen order 1042"
    reply["Date"] = "Mon, 5 Feb 2024 11:03:27 +0300"
    reply["Message-ID"] = "<bench-reply@example.ru>"
    reply["In-Reply-To"] = "<order-1042-2@kuhni.example>"
    quoted = "\n".join(f"> {line}" for line in _prose(rnd, 60).split("\n"))
    reply.set_content(
        f"{_prose(rnd, 8)}\n\nOn Mon, 5 Feb 2024 at 10:15, Kitchen Sales "
        f"<sales@kuhni.example> wrote:\n\n{quoted}\n"
    )
    reply.add_attachment(
        b"%PDF-1.4\n" + rnd.randbytes(40_000),
        maintype="application",
        subtype="pdf",
        filename="Счёт 1042.pdf",
    )
    mails["reply + 40 KB PDF"] = reply.as_bytes()

    news = EmailMessage()
    news["From"] = "Furniture Weekly <news@furniture-weekly.example>"
    news["To"] = "sales@kuhni.example"
    news["Subject"] = "Furniture Weekly #12"
    news["Message-ID"] = "<bench-news@furniture-weekly.example>"
    news["List-Id"] = "<weekly.furniture-weekly.example>"
    body = _prose(rnd, 120)
    news.set_content(body)
    paragraphs = "".join(
        f'<tr><td style="padding:8px;font-family:Arial"><p>{line}</p>'
        f'<a href="https://furniture-weekly.example/a/{i}">read more</a></td></tr>'
        for i, line in enumerate(body.split("\n"))
    )
    news.add_alternative(f"<html><body><table>{paragraphs}</table></body></html>", "html")
    mails["text + HTML newsletter"] = news.as_bytes()

    outlook = EmailMessage()
    outlook["From"] = "Sergey Volkov <s.volkov@corp.example>"
    outlook["To"] = "Kitchen Sales <sales@kuhni.example>"
    outlook["Subject"] = "RE: Kitchen order 1042"
    outlook["Message-ID"] = "<bench-outlook@corp.example>"
    history = "".join(
        f'<div style="font-family:Calibri,sans-serif;font-size:11pt">{line}</div>'
        for line in _prose(rnd, 250).split("\n")
    )
    outlook.set_content(
        '<html><body><div style="font-family:Calibri">Thursday works for us.</div>'
        '<div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> Kitchen '
        "Sales<br><b>Sent:</b> Friday<br><b>To:</b> Sergey<br><b>Subject:</b> Order</div>"
        f"{history}</body></html>",
        subtype="html",
    )
    mails["HTML-only Outlook reply"] = outlook.as_bytes()
    return mails


def measure(raw: bytes, repeat: int) -> dict[str, float]:
    parse_mail(raw)  # warm up
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        parse_mail(raw)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    wall.sort()
    return {
        "bytes": len(raw),
        "median_ms": statistics.median(wall),
        "p95_ms": wall[min(len(wall) - 1, int(len(wall) * 0.95))],
        "cpu_median_ms": statistics.median(cpu),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mime", description=__doc__)
    p.add_argument("--repeat", type=int, default=200, help="parses per mail (default 200)")
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    repeat = max(1, int(args.repeat))

    inputs = synthetic()
    if CHATWOOT.is_dir():
        inputs.update(
            {f"chatwoot/{f.name}": f.read_bytes() for f in sorted(CHATWOOT.glob("*.eml"))}
        )
    results: dict[str, dict[str, float]] = {}
    print(f"{'mail':48} {'bytes':>8} {'median':>9} {'p95':>9} {'cpu':>9}")
    for name, raw in inputs.items():
        r = measure(raw, repeat)
        results[name] = r
        print(
            f"{name:48} {int(r['bytes']):>8} {num(r['median_ms']):>7}ms {num(r['p95_ms']):>7}ms "
            f"{num(r['cpu_median_ms']):>7}ms"
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(f"\n{repeat} parses per mail; Python {platform.python_version()}; load {load[0]:.2f}")
    if args.out:
        result: dict[str, Any] = {
            "repeat": repeat,
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "loadavg_1m": load[0],
            },
            "mails": results,
        }
        write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
