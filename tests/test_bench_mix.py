"""The mixed-load benchmark's own arithmetic (benchmarks/mix.py): the figures it prints
are only as good as these."""

from __future__ import annotations

from collections import Counter

from benchmarks.mix import BAD_EVERY, bucket_quantiles, with_invalid
from benchmarks.payloads import MixGenerator


def test_quantiles_come_from_the_observations_between_two_scrapes() -> None:
    # Cumulative counts as Prometheus exposes them: 10 observations before the phase,
    # then 100 more — 50 under 5 ms, 45 more under 50 ms, 4 under 100 ms, 1 above 1 s.
    before = {0.005: 10.0, 0.05: 10.0, 0.1: 10.0, 1.0: 10.0, float("inf"): 10.0}
    after = {0.005: 60.0, 0.05: 105.0, 0.1: 109.0, 1.0: 109.0, float("inf"): 110.0}
    got = bucket_quantiles(before, after)
    assert got == {"count": 100.0, "p50_le_ms": 5.0, "p95_le_ms": 50.0, "p99_le_ms": 100.0}


def test_a_tail_past_the_last_bound_has_no_upper_bound() -> None:
    after = {0.001: 90.0, 0.01: 98.0, float("inf"): 100.0}
    got = bucket_quantiles({}, after)
    assert (got["p50_le_ms"], got["p95_le_ms"], got["p99_le_ms"]) == (1.0, 10.0, None)
    assert bucket_quantiles(after, after)["p50_le_ms"] is None  # nothing observed


def test_bad_traffic_is_one_request_in_five_of_every_kind() -> None:
    valid = MixGenerator(seeded=1000).requests(400)
    mixed = with_invalid(valid, BAD_EVERY)
    bad = [r for r in mixed if r.kind == "invalid"]
    assert (len(mixed), len(bad)) == (500, 100)
    assert [r for r in mixed if r.kind != "invalid"] == valid  # order kept, none lost
    assert all(mixed[i].kind == "invalid" for i in range(BAD_EVERY - 1, 500, BAD_EVERY))
    # Every way of being refused in turn: oversize bodies, broken JSON, wrong credentials
    # over every channel's authentication (VK's secret in the body included).
    sizes = Counter(len(r.body) > 1_000_000 for r in bad)
    assert (sizes[True], sizes[False]) == (20, 80)
    assert {r.channel for r in bad} == {
        "api",
        "telegram",
        "whatsapp",
        "viber",
        "pbx",
        "avito",
        "vk",
    }
    assert len({r.body for r in bad}) == len(bad)  # no two alike
