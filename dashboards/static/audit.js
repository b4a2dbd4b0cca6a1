/* Audit log: filtered pages of GET /api/v1/audit (times entered and shown in the court's zone) and
 * the chain check GET /api/v1/audit/verify. Filters live in the page's URL, so a view can be
 * shared or reloaded. */
(function () {
  "use strict";

  const C = window.Courthub;
  const form = document.getElementById("audit-filters");
  const tbody = document.getElementById("audit-body");
  const errorEl = document.getElementById("audit-error");
  const prev = document.getElementById("audit-prev");
  const next = document.getElementById("audit-next");
  const range = document.getElementById("audit-range");
  const verifyButton = document.getElementById("audit-verify");
  const verifyResult = document.getElementById("audit-verify-result");
  const FIELDS = ["actor", "action", "since", "until"];
  const pageSize = Number(form.dataset.pageSize) || 100;
  let offset = 0;

  function cell(text, className, title) {
    const td = document.createElement("td");
    if (className) {
      td.className = className;
    }
    if (title) {
      td.title = title;
    }
    td.textContent = text === undefined || text === null ? "" : String(text);
    return td;
  }

  function placeholder(text) {
    const tr = document.createElement("tr");
    tr.className = "placeholder";
    const td = cell(text);
    td.colSpan = 8;
    tr.appendChild(td);
    tbody.replaceChildren(tr);
  }

  function detailText(detail) {
    if (detail === null || detail === undefined) {
      return "";
    }
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  }

  function actionLabel(action) {
    const label = C.t("action." + action);
    return label === "action." + action ? action : label;
  }

  function row(entry) {
    const tr = document.createElement("tr");
    tr.dataset.seq = String(entry.seq);
    tr.dataset.testid = "audit-row";
    tr.appendChild(cell(entry.seq, "mono"));
    tr.appendChild(cell(C.formatTime(entry.ts_ms), "nowrap"));
    tr.appendChild(cell(entry.actor));
    tr.appendChild(cell(entry.source));
    const action = String(entry.action || "");
    const actionCell = cell(actionLabel(action), "", action); /* the code stays searchable */
    actionCell.dataset.action = action;
    tr.appendChild(actionCell);
    tr.appendChild(cell(entry.target, "mono"));
    const detail = detailText(entry.detail);
    tr.appendChild(cell(detail.length > 300 ? detail.slice(0, 300) + "…" : detail, "detail mono", detail));
    const hash = String(entry.hash || "");
    tr.appendChild(cell(hash.slice(0, 12) + (hash.length > 12 ? "…" : ""), "mono", hash));
    return tr;
  }

  function query() {
    const params = new URLSearchParams();
    for (const name of ["actor", "action"]) {
      const value = form.elements[name].value.trim();
      if (value) {
        params.set(name, value);
      }
    }
    for (const name of ["since", "until"]) {
      const ms = C.localToUtcMs(form.elements[name].value);
      if (ms !== null) {
        params.set(name, String(ms));
      }
    }
    params.set("limit", String(pageSize));
    params.set("offset", String(offset));
    return params;
  }

  function rememberFilters() {
    const url = new URL(location.href);
    for (const name of FIELDS) {
      const value = form.elements[name].value.trim();
      if (value) {
        url.searchParams.set(name, value);
      } else {
        url.searchParams.delete(name);
      }
    }
    history.replaceState(null, "", url.toString());
  }

  async function load() {
    const result = await C.api("GET", "/api/v1/audit?" + query().toString());
    if (!result.ok) {
      errorEl.textContent = C.t("js.http_error", { status: result.status, error: result.error });
      errorEl.hidden = false;
      placeholder("");
      prev.disabled = next.disabled = true;
      return;
    }
    errorEl.hidden = true;
    const data = result.data;
    const entries = Array.isArray(data) ? data : (data && data.entries) || [];
    if (entries.length === 0) {
      placeholder(C.t("js.audit.empty"));
      range.textContent = "";
    } else {
      tbody.replaceChildren.apply(tbody, entries.map(row));
      range.textContent = C.t("js.audit.range", { from: offset + 1, to: offset + entries.length });
    }
    prev.disabled = offset === 0;
    next.disabled = entries.length < pageSize;
  }

  async function verify() {
    verifyButton.disabled = true;
    verifyResult.className = "notice";
    verifyResult.textContent = C.t("js.audit.verifying");
    verifyResult.hidden = false;
    const result = await C.api("GET", "/api/v1/audit/verify");
    verifyButton.disabled = false;
    if (!result.ok) {
      verifyResult.className = "notice bad";
      verifyResult.textContent = C.t("js.http_error", { status: result.status, error: result.error });
      return;
    }
    const data = result.data || {};
    const problems = Array.isArray(data.problems) ? data.problems : [];
    const notes = Array.isArray(data.notes) ? data.notes : [];
    if (data.ok) {
      verifyResult.className = "notice ok";
      verifyResult.dataset.outcome = "ok";
      verifyResult.textContent = C.t("js.audit.verify_ok", { checked: data.checked || 0 });
      if (notes.length) {
        verifyResult.appendChild(listOf(notes));
      }
      return;
    }
    verifyResult.className = "notice bad";
    verifyResult.dataset.outcome = "bad";
    verifyResult.textContent = C.t("js.audit.verify_bad", { count: problems.length, checked: data.checked || 0 });
    verifyResult.appendChild(listOf(problems.concat(notes)));
  }

  function listOf(lines) {
    const list = document.createElement("ul");
    for (const line of lines.slice(0, 50)) {
      const item = document.createElement("li");
      item.textContent = typeof line === "string" ? line : JSON.stringify(line);
      list.appendChild(item);
    }
    return list;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    offset = 0;
    rememberFilters();
    load();
  });
  form.addEventListener("reset", function () {
    setTimeout(function () {
      offset = 0;
      rememberFilters();
      load();
    }, 0);
  });
  prev.addEventListener("click", function () {
    offset = Math.max(0, offset - pageSize);
    load();
  });
  next.addEventListener("click", function () {
    offset += pageSize;
    load();
  });
  verifyButton.addEventListener("click", verify);

  const initial = new URL(location.href).searchParams;
  for (const name of FIELDS) {
    const value = initial.get(name);
    if (value) {
      form.elements[name].value = value;
    }
  }
  load();
})();
