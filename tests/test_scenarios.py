"""The scenario runner (automation/scenario/, `omniroute scenario run`): each seed's
scenario passes against its own configuration; expectations can fail and say why; a
broken file is refused with where it is broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from automation.scenario import runner
from config.loader import load_config
from config.settings import DEFAULT_CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "scenarios"
SEED_SCENARIOS = sorted(DEFAULT_CONFIG_DIR.glob("**/scenario.yaml"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", "scenario", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("path", SEED_SCENARIOS, ids=lambda p: p.parent.name)
def test_seed_scenario_passes(path: Path) -> None:
    done = cli(str(path))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " 0 failed" in done.stdout
    assert "[FAIL]" not in done.stdout


async def test_timeline_and_expectations() -> None:
    lines: list[str] = []
    result = await runner.run(
        FIXTURES / "furniture_lead.yaml", load_config(DEFAULT_CONFIG_DIR), lines.append
    )
    assert result.ok, "\n".join(lines)
    assert result.passed == 4
    text = "\n".join(lines)
    # The robot's notification fires at its due time, not when the clock stops.
    assert "2025-04-29 Tue 12:00    notify Ivan Petrov: «Лид «Ivan — Site request form»" in text
    assert "task «Указать тип заказа» for Anna Smirnova, due 2025-04-29 Tue 16:00" in text
    assert "new deal for ivan in orders/estimate" in text


async def test_a_wrong_expectation_fails_and_says_what_was_found(tmp_path: Path) -> None:
    text = (FIXTURES / "furniture_lead.yaml").read_text(encoding="utf-8")
    wrong = text.replace('due: "2025-04-29 16:00"', 'due: "2025-04-29 17:00"').replace(
        "stage: estimate", "stage: production"
    )
    path = tmp_path / "wrong.yaml"
    path.write_text(wrong, encoding="utf-8")
    lines: list[str] = []
    result = await runner.run(path, load_config(DEFAULT_CONFIG_DIR), lines.append)
    assert not result.ok
    assert result.failed == 2
    failures = [line for line in lines if "[FAIL]" in line]
    assert any("found: due ['2025-04-29 16:00']" in f for f in failures), failures
    assert any("'stage': 'estimate'" in f for f in failures), failures
    done = cli(str(path))
    assert done.returncode == 1
    assert "2 failed" in done.stdout


def test_a_broken_file_is_refused_with_where() -> None:
    done = cli(str(FIXTURES / "broken.yaml"))
    assert done.returncode == 2
    assert "broken.yaml: not a scenario" in done.stderr
    assert "'olga' is not in people" in done.stderr or "name exactly one of" in done.stderr
