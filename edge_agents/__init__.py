"""The edge agent process: runs a venue's device drivers and speaks the MQTT contract for them.

- :mod:`edge_agents.config` — the venue TOML (``load_agent_config``, ``agent_config_from_dict``)
- :mod:`edge_agents.outbox` — the durable, bounded SQLite outbox (seq, bdseq, drops)
- :mod:`edge_agents.runtime` — :class:`~edge_agents.runtime.EdgeAgent` and ``run_agent``
- :mod:`edge_agents.cli` — ``main(argv)`` behind ``python -m edge_agents --config venue.toml``
"""
