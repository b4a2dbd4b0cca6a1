"""``[telemetry]`` in hub.toml: where device and hub numbers are stored (issue 7).

```toml
[telemetry]
sample_interval_s = 10        # hub internals and device health sampled this often
charts = "embedded"           # what the technician's charts read: "embedded" or "influxdb"
sink_processes = true         # each sink writes from its own process (hub/sink_process.py)

[telemetry.embedded]          # SQLite in the hub's data dir (the default; no server needed)
enabled = true
raw_retention_h = 48
rollup_retention_days = 90

[telemetry.influxdb]          # InfluxDB 2.x, 1.8+ (v2 compatibility) or VictoriaMetrics
url = "http://127.0.0.1:8086"
org = "court"
bucket = "courthub"
token_file = "/etc/courthub/influx.token"   # the token itself is never logged
# read by the charts when charts = "influxdb" (InfluxQL on /query: InfluxDB 1.x, 1.8+, or 2.x
# with a DBRP mapping for the bucket; VictoriaMetrics does not answer InfluxQL)
query_url = ""                # "" = url
database = ""                 # InfluxQL database; "" = bucket
retention_policy = ""         # "" = the database's default
```

Both sinks may run at once. Relative paths resolve against the config file's folder.
``charts = "influxdb"`` needs ``[telemetry.influxdb] url`` (the config loader says so).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class EmbeddedSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[telemetry.embedded]``: the SQLite time-series store (``telemetry.db``)."""

    enabled: bool = True
    #: raw points are kept this long
    raw_retention_h: PositiveFloat = 48.0
    #: 1-minute aggregates (avg, min, max, count) are kept this long
    rollup_retention_days: PositiveFloat = 90.0
    #: queued points written in one transaction at most this often
    flush_interval_s: PositiveFloat = 1.0
    #: points waiting for the database beyond this are dropped (counted)
    max_queue: Annotated[int, msgspec.Meta(ge=1000)] = 200_000


class InfluxSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[telemetry.influxdb]``: an InfluxDB-compatible server (``/api/v2/write``)."""

    #: empty = no InfluxDB sink
    url: str = ""
    org: str = ""
    bucket: str = "courthub"
    #: a file holding the API token (``Token …`` auth); empty = no auth (VictoriaMetrics)
    token_file: str = ""
    #: a batch is sent when it has this many points or is ``flush_interval_s`` old
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 5000
    flush_interval_s: PositiveFloat = 1.0
    gzip: bool = True
    #: per-request timeout
    timeout_s: PositiveFloat = 10.0
    #: retries back off from this up to ``max_backoff_s`` (a ``Retry-After`` header wins)
    min_backoff_s: PositiveFloat = 0.5
    max_backoff_s: PositiveFloat = 30.0
    #: the durable spool while the server is away; empty = ``<data_dir>/influx-spool``
    spool_dir: str = ""
    #: when the spool holds this much, new points are dropped and counted (the spooled ones
    #: are older and replayed first, so the series keeps its order)
    spool_max_mb: PositiveFloat = 512.0
    #: where the charts send InfluxQL (``/query``) when ``[telemetry] charts = "influxdb"``;
    #: empty = ``url``
    query_url: str = ""
    #: the InfluxQL database the charts read; empty = ``bucket`` (InfluxDB 2.x maps it to the
    #: bucket through a DBRP mapping)
    database: str = ""
    #: the retention policy the charts read; empty = the database's default
    retention_policy: str = ""

    @property
    def effective_query_url(self) -> str:
        """Where InfluxQL queries go: ``query_url``, else ``url``."""
        return self.query_url or self.url

    @property
    def effective_database(self) -> str:
        """The InfluxQL database: ``database``, else ``bucket``."""
        return self.database or self.bucket


class TelemetrySection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[telemetry]``: sinks and sampling."""

    #: hub internals and device health/up points are sampled this often
    sample_interval_s: PositiveFloat = 10.0
    #: who writes the devices' own telemetry points: "hub" (this process), or "workers" when
    #: `courthub worker` processes take telemetry off a shared subscription (scale-out,
    #: docs/DEPLOYMENT.md) — then the hub still tracks health but writes no ``device`` points
    device_points: Literal["hub", "workers"] = "hub"
    #: each sink runs in its own child process (hub/sink_process.py), so storing points does not
    #: compete with ingest for the hub's interpreter lock; off = in the hub's process
    sink_processes: bool = True
    #: what the technician's charts read: the embedded store, or InfluxDB over InfluxQL
    #: (``[telemetry.influxdb]``; needs its ``url``)
    charts: Literal["embedded", "influxdb"] = "embedded"
    embedded: EmbeddedSection = msgspec.field(default_factory=EmbeddedSection)
    influxdb: InfluxSection = msgspec.field(default_factory=InfluxSection)
