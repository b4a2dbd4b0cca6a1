/* Change password: PUT {old_password, new_password} to /api/v1/me/password; the server judges the
 * new password, the page only checks that both entries match. */
(function () {
  "use strict";

  const C = window.Courthub;
  const form = document.getElementById("password-form");
  const errorEl = document.getElementById("password-error");
  const okEl = document.getElementById("password-ok");
  const submit = document.getElementById("password-submit");

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
    okEl.hidden = true;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const oldPassword = form.elements.old_password.value;
    const newPassword = form.elements.new_password.value;
    const confirm = form.elements.confirm.value;
    if (!oldPassword || !newPassword || !confirm) {
      showError(C.t("js.password.missing"));
      return;
    }
    if (newPassword !== confirm) {
      showError(C.t("js.password.mismatch"));
      return;
    }
    errorEl.hidden = true;
    submit.disabled = true;
    const result = await C.api("PUT", "/api/v1/me/password", {
      old_password: oldPassword,
      new_password: newPassword,
    });
    if (result.ok) {
      form.reset();
      okEl.hidden = false;
      setTimeout(function () {
        location.assign("/");
      }, 1200);
      return;
    }
    submit.disabled = false;
    showError(result.status === 0 ? result.error : C.t("js.http_error", { status: result.status, error: result.error }));
  });
})();
