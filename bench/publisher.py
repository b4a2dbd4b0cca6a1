"""Load generator for the ingest benchmark: simulated agents publishing telemetry as fast as
allowed (or at a fixed rate), in its own process so it does not share the hub's GIL.

    python -m bench.publisher --port P --password-file F --agents 10 --devices 20 \
        --messages 200000 [--rate 1000]

Each agent publishes its retained birth first, then telemetry with contiguous per-agent
``seq`` (so the hub's gap detector stays quiet) and a ``bench_sent_us`` metric carrying the
send time for latency. Prints one JSON line with what it sent.
"""

from __future__ import annotations

import argparse
import json
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from protocol.messages import Birth, DeviceInfo, Telemetry, Venue, VenueKind, encode, now_ms
from protocol.topics import TopicKind, build


def agent_ids(agents: int) -> list[str]:
    """Ids of the benchmark's simulated agents (also their MQTT usernames)."""
    return [f"bench-a{i}" for i in range(agents)]


def _connect(port: int, username: str, password: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{username}-pub")
    client.username_pw_set(username, password)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


def main() -> None:
    """Publish births, then telemetry; print a JSON summary."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--password-file", required=True, help="JSON {username: password}")
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--devices", type=int, default=20, help="devices per agent")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=0.0, help="msg/s, 0 = as fast as possible")
    args = ap.parse_args()
    with open(args.password_file, encoding="utf-8") as fh:
        passwords: dict[str, str] = json.load(fh)

    ids = agent_ids(args.agents)
    clients = {a: _connect(args.port, a, passwords[a]) for a in ids}
    for client in clients.values():
        while not client.is_connected():
            time.sleep(0.01)
    for agent, client in clients.items():
        birth = Birth(
            ts=now_ms(),
            bdseq=1,
            seq=0,
            venue=Venue(id=agent, kind=VenueKind.LITIGATION_HALL),
            devices=[DeviceInfo(id=f"d{d}", kind="sensor") for d in range(args.devices)],
        )
        client.publish(
            build(TopicKind.BIRTH, agent), encode(birth), qos=1, retain=True
        ).wait_for_publish()
    time.sleep(0.5)  # births are QoS 1: let the hub register the agents first

    topics = {
        (a, d): build(TopicKind.TELEMETRY, a, f"d{d}") for a in ids for d in range(args.devices)
    }
    seqs = dict.fromkeys(ids, 0)
    interval = 1.0 / args.rate if args.rate else 0.0
    start = time.perf_counter()
    for i in range(args.messages):
        agent = ids[i % len(ids)]
        device = (i // len(ids)) % args.devices
        sent_us = time.time() * 1e6
        msg = Telemetry(
            ts=int(sent_us // 1000),
            seq=seqs[agent],
            metrics={"temperature_c": 20.0 + (i % 50) / 10, "bench_sent_us": sent_us},
        )
        seqs[agent] += 1
        clients[agent].publish(topics[(agent, device)], encode(msg), qos=0)
        if interval:
            delay = start + (i + 1) * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    elapsed = time.perf_counter() - start
    for client in clients.values():
        client.disconnect()
        client.loop_stop()
    print(
        json.dumps(
            {
                "sent": args.messages,
                "seconds": round(elapsed, 3),
                "rate": round(args.messages / elapsed),
            }
        )
    )


if __name__ == "__main__":
    main()
