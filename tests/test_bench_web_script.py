"""scripts/bench_web.py runs end to end on a small store and ends with its JSON figures (the
benchmark itself is run by hand: docs/web-performance.md; no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "bench_web.py"


def test_the_benchmark_runs_and_prints_every_figure_last() -> None:
    args = ["--tasks", "200", "--services", "4", "--seconds", "0.5", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["tasks"] == 200
    assert figures["per_second"] > 0 and figures["ceiling_per_second"] > 0
    assert figures["p95_ms"] >= figures["p50_ms"] > 0
    assert 0 <= figures["shared_reads"] <= 1
    assert figures["unshared"]["store_commands_per_request"] >= 1, "every request reads"
    assert set(figures["by_kind"]) == {
        "assignee_by_status", "next_page", "recent", "search", "service_recent",
        "status_by_name", "unassigned_by_id",
    }  # fmt: skip
