"""``courthub worker``: one scale-out ingest worker (hub/ingest_worker.py, docs/DEPLOYMENT.md).

    courthub worker --config /etc/courthub/hub.toml --id w1

Reads the same hub.toml as the hub. It takes telemetry off the shared subscription
``$share/courthub/courthub/v1/+/+/telemetry`` and writes it to the InfluxDB sink of
``[telemetry.influxdb]`` (spooled on this machine while the server is away). The embedded SQLite
store belongs to the hub's own process and is not shared, so a worker needs InfluxDB; the hub
then runs with ``[telemetry] device_points = "workers"`` and keeps health, queue, hearings and
the recorder. Broker credentials: those of ``[broker]`` (``mode = "url"``: username and
``password_file``), or the hub's generated ones when the worker runs beside a hub that owns its
broker. Run each worker under a supervisor with a stable ``--id``: its persistent session keeps
its share of the messages while it is away (measured, see hub/ingest_worker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add ``worker`` to the CLI."""
    p = sub.add_parser("worker", help="a scale-out ingest worker (shared subscription -> InfluxDB)")
    p.add_argument("--config", required=True, help="the hub's hub.toml")
    p.add_argument("--id", required=True, help="this worker's stable id (its MQTT session)")
    p.add_argument("--group", default="courthub", help="the share group (default courthub)")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="where the InfluxDB spool lives (default: the hub's data_dir/worker-ID)",
    )
    p.set_defaults(func=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    from hub.app import HubStartError, broker_login
    from hub.cli import run_until_signalled
    from hub.config import HubConfigError, load_hub_config

    try:
        config = load_hub_config(args.config)
    except HubConfigError as exc:
        log.error("%s", exc)
        return 2
    if not config.telemetry.influxdb.url:
        log.error(
            "a worker writes to InfluxDB: set [telemetry.influxdb] url in %s (the embedded "
            "store belongs to the hub's own process)",
            args.config,
        )
        return 2
    try:
        url, username, password = broker_login(config)
    except HubStartError as exc:
        log.error("%s", exc)
        return 2

    async def main(stop: asyncio.Event) -> int:
        from hub.influx_sink import InfluxSink
        from hub.ingest_worker import IngestWorker

        data_dir = args.data_dir or config.data_dir / f"worker-{args.id}"
        sink = InfluxSink(config.telemetry.influxdb, data_dir=data_dir)
        await sink.start()
        worker = IngestWorker(
            url,
            username=username,
            password=password,
            worker_id=args.id,
            sinks=[sink],
            group=args.group,
        )
        try:
            await worker.start()
            if not await worker.wait_connected(10):
                log.warning("worker %s not connected yet broker=%s; retrying", args.id, url)
            log.info("worker %s running group=%s", args.id, args.group)
            await stop.wait()
        finally:
            await worker.stop()
            await sink.stop()
            log.info("worker %s stopped stats=%s", args.id, worker.stats())
        return 0

    return run_until_signalled(main)
