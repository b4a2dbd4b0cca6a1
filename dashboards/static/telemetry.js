/* Telemetry charts of one device (or every device of a venue): one Chart.js line chart per metric
 * (average, in its min–max band for a device; one line per device for a venue), a state timeline
 * (online green, stale amber, offline grey, fault red, no record hatched) and the alerts that name
 * the device. Range buttons pick 15 min / 6 h / 7 d; the 15 min range redraws every ~10 s.
 * Times are the court's (Courthub.formatTime). Reads GET /api/v1/telemetry/... and
 * GET /api/v1/alerts; a chart that cannot load says so in its card, the others carry on. */
(function () {
  "use strict";

  const C = window.Courthub;
  const Chart = window.Chart;
  const cfgEl = document.getElementById("telemetry-config");
  if (!cfgEl || !Chart) {
    return;
  }
  const cfg = JSON.parse(cfgEl.textContent || "{}");
  const COLORS = ["#2a64a8", "#1a7f37", "#b34700", "#7b3fa0", "#00838f", "#9a6700", "#c2185b",
    "#455a64"];
  const STATES = ["online", "stale", "offline", "fault", "unknown"];
  const ALERT_POLL_MS = 10000;
  const MAX_ALERTS = 50;
  const rangeButtons = document.querySelectorAll(".tm-range");
  const chartsEl = document.getElementById("tm-charts");
  const updatedEl = document.getElementById("tm-updated");
  const charts = new Map();
  let range = cfg.range || "15m";
  let generation = 0;
  let refreshTimer = null;
  let stopped = false;

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function colorOf(i) {
    return COLORS[i % COLORS.length];
  }

  function translucent(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  /* ticks: the court's wall clock; the day too on the 7 d range */
  function tick(ms) {
    const text = C.formatTime(ms);
    return range === "7d" ? text.slice(5, 16) : text.slice(11, 16);
  }

  /* tick positions on whole court-time minutes / hours / days, whatever the range's start */
  const TICK_STEP = { "15m": 3 * 60000, "6h": 3600000, "7d": 86400000 };

  function zoneOffsetMs(ms) {
    const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(C.formatTime(ms));
    if (!m) {
      return 0;
    }
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) - Math.floor(ms / 1000) * 1000;
  }

  function alignedTicks(scale) {
    const step = TICK_STEP[range] || 3600000;
    const offset = zoneOffsetMs(scale.min);
    const first = Math.ceil((scale.min + offset) / step) * step - offset;
    const ticks = [];
    for (let v = first; v <= scale.max && ticks.length < 60; v += step) {
      ticks.push({ value: v });
    }
    scale.ticks = ticks;
  }

  /* a state reason in the page's language (the technician page's table; raw when unknown) */
  const REASON_RULES = C.reasonRules(cfg.reason_rules);

  function reasonText(reason) {
    return C.reasonText(reason, REASON_RULES);
  }

  function stateLabel(state) {
    return state === "unknown" ? C.t("js.telemetry.unknown") : C.t("state." + state);
  }

  function number(value) {
    return Math.abs(value) >= 1e5 || (value !== 0 && Math.abs(value) < 1e-3)
      ? value.toExponential(3)
      : String(Math.round(value * 1000) / 1000);
  }

  /* a null point where samples stop for much longer than usual, so an outage is a gap */
  function withGaps(points, key) {
    const out = [];
    if (points.length < 3) {
      return points.map(function (p) { return { x: p.ts, y: p[key] }; });
    }
    const steps = [];
    for (let i = 1; i < points.length; i++) {
      steps.push(points[i].ts - points[i - 1].ts);
    }
    steps.sort(function (a, b) { return a - b; });
    const limit = Math.max(3 * steps[Math.floor(steps.length / 2)], 1000);
    for (let i = 0; i < points.length; i++) {
      if (i > 0 && points[i].ts - points[i - 1].ts > limit) {
        out.push({ x: (points[i].ts + points[i - 1].ts) / 2, y: null });
      }
      out.push({ x: points[i].ts, y: points[i][key] });
    }
    return out;
  }

  /* charts -------------------------------------------------------------------------------------- */
  function makeChart(canvas) {
    return new Chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        parsing: false,
        normalized: true,
        spanGaps: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        elements: { point: { radius: 0, hitRadius: 6 }, line: { borderWidth: 1.6, tension: 0 } },
        scales: {
          x: {
            type: "linear",
            afterBuildTicks: alignedTicks,
            ticks: { maxTicksLimit: 7, maxRotation: 0, callback: function (v) { return tick(v); } },
          },
          y: { ticks: { maxTicksLimit: 6 } },
        },
        plugins: {
          legend: {
            display: cfg.mode === "venue",
            labels: { filter: function (item, data) { return !data.datasets[item.datasetIndex].band; } },
          },
          tooltip: {
            filter: function (item) { return !item.dataset.band; },
            callbacks: {
              title: function (items) { return items.length ? C.formatTime(items[0].parsed.x) : ""; },
              label: function (item) {
                return item.dataset.label + ": " + number(item.parsed.y);
              },
            },
          },
        },
      },
    });
  }

  function chartOf(card) {
    const metric = card.dataset.metric;
    let chart = charts.get(metric);
    if (!chart) {
      chart = makeChart(card.querySelector("canvas"));
      charts.set(metric, chart);
    }
    return chart;
  }

  function deviceDatasets(points, color) {
    return [
      { label: C.t("js.telemetry.avg"), data: withGaps(points, "avg"), borderColor: color,
        backgroundColor: color, fill: false },
      { label: C.t("js.telemetry.min"), band: true, data: withGaps(points, "min"),
        borderColor: "transparent", borderWidth: 0, fill: false },
      { label: C.t("js.telemetry.max"), band: true, data: withGaps(points, "max"),
        borderColor: "transparent", borderWidth: 0, fill: "-1",
        backgroundColor: translucent(color, 0.18) },
    ];
  }

  function venueDatasets(series) {
    return series.map(function (s, i) {
      const color = colorOf(i);
      return { label: s.device, data: withGaps(s.points, "avg"), borderColor: color,
        backgroundColor: color, fill: false };
    });
  }

  function showChart(card, index, body) {
    const chart = chartOf(card);
    let datasets;
    let latest = null;
    if (cfg.mode === "venue") {
      datasets = venueDatasets(body.series || []);
    } else {
      const points = body.points || [];
      datasets = deviceDatasets(points, colorOf(index));
      latest = points.length ? points[points.length - 1] : null;
    }
    const hasData = datasets.some(function (d) { return d.data.length > 0; });
    chart.data.datasets = datasets;
    chart.options.scales.x.min = body.start_ms;
    chart.options.scales.x.max = body.end_ms;
    chart.update("none");
    const empty = field(card, "empty");
    empty.hidden = hasData;
    empty.textContent = hasData ? "" : C.t("js.telemetry.no_points");
    field(card, "last").textContent = latest
      ? C.t("js.telemetry.last", { value: number(latest.avg), time: C.formatTime(latest.ts) })
      : "";
    card.dataset.points = String(datasets.length ? datasets[0].data.length : 0);
  }

  function showChartError(card, error) {
    const empty = field(card, "empty");
    empty.hidden = false;
    empty.textContent = C.t("js.telemetry.failed", { error: error });
  }

  async function loadChart(card, index, gen) {
    const url = cfg.base + "/series?metric=" + encodeURIComponent(card.dataset.metric) +
      "&range=" + encodeURIComponent(range);
    const r = await C.api("GET", url);
    if (gen !== generation) {
      return r; /* the range changed meanwhile: a newer load draws this card */
    }
    if (r.ok) {
      showChart(card, index, r.data);
    } else {
      showChartError(card, r.error);
    }
    return r;
  }

  /* state timeline ------------------------------------------------------------------------------ */
  function showStates(row, body) {
    const bar = field(row, "bar");
    const list = field(row, "list");
    const span = Math.max(1, body.end_ms - body.start_ms);
    bar.textContent = "";
    list.textContent = "";
    for (const seg of body.segments) {
      const state = STATES.indexOf(seg.state) >= 0 ? seg.state : "unknown";
      const text = C.t("js.telemetry.span", {
        state: stateLabel(state),
        from: C.formatTime(seg.start_ms),
        to: C.formatTime(seg.end_ms),
      });
      const el = document.createElement("span");
      el.className = "tm-seg state-" + state;
      el.dataset.state = state;
      el.setAttribute("data-testid", "state-span");
      el.dataset.startMs = String(seg.start_ms);
      el.dataset.endMs = String(seg.end_ms);
      el.style.left = ((seg.start_ms - body.start_ms) / span) * 100 + "%";
      el.style.width = Math.max(0.15, ((seg.end_ms - seg.start_ms) / span) * 100) + "%";
      const reason = reasonText(seg.reason);
      el.title = text + (reason ? " · " + reason : "");
      bar.appendChild(el);
      if (state !== "online") {
        const li = document.createElement("li");
        li.className = "state-" + state;
        li.dataset.state = state;
        li.textContent = text + (reason ? " · " + reason : "");
        list.appendChild(li);
      }
    }
    row.dataset.loaded = "true";
    return body.truncated === true;
  }

  async function loadStates(gen) {
    const rows = document.querySelectorAll('[data-testid="state-row"]');
    let truncated = false;
    let end = null;
    for (const row of rows) {
      const parts = (row.dataset.device || "").split("/");
      const url = "/api/v1/telemetry/" + encodeURIComponent(parts[0]) + "/" +
        encodeURIComponent(parts.slice(1).join("/")) + "/states?range=" + encodeURIComponent(range);
      const r = await C.api("GET", url);
      if (gen !== generation) {
        return r;
      }
      if (!r.ok) {
        field(row, "bar").title = C.t("js.telemetry.failed", { error: r.error });
        if (r.status === 401 || r.status === 403) {
          return r;
        }
        continue;
      }
      truncated = showStates(row, r.data) || truncated;
      end = r.data;
    }
    if (end) {
      document.getElementById("tm-start").textContent = C.formatTime(end.start_ms);
      document.getElementById("tm-end").textContent = C.formatTime(end.end_ms);
    }
    const note = document.getElementById("tm-truncated");
    note.hidden = !truncated;
    note.textContent = truncated ? C.t("js.telemetry.truncated") : "";
    return null;
  }

  /* alerts -------------------------------------------------------------------------------------- */
  function mentions(alert) {
    const text = String(alert.key || "") + " " + String(alert.source || "");
    const tokens = new Set(text.split(/[^A-Za-z0-9_-]+/));
    if (cfg.venue && tokens.has(cfg.venue)) {
      return true;
    }
    return (cfg.devices || []).some(function (d) {
      return text.indexOf(d.agent + "/" + d.device) >= 0 || tokens.has(d.device);
    });
  }

  function showAlerts(body) {
    const seen = new Map();
    /* firing, pending (not an alarm yet: no id) and the history; an alert may be in two lists */
    for (const a of [].concat(body.active || [], body.pending || [], body.history || [])) {
      const key = a.id ? "id:" + a.id : "key:" + a.key + "@" + (a.pending_ms || a.raised_ms);
      if (!seen.has(key) && mentions(a)) {
        seen.set(key, a);
      }
    }
    const alerts = Array.from(seen.values()).sort(function (a, b) {
      return (b.raised_ms || 0) - (a.raised_ms || 0);
    }).slice(0, MAX_ALERTS);
    const list = document.getElementById("tm-alert-list");
    list.textContent = "";
    for (const a of alerts) {
      const severity = ["critical", "warning", "info"].indexOf(a.severity) >= 0 ? a.severity : "info";
      const li = document.createElement("li");
      li.className = "tm-alert sev-" + severity + (a.cleared_ms ? " cleared" : "");
      li.setAttribute("data-testid", "telemetry-alert");
      li.dataset.key = a.key || "";
      li.dataset.active = a.cleared_ms ? "false" : "true";
      li.dataset.state = a.state || (a.cleared_ms ? "resolved" : "firing");
      const sev = document.createElement("span");
      sev.className = "tm-alert-sev";
      sev.textContent = C.t("js.alerts." + severity);
      const msg = document.createElement("span");
      msg.className = "tm-alert-msg";
      msg.textContent = a.message || a.key || "";
      const when = document.createElement("span");
      when.className = "tm-alert-when muted";
      let status = C.t("js.telemetry.active");
      if (a.cleared_ms) {
        status = C.t("js.telemetry.cleared", { time: C.formatTime(a.cleared_ms) });
      } else if (a.state === "pending") {
        status = C.t("js.telemetry.pending");
      }
      when.textContent = C.formatTime(a.raised_ms || a.pending_ms) + " · " + status;
      li.append(sev, msg, when);
      list.appendChild(li);
    }
    document.getElementById("tm-alerts-empty").hidden = alerts.length > 0;
  }

  async function pollAlerts() {
    if (!cfg.alerts_url || stopped) {
      return;
    }
    const r = await C.api("GET", cfg.alerts_url);
    if (r.ok && r.data) {
      showAlerts(r.data);
    }
    if (r.status === 401 || r.status === 403) {
      return; /* signed out: the shell's socket check takes the user to the login page */
    }
    setTimeout(pollAlerts, ALERT_POLL_MS);
  }

  /* loading and refreshing ---------------------------------------------------------------------- */
  async function loadAll() {
    const gen = ++generation;
    clearTimeout(refreshTimer);
    chartsEl.dataset.loading = range;
    const cards = Array.from(chartsEl.querySelectorAll('[data-testid="chart-card"]'));
    const results = await Promise.all(
      [loadStates(gen)].concat(cards.map(function (card, i) { return loadChart(card, i, gen); }))
    );
    if (gen !== generation) {
      return;
    }
    chartsEl.dataset.loaded = range;
    chartsEl.dataset.loading = "";
    updatedEl.textContent = C.t("js.telemetry.updated", { time: C.formatTime(C.now()) });
    if (results.some(function (r) { return r && (r.status === 401 || r.status === 403); })) {
      stopped = true;
      return;
    }
    const every = (cfg.refresh_ms || {})[range] || 0;
    if (every > 0) {
      refreshTimer = setTimeout(loadAll, every);
    }
  }

  function pick(name) {
    if (name === range && chartsEl.dataset.loaded === name) {
      return;
    }
    range = name;
    for (const btn of rangeButtons) {
      const on = btn.dataset.range === name;
      btn.classList.toggle("active", on);
      btn.setAttribute("aria-pressed", on ? "true" : "false");
    }
    loadAll();
  }

  for (const btn of rangeButtons) {
    btn.addEventListener("click", function () { pick(btn.dataset.range); });
  }
  if (cfg.alerts) {
    showAlerts(cfg.alerts);
  }
  if (cfg.store) {
    loadAll();
  } else {
    loadStates(++generation);
  }
  if (cfg.alerts_url) {
    setTimeout(pollAlerts, ALERT_POLL_MS);
  }
})();
