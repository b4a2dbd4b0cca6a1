"""Edge agents' clock skew: measured from their live messages, alerted on, and taken out of the
timestamps the hub files.

Agents stamp everything with their own wall clock (telemetry and event ``ts``, audio frames'
capture time, births). An NTP step or a badly set BIOS clock on a venue PC moves that clock by
seconds to hours while the hub's clock is right. :class:`ClockSkew` compares each live message's
timestamp with the hub's receive time:

- **Measuring.** ``sample = ts - received``. Transit never runs backwards, so a sample is the
  agent's offset minus the message's delay: the *largest* of the samples that confirm a step
  is its estimate (NTP's minimum-delay filter), kept until the next step (a refined offset
  could file two of an agent's points on the same millisecond), and a sample far *ahead* of
  the hub can only be a clock ahead.
- **Steps.** The current offset (0 for a healthy agent) stands while samples agree with it to
  within ``threshold_ms`` (2 s). Samples that disagree form a candidate offset, adopted after
  ``confirm_messages`` samples when it is *unambiguous*: ahead of the current offset (no delay
  explains a timestamp from the future), or behind it with the agent's timestamps having gone
  *backwards* (an agent's live messages arrive in order, so a backlog never does that: its
  clock was stepped back). A candidate behind without that proof (an agent first heard with
  its clock already behind) must also persist ``confirm_behind_s``: the hub's own restart
  replaying the broker's queue looks the same at first. An offset within the threshold is
  snapped to exactly 0, so a healthy agent's timestamps are never touched.
- **Proven or not.** An offset behind without that proof is reported (alert, metrics) but never
  taken out of timestamps: from one stream of messages the hub cannot tell a slow clock from
  messages that arrive late, and a telemetry flood drained from the broker's queue for more than
  ``confirm_behind_s`` looked exactly like it — refiling them shifted points onto each other
  (bench telemetry: 85-143 duplicated samples in 300,000). Only a clock ahead or stepped back is
  corrected.
- **Alert.** While an agent's offset is non-zero the board shows ``clock-skew:<agent>`` with
  the measured offset; it resolves when the clock is back. :meth:`ClockSkew.stats` feeds
  ``/metrics`` (``courthub_agent_clock_offset_seconds{agent}``, steps counted per agent).
- **Filing.** :meth:`ClockSkew.observe` returns the timestamp to file the message under: the
  agent's own when it agrees with offset 0, else ``ts - offset`` when it agrees with the
  measured offset. Between a step and its confirmation, a message stamped *ahead* of the hub's
  clock, or stamped behind it *before* the agent's previous message, is filed at its receive
  time (the closest the hub knows; its own stamp would land an hour ahead, or on top of points
  already stored); a message merely behind keeps the agent's timestamp (it may just be late:
  the hub does not guess). An offset adopted after messages filed at their arrival is lowered
  just enough that the agent's next stamps file after them: its points stay in its order.
  Outbox replays (``historical``), retained messages, telemetry and events whose ``seq`` is not
  above the agent's highest (sent before a message the hub already has: a QoS 1 resend after a
  reconnect that the agent's new birth overtook) and device states (stamped when the state
  began, re-sent with every birth) are neither measured nor corrected (hub/service.py): their
  stamp is not the time they were sent, and three of them after a birth looked like a step back.

Pure bookkeeping on the event loop: no I/O. Offset changes go to listeners (sync, on the loop);
:class:`SkewAlerter` turns them into alert-board tasks, so the ingest path never waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

log = logging.getLogger(__name__)

#: Skew below this is clock noise plus transit: not reported, not corrected.
DEFAULT_THRESHOLD_MS: Final = 2_000
#: Disagreeing samples needed before a step is believed.
DEFAULT_CONFIRM_MESSAGES: Final = 3
#: A clock found behind without its timestamps going backwards (an agent first heard that way)
#: must also stay so this long before it is reported: late messages look the same, and a hub
#: draining the broker's queue after a restart (or a flood) can be 10+ s behind for a while.
DEFAULT_CONFIRM_BEHIND_S: Final = 60.0

#: ``on_change(agent, offset_ms)``: offset 0 means the clock is back.
SkewListener = Callable[[str, int], None]


@dataclass
class _Candidate:
    """Samples that disagree with the current offset and agree with each other."""

    best_ms: int  # largest sample (least delayed)
    first_received_ms: int
    count: int = 1
    #: the agent's timestamps went backwards: a clock stepped back, not a backlog
    went_back: bool = False


@dataclass
class AgentSkew:
    """One agent's clock as the hub sees it."""

    agent: str
    #: adopted offset (agent clock - hub clock), 0 for a healthy agent
    offset_ms: int = 0
    samples: int = 0
    #: steps adopted (away and back both count)
    steps: int = 0
    #: messages filed with a corrected timestamp
    corrected: int = 0
    #: messages whose timestamp agreed with no known offset (kept as the agent sent it)
    unexplained: int = 0
    #: the agent's latest live timestamp so far (its own clock)
    last_ts_ms: int | None = None
    #: the offset is proven (ahead, or stepped back) and taken out of the timestamps; an
    #: offset behind without proof is only reported (see "Proven or not")
    corrects: bool = True
    candidate: _Candidate | None = field(default=None, repr=False)
    #: the latest receive time a message of this agent was filed under (between a step and its
    #: confirmation): an adopted offset must file later messages after it
    arrival_filed_ms: int | None = field(default=None, repr=False)


