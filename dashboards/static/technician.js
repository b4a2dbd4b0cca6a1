/* Technician's device page: keeps the server-rendered cards current over the live socket, ticks
 * the "last seen" ages, and runs device commands through the hub, showing each outcome inline. */
(function () {
  "use strict";

  const C = window.Courthub;
  const STATES = ["online", "stale", "offline", "fault"];
  const MAX_METRICS = 8;
  const venuesEl = document.getElementById("venues");
  const emptyEl = document.getElementById("no-devices");
  const tplVenue = document.getElementById("tpl-venue");
  const tplDevice = document.getElementById("tpl-device");
  const tplAgent = document.getElementById("tpl-agent");
  const VENUE_ORDER = (venuesEl.dataset.venueOrder || "").split(",").filter(Boolean);
  const rulesEl = document.getElementById("reason-rules");
  const REASON_RULES = C.reasonRules(rulesEl ? JSON.parse(rulesEl.textContent) : []);

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function clone(template) {
    return template.content.firstElementChild.cloneNode(true);
  }

  /* where ``el`` goes among ``parent``'s children so that they stay sorted by ``keyOf`` (the
   * server's order), moved only when out of place */
  function compareKeys(a, b) {
    for (let i = 0; i < a.length; i++) {
      if (a[i] !== b[i]) {
        return a[i] < b[i] ? -1 : 1;
      }
    }
    return 0;
  }

  function placeSorted(parent, el, keyOf) {
    const key = keyOf(el);
    let before = null;
    for (const other of parent.children) {
      if (other !== el && compareKeys(keyOf(other), key) > 0) {
        before = other;
        break;
      }
    }
    if (el.parentElement === parent && el.nextElementSibling === before) {
      const prev = el.previousElementSibling;
      if (!prev || compareKeys(keyOf(prev), key) <= 0) {
        return;
      }
    }
    parent.insertBefore(el, before);
  }

  function reasonText(reason) {
    return C.reasonText(reason, REASON_RULES);
  }

  function cardOf(agent, device) {
    return venuesEl.querySelector('.device[data-device="' + CSS.escape(agent + "/" + device) + '"]');
  }

  /* venues ------------------------------------------------------------------------------------ */
  function venueKey(venue, agentId) {
    return venue && venue.id ? venue.id : "agent:" + agentId;
  }

  function ensureVenue(venue, agentId) {
    const key = venueKey(venue, agentId);
    let section = venuesEl.querySelector('.venue[data-venue="' + CSS.escape(key) + '"]');
    if (!section) {
      section = clone(tplVenue);
      section.dataset.venue = key;
    }
    const kind = (venue && venue.kind) || "";
    const name = (venue && (venue.name || venue.id)) || agentId;
    const kindLabel = kind ? C.t("venue." + kind) : "";
    section.dataset.kind = kind;
    field(section, "venue-name").textContent = name;
    const kindEl = field(section, "venue-kind");
    kindEl.hidden = !kindLabel || kindLabel === name;
    kindEl.textContent = kindEl.hidden ? "" : kindLabel;
    placeSorted(venuesEl, section, venueSortKey);
    return section;
  }

  /* the server's order: by kind (a hall first), then name, then key */
  function venueSortKey(section) {
    const rank = VENUE_ORDER.indexOf(section.dataset.kind || "");
    const padded = String(rank < 0 ? VENUE_ORDER.length : rank).padStart(4, "0");
    return [padded, field(section, "venue-name").textContent, section.dataset.venue || ""];
  }

  function pruneVenues() {
    for (const section of venuesEl.querySelectorAll(".venue")) {
      if (!section.querySelector(".device") && !section.querySelector(".agent")) {
        section.remove();
      }
    }
  }

  /* agents ------------------------------------------------------------------------------------ */
  function upsertAgent(agent) {
    const section = ensureVenue(agent.venue, agent.id);
    const list = field(section, "agents");
    let chip = venuesEl.querySelector('.agent[data-agent="' + CSS.escape(agent.id) + '"]');
    if (!chip) {
      chip = clone(tplAgent);
    }
    chip.dataset.agent = agent.id;
    placeSorted(list, chip, function (el) {
      return [el.dataset.agent || ""];
    });
    chip.dataset.online = agent.online ? "true" : "false";
    chip.querySelector("use").setAttribute("href", agent.online ? "#i-online" : "#i-offline");
    field(chip, "agent-id").textContent = agent.id;
    field(chip, "agent-state").textContent = C.t(agent.online ? "agent.online" : "agent.offline");
    field(chip, "agent-version").textContent = agent.version || "";
  }

  /* devices ----------------------------------------------------------------------------------- */
  function setState(card, state, reason) {
    for (const s of STATES) {
      card.classList.remove("state-" + s);
    }
    card.classList.add("state-" + state);
    card.dataset.state = state;
    field(card, "state-icon").setAttribute("href", "#i-" + state);
    field(card, "state-label").textContent = C.t("state." + state);
    const reasonEl = field(card, "reason");
    reasonEl.textContent = reasonText(reason);
    reasonEl.title = reason || "";
    reasonEl.hidden = !reason;
    syncCommands(card);
  }

  /* the hub refuses commands to an offline device, so its buttons are off while it is */
  function syncCommands(card) {
    const offline = card.dataset.state === "offline";
    for (const button of card.querySelectorAll("button.cmd")) {
      button.disabled = offline || card.dataset.busy === "true";
      if (offline) {
        button.title = C.t("cmd.offline");
      } else {
        button.removeAttribute("title");
      }
    }
  }

  function setTime(el, ms, text) {
    el.dataset.tsMs = String(ms || 0);
    el.dateTime = ms ? new Date(ms).toISOString() : "";
    el.title = ms ? C.formatTime(ms) : "";
    el.textContent = text;
  }

  function setSeen(card, ms) {
    setTime(field(card, "last-seen"), ms, C.age(ms));
  }

  function formatNumber(value) {
    if (typeof value !== "number" || !isFinite(value)) {
      return String(value);
    }
    return Number.isInteger(value) ? String(value) : String(+value.toPrecision(6));
  }

  function setMetrics(card, metrics) {
    const list = field(card, "metrics");
    const names = Object.keys(metrics || {}).sort().slice(0, MAX_METRICS);
    const rows = names.map(function (name) {
      const row = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = formatNumber(metrics[name]);
      row.append(dt, dd);
      return row;
    });
    list.replaceChildren.apply(list, rows);
    list.hidden = rows.length === 0;
  }

  function setCommands(card, capabilities) {
    const box = field(card, "commands");
    const current = Array.from(box.children, function (b) {
      return b.dataset.command;
    });
    if (current.join("\n") === capabilities.join("\n")) {
      return;
    }
    const buttons = capabilities.map(function (name) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn small cmd";
      button.dataset.command = name;
      button.dataset.testid = "command-button";
      button.textContent = capabilityLabel(name);
      return button;
    });
    box.replaceChildren.apply(box, buttons);
    field(card, "args-box").hidden = buttons.length === 0;
    syncCommands(card);
  }

  function upsertDevice(device) {
    const section = ensureVenue(device.venue, device.agent);
    const grid = field(section, "devices");
    let card = cardOf(device.agent, device.id);
    if (!card) {
      card = clone(tplDevice);
    }
    card.dataset.device = device.agent + "/" + device.id;
    card.dataset.agent = device.agent;
    placeSorted(grid, card, function (el) {
      const key = el.dataset.device || "";
      const slash = key.indexOf("/");
      return [key.slice(0, slash), key.slice(slash + 1)];
    });
    setState(card, device.state, device.state_reason);
    field(card, "id").textContent = device.id;
    field(card, "kind").textContent = device.kind || "";
    field(card, "model").textContent = device.model || "—";
    field(card, "model").title = device.model || "";
    field(card, "firmware").textContent = device.firmware || "—";
    field(card, "firmware").title = device.firmware || "";
    field(card, "bad-messages").textContent = String(device.bad_messages || 0);
    setSeen(card, device.last_seen_ms);
    setTime(field(card, "since"), device.state_since_ms, C.formatTime(device.state_since_ms).slice(5, 16));
    setMetrics(card, device.metrics);
    setCommands(card, device.capabilities || []);
  }

  function removeDevice(agent, device) {
    const card = cardOf(agent, device);
    if (card) {
      card.remove();
    }
  }

  function flash(card) {
    card.classList.remove("flash");
    void card.offsetWidth; /* restart the animation */
    card.classList.add("flash");
  }

  function recount() {
    for (const state of STATES) {
      const count = venuesEl.querySelectorAll('.device[data-state="' + state + '"]').length;
      const item = document.querySelector('[data-summary="' + state + '"] .summary-count');
      if (item) {
        item.textContent = String(count);
      }
    }
    emptyEl.hidden = venuesEl.querySelector(".venue") !== null;
  }

  /* live messages ------------------------------------------------------------------------------- */
  function applySnapshot(message) {
    const agents = new Set();
    const devices = new Set();
    for (const agent of message.agents || []) {
      upsertAgent(agent);
      agents.add(agent.id);
    }
    for (const device of message.devices || []) {
      upsertDevice(device);
      devices.add(device.agent + "/" + device.id);
    }
    for (const card of venuesEl.querySelectorAll(".device")) {
      if (!devices.has(card.dataset.device)) {
        card.remove();
      }
    }
    for (const chip of venuesEl.querySelectorAll(".agent")) {
      if (!agents.has(chip.dataset.agent)) {
        chip.remove();
      }
    }
    pruneVenues();
  }

  function onMessage(message) {
    switch (message.type) {
      case "snapshot":
        applySnapshot(message);
        break;
      case "device":
        upsertDevice(message.device);
        break;
      case "device_removed":
        removeDevice(message.agent, message.device);
        pruneVenues();
        break;
      case "agent":
        upsertAgent(message.agent);
        break;
      case "telemetry": {
        const card = cardOf(message.agent, message.device);
        if (card) {
          setSeen(card, message.last_seen_ms);
          field(card, "bad-messages").textContent = String(message.bad_messages || 0);
          setMetrics(card, message.metrics);
        }
        return;
      }
      case "alert": {
        const card = cardOf(message.agent, message.device);
        if (card) {
          flash(card);
        }
        return;
      }
      default:
        return;
    }
    recount();
  }

  /* commands ---------------------------------------------------------------------------------- */
  function showResult(card, outcome, text) {
    const result = field(card, "result");
    result.hidden = false;
    result.dataset.outcome = outcome;
    result.textContent = text;
  }

  function summarize(value) {
    if (value === null || value === undefined || value === "") {
      return "";
    }
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return text.length > 200 ? text.slice(0, 200) + "…" : text;
  }

  function capabilityLabel(name) {
    const label = C.t("cap." + name);
    return label === "cap." + name ? name : label;
  }

  async function runCommand(card, button) {
    const command = button.dataset.command;
    const name = capabilityLabel(command);
    const key = card.dataset.device;
    const slash = key.indexOf("/");
    const agent = key.slice(0, slash);
    const device = key.slice(slash + 1);
    let args = {};
    const argsText = field(card, "args").value.trim();
    if (argsText) {
      try {
        args = JSON.parse(argsText);
      } catch (err) {
        args = null;
      }
      if (args === null || typeof args !== "object" || Array.isArray(args)) {
        showResult(card, "error", C.t("cmd.bad_args"));
        return;
      }
    }
    card.dataset.busy = "true";
    syncCommands(card);
    showResult(card, "running", C.t("cmd.running", { name: name }));
    const url = "/api/v1/devices/" + encodeURIComponent(agent) + "/" + encodeURIComponent(device) + "/commands";
    const response = await C.api("POST", url, { name: command, args: args });
    const data = response.data || {};
    if (response.status === 504 || data.status === "deadline_exceeded") {
      showResult(card, "deadline", C.t("cmd.deadline", { name: name }));
    } else if (response.ok && data.ok) {
      const detail = summarize(data.result);
      showResult(card, "ok", C.t("cmd.ok", { name: name }) + (detail ? ": " + detail : ""));
    } else {
      const error = data.error || response.error || String(response.status);
      showResult(card, "error", C.t("cmd.failed", { name: name, error: summarize(error) }));
    }
    delete card.dataset.busy;
    syncCommands(card);
  }

  venuesEl.addEventListener("click", function (event) {
    const button = event.target.closest("button.cmd");
    if (button && venuesEl.contains(button)) {
      runCommand(button.closest(".device"), button);
    }
  });

  const problemsOnly = document.getElementById("problems-only");
  problemsOnly.addEventListener("change", function () {
    venuesEl.classList.toggle("problems-only", problemsOnly.checked);
  });

  /* ages tick every second; the server's clock is the reference */
  setInterval(function () {
    for (const el of venuesEl.querySelectorAll("time.age")) {
      el.textContent = C.age(Number(el.dataset.tsMs));
    }
  }, 1000);

  const topics = (document.body.dataset.liveTopics || "").split(",").filter(Boolean);
  C.connectLive(topics, function (message) {
    const card = message.type === "device" ? cardOf(message.device.agent, message.device.id) : null;
    const before = card ? card.dataset.state : null;
    onMessage(message);
    if (card && before !== message.device.state) {
      flash(card);
    }
  });
  recount();
})();
