/* courthub hall board: the big screen (no sign-in, numbers and windows only).
 *
 * Listens on /ws/board (anonymous, read-only): "hello", then a "board" snapshot on connect and
 * after every queue change, and a "ping" every heartbeat. A dropped or silent connection shows
 * "网络中断 / network down" and reconnects within seconds (1, 2, 4, at most 5 s).
 * New calls flash for a few seconds and play a short generated chime (Web Audio, no file) —
 * browsers only allow sound after a user gesture, so the screen needs one click on "enable
 * sound" after it is opened.
 */
(function () {
  "use strict";

  const body = document.body;
  const textsEl = document.getElementById("ui-texts");
  const texts = textsEl ? JSON.parse(textsEl.textContent || "{}") : {};
  const zone = body.dataset.timezone || "Asia/Shanghai";
  const FLASH_MS = 8000;
  let clockOffset = Number(body.dataset.serverMs || Date.now()) - Date.now();
  let heartbeatS = 10;
  let lastMessage = Date.now();
  let attempt = 0;
  let ws = null;
  let seen = null; /* "number@counter#recalls" already shown; null until the first snapshot */
  let audio = null;

  function t(key, vars) {
    let text = Object.prototype.hasOwnProperty.call(texts, key) ? texts[key] : key;
    if (vars) {
      for (const name of Object.keys(vars)) {
        text = text.split("{" + name + "}").join(String(vars[name]));
      }
    }
    return text;
  }

  const clockFormat = new Intl.DateTimeFormat("zh-CN", {
    timeZone: zone,
    hourCycle: "h23",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });

  function tick() {
    const clock = document.getElementById("board-clock");
    if (clock) {
      clock.textContent = clockFormat.format(new Date(Date.now() + clockOffset));
    }
  }

  function setLive(state) {
    body.dataset.live = state;
    document.getElementById("board-down").hidden = state !== "down";
  }

  /* chime ---------------------------------------------------------------------------------------- */
  function enableSound() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) {
      return;
    }
    if (!audio) {
      audio = new Ctx();
    }
    audio.resume();
    const button = document.getElementById("board-sound");
    button.textContent = t("js.board.sound_on");
    button.classList.add("on");
    chime();
  }

  function chime() {
    if (!audio || audio.state !== "running") {
      return;
    }
    const start = audio.currentTime;
    [659.25, 523.25].forEach(function (freq, i) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      const at = start + i * 0.35;
      osc.type = "sine";
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(0.4, at + 0.03);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.6);
      osc.connect(gain).connect(audio.destination);
      osc.start(at);
      osc.stop(at + 0.65);
    });
  }

  /* rendering ------------------------------------------------------------------------------------ */
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) {
      node.className = cls;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function render(snapshot) {
    if (!snapshot) {
      return;
    }
    const calls = document.getElementById("board-calls");
    const now = Date.now() + clockOffset;
    const keys = new Set();
    let fresh = false;
    calls.replaceChildren();
    snapshot.now_calling.forEach(function (call, index) {
      const key = call.number + "@" + call.counter + "#" + call.recalls;
      keys.add(key);
      const isNew = seen !== null && !seen.has(key);
      fresh = fresh || isNew;
      const li = el("li", "board-call");
      if (index === 0 && (isNew || now - call.called_at < FLASH_MS)) {
        li.classList.add("flash");
      }
      li.dataset.testid = "board-call";
      li.appendChild(el("span", "board-number", call.number));
      li.appendChild(el("span", "board-arrow", "→"));
      li.appendChild(el("span", "board-window", t("js.board.window", { n: call.counter })));
      calls.appendChild(li);
    });
    document.getElementById("board-no-calls").hidden = snapshot.now_calling.length > 0;
    if (fresh) {
      chime();
      setTimeout(function () {
        for (const node of calls.querySelectorAll(".flash")) {
          node.classList.remove("flash");
        }
      }, FLASH_MS);
    }
    seen = keys;
    const rows = document.getElementById("board-services");
    rows.replaceChildren();
    for (const service of snapshot.services) {
      const tr = el("tr");
      tr.appendChild(el("td", "", service.prefix + " " + service.name));
      tr.appendChild(el("td", "num", String(service.waiting)));
      const minutes = Math.ceil(service.estimated_wait_s / 60);
      tr.appendChild(el("td", "num", service.waiting ? t("js.board.minutes", { n: minutes }) : "—"));
      rows.appendChild(tr);
    }
  }

  /* connection ----------------------------------------------------------------------------------- */
  function open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + "/ws/board");
    ws = socket;
    socket.onmessage = function (event) {
      lastMessage = Date.now();
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      for (const message of Array.isArray(data) ? data : [data]) {
        if (message.type === "hello") {
          attempt = 0;
          heartbeatS = message.heartbeat_s || heartbeatS;
          clockOffset = message.server_ms - Date.now();
          setLive("up");
        } else if (message.type === "ping") {
          clockOffset = message.server_ms - Date.now();
        } else if (message.type === "board") {
          render(message.snapshot);
        }
      }
    };
    socket.onclose = function () {
      if (ws === socket) {
        lost();
      }
    };
  }

  function lost() {
    ws = null;
    setLive("down");
    const delay = Math.min(5, Math.pow(2, attempt)) * (0.75 + Math.random() * 0.5);
    attempt += 1;
    setTimeout(open, delay * 1000);
  }

  setInterval(function () {
    if (ws && ws.readyState === WebSocket.OPEN && Date.now() - lastMessage > (2 * heartbeatS + 2) * 1000) {
      const dead = ws;
      ws = null;
      dead.onclose = null;
      dead.close();
      lost();
    }
  }, 2000);

  document.getElementById("board-sound").addEventListener("click", enableSound);
  tick();
  setInterval(tick, 1000);
  setLive("connecting");
  open();
})();
