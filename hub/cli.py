"""The ``courthub`` command: one entry point for the hub, agents, the simulated court and tools.

    courthub hub --config hub.toml          run the central hub (broker, ingest, registry, API)
    courthub agent --config venue.toml      run one venue's edge agent
    courthub simulate --config court.toml   run a simulated court against a running hub
    courthub demo [--duration S]            broker + hub + API + simulated court in one go
    courthub bench ingest                   measure the hub's ingest path
    courthub bench calls                    queue call -> LED panel latency
    courthub bench ws                       web console WebSocket fan-out
    courthub bench video                    recorder capacity/CPU, live-feed latency
    courthub bench transcription            seat channels in real time, latency, memory
    courthub bench telemetry                telemetry -> embedded store and VictoriaMetrics
    courthub bench report [--quick]         every bench + its ceilings -> docs/BENCHMARKS.md
    courthub schema                         print the JSON Schemas of the MQTT contract

and, from the modules of ``EXTENSIONS``: ``users``, ``audit``, ``provision``, ``verify``,
``export``, ``backup``, ``restore``, ``worker`` and ``transcribe`` (``courthub COMMAND --help``).

Heavy modules are imported inside each command so ``courthub --help`` stays instant.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Modules that add subcommands: each has ``register(subparsers)`` and imports heavy modules
#: only inside its handlers. Add a line here for a new command group.
EXTENSIONS: tuple[str, ...] = (
    "hub.cli_provision",
    "hub.cli_users",
    "hub.cli_audit",
    "hub.cli_verify",
    "hub.cli_backup",
    "hub.cli_worker",
    "transcription.cli",
)

FAULT_HELP = (
    "inject a fault: ACTION[:TARGET]@SECONDS[+DURATION], e.g. kill_agent:interro-1@10+3, "
    "restart_broker@5, drop_device:court-1/env-1@8, restore_device:court-1/env-1@20, "
    "garbage:hall-1@12, jam_printer:hall-1/kiosk-1@15 (repeatable)"
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)`` on a fresh loop; SIGINT/SIGTERM set ``stop`` for a clean shutdown."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


def _cmd_hub(args: argparse.Namespace) -> int:
    from hub.app import HubRuntime, run_hub
    from hub.config import load_hub_config

    config = load_hub_config(Path(args.config))

    def announce(runtime: HubRuntime) -> None:
        # printed once to the operator's terminal, never logged
        print(f"courthub hub: web console {runtime.api_url}/", flush=True)
        if runtime.first_admin_password:
            print(
                "courthub hub: first start — sign in as 'admin' with the one-time password "
                f"{runtime.first_admin_password} (you must change it at first sign-in)",
                flush=True,
            )

    async def main(stop: asyncio.Event) -> int:
        await run_hub(config, stop, on_ready=announce)
        return 0

    return run_until_signalled(main)


def _cmd_agent(args: argparse.Namespace) -> int:
    from edge_agents.__main__ import main as agent_main

    return agent_main(["--config", args.config])


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.court import simulate_against_hub
    from simulators.scenario import parse_fault

    faults = [parse_fault(f) for f in args.fault]

    async def main(stop: asyncio.Event) -> int:
        await simulate_against_hub(Path(args.config), Path(args.hub_config), stop, faults)
        return 0

    return run_until_signalled(main)


def _cmd_demo(args: argparse.Namespace) -> int:
    from simulators.demo import DemoOptions, run_demo
    from simulators.scenario import parse_fault

    options = DemoOptions(
        duration_s=args.duration,
        scenario_path=Path(args.config) if args.config else None,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        api_port=args.port,
        faults=not args.no_faults,
        extra_faults=tuple(parse_fault(f) for f in args.fault),
    )

    async def main(stop: asyncio.Event) -> int:
        summary = await run_demo(options, stop)
        # the contract of `courthub demo`: the last stdout line is one JSON object
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        return 0

    return run_until_signalled(main)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench.ingest import BenchOptions, run_ingest_bench

    options = BenchOptions(
        flood_devices=args.devices, messages=args.messages, latency_seconds=args.latency_seconds
    )
    result = asyncio.run(run_ingest_bench(options))
    print(json.dumps(result, ensure_ascii=False, indent=None), flush=True)
    return 0


def _cmd_bench_ws(args: argparse.Namespace) -> int:
    from bench.ws_fanout import main as ws_main

    return ws_main(args.rest)


def _cmd_bench_calls(args: argparse.Namespace) -> int:
    from bench.call_latency import main as calls_main

    return calls_main(args.rest)


def _cmd_bench_video(args: argparse.Namespace) -> int:
    from bench.recorder import main as video_main

    argv = ["--seconds", str(args.seconds), "--copy-cameras", str(args.copy_cameras)]
    argv += ["--opencv-cameras", str(args.opencv_cameras)] + (["--no-live"] if args.no_live else [])
    return video_main(argv)


def _cmd_bench_transcription(args: argparse.Namespace) -> int:
    from bench.transcription import main as transcription_main

    argv = ["--channels", args.channels, "--seconds", str(args.seconds)]
    argv += ["--hearing-minutes", str(args.hearing_minutes), "--threads", str(args.threads)]
    return transcription_main(argv + (["--no-probe"] if args.no_probe else []))


def _cmd_bench_telemetry(args: argparse.Namespace) -> int:
    from bench.telemetry import main as telemetry_main

    argv = ["--devices", str(args.devices), "--messages", str(args.messages)]
    argv += ["--sinks", args.sinks]
    return telemetry_main([*argv, "--rate", str(args.rate), "--poll-hz", str(args.poll_hz)])


def _add_bench_telemetry(bench: Any) -> None:
    b = bench.add_parser("telemetry", help="MQTT telemetry -> embedded store and InfluxDB")
    b.add_argument("--devices", type=int, default=100, help="simulated devices (one agent each)")
    b.add_argument("--messages", type=int, default=300_000, help="points (5 metrics each)")
    b.add_argument("--rate", type=float, default=0.0, help="offered msg/s (0: flood)")
    b.add_argument("--poll-hz", type=float, default=10.0, help="API requests/s during the run")
    b.add_argument("--sinks", choices=("both", "embedded", "influxdb"), default="both")
    b.set_defaults(func=_cmd_bench_telemetry)


def _add_bench_transcription(bench: Any) -> None:
    b = bench.add_parser("transcription", help="Vosk: live seat channels, latency, memory")
    b.add_argument("--channels", default="1,2,4,6", help="real-time runs (then N+2 while kept up)")
    b.add_argument("--no-probe", action="store_true", help="only the --channels runs")
    b.add_argument("--seconds", type=float, default=60.0, help="audio per real-time run")
    b.add_argument("--threads", type=int, default=2, help="decoder pool size")
    b.add_argument("--hearing-minutes", type=float, default=10.0, help="memory run (0: skip)")
    b.set_defaults(func=_cmd_bench_transcription)


def _add_bench_report(bench: Any) -> None:
    b = bench.add_parser("report", help="run every bench, write docs/BENCHMARKS.md (--help)")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of python -m bench.report")
    b.set_defaults(func=lambda a: importlib.import_module("bench.report").main(a.rest))


def _cmd_schema(args: argparse.Namespace) -> int:
    from protocol.messages import json_schemas

    print(json.dumps(json_schemas(), ensure_ascii=False, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``courthub``."""
    parser = argparse.ArgumentParser(prog="courthub", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("hub", help="run the central hub")
    p.add_argument("--config", required=True, help="hub.toml")
    p.set_defaults(func=_cmd_hub)

    p = sub.add_parser("agent", help="run one venue's edge agent")
    p.add_argument("--config", required=True, help="venue.toml")
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser("simulate", help="run a simulated court against a running hub")
    p.add_argument("--config", required=True, help="court.toml")
    p.add_argument("--hub-config", required=True, help="the running hub's hub.toml")
    p.add_argument("--fault", action="append", default=[], help=FAULT_HELP)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="broker, hub, API and a simulated court in one go")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--config", help="court.toml (default: one venue of each kind)")
    p.add_argument("--data-dir", help="keep the demo's data here (default: a temp dir)")
    p.add_argument("--port", type=int, default=8080, help="web API port (0 = any free port)")
    p.add_argument("--no-faults", action="store_true", help="do not inject the demo's faults")
    p.add_argument("--fault", action="append", default=[], help=FAULT_HELP)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("ingest", help="telemetry through broker -> hub registry")
    b.add_argument("--devices", type=int, default=100, help="simulated devices (sustained phase)")
    b.add_argument("--messages", type=int, default=200_000)
    b.add_argument("--latency-seconds", type=float, default=10.0)
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("ws", help="web console WebSocket fan-out (options: --help)")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of python -m bench.ws_fanout")
    b.set_defaults(func=_cmd_bench_ws)
    b = bench.add_parser("calls", help="queue call -> LED panel latency (options: --help)")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of python -m bench.call_latency")
    b.set_defaults(func=_cmd_bench_calls)
    b = bench.add_parser("video", help="recorder capacity and CPU, live-feed latency")
    b.add_argument("--seconds", type=float, default=30.0, help="steady window per capture path")
    b.add_argument("--copy-cameras", type=int, default=16, help="1080p25 H.264 cameras (0: skip)")
    b.add_argument("--opencv-cameras", type=int, default=4, help="720p25 MJPEG cameras (0: skip)")
    b.add_argument("--no-live", action="store_true", help="skip the live-feed latency")
    b.set_defaults(func=_cmd_bench_video)
    _add_bench_transcription(bench)
    _add_bench_telemetry(bench)
    _add_bench_report(bench)

    p = sub.add_parser("schema", help="print the JSON Schemas of the MQTT contract")
    p.set_defaults(func=_cmd_schema)

    for module_name in EXTENSIONS:
        importlib.import_module(module_name).register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "fix your config or set-up": printed in one line, not as a traceback."""
    from edge_agents.config import AgentConfigError
    from hub.app import HubStartError
    from hub.broker import BrokerError
    from hub.config import HubConfigError
    from hub.credentials import CredentialsError
    from hub.store import StoreLocked
    from simulators.court import CourtSetupError
    from simulators.scenario import ScenarioError

    return (
        AgentConfigError,
        HubStartError,
        BrokerError,
        HubConfigError,
        CredentialsError,
        StoreLocked,
        CourtSetupError,
        ScenarioError,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``courthub`` console script."""
    parser = build_parser()
    # `bench ws` / `bench calls` hand their options to the benchmark's own parser: argparse's
    # REMAINDER does not take options that start with "--", so those arrive as "unknown"
    args, unknown = parser.parse_known_args(argv)
    if unknown and hasattr(args, "rest"):
        args.rest = [*unknown, *args.rest]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _setup_logging(args.verbose)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except _user_errors() as exc:
        print(f"courthub {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
