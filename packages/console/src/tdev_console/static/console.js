// tdev console: live regions, with no framework. An element with data-refresh="URL" is replaced by the
// server's fragment at URL every data-interval seconds while the tab is visible; data-load="URL" is filled
// once after the page loads. Fragments are rendered (and escaped) by the server, like the page itself.
// An element that also has data-events="URL" (a run's Server-Sent Events) is refreshed when an event
// arrives instead of on the timer; the browser reconnects by itself (Last-Event-ID), and the timer takes
// over only while the stream is down.
"use strict";

function fetchInto(el, url, onDone) {
  fetch(url, { headers: { "X-Requested-With": "tdev-console" }, credentials: "same-origin" })
    .then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    })
    .then(function (html) {
      el.innerHTML = html;
      el.dataset.updated = new Date().toISOString();
      var status = el.querySelector("[data-refresh-status]");
      if (status) { status.textContent = "live: updated " + new Date().toLocaleTimeString(); }
      if (onDone) { onDone(true); }
    })
    .catch(function (error) {
      var status = el.querySelector("[data-refresh-status]");
      if (status) { status.textContent = "live: refresh failed (" + error.message + "), retrying"; }
      if (onDone) { onDone(false); }
    });
}

function startRefresh(el) {
  var seconds = parseFloat(el.dataset.interval || "5");
  if (!(seconds > 0)) { return; }
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetchInto(el, el.dataset.refresh, function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }
  var live = false;
  if (el.dataset.events && window.EventSource) {
    var source = new EventSource(el.dataset.events);
    source.onopen = function () { live = true; };
    source.onmessage = function (message) {
      live = true;
      el.dataset.lastEvent = message.lastEventId;
      refresh();
    };
    source.addEventListener("end", function () {
      source.close();
      live = false;
      refresh();
    });
    source.onerror = function () { live = false; };
  }
  window.setInterval(function () {
    if (live || busy || document.hidden) { return; }
    refresh();
  }, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-refresh]").forEach(startRefresh);
  document.querySelectorAll("[data-load]").forEach(function (el) { fetchInto(el, el.dataset.load); });
});
