// The console's only script (written here, no framework, no CDN): sign-in, sign-out, cancel,
// and live updates. Live: one EventSource on /console/api/stream; every event (a task's
// progress, or the periodic tick that carries the operator's CR changes) makes the page fetch
// its own "?fragment=1" and swap #live-root. No credential is ever visible to this script:
// the token lives in an HttpOnly cookie.
(function () {
  "use strict";
  var base = "/console";

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Regtask-Console": "1" },
      body: body ? JSON.stringify(body) : "{}",
    });
  }

  var login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var token = document.getElementById("token").value.trim();
      post(base + "/api/session", { token: token }).then(function (r) {
        return r.json().then(function (body) {
          if (r.ok) { window.location.assign(base + "/"); return; }
          document.getElementById("login-error").textContent = body.error || ("HTTP " + r.status);
        });
      });
    });
  }

  var logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", function () {
      post(base + "/api/logout").then(function () { window.location.assign(base + "/login"); });
    });
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest ? ev.target.closest("#cancel") : null;
    if (!button) return;
    button.disabled = true;
    button.textContent = "Cancelling…";
    post(base + "/api/tasks/" + encodeURIComponent(button.dataset.task) + "/cancel").then(
      function (r) {
        return r.json().then(function (body) {
          if (!r.ok) {
            button.textContent = "Cancel refused: " + (body.error || r.status);
          }
          refresh();
        });
      }
    );
  });

  var root = document.getElementById("live-root");
  var pending = null;
  var inflight = false;
  var state = document.getElementById("live-state");

  function refresh() {
    if (!root || inflight) return;
    inflight = true;
    var url = window.location.pathname + "?fragment=1";
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401 || r.redirected) { window.location.assign(base + "/login"); return; }
      return r.text().then(function (html) {
        if (r.ok) { root.innerHTML = html; root.dataset.updated = String(Date.now()); }
      });
    }).finally(function () { inflight = false; });
  }

  function schedule() {
    if (pending) return;
    pending = setTimeout(function () { pending = null; refresh(); }, 250);
  }

  if (root && window.EventSource) {
    var source = new EventSource(base + "/api/stream");
    source.addEventListener("task", schedule);
    source.addEventListener("tick", schedule);
    source.onopen = function () { if (state) state.className = "live on"; };
    source.onerror = function () { if (state) state.className = "live off"; };
  }
})();
