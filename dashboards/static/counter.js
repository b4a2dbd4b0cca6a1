/* courthub counter page: one clerk, one window.
 *
 * The window is chosen once and remembered (localStorage "courthub.counter"). Buttons call
 * POST /api/v1/queue/counters/{counter}/{action} with the CSRF header (Courthub.api); a refused
 * action shows the queue's message inline. The page refreshes on every queue change it hears on
 * the board channel (/ws/board), and shows when that connection is down.
 */
(function () {
  "use strict";

  const C = window.Courthub;
  const t = C.t;
  const STORE = "courthub.counter";
  const select = document.getElementById("counter-select");
  const errorEl = document.getElementById("counter-error");
  const link = document.getElementById("counter-link");
  if (!select || !errorEl) {
    return;
  }
  let attempt = 0;
  let ws = null;
  let lastMessage = Date.now();

  function counter() {
    return select.value;
  }

  function showError(text) {
    errorEl.textContent = text || "";
    errorEl.hidden = !text;
  }

  function setLink(state) {
    link.dataset.state = state;
    link.textContent = t(state === "up" ? "js.counter.live_up" : state === "down" ? "js.counter.live_down" : "js.counter.connecting");
  }

  const stateKeys = {
    called: "js.counter.state_called",
    serving: "js.counter.state_serving",
  };

  function renderTicket(data) {
    const ticket = data.ticket;
    document.getElementById("current-number").textContent = ticket ? ticket.number : "—";
    document.getElementById("current-state").textContent = ticket
      ? t(stateKeys[ticket.state] || "js.counter.state_called", { n: ticket.recalls })
      : t("js.counter.idle");
    const isOpen = data.counter.open;
    document.getElementById("counter-open-state").textContent = t(isOpen ? "js.counter.is_open" : "js.counter.is_closed");
    const state = ticket ? ticket.state : "";
    const enabled = {
      "call-next": isOpen && !ticket,
      recall: state === "called",
      start: state === "called",
      done: !!ticket,
      "no-show": state === "called",
      hold: !!ticket,
      transfer: !!ticket,
      open: !isOpen,
      close: isOpen && !ticket,
    };
    for (const button of document.querySelectorAll("[data-action]")) {
      button.disabled = !enabled[button.dataset.action];
    }
  }

  function renderWaiting(snapshot) {
    const option = select.selectedOptions[0];
    const mine = new Set(option ? (option.dataset.services || "").split(",") : []);
    for (const service of snapshot.services) {
      const row = document.querySelector('[data-service="' + service.code + '"]');
      if (row) {
        row.hidden = !mine.has(service.code);
        row.querySelector("[data-count]").textContent = String(service.waiting);
      }
    }
  }

  async function refresh() {
    const id = counter();
    if (!id) {
      return;
    }
    const [mine, all] = await Promise.all([
      C.api("GET", "/api/v1/queue/counters/" + encodeURIComponent(id)),
      C.api("GET", "/api/v1/queue"),
    ]);
    if (mine.ok) {
      renderTicket(mine.data);
    } else {
      showError(mine.error);
    }
    if (all.ok) {
      renderWaiting(all.data);
    }
  }

  async function act(action) {
    showError("");
    const payload = action === "transfer" ? { to_service: document.getElementById("transfer-service").value } : undefined;
    const url = "/api/v1/queue/counters/" + encodeURIComponent(counter()) + "/" + action;
    const result = await C.api("POST", url, payload);
    if (!result.ok) {
      showError(result.error);
    } else if (action === "call-next" && !result.data.ticket) {
      showError(t("js.counter.nobody"));
    }
    await refresh();
  }

  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", function () {
      act(button.dataset.action);
    });
  }

  const saved = localStorage.getItem(STORE);
  if (saved && select.querySelector('option[value="' + CSS.escape(saved) + '"]')) {
    select.value = saved;
  }
  select.addEventListener("change", function () {
    localStorage.setItem(STORE, select.value);
    showError("");
    refresh();
  });

  /* changes: the board channel tells every queue change (numbers only) */
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
      const messages = Array.isArray(data) ? data : [data];
      if (messages.some(function (m) { return m.type === "hello"; })) {
        attempt = 0;
        setLink("up");
      }
      if (messages.some(function (m) { return m.type === "board"; })) {
        refresh();
      }
    };
    socket.onclose = function () {
      if (ws === socket) {
        ws = null;
        setLink("down");
        const delay = Math.min(5, Math.pow(2, attempt)) * (0.75 + Math.random() * 0.5);
        attempt += 1;
        setTimeout(open, delay * 1000);
      }
    };
  }

  setInterval(function () {
    if (ws && ws.readyState === WebSocket.OPEN && Date.now() - lastMessage > 25000) {
      ws.close();
    }
  }, 5000);

  setLink("connecting");
  refresh();
  open();
})();
