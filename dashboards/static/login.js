/* Sign-in: posts {username, password} to the session API; on success goes on (or to the password
 * page when the account must change its password first), else shows why it failed. */
(function () {
  "use strict";

  const C = window.Courthub;
  const form = document.getElementById("login-form");
  const errorEl = document.getElementById("login-error");
  const submit = document.getElementById("login-submit");

  function showError(message, detail) {
    errorEl.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = message;
    errorEl.appendChild(strong);
    if (detail && detail !== message) {
      const small = document.createElement("span");
      small.className = "error-detail";
      small.textContent = " (" + detail + ")";
      errorEl.appendChild(small);
    }
    errorEl.hidden = false;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const username = form.elements.username.value.trim();
    const password = form.elements.password.value;
    if (!username || !password) {
      showError(C.t("js.login.missing"));
      return;
    }
    errorEl.hidden = true;
    submit.disabled = true;
    const result = await C.api("POST", "/api/v1/session", { username: username, password: password });
    if (result.ok) {
      const data = result.data || {};
      location.assign(data.must_change_password ? "/account/password" : form.dataset.next || "/");
      return;
    }
    submit.disabled = false;
    form.elements.password.value = "";
    form.elements.password.focus();
    if (result.status === 401) {
      showError(C.t("js.login.failed"), result.error);
    } else if (result.status === 429) {
      showError(C.t("js.login.throttled"), result.error);
    } else if (result.status === 0) {
      showError(result.error);
    } else {
      showError(C.t("js.http_error", { status: result.status, error: result.error }));
    }
  });
})();
