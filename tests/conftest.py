"""Shared fixtures: a real Mosquitto on a free loopback port with the court's accounts and ACL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from hub.broker import Account, BrokerAccounts, MosquittoBroker

# Wall-clock deadlines make property tests flaky on a loaded 2-core CI machine.
settings.register_profile("courthub", deadline=None, max_examples=200)
settings.load_profile("courthub")

AGENT_IDS = ("hall-1", "court-1", "interro-1", "command-1", "agent-a", "agent-b")


@pytest.fixture
def accounts() -> BrokerAccounts:
    """Hub, six agents (hall-1 owns kiosk k1's topics) and kiosk k1's device account."""
    agents = tuple(
        Account(
            a,
            f"pw-{a}",
            read=("kiosk/+/up",) if a == "hall-1" else (),
            write=("kiosk/+/down",) if a == "hall-1" else (),
        )
        for a in AGENT_IDS
    )
    kiosk = Account("kiosk-k1", "pw-kiosk-k1", read=("kiosk/k1/down",), write=("kiosk/k1/up",))
    return BrokerAccounts(hub=Account("hub", "pw-hub"), agents=agents, devices=(kiosk,))


@pytest.fixture
def broker(tmp_path: Path, accounts: BrokerAccounts) -> Iterator[MosquittoBroker]:
    """A running private Mosquitto (real binary), stopped after the test."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    b = MosquittoBroker(tmp_path / "broker", accounts)
    b.start()
    try:
        yield b
    finally:
        b.stop()
