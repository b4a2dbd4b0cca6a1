/* The alerts panel on top of the technician page: the hub's alert board (a camera lost, a disk
 * nearly full). Starts from the snapshot embedded in the page, then polls GET /api/v1/alerts
 * every data-poll-ms (4 s: simple, and it survives hub restarts with no socket state). Active
 * alerts newest first with severity colour + icon + word, the message, the source, "since <court
 * time>" and a ticking age; the last cleared ones collapsed under "已恢复 / Cleared".
 *
 * When the API answers 503 (the recorder is not running) the panel hides and polling slows
 * down; 401/403 stop it (the page's live socket handles an expired session); a network failure
 * keeps the last list, dimmed. Nothing is logged from here: the browser already notes failed
 * requests, and a technician needs no error spam. */
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
  const url = panel.dataset.url || "/api/v1/alerts";
  const tpl = document.getElementById("tpl-alert");
  const activeList = panel.querySelector('[data-testid="alerts-active"]');
  const emptyEl = panel.querySelector('[data-testid="alerts-empty"]');
  const countEl = panel.querySelector('[data-testid="alerts-count"]');
  const clearedBox = panel.querySelector('[data-testid="alerts-cleared"]');
  const clearedList = panel.querySelector('[data-testid="alerts-cleared-list"]');
  const clearedCount = panel.querySelector('[data-testid="alerts-cleared-count"]');
  let failures = 0;
  let timer = null;

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function severityOf(alert) {
    return Object.prototype.hasOwnProperty.call(ICONS, alert.severity) ? alert.severity : "info";
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
    li.dataset.severity = severity;
    li.dataset.key = alert.key || "";
    li.dataset.id = String(alert.id);
    li.title = alert.key || "";
    field(li, "icon").setAttribute("href", ICONS[severity]);
    field(li, "sev-label").textContent = C.t("js.alerts." + severity);
    field(li, "message").textContent = alert.message || alert.key || "";
    field(li, "source").textContent = alert.source || "";
    const since = field(li, "since");
    const age = field(li, "age");
    if (alert.cleared_ms) {
      li.dataset.cleared = "true";
      const text = C.t("js.alerts.cleared_at", {
        from: C.formatTime(alert.raised_ms).slice(5),
        to: C.formatTime(alert.cleared_ms).slice(5),
        duration: duration(alert.cleared_ms - alert.raised_ms),
      });
      setTime(since, alert.cleared_ms, text);
      age.remove();
    } else {
      setTime(since, alert.raised_ms, C.t("js.alerts.since", { time: C.formatTime(alert.raised_ms) }));
      setTime(age, alert.raised_ms, C.age(alert.raised_ms));
    }
    return li;
  }

  function newestFirst(key) {
    return function (a, b) {
      return (b[key] || 0) - (a[key] || 0) || b.id - a.id;
    };
  }

  function render(data) {
    const active = (Array.isArray(data.active) ? data.active : []).slice().sort(newestFirst("raised_ms"));
    const cleared = (Array.isArray(data.history) ? data.history : [])
      .filter(function (a) {
        return a.cleared_ms;
      })
      .sort(newestFirst("cleared_ms"))
      .slice(0, MAX_CLEARED);
    activeList.replaceChildren.apply(activeList, active.map(row));
    clearedList.replaceChildren.apply(clearedList, cleared.map(row));
    let worst = "";
    for (const alert of active) {
      const severity = severityOf(alert);
      if (!worst || RANK[severity] > RANK[worst]) {
        worst = severity;
      }
    }
    panel.dataset.worst = worst;
    countEl.textContent = String(active.length);
    emptyEl.hidden = active.length > 0;
    activeList.hidden = active.length === 0;
    clearedCount.textContent = String(cleared.length);
    clearedBox.hidden = cleared.length === 0;
    panel.hidden = false;
    delete panel.dataset.stale;
    panel.removeAttribute("title");
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  async function poll() {
    if (document.hidden) {
      schedule(POLL_MS); /* nobody is looking: ask again when the tab shows (visibilitychange) */
      return;
    }
    const response = await C.api("GET", url);
    if (response.ok && response.data) {
      failures = 0;
      render(response.data);
      schedule(POLL_MS);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      return; /* signed out or no longer allowed: the page itself will say so */
    }
    failures += 1;
    if (response.status === 503) {
      panel.hidden = true; /* no alert board (the recorder is not running): show nothing */
    } else {
      panel.dataset.stale = "true";
      panel.title = C.t("js.alerts.stale");
    }
    schedule(Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, failures)));
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      schedule(0);
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
    render(snapshot);
    schedule(POLL_MS);
  } else {
    schedule(0);
  }
})();
