"""The chaos suite's switches: ``chaos_full`` tests run only under ``make chaos``.

``make test`` collects tests/chaos like every other folder: the ``chaos_quick`` subset runs, the
long ``chaos_full`` scenarios are skipped unless ``COURTHUB_CHAOS_FULL=1`` (set by ``make chaos``).
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("COURTHUB_CHAOS_FULL") == "1":
        return
    skip = pytest.mark.skip(reason="long chaos scenario: run `make chaos`")
    for item in items:
        if "chaos_full" in item.keywords:
            item.add_marker(skip)
