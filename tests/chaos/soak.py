"""Soak: the chaos court with no faults for ``SOAK_MINUTES`` (default 60), then a table of every
process's memory (RSS) and open file descriptors after warm-up versus at the end.

    SOAK_MINUTES=3 .venv/bin/python tests/chaos/soak.py [--work DIR]      (``make soak``)

Processes: the hub and its children (Mosquitto, ffmpeg), every agent, VictoriaMetrics, and this
process (the simulated devices). Samples every ``SOAK_SAMPLE_S`` seconds (default 10) from
/proc. Warm-up is the first fifth of the run (at least one minute). Verdict per process: RSS
growth ≤ 20 % (median of the last three samples vs median of the last three warm-up samples)
and no leaked descriptors (fewest in the last three samples minus most during warm-up > 0;
VictoriaMetrics' own data files are not counted: see :func:`rss_and_fds`).
A process that restarted (new pid) is reported, not judged. Exit 1 when a target is missed.

VictoriaMetrics is judged like every other process; below the table its own ``/metrics`` (sampled
with the others) split its RSS into anonymous and file-backed memory beside its Go heap in use and
the sizes of its caches, so a growth can be traced to what holds it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_court import ChaosCourt

RSS_GROWTH_MAX = 0.20
VM_NAME = "victoria-metrics"
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Series:
    """Samples of one process: (seconds since start, RSS bytes, open fds)."""

    name: str
    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)


def rss_and_fds(pid: int, storage: Path | None = None) -> tuple[int, int] | None:
    """RSS in bytes and open descriptors of ``pid`` (None once it is gone).

    ``storage``: descriptors of files under it are not counted. VictoriaMetrics keeps its data
    parts open and their number swings with flushes and merges (28-49 descriptors within
    minutes, files under its data path 19-40, sockets constant: measured in session 6), which
    is not a leak; its sockets, pipes and other files still are judged."""
    try:
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        fds = 0
        prefix = f"{storage.resolve()}/" if storage is not None else ""
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if prefix:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:  # closed meanwhile
                    continue
                if target.startswith(prefix):
                    continue
            fds += 1
    except (OSError, IndexError, ValueError):
        return None
    return rss_pages * PAGE, fds


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, whichever of its threads started them (Mosquitto is started
    from a worker thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


#: VictoriaMetrics' own gauges printed under the table: (label, metric name prefix); a prefix
#: with several series (one per cache type) is summed
VM_GAUGES: tuple[tuple[str, str], ...] = (
    ("RSS anonymous", "process_resident_memory_anon_bytes"),
    ("RSS file-backed", "process_resident_memory_file_bytes"),
    ("Go heap in use", "go_memstats_heap_inuse_bytes"),
    ("caches (allocated)", "vm_cache_size_bytes"),
)


def vm_gauges(url: str) -> dict[str, float] | None:
    """The :data:`VM_GAUGES` of the VictoriaMetrics at ``url`` from its ``/metrics`` (None when it
    does not answer). Blocking: call it from a thread."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    found = dict.fromkeys((name for _, name in VM_GAUGES), 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        base = name.partition("{")[0]
        if base in found:
            found[base] += float(value)
    return found


def vm_gauges_row(samples: list[tuple[float, dict[str, float]]], warm_end_s: float) -> str:
    """VictoriaMetrics' gauges after warm-up → at the end (medians of three samples, as the
    verdict takes RSS)."""
    warm = [g for t, g in samples if t <= warm_end_s][-3:]
    late = [g for t, g in samples[-3:] if t > warm_end_s]
    if len(warm) < 3 or len(late) < 3:
        return "victoria-metrics /metrics: too few samples"
    parts = [
        f"{label} {statistics.median(g[name] for g in warm) / 2**20:.1f} → "
        f"{statistics.median(g[name] for g in late) / 2**20:.1f} MB"
        for label, name in VM_GAUGES
    ]
    return "victoria-metrics /metrics: " + ", ".join(parts)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def processes(court: ChaosCourt) -> dict[str, int]:
    """name → pid of every process of the court right now."""
    found = {"runner (simulated devices)": os.getpid()}
    if court.hub_proc is not None and court.hub_proc.poll() is None:
        found["hub"] = court.hub_proc.pid
        for child in children(court.hub_proc.pid):
            found[f"hub/{comm(child)}-{child}"] = child
    for name, agent in court.court.agents.items():
        if agent.proc is not None and agent.proc.returncode is None:
            found[f"agent {name}"] = agent.proc.pid
    vm = getattr(court.vm, "_proc", None)
    if vm is not None and vm.poll() is None:
        found[VM_NAME] = vm.pid
    return found


def verdict(series: Series, warm_end_s: float) -> tuple[bool, str]:
    """Whether ``series`` meets the targets, and its table row."""
    warm = [s for s in series.samples if s[0] <= warm_end_s]
    late = series.samples[-3:]
    if len(warm) < 3 or len(late) < 3 or late[0][0] <= warm_end_s:
        return True, f"{series.name:<34} pid {series.pid:<7} too few samples (restarted?)"
    rss_warm = statistics.median(s[1] for s in warm[-3:])
    rss_end = statistics.median(s[1] for s in late)
    growth = rss_end / rss_warm - 1
    leaked = min(s[2] for s in late) - max(s[2] for s in warm)
    ok = growth <= RSS_GROWTH_MAX and leaked <= 0
    row = (
        f"{series.name:<34} pid {series.pid:<7} RSS {rss_warm / 2**20:7.1f} → "
        f"{rss_end / 2**20:7.1f} MB ({growth:+6.1%})  fds {max(s[2] for s in warm):4d} → "
        f"{min(s[2] for s in late):4d} (leaked {max(leaked, 0)})  {'ok' if ok else 'MISSED'}"
    )
    return ok, row


async def soak(work: Path, minutes: float, sample_s: float) -> int:
    court = ChaosCourt(work)
    await court.start()
    start = time.monotonic()
    duration = minutes * 60
    warm_end = max(60.0, duration / 5)
    series: dict[tuple[str, int], Series] = {}
    vm_samples: list[tuple[float, dict[str, float]]] = []
    try:
        while (now := time.monotonic() - start) < duration:
            for name, pid in processes(court).items():
                storage = court.vm.data_dir if name == VM_NAME else None
                sample = rss_and_fds(pid, storage)
                if sample is not None:
                    key = (name, pid)
                    series.setdefault(key, Series(name, pid)).samples.append((now, *sample))
            gauges = await asyncio.to_thread(vm_gauges, court.vm.url)
            if gauges is not None:
                vm_samples.append((now, gauges))
            await asyncio.sleep(sample_s)
    finally:
        await court.stop()
    print(f"soak: {minutes:g} min, warm-up {warm_end:.0f} s, sample every {sample_s:g} s")
    results = [verdict(s, warm_end) for s in series.values()]
    print("\n".join(row for _, row in results))
    print(vm_gauges_row(vm_samples, warm_end))
    ok = all(good for good, _ in results)
    print(f"soak {'OK' if ok else 'MISSED a target'} (RSS growth ≤ 20 %, 0 leaked fds); {work}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work dir (default: a new temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    minutes = float(os.environ.get("SOAK_MINUTES", "60"))
    sample_s = float(os.environ.get("SOAK_SAMPLE_S", "10"))
    work = Path(args.work or tempfile.mkdtemp(prefix="courthub-soak-"))
    return asyncio.run(soak(work, minutes, sample_s))


if __name__ == "__main__":
    sys.exit(main())
