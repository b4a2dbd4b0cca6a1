"""Command line of one edge agent: ``python -m edge_agents --config venue.toml``.

The project CLI (``courthub agent --config ...``) calls :func:`main` with its own argv.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from device_drivers.base import DriverConfigError
from edge_agents.config import AgentConfig, AgentConfigError, load_agent_config
from edge_agents.outbox import OutboxClosed
from edge_agents.runtime import run_agent

log = logging.getLogger(__name__)

#: Exit status for a config the agent cannot run with (like sysexits' EX_CONFIG).
EXIT_CONFIG = 78


def build_parser(prog: str = "python -m edge_agents") -> argparse.ArgumentParser:
    """The agent's argument parser (reusable as a sub-command by the project CLI)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a courthub edge agent for one venue until SIGINT/SIGTERM."
    )
    parser.add_argument("--config", required=True, help="the agent's venue config (TOML)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run an agent from the command line; returns the process exit status.

    0 after a clean stop (SIGINT/SIGTERM), 78 when the config or a driver's options are wrong.
    """
    args = build_parser().parse_args(argv)
    # A no-op when the caller (the project CLI) configured logging already.
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = load_agent_config(args.config)
    except AgentConfigError as exc:
        log.error("bad agent config: %s", exc)
        return EXIT_CONFIG
    try:
        asyncio.run(_serve(config))
    except DriverConfigError as exc:
        log.error("bad device config in %s: %s", args.config, exc)
        return EXIT_CONFIG
    except (OSError, OutboxClosed) as exc:
        log.error("agent failed agent=%s error=%s", config.agent.id, exc)
        return 1
    return 0


async def _serve(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _request_stop, stop, sig)
    try:
        await run_agent(config, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("signal received signal=%s; stopping", sig.name)
    stop.set()
