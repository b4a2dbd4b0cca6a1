/* The alerts panel on top of the technician page: the hub's alert board (a camera lost, a disk
 * nearly full, a rule's condition). Starts from the snapshot embedded in the page, then follows
 * the board live: its own WebSocket to /ws subscribed to the "alerts" topic carries every change
 * as {"type": "board_alert", "alert": {...}}. Why a second socket: the page's main socket belongs
 * to technician.js, and this panel must also work on its own; it is one small connection.
 * On every (re)connect the panel asks GET /api/v1/alerts once (what changed while it was away);
 * while the socket is down it polls that every data-poll-ms instead, so the panel never freezes.
 *
 * Rows: firing alerts first (newest first), then pending ones (a rule's condition holds but not
 * yet for long enough: shown muted, not counted as alarms); severity by colour + icon + word,
 * state by word, "since <court time>" and a ticking age. A firing alert has an acknowledge
 * button until someone acknowledged it; then the row says who and when. The last resolved ones
 * are collapsed under "已恢复 / Cleared".
 *
 * When the API answers 503 (no alert board) the panel hides; 401/403 stop the polling (the page
 * handles an expired session); a network failure keeps the last list, dimmed. */
(function () {
  "use strict";

  const C = window.Courthub;
  const panel = document.getElementById("alerts-panel");
  if (!panel) {
    return;
  }
  const POLL_MS = Math.max(500, Number(panel.dataset.pollMs) || 4000);
  const MAX_BACKOFF_MS = 30000;
  const MAX_CLEARED = 10;
  const ICONS = { critical: "#i-offline", warning: "#i-fault", info: "#i-info" };
  const RANK = { critical: 3, warning: 2, info: 1 };
  const STATE_TEXT = {
    pending: "js.alerts.state_pending",
    firing: "js.alerts.state_firing",
    resolved: "js.alerts.state_resolved",
  };
  const url = panel.dataset.url || "/api/v1/alerts";
  const tpl = document.getElementById("tpl-alert");
  const activeList = panel.querySelector('[data-testid="alerts-active"]');
  const emptyEl = panel.querySelector('[data-testid="alerts-empty"]');
  const countEl = panel.querySelector('[data-testid="alerts-count"]');
  const pendingEl = panel.querySelector('[data-testid="alerts-pending-count"]');
  const clearedBox = panel.querySelector('[data-testid="alerts-cleared"]');
  const clearedList = panel.querySelector('[data-testid="alerts-cleared-list"]');
  const clearedCount = panel.querySelector('[data-testid="alerts-cleared-count"]');

  /* the model: active (pending + firing) by key, resolved ones by id */
  let active = new Map();
  let cleared = new Map();
  const busy = new Set(); /* ids being acknowledged */
  const errors = new Map(); /* id -> text of the last failed acknowledgement */
  let failures = 0;
  let timer = null;
  let socketUp = false;

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function severityOf(alert) {
    return Object.prototype.hasOwnProperty.call(ICONS, alert.severity) ? alert.severity : "info";
  }

  function stateOf(alert) {
    if (alert.state === "pending" || alert.state === "resolved") {
      return alert.state;
    }
    return alert.cleared_ms ? "resolved" : "firing";
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) {
      return C.t("js.alerts.dur_s", { n: s });
    }
    if (s < 3600) {
      return C.t("js.alerts.dur_m", { n: Math.floor(s / 60) });
    }
    if (s < 86400) {
      return C.t("js.alerts.dur_h", { n: Math.floor(s / 3600) });
    }
    return C.t("js.alerts.dur_d", { n: Math.floor(s / 86400) });
  }

  function setTime(el, ms, text) {
    el.dataset.tsMs = String(ms || 0);
    el.dateTime = ms ? new Date(ms).toISOString() : "";
    el.title = ms ? C.formatTime(ms) + " (" + C.zone + ")" : "";
    el.textContent = text;
  }

  function row(alert) {
    const li = tpl.content.firstElementChild.cloneNode(true);
    const severity = severityOf(alert);
    const state = stateOf(alert);
    li.dataset.severity = severity;
    li.dataset.state = state;
    li.dataset.key = alert.key || "";
    li.dataset.id = String(alert.id || 0);
    li.title = alert.key || "";
    field(li, "icon").setAttribute("href", ICONS[severity]);
    field(li, "sev-label").textContent = C.t("js.alerts." + severity);
    field(li, "state").textContent = C.t(STATE_TEXT[state]);
    field(li, "message").textContent = alert.message || alert.key || "";
    field(li, "source").textContent = alert.source || "";
    const since = field(li, "since");
    const age = field(li, "age");
    const fired = alert.fired_ms || alert.raised_ms;
    if (state === "resolved") {
      li.dataset.cleared = "true";
      const text = C.t("js.alerts.cleared_at", {
        from: C.formatTime(fired).slice(5),
        to: C.formatTime(alert.cleared_ms).slice(5),
        duration: duration(alert.cleared_ms - fired),
      });
      setTime(since, alert.cleared_ms, text);
      age.remove();
    } else if (state === "pending") {
      setTime(since, alert.pending_ms, C.t("js.alerts.pending_since", { time: C.formatTime(alert.pending_ms) }));
      setTime(age, alert.pending_ms, C.age(alert.pending_ms));
    } else {
      setTime(since, fired, C.t("js.alerts.since", { time: C.formatTime(fired) }));
      setTime(age, fired, C.age(fired));
    }
    const acked = field(li, "acked");
    const ack = field(li, "ack");
    if (alert.acked_by) {
      acked.hidden = false;
      acked.textContent = C.t("js.alerts.acked", { user: alert.acked_by, time: C.formatTime(alert.acked_ms) });
      li.dataset.acked = "true";
    }
    if (state === "firing" && !alert.acked_by && alert.id) {
      ack.hidden = false;
      ack.dataset.id = String(alert.id);
      if (busy.has(alert.id)) {
        ack.disabled = true;
        ack.textContent = C.t("js.alerts.acking");
      }
    } else {
      ack.remove();
    }
    const error = errors.get(alert.id);
    if (error && state === "firing") {
      const el = field(li, "error");
      el.hidden = false;
      el.textContent = error;
    }
    return li;
  }

  function newestFirst(key) {
    return function (a, b) {
      return (b[key] || 0) - (a[key] || 0) || (b.id || 0) - (a.id || 0);
    };
  }

  function render() {
    const all = Array.from(active.values());
    const firing = all.filter(function (a) {
      return stateOf(a) === "firing";
    });
    const pending = all.filter(function (a) {
      return stateOf(a) === "pending";
    });
    firing.sort(newestFirst("raised_ms"));
    pending.sort(newestFirst("pending_ms"));
    const resolved = Array.from(cleared.values()).sort(newestFirst("cleared_ms")).slice(0, MAX_CLEARED);
    const rows = firing.concat(pending);
    activeList.replaceChildren.apply(activeList, rows.map(row));
    clearedList.replaceChildren.apply(clearedList, resolved.map(row));
    let worst = "";
    for (const alert of firing) {
      const severity = severityOf(alert);
      if (!worst || RANK[severity] > RANK[worst]) {
        worst = severity;
      }
    }
    panel.dataset.worst = worst;
    countEl.textContent = String(firing.length);
    pendingEl.textContent = String(pending.length);
    pendingEl.hidden = pending.length === 0;
    emptyEl.hidden = rows.length > 0;
    activeList.hidden = rows.length === 0;
    clearedCount.textContent = String(resolved.length);
    clearedBox.hidden = resolved.length === 0;
    panel.hidden = false;
    delete panel.dataset.stale;
    panel.removeAttribute("title");
  }

  function applySnapshot(data) {
    active = new Map();
    for (const alert of (Array.isArray(data.active) ? data.active : []).concat(
      Array.isArray(data.pending) ? data.pending : []
    )) {
      active.set(alert.key, alert);
    }
    cleared = new Map();
    for (const alert of Array.isArray(data.history) ? data.history : []) {
      if (alert.cleared_ms) {
        cleared.set(alert.id, alert);
      }
    }
    render();
  }

  /* one change of the board (pushed, or the answer to an acknowledgement) */
  function applyChange(alert) {
    if (!alert || !alert.key) {
      return;
    }
    const state = stateOf(alert);
    const current = active.get(alert.key);
    if (state === "resolved") {
      /* a withdrawn pending alert (id 0) only leaves the list; a fired one joins "cleared" */
      if (current && (current.id || 0) === (alert.id || 0)) {
        active.delete(alert.key);
      }
      if (alert.id) {
        cleared.set(alert.id, alert);
        errors.delete(alert.id);
      }
    } else if (!(state === "pending" && current && stateOf(current) === "firing")) {
      active.set(alert.key, alert);
    }
    render();
  }

  /* GET /api/v1/alerts --------------------------------------------------------------------------- */
  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  async function refresh() {
    clearTimeout(timer);
    if (document.hidden && !socketUp) {
      schedule(POLL_MS); /* nobody is looking: ask again when the tab shows (visibilitychange) */
      return;
    }
    const response = await C.api("GET", url);
    if (response.ok && response.data) {
      failures = 0;
      applySnapshot(response.data);
      if (!socketUp) {
        schedule(POLL_MS);
      }
      return;
    }
    if (response.status === 401 || response.status === 403) {
      return; /* signed out or no longer allowed: the page itself will say so */
    }
    failures += 1;
    if (response.status === 503) {
      panel.hidden = true; /* no alert board: show nothing */
    } else {
      panel.dataset.stale = "true";
      panel.title = C.t("js.alerts.stale");
    }
    schedule(Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, failures)));
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && !socketUp) {
      schedule(0);
    }
  });

  /* the live socket -------------------------------------------------------------------------------- */
  let attempt = 0;
  let leaving = false;

  function connect() {
    if (typeof WebSocket === "undefined") {
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + "/ws");
    socket.onopen = function () {
      socket.send(JSON.stringify({ subscribe: ["alerts"] }));
    };
    socket.onmessage = function (event) {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      for (const message of Array.isArray(data) ? data : [data]) {
        if (message.type === "subscribed" && (message.topics || []).indexOf("alerts") >= 0) {
          attempt = 0;
          socketUp = true;
          panel.dataset.live = "true";
          refresh(); /* what changed while the socket was away */
        } else if (message.type === "board_alert") {
          applyChange(message.alert);
        }
      }
    };
    socket.onclose = function () {
      const wasUp = socketUp;
      socketUp = false;
      delete panel.dataset.live;
      if (leaving) {
        return;
      }
      if (wasUp) {
        schedule(POLL_MS); /* poll until the socket is back */
      }
      const delay = Math.min(30, Math.pow(2, attempt)) * (0.75 + Math.random() * 0.5);
      attempt += 1;
      setTimeout(connect, delay * 1000);
    };
  }

  window.addEventListener("pagehide", function () {
    leaving = true;
  });

  /* acknowledging ---------------------------------------------------------------------------------- */
  async function acknowledge(id) {
    if (busy.has(id)) {
      return;
    }
    busy.add(id);
    errors.delete(id);
    render();
    const response = await C.api("POST", url + "/" + encodeURIComponent(String(id)) + "/ack", {});
    busy.delete(id);
    if (response.ok && response.data) {
      applyChange(response.data);
      return;
    }
    const error = (response.data && response.data.error) || response.error || String(response.status);
    errors.set(id, C.t("js.alerts.ack_failed", { error: error }));
    render();
    if (response.status === 409 || response.status === 404) {
      refresh(); /* someone else acknowledged it, or it resolved: show how things are */
    }
  }

  activeList.addEventListener("click", function (event) {
    const button = event.target.closest("button.alert-ack");
    if (button && activeList.contains(button)) {
      acknowledge(Number(button.dataset.id));
    }
  });

  /* ages tick every second against the hub's clock */
  setInterval(function () {
    for (const el of activeList.querySelectorAll("time.alert-age")) {
      el.textContent = C.age(Number(el.dataset.tsMs));
    }
  }, 1000);

  const initial = document.getElementById("alerts-initial");
  let snapshot = null;
  try {
    snapshot = initial ? JSON.parse(initial.textContent || "null") : null;
  } catch (err) {
    snapshot = null;
  }
  if (snapshot) {
    applySnapshot(snapshot);
    schedule(POLL_MS); /* until the socket is up (then it stops polling) */
  } else {
    schedule(0);
  }
  connect();
})();
