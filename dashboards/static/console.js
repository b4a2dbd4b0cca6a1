/* courthub console: code every page shares (no framework, nothing loaded from outside the hub).
 *
 * window.Courthub offers:
 *   t(key, vars)          UI text from the page's catalog (<script id="ui-texts">)
 *   api(method, url, body) JSON call with the CSRF header; resolves {ok, status, data, error}
 *   formatTime(ms)        "YYYY-MM-DD HH:MM:SS" in the court's zone (<body data-timezone>)
 *   age(ms)               "3 秒前" / "3 s ago", against the server's clock
 *   localToUtcMs(value)   a datetime-local value read as court time -> UTC ms
 *   reasonRules(pairs)    compile [[regex, key], …] (the hub's state-reason table)
 *   reasonText(reason, rules)  a device state reason in the page's language (raw if unknown)
 *   connectLive(topics, onMessage)  the page's WebSocket with reconnect and the "connection
 *                         lost" banner
 * and wires the shell: language switch, sign-out, the court clock, the user menu.
 */
(function () {
  "use strict";

  const body = document.body;
  const textsEl = document.getElementById("ui-texts");
  const texts = textsEl ? JSON.parse(textsEl.textContent || "{}") : {};
  const zone = body.dataset.timezone || "Asia/Shanghai";
  const lang = body.dataset.lang || "zh-CN";
  const signedIn = body.dataset.signedIn === "true";
  /* server clock minus browser clock: ages are measured against the hub's time */
  let clockOffset = Number(body.dataset.serverMs || Date.now()) - Date.now();

  function t(key, vars) {
    let text = Object.prototype.hasOwnProperty.call(texts, key) ? texts[key] : key;
    if (vars) {
      for (const name of Object.keys(vars)) {
        text = text.split("{" + name + "}").join(String(vars[name]));
      }
    }
    return text;
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  async function api(method, url, payload) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && method !== "HEAD") {
      headers["X-CSRF-Token"] = csrfToken();
    }
    const init = { method: method, headers: headers, credentials: "same-origin" };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      return { ok: false, status: 0, data: null, error: t("js.network_error") };
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        data = null;
      }
    }
    let error = "";
    if (!response.ok) {
      error = (data && typeof data.error === "string" && data.error) || response.statusText ||
        String(response.status);
    }
    return { ok: response.ok, status: response.status, data: data, error: error };
  }

  /* times: the court's zone, whatever zone the browser is in */
  const partsFormat = new Intl.DateTimeFormat("en-US", {
    timeZone: zone,
    hourCycle: "h23",
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });

  function zoneParts(ms) {
    const parts = {};
    for (const part of partsFormat.formatToParts(new Date(ms))) {
      parts[part.type] = part.value;
    }
    return parts;
  }

  function formatTime(ms) {
    if (!ms) {
      return "";
    }
    const p = zoneParts(ms);
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute + ":" + p.second;
  }

  function formatClock(ms) {
    const p = zoneParts(ms);
    return p.hour + ":" + p.minute;
  }

  function zoneOffsetMs(utcMs) {
    const p = zoneParts(utcMs);
    const asUtc = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second);
    return asUtc - Math.floor(utcMs / 1000) * 1000;
  }

  /* "2024-05-01T08:00[:00]" as wall-clock time in the court's zone -> UTC ms (null if empty) */
  function localToUtcMs(value) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(value || "");
    if (!m) {
      return null;
    }
    const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
    let guess = wall - zoneOffsetMs(wall);
    guess = wall - zoneOffsetMs(guess); /* once more across a DST change */
    return guess;
  }

  function now() {
    return Date.now() + clockOffset;
  }

  function age(ms) {
    if (!ms) {
      return t("age.never");
    }
    const seconds = Math.max(0, Math.floor((now() - ms) / 1000));
    if (seconds < 60) {
      return t("age.seconds", { n: seconds });
    }
    if (seconds < 3600) {
      return t("age.minutes", { n: Math.floor(seconds / 60) });
    }
    if (seconds < 86400) {
      return t("age.hours", { n: Math.floor(seconds / 3600) });
    }
    return t("age.days", { n: Math.floor(seconds / 86400) });
  }

  /* live connection ---------------------------------------------------------------------------- */
  function connectLive(topics, onMessage) {
    const banner = document.getElementById("live-banner");
    const retry = document.getElementById("live-retry");
    const status = document.getElementById("live-status");
    let ws = null;
    let attempt = 0;
    let heartbeatS = 15;
    let lastMessage = Date.now();
    let countdown = null;
    let leaving = false;

    function setStatus(state) {
      if (status) {
        status.dataset.live = state;
        const label = t(state === "up" ? "live.up" : state === "down" ? "live.down" : "live.connecting");
        status.title = label;
        const text = status.querySelector(".live-text");
        if (text) {
          text.textContent = label;
        }
      }
      if (banner) {
        banner.hidden = state !== "down";
      }
      body.dataset.live = state;
    }

    function open() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(scheme + "//" + location.host + "/ws");
      ws = socket;
      socket.onopen = function () {
        socket.send(JSON.stringify({ subscribe: topics }));
      };
      socket.onmessage = function (event) {
        lastMessage = Date.now();
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        const messages = Array.isArray(data) ? data : [data];
        for (const message of messages) {
          handle(message);
        }
      };
      socket.onclose = function () {
        if (ws === socket) {
          lost();
        }
      };
    }

    function handle(message) {
      if (message.type === "hello") {
        attempt = 0;
        heartbeatS = message.heartbeat_s || heartbeatS;
        clockOffset = message.server_ms - Date.now();
        setStatus("up");
      } else if (message.type === "ping") {
        clockOffset = message.server_ms - Date.now();
      }
      try {
        onMessage(message);
      } catch (err) {
        console.error("live message failed", message.type, err);
      }
    }

    function lost() {
      ws = null;
      if (leaving) {
        return;
      }
      setStatus("down");
      checkSession();
      /* 1, 2, 4 … 30 s with jitter, so a restarted hub is not hit by every page at once */
      const delay = Math.min(30, Math.pow(2, attempt)) * (0.75 + Math.random() * 0.5);
      attempt += 1;
      let remaining = Math.ceil(delay);
      clearInterval(countdown);
      if (retry) {
        retry.textContent = t("live.retry", { s: remaining });
      }
      countdown = setInterval(function () {
        remaining -= 1;
        if (retry) {
          retry.textContent = remaining > 0 ? t("live.retry", { s: remaining }) : t("live.retrying");
        }
      }, 1000);
      setTimeout(function () {
        clearInterval(countdown);
        open();
      }, delay * 1000);
    }

    /* a socket refused for an expired session looks like any failure: ask the page itself */
    async function checkSession() {
      if (attempt < 2) {
        return;
      }
      try {
        const response = await fetch(location.href, {
          headers: { Accept: "text/html" },
          redirect: "manual",
          credentials: "same-origin",
        });
        if (response.type === "opaqueredirect") {
          location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
        }
      } catch (err) {
        /* the hub is down: keep retrying */
      }
    }

    /* the server pings every heartbeat; silence for two of them means a dead link */
    setInterval(function () {
      if (ws && ws.readyState === WebSocket.OPEN && Date.now() - lastMessage > (2 * heartbeatS + 5) * 1000) {
        const dead = ws;
        ws = null;
        dead.onclose = null;
        dead.close();
        lost();
      }
    }, 5000);

    window.addEventListener("pagehide", function () {
      leaving = true;
    });
    setStatus("connecting");
    open();
  }

  /* shell ---------------------------------------------------------------------------------------- */
  function setLangCookie(choice) {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = "lang=" + encodeURIComponent(choice) + "; Path=/; Max-Age=31536000; SameSite=Lax" + secure;
  }

  function reloadWithout(param) {
    const url = new URL(location.href);
    if (url.searchParams.has(param)) {
      url.searchParams.delete(param);
      location.replace(url.toString());
    } else {
      location.reload();
    }
  }

  async function switchLanguage(choice) {
    if (choice === lang) {
      return;
    }
    setLangCookie(choice);
    if (signedIn) {
      const result = await api("PUT", "/api/v1/me/language", { language: choice });
      if (!result.ok) {
        /* not saved for the account: show this visit in the chosen language anyway */
        console.warn(t("js.lang.failed"), result.status, result.error);
        const url = new URL(location.href);
        url.searchParams.set("lang", choice);
        location.replace(url.toString());
        return;
      }
    }
    reloadWithout("lang");
  }

  for (const button of document.querySelectorAll("[data-lang-choice]")) {
    button.addEventListener("click", function () {
      switchLanguage(button.dataset.langChoice);
    });
  }

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async function () {
      logout.disabled = true;
      await api("DELETE", "/api/v1/session");
      location.assign("/login");
    });
  }

  const menu = document.querySelector(".user-menu");
  if (menu) {
    document.addEventListener("click", function (event) {
      if (menu.open && !menu.contains(event.target)) {
        menu.open = false;
      }
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        menu.open = false;
      }
    });
  }

  const clock = document.getElementById("court-clock");
  if (clock) {
    const tick = function () {
      clock.textContent = formatClock(now());
      clock.dateTime = new Date(now()).toISOString();
    };
    tick();
    setInterval(tick, 5000);
  }

  /* the hub's table of device state reasons: [[regex source, catalog key], …] */
  function reasonRules(pairs) {
    return (pairs || []).map(function (rule) {
      return [new RegExp(rule[0]), rule[1]];
    });
  }

  /* "agent offline, heartbeat 31 s" → each part translated; the raw text when one is unknown */
  function reasonText(reason, rules) {
    if (!reason) {
      return "";
    }
    const parts = [];
    for (const part of reason.split(", ")) {
      let text = null;
      for (const rule of rules) {
        const match = rule[0].exec(part);
        if (match) {
          text = match.length > 1 ? t(rule[1], { n: match[1] }) : t(rule[1]);
          break;
        }
      }
      if (text === null) {
        return reason;
      }
      parts.push(text);
    }
    return parts.join(t("reason.separator"));
  }

  window.Courthub = {
    t: t,
    api: api,
    zone: zone,
    lang: lang,
    now: now,
    age: age,
    formatTime: formatTime,
    localToUtcMs: localToUtcMs,
    connectLive: connectLive,
    reasonRules: reasonRules,
    reasonText: reasonText,
  };
})();
