"""Fixtures of the browser tests: a real hub and a small simulated court on the test's event loop,
and Debian's Chromium driven by Playwright's async API (never Playwright's own browser download).

- ``hub`` (one per module): :func:`hub.app.run_hub` with its own Mosquitto, the console on a free
  port, and the logins of :data:`browser_harness.USERS` created through the account store.
- ``court`` (one per test that asks for it): two venues whose agents are real processes
  (``kill`` is a real ``kill -9``) polling simulated HTTP sensors every 0.5 s.
- ``console`` (one per test): a fresh browser context (no cookies, 1280×800); the test fails when
  its pages talk to anything but the hub or log an error the test did not announce.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browser_harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    COURT_NAME,
    LIVE_TIMEOUT_MS,
    SCENARIO,
    SCREENSHOTS_ENV,
    USERS,
    Console,
    ConsoleHub,
    Traffic,
    open_context,
)
from playwright.async_api import Browser, async_playwright, expect

from hub.app import HubRuntime, run_hub
from hub.config import hub_config_from_dict
from simulators.court import SimulatedCourt

expect.set_options(timeout=LIVE_TIMEOUT_MS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ConsoleHub]:
    work_dir = tmp_path_factory.mktemp("browser")
    config = hub_config_from_dict(
        {
            "hub": {"data_dir": str(work_dir / "hub"), "court_name": COURT_NAME},
            "broker": {"mode": "own", "accounts": SCENARIO.broker_accounts()},
            "api": {"port": 0},
        }
    )
    ready: asyncio.Future[HubRuntime] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(run_hub(config, stop, on_ready=ready.set_result))
    waiting: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiting, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # the hub's start-up error
        pytest.fail("the hub stopped during start-up")
    if not done:
        stop.set()
        pytest.fail("the hub did not get ready within 60 s")
    runtime = ready.result()
    try:
        assert runtime.accounts is not None
        for login in USERS:
            await runtime.accounts.create_user(
                login.username,
                login.password,
                login.roles,
                display_name=login.display_name,
                language="zh-CN",
                must_change_password=False,
            )
        yield ConsoleHub(runtime, work_dir)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@pytest_asyncio.fixture(loop_scope="module")
async def court(hub: ConsoleHub) -> AsyncIterator[SimulatedCourt]:
    """A fresh court per test (agents alive, sensors healthy); its agents keep their state folder."""
    credentials = hub.runtime.credentials
    assert credentials is not None, "the hub owns its broker, so it has the agents' passwords"
    simulated = SimulatedCourt(
        SCENARIO, hub.runtime.broker_url, credentials.password_for, hub.work_dir / "court"
    )
    await simulated.start()
    try:
        yield simulated
    finally:
        await simulated.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    playwright = await async_playwright().start()
    try:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()
    finally:
        await playwright.stop()


@pytest.fixture(scope="module")
def screenshot_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Where screenshots go: a temporary folder, plus ``$COURTHUB_SCREENSHOTS`` when set."""
    dirs = [tmp_path_factory.mktemp("screenshots")]
    extra = os.environ.get(SCREENSHOTS_ENV, "").strip()
    if extra:
        target = Path(extra)
        target.mkdir(parents=True, exist_ok=True)
        dirs.append(target)
    return dirs


@pytest_asyncio.fixture(loop_scope="module")
async def console(
    hub: ConsoleHub, browser: Browser, screenshot_dirs: list[Path]
) -> AsyncIterator[Console]:
    """A fresh browser context on the hub; fails the test on foreign requests or page errors."""
    traffic = Traffic(hub.origin)
    context = await open_context(browser, traffic)
    opened = Console(hub, browser, context, traffic, screenshot_dirs)
    await opened.start()
    try:
        yield opened
    finally:
        await context.close()
    problems: list[str] = [f"request outside the hub: {u}" for u in traffic.foreign()]
    problems += traffic.unexpected_errors()
    if problems:
        pytest.fail("the console misbehaved in the browser:\n  " + "\n  ".join(problems))