class ClockSkew:
    """Per-agent clock offsets from live message timestamps (see the module docstring)."""

    def __init__(
        self,
        *,
        threshold_ms: int = DEFAULT_THRESHOLD_MS,
        confirm_messages: int = DEFAULT_CONFIRM_MESSAGES,
        confirm_behind_s: float = DEFAULT_CONFIRM_BEHIND_S,
    ) -> None:
        if threshold_ms <= 0 or confirm_messages < 1 or confirm_behind_s < 0:
            raise ValueError("threshold_ms > 0, confirm_messages >= 1, confirm_behind_s >= 0")
        self.threshold_ms = threshold_ms
        self.confirm_messages = confirm_messages
        self.confirm_behind_ms = int(confirm_behind_s * 1000)
        self._agents: dict[str, AgentSkew] = {}
        self._listeners: list[SkewListener] = []

    def add_listener(self, fn: SkewListener) -> Callable[[], None]:
        """Hear every adopted offset change (called on the loop, from :meth:`observe`)."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def offset_ms(self, agent: str) -> int:
        """The agent's adopted clock offset (0 when healthy or unknown)."""
        state = self._agents.get(agent)
        return state.offset_ms if state is not None else 0

    def correction_ms(self, agent: str) -> int:
        """The offset the hub takes out of (and puts into) the agent's timestamps: the adopted
        offset when proven, else 0 (an unproven "behind" is only reported)."""
        state = self._agents.get(agent)
        return state.offset_ms if state is not None and state.corrects else 0

    def agents(self) -> list[AgentSkew]:
        """Every agent measured so far."""
        return list(self._agents.values())

    def skewed(self) -> dict[str, int]:
        """Agents whose clock is off now: agent → offset ms."""
        return {a.agent: a.offset_ms for a in self._agents.values() if a.offset_ms}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per agent: ``offset_ms``, ``steps``, ``corrected``, ``unexplained``, ``samples``."""
        return {
            a.agent: {
                "offset_ms": a.offset_ms,
                "steps": a.steps,
                "corrected": a.corrected,
                "unexplained": a.unexplained,
                "samples": a.samples,
            }
            for a in self._agents.values()
        }

    def observe(self, agent: str, ts_ms: int, received_ms: int) -> int:
        """Measure one live message stamped ``ts_ms`` that arrived at ``received_ms`` (hub
        clock); return the timestamp to file it under."""
        state = self._agents.get(agent)
        if state is None:
            state = self._agents[agent] = AgentSkew(agent)
        sample = ts_ms - received_ms
        went_back = state.last_ts_ms is not None and ts_ms < state.last_ts_ms - self.threshold_ms
        state.last_ts_ms = max(ts_ms, state.last_ts_ms or ts_ms)
        state.samples += 1
        if abs(sample - state.offset_ms) <= self.threshold_ms:
            state.candidate = None
            if state.offset_ms and state.corrects:
                # the offset stays as adopted (not refined while it holds): one constant taken
                # from every stamp keeps an agent's points distinct and in order
                state.corrected += 1
                return ts_ms - state.offset_ms
            return ts_ms
        self._disagree(state, sample, ts_ms, received_ms, went_back)
        if state.offset_ms and abs(sample - state.offset_ms) <= self.threshold_ms:
            if not state.corrects:
                return ts_ms
            state.corrected += 1  # the step was adopted with this very message
            return ts_ms - state.offset_ms
        if abs(sample) <= self.threshold_ms:
            return ts_ms  # agrees with the hub's clock: a clock coming back, or a late message
        candidate = state.candidate
        if sample > self.threshold_ms or (candidate is not None and candidate.went_back):
            # ahead of the hub (no delay explains that) or stepped back (not confirmed yet):
            # the receive time is the closest the hub knows; the agent's stamp would file it an
            # hour ahead, or on top of what is stored already
            state.corrected += 1
            state.arrival_filed_ms = max(received_ms, state.arrival_filed_ms or received_ms)
            return received_ms
        state.unexplained += 1
        return ts_ms

    def _disagree(
        self, state: AgentSkew, sample: int, ts_ms: int, received_ms: int, went_back: bool
    ) -> None:
        cand = state.candidate
        if cand is None or abs(sample - cand.best_ms) > self.threshold_ms:
            cand = state.candidate = _Candidate(sample, received_ms, went_back=went_back)
        else:
            cand.count += 1
            cand.best_ms = max(cand.best_ms, sample)
            cand.went_back = cand.went_back or went_back
        if cand.count < self.confirm_messages:
            return
        behind = cand.best_ms < state.offset_ms
        proven = not behind or cand.went_back
        if not proven and received_ms - cand.first_received_ms < self.confirm_behind_ms:
            return
        offset = 0 if abs(cand.best_ms) <= self.threshold_ms else cand.best_ms
        if offset and proven and state.arrival_filed_ms is not None:
            # The unconfirmed messages were filed at their arrival, which includes their delay;
            # the offset comes from the least delayed one. With a quick message first and slow
            # ones after, ``ts - offset`` of this and later messages could fall before a slow
            # one's arrival: later points stored before earlier ones (a "latest value" going
            # back in time). Filing this message 1 ms after them keeps the agent's order.
            offset = min(offset, ts_ms - state.arrival_filed_ms - 1)
        previous = state.offset_ms
        state.offset_ms = offset
        state.corrects = proven
        state.candidate = None
        state.steps += 1
        log.warning(
            "agent clock step agent=%s offset_ms=%d previous_ms=%d corrected=%s",
            state.agent,
            offset,
            previous,
            proven,
        )
        for fn in list(self._listeners):
            try:
                fn(state.agent, offset)
            except Exception:  # a listener's bug must not break ingest
                log.exception("clock skew listener failed agent=%s", state.agent)


def describe_offset(offset_ms: int) -> str:
    """``1 h 0 min 0.0 s ahead`` / ``5.0 s behind``: how far an agent's clock is off."""
    tenths = (abs(offset_ms) + 50) // 100  # rounded once, so 3599985 ms is 1 h, not 59 min 60 s
    hours, tenths = divmod(tenths, 36_000)
    minutes, tenths = divmod(tenths, 600)
    parts = [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if hours or minutes else []
    parts.append(f"{tenths // 10}.{tenths % 10} s")
    return f"{' '.join(parts)} {'ahead' if offset_ms > 0 else 'behind'}"


class SkewAlerts(Protocol):
    """What :class:`SkewAlerter` needs of :class:`hub.alerts.AlertBoard`."""

    async def raise_alert(self, key: str, message: str, *, source: str) -> object:
        """Raise ``key`` or update its message."""

    async def clear(self, key: str) -> object:
        """Resolve ``key``."""


def alert_key(agent: str) -> str:
    """The alert board key of an agent's clock skew."""
    return f"clock-skew:{agent}"


class SkewAlerter:
    """Listener of :class:`ClockSkew`: raises ``clock-skew:<agent>`` with the measured offset
    while it is non-zero, resolves it when the clock is back (alert-board calls run as tasks,
    in order per agent)."""

    def __init__(self, board: SkewAlerts) -> None:
        self.board = board
        self._chains: dict[str, asyncio.Task[None]] = {}

    def __call__(self, agent: str, offset_ms: int) -> None:
        previous = self._chains.get(agent)
        self._chains[agent] = asyncio.get_running_loop().create_task(
            self._apply(previous, agent, offset_ms), name=f"clock-skew-{agent}"
        )

    async def _apply(self, previous: asyncio.Task[None] | None, agent: str, offset: int) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # a raise and its clear must not swap places
        try:
            if offset == 0:
                await self.board.clear(alert_key(agent))
                return
            text = describe_offset(offset)
            message = (
                f"边缘主机时钟偏差 {agent}: {text} / agent clock off: {text} "
                f"(offset {offset} ms); check NTP/chrony on the venue PC"
            )
            await self.board.raise_alert(alert_key(agent), message, source="clock-skew")
        except Exception:
            log.exception("clock skew alert not updated agent=%s", agent)

    async def drain(self) -> None:
        """Wait for the alert updates in flight (tests, shutdown)."""
        tasks = list(self._chains.values())
        if tasks:
            await asyncio.wait(tasks)
