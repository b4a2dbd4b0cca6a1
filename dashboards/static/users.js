/* Accounts: the list from GET /api/v1/users and the form that POSTs a new account. */
(function () {
  "use strict";

  const C = window.Courthub;
  const tbody = document.getElementById("users-body");
  const listError = document.getElementById("users-error");
  const form = document.getElementById("user-form");
  const formError = document.getElementById("user-form-error");
  const formOk = document.getElementById("user-form-ok");
  /* each language's name, as the form's language choice shows it ("zh-CN" → "中文") */
  const LANGUAGE_NAMES = {};
  for (const option of form.elements.language.options) {
    LANGUAGE_NAMES[option.value] = option.textContent;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) {
      td.className = className;
    }
    td.textContent = text === undefined || text === null ? "" : String(text);
    return td;
  }

  function tag(text, kind) {
    const span = document.createElement("span");
    span.className = "tag" + (kind ? " " + kind : "");
    span.textContent = text;
    return span;
  }

  function placeholder(text) {
    const tr = document.createElement("tr");
    tr.className = "placeholder";
    const td = cell(text);
    td.colSpan = 6;
    tr.appendChild(td);
    tbody.replaceChildren(tr);
  }

  function row(user) {
    const tr = document.createElement("tr");
    tr.dataset.user = user.username;
    tr.dataset.testid = "user-row";
    tr.appendChild(cell(user.username, "mono"));
    tr.appendChild(cell(user.display_name || ""));
    const roles = cell("");
    const held = Array.isArray(user.roles) ? user.roles : String(user.roles || "").split(",").filter(Boolean);
    for (const role of held) {
      roles.appendChild(tag(C.t("role." + role)));
    }
    tr.appendChild(roles);
    const language = cell(LANGUAGE_NAMES[user.language] || user.language || "");
    language.title = user.language || "";
    tr.appendChild(language);
    const status = cell("");
    if (user.disabled || user.enabled === false || user.active === false) {
      status.appendChild(tag(C.t("js.users.disabled"), "bad"));
    } else {
      status.appendChild(tag(C.t("js.users.active")));
    }
    if (user.must_change_password) {
      status.appendChild(tag(C.t("js.users.must_change"), "warn"));
    }
    tr.appendChild(status);
    const last = user.last_login_ms || user.last_login_ts_ms || user.last_login || 0;
    tr.appendChild(cell(typeof last === "number" && last ? C.formatTime(last) : C.t("js.never"), "nowrap"));
    return tr;
  }

  async function load() {
    const result = await C.api("GET", "/api/v1/users");
    if (!result.ok) {
      listError.textContent = C.t("js.http_error", { status: result.status, error: result.error });
      listError.hidden = false;
      placeholder("");
      return;
    }
    listError.hidden = true;
    const data = result.data;
    const users = Array.isArray(data) ? data : (data && data.users) || [];
    if (users.length === 0) {
      placeholder(C.t("js.users.empty"));
      return;
    }
    tbody.replaceChildren.apply(tbody, users.map(row));
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    formOk.hidden = true;
    const username = form.elements.username.value.trim();
    const password = form.elements.password.value;
    const roles = Array.from(form.querySelectorAll('input[name="roles"]:checked'), function (box) {
      return box.value;
    });
    let problem = "";
    if (!username || !password) {
      problem = C.t("js.users.missing");
    } else if (roles.length === 0) {
      problem = C.t("js.users.no_roles");
    }
    if (problem) {
      formError.textContent = problem;
      formError.hidden = false;
      return;
    }
    formError.hidden = true;
    const result = await C.api("POST", "/api/v1/users", {
      username: username,
      display_name: form.elements.display_name.value.trim(),
      password: password,
      roles: roles,
      language: form.elements.language.value,
    });
    if (!result.ok) {
      formError.textContent = C.t("js.http_error", { status: result.status, error: result.error });
      formError.hidden = false;
      return;
    }
    form.reset();
    formOk.textContent = C.t("js.users.created", { name: username });
    formOk.hidden = false;
    load();
  });

  document.getElementById("users-reload").addEventListener("click", load);
  load();
})();
