"""Fixtures of the hub tests: hub services on the shared real Mosquitto, and fake agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hub_harness import AgentFactory, FakeAgent, HubFactory

from hub.broker import MosquittoBroker
from hub.config import hub_config_from_dict
from hub.service import HubService


@pytest.fixture
async def make_hub(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[HubFactory]:
    """Start a :class:`HubService` (user ``hub``) on the test broker; all are stopped at the end.

    Keyword arguments become the ``[health]`` table; ``data_dir`` picks another data folder.
    """
    services: list[HubService] = []

    async def make(*, data_dir: Path | None = None, **health: Any) -> HubService:
        config = hub_config_from_dict(
            {
                "hub": {"data_dir": str(data_dir or tmp_path / "hub")},
                "health": {"sweep_interval_s": 0.05, **health},
            }
        )
        service = HubService(config, broker.url, "hub", "pw-hub", flush_interval_s=0.1)
        await service.start()
        services.append(service)
        assert await service.wait_connected(5), "hub could not connect to the test broker"
        return service

    yield make
    for service in services:
        await service.stop()


@pytest.fixture
async def make_agent(broker: MosquittoBroker) -> AsyncIterator[AgentFactory]:
    """Start a :class:`FakeAgent` with the conftest's credentials (``agent-a`` → ``pw-agent-a``)."""
    agents: list[FakeAgent] = []

    async def make(agent_id: str = "agent-a", **kwargs: Any) -> FakeAgent:
        agent = FakeAgent(broker.url, agent_id, **kwargs)
        agents.append(agent)
        return await agent.start()

    yield make
    for agent in agents:
        await agent.stop()
