"""``python -m edge_agents --config venue.toml``: run one edge agent until SIGINT/SIGTERM.

``main`` is re-exported so ``from edge_agents.__main__ import main`` works too (the project CLI
uses it); the canonical home is :func:`edge_agents.cli.main`.
"""

from edge_agents.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
