"""``courthub bench report``: result parsing, the markers rewrite, failures, and one real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import report
from bench.report import (
    BEGIN_MARKER,
    END_MARKER,
    BenchSpec,
    ReportError,
    ReportOptions,
    last_json,
    replace_between_markers,
    run_command,
    run_report,
)

REPO = Path(__file__).resolve().parents[2]
HAND_WRITTEN = """# Benchmarks

Timing targets live here. | pipes | and `code`.

## Ingest

| figure | target |
|---|---|
| sustained | ≥ 20,000 msg/s |
"""


def _outside(text: str) -> str:
    """The file without the generated block (and the blank line the insertion added)."""
    begin, end = text.index(BEGIN_MARKER), text.index(END_MARKER) + len(END_MARKER)
    return text[:begin] + text[end:].lstrip("\n")


# --- the result of a bench: its last JSON line -------------------------------------------------
def test_last_json_is_the_last_line_that_parses() -> None:
    stdout = "\n".join(
        [
            "figure   target   measured",
            '{"early": 1}',
            "throughput  ≥ 100  123",
            '{"result": {"p99_ms": 4.2}}',
            "INFO bench: shutting down {not json}",
            "[1, 2, 3]",
            "",
        ]
    )
    assert last_json(stdout) == {"result": {"p99_ms": 4.2}}


def test_last_json_reads_an_indented_object() -> None:
    # `courthub bench ws` prints json.dumps(result, indent=2)
    result = {"bench": "ws_fanout", "best": {"deliveries_per_s": 800701}, "throughput": [1, 2]}
    stdout = "connecting clients\n" + json.dumps(result, indent=2) + "\n"
    assert last_json(stdout) == result


def test_last_json_none_when_nothing_parses() -> None:
    assert last_json("") is None
    assert last_json("a table\n{half a json\n") is None


# --- the markers ---------------------------------------------------------------------------------
def test_markers_inserted_after_the_title_and_the_rest_untouched() -> None:
    out = replace_between_markers(HAND_WRITTEN, "| generated | table |\n")
    title, rest = HAND_WRITTEN.split("\n", 1)
    assert out.startswith(f"{title}\n\n{BEGIN_MARKER}\n| generated | table |\n{END_MARKER}\n\n")
    assert out.endswith(rest.lstrip("\n"))
    # taking the block out again gives back the hand-written file byte for byte
    assert _outside(out) == HAND_WRITTEN


def test_rewrite_replaces_only_the_block_and_is_idempotent() -> None:
    first = replace_between_markers(HAND_WRITTEN, "run 1\n")
    second = replace_between_markers(first, "run 2, longer\nwith two lines\n")
    assert "run 1" not in second
    assert second == first.replace("run 1", "run 2, longer\nwith two lines")
    assert replace_between_markers(second, "run 2, longer\nwith two lines\n") == second
    # text the humans added above and below the block later stays too
    edited = second.replace("# Benchmarks\n", "# Benchmarks\nintro line\n") + "\nnew notes\n"
    again = replace_between_markers(edited, "run 3\n")
    assert again.startswith("# Benchmarks\nintro line\n") and again.endswith("\nnew notes\n")
    assert "run 3" in again and "run 2" not in again


def test_file_without_title_gets_the_block_on_top() -> None:
    out = replace_between_markers("just notes\n", "table\n")
    assert out == f"{BEGIN_MARKER}\ntable\n{END_MARKER}\n\njust notes\n"


@pytest.mark.parametrize(
    "text",
    [
        f"# B\n{BEGIN_MARKER}\nno end\n",
        f"# B\n{END_MARKER}\nx\n{BEGIN_MARKER}\n",
        f"# B\n{BEGIN_MARKER}\n{END_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",
    ],
)
def test_broken_markers_are_refused(text: str) -> None:
    with pytest.raises(ReportError):
        replace_between_markers(text, "x\n")


# --- failures ------------------------------------------------------------------------------------
def _fake_courthub(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "fake_courthub.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def _doc(tmp_path: Path) -> Path:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(HAND_WRITTEN)
    return doc


def test_failed_bench_is_reported_and_the_report_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_courthub(
        tmp_path,
        "import sys\n"
        "name = sys.argv[2]\n"
        "if name == 'calls':\n"
        "    print('half a table')\n"
        "    sys.stderr.write('Traceback (most recent call last):\\nRuntimeError: panel 3 gone\\n')\n"
        "    sys.exit(3)\n"
        'print(\'{"unexpected": "shape"}\')\n',
    )
    monkeypatch.setattr(report, "courthub_command", lambda: fake)
    doc, out = _doc(tmp_path), tmp_path / "results.json"
    options = ReportOptions(only="calls,ws", doc=doc, json_out=out, ceilings=False)
    lines: list[str] = []

    assert run_report(options, echo=lines.append) == 1

    text = doc.read_text()
    block = text[text.index(BEGIN_MARKER) : text.index(END_MARKER)]
    assert "| hall calls | `courthub bench calls` |" in block
    assert "exited with code 3" in block and "**FAILED**" in block
    assert "RuntimeError: panel 3 gone" in block  # the stderr tail
    # ws ran but printed a JSON without its figures: reported, not a crash
    assert "not the expected shape" in block
    assert _outside(text) == HAND_WRITTEN
    raw = json.loads(out.read_text())
    assert raw["runs"]["calls"]["ok"] is False
    assert raw["runs"]["calls"]["returncode"] == 3
    assert raw["runs"]["ws"]["result"] == {"unexpected": "shape"}
    assert any("calls" in line and "exited with code 3" in line for line in lines)


def test_timed_out_bench_is_ended_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # the bench starts a child of its own (as benches start brokers and cameras), then hangs
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('working', flush=True)\n"
        "time.sleep(600)\n"
    )
    result = run_command("hang", [sys.executable, "-c", code], timeout_s=3)
    assert not result.ok
    assert result.error == "timed out after 3 s"
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the bench's own child outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_optional_bench_absent_is_reported_as_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = BenchSpec(
        name="telemetry",
        area="telemetry",
        args=(),
        quick_args=(),
        timeout_s=10,
        quick_timeout_s=10,
        module="bench.no_such_bench_module",
        optional=True,
    )
    monkeypatch.setattr(report, "BENCHES", (absent,))
    doc, out = _doc(tmp_path), tmp_path / "results.json"
    options = ReportOptions(only="telemetry", doc=doc, json_out=out)
    assert run_report(options, echo=lambda _: None) == 0
    assert "not in this tree (bench.no_such_bench_module" in doc.read_text()


def test_unknown_bench_name_is_refused(tmp_path: Path) -> None:
    options = ReportOptions(only="ingest,nope", doc=_doc(tmp_path), json_out=tmp_path / "r.json")
    with pytest.raises(ReportError, match="nope"):
        run_report(options, echo=lambda _: None)


# --- one real run --------------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_calls_run_end_to_end(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    original = (REPO / "docs" / "BENCHMARKS.md").read_text()
    doc.write_text(original)
    out = tmp_path / "bench-results.json"
    courthub = Path(sys.executable).parent / "courthub"
    command = [str(courthub)] if courthub.exists() else [sys.executable, "-m", "hub.cli"]
    args = ["bench", "report", "--quick", "--only", "calls", "--doc", str(doc)]
    done = subprocess.run(
        [*command, *args, "--json-out", str(out)],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = doc.read_text()
    begin, end = text.index(BEGIN_MARKER), text.index(END_MARKER)
    block = text[begin:end]
    assert "**Machine:**" in block and "cores" in block and "Load average" in block
    assert "commit `" in block and "**quick**" in block
    rows = [line for line in block.splitlines() if line.startswith("| hall calls |")]
    assert len(rows) == 2, block
    assert all("raw show_text exchange" in row for row in rows)
    assert all(row.rstrip(" |").endswith(("PASS", "**FAIL**")) for row in rows)
    # everything hand-written is still there, unchanged (the repo's doc may already hold a block)
    assert _outside(text) == (_outside(original) if BEGIN_MARKER in original else original)
    raw = json.loads(out.read_text())
    assert raw["runs"]["calls"]["ok"] is True
    assert raw["runs"]["calls"]["result"]["raw_show_text"]["exchanges"] > 0
    assert raw["quick"] is True and set(raw["runs"]) == {"calls"}


# --- telemetry: the flood's latency is reported, the paced run's judged ------------------------
def _telemetry_result(rate: float, p99_ms: float, embedded_per_s: float) -> dict[str, object]:
    store = {"points": 600_000, "dropped": 0, "complete": True}
    return {
        "options": {"devices": 100, "rate": rate},
        "ceiling": {"msg_per_s": 100_000},
        "targets": {"points_per_s": 20_000, "api_p99_ms": 100.0},
        "embedded": {**store, "points_per_s": embedded_per_s},
        "victoriametrics": {**store, "points_per_s": 21_500},
        "api": {
            "route": "GET /api/v1/stats (bearer token)",
            "requests": 300,
            "failures": 0,
            "idle_p50_ms": 1.5,
            "p50_ms": 3.0,
            "p99_ms": p99_ms,
            "hub_loop_lag_p99_ms": 30.0,
        },
    }


def test_telemetry_flood_latency_is_reported_not_judged() -> None:
    rows = report.rows_telemetry(_telemetry_result(0, 180.0, 23_000), None)
    assert [r.verdict for r in rows] == ["PASS", "PASS", ""]
    assert "180" in rows[2].measured and "paced run" in rows[2].target


def test_telemetry_paced_run_judges_stores_and_latency() -> None:
    good = report.rows_telemetry_paced(_telemetry_result(22_000, 40.0, 20_900), None)
    assert [r.verdict for r in good] == ["PASS", "PASS", "PASS"]
    assert "22,000 msg/s" in good[2].figure
    slow_api = report.rows_telemetry_paced(_telemetry_result(22_000, 140.0, 20_900), None)
    assert slow_api[2].verdict == "**FAIL**"
    behind = report.rows_telemetry_paced(_telemetry_result(22_000, 40.0, 18_000), None)
    assert behind[0].verdict == "**FAIL**"


def test_paced_telemetry_runs_the_telemetry_command_with_a_rate() -> None:
    spec = next(s for s in report.BENCHES if s.name == "telemetry-paced")
    assert spec.invocation.startswith("courthub bench telemetry --rate ")
    assert report.EXTRACTORS["telemetry-paced"] is report.rows_telemetry_paced
