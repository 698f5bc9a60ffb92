// TaskDash dashboard: ages kept current, and tables that refresh by themselves.
// Plain JavaScript served by the daemon (no CDN, no framework). Without it every page still
// works; it only adds the refresh and the live ages.
(function () {
  "use strict";

  var skew = 0; // the browser's clock minus the server's (ms), from data-server-now
  var stopped = false; // the session ended: refreshing again would only fetch the login form

  function span(seconds) {
    if (seconds >= 86400) return Math.floor(seconds / 86400) + " d";
    if (seconds >= 3600) return Math.floor(seconds / 3600) + " h";
    if (seconds >= 60) return Math.floor(seconds / 60) + " min";
    return seconds + " s";
  }

  // the same wording as the server's (taskdash/web/pages.py age_text)
  function ago(ms) {
    var seconds = Math.trunc(ms / 1000);
    if (Math.abs(seconds) < 1) return "just now";
    return seconds < 0 ? "in " + span(-seconds) : span(seconds) + " ago";
  }

  function syncClock(root) {
    var marked = root.querySelector("[data-server-now]");
    var serverNow = marked ? Number(marked.getAttribute("data-server-now")) : 0;
    if (serverNow) skew = Date.now() - serverNow;
  }

  function tick() {
    var now = Date.now() - skew;
    document.querySelectorAll("time.age[datetime]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(at)) el.textContent = ago(now - at);
    });
  }

  // a form being filled in must not be swept away, nor the user's place in it
  document.addEventListener("input", function (event) {
    var form = event.target.closest && event.target.closest("form");
    if (form) form.setAttribute("data-dirty", "1");
  });
  document.addEventListener("submit", function (event) {
    event.target.removeAttribute("data-dirty");
  });

  function editing() {
    var active = document.activeElement;
    if (active && active.closest && active.closest("form") &&
        active.matches("input:not([type=submit]):not([type=button]), select, textarea")) {
      return true;
    }
    return document.querySelector("form[data-dirty], details[open] form") !== null;
  }

  function say(text, state) {
    document.querySelectorAll("[data-refresh-state]").forEach(function (el) {
      el.textContent = text;
      el.className = "refresh-state" + (state ? " " + state : "");
    });
  }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("done");
    return url.toString();
  }

  function refresh(box) {
    if (stopped || document.hidden) return;
    if (editing()) {
      say("Paused while you edit a form", "paused");
      return;
    }
    fetch(fragmentUrl(), { credentials: "same-origin", redirect: "manual", cache: "no-store" })
      .then(function (response) {
        if (response.type === "opaqueredirect" || response.status === 401) {
          stopped = true;
          say("Signed out: reload the page to log in again", "failed");
          return null;
        }
        if (!response.ok || response.headers.get("X-Fragment") !== "1") {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        if (html === null || editing()) return;
        box.innerHTML = html;
        syncClock(box);
        tick();
        var now = new Date();
        say("Updated " + now.toLocaleTimeString() + " · every " +
            box.getAttribute("data-refresh") + " s", "");
      })
      .catch(function (error) {
        say("Could not update (" + error.message + "); retrying", "failed");
      });
  }

  function start() {
    syncClock(document);
    tick();
    window.setInterval(tick, 1000);
    document.querySelectorAll("[data-refresh]").forEach(function (box) {
      var seconds = Math.max(Number(box.getAttribute("data-refresh")) || 5, 1);
      window.setInterval(function () { refresh(box); }, seconds * 1000);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
