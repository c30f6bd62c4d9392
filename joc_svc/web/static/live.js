// ostinato's web view: what makes the server-rendered pages live. No framework, no build step.
//
//   <time datetime="...Z">            shown in the reader's time zone
//   [data-refresh=URL]                its content is read again from URL when the server-sent
//     [data-changes=URL]              events at data-changes say "changed", and every
//     [data-every=SECONDS]            data-every seconds
//   [data-stream=URL]                 its content is replaced by each "detail" event
//   pre[data-log=URL]                 "reset" empties it, "chunk" ({err, text}) appends, "paused"
//                                     (a failed order) and "end" mark where its output stops
//   form[data-confirm=TEXT]           asks before it is sent
//   form[data-autosubmit]             is sent when one of its selects or checkboxes changes
(function () {
  "use strict";

  var sources = [];

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function localTimes(root) {
    var today = new Date().toDateString();
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      var clock = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      var day = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
      t.textContent = d.toDateString() === today ? clock : day + " " + clock;
      t.title = t.getAttribute("datetime");
    });
  }

  function showLive() {
    var mark = document.getElementById("live");
    if (!mark) return;
    var open = sources.filter(function (s) { return s.readyState === EventSource.OPEN; }).length;
    var lost = sources.some(function (s) { return s.readyState === EventSource.CONNECTING; });
    mark.hidden = !sources.length;
    mark.className = "live" + (lost ? " lost" : open ? " on" : "");
    mark.textContent = lost ? "reconnecting" : open ? "live" : "ended";
  }

  function listen(url) {
    var source = new EventSource(url);
    sources.push(source);
    source.addEventListener("open", showLive);
    source.addEventListener("error", showLive);
    source.addEventListener("problem", function (e) {
      source.close();
      showLive();
      var box = document.createElement("div");
      box.className = "flash error";
      box.textContent = e.data;
      document.querySelector("main").prepend(box);
    });
    return source;
  }

  function end(source) {
    source.close();
    sources = sources.filter(function (s) { return s !== source; });
    showLive();
  }

  function refresher(el) {
    var busy = false, again = false;
    function load() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(el.dataset.refresh, { headers: { Accept: "text/html" }, credentials: "same-origin" })
        .then(function (r) {
          if (r.status === 401) { location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html !== null) { el.innerHTML = html; localTimes(el); }
        })
        .catch(function () {})
        .finally(function () {
          busy = false;
          if (again) { again = false; load(); }
        });
    }
    if (el.dataset.changes) listen(el.dataset.changes).addEventListener("changed", load);
    if (el.dataset.every) setInterval(load, 1000 * Number(el.dataset.every));
  }

  function stream(el) {
    var source = listen(el.dataset.stream);
    source.addEventListener("detail", function (e) {
      el.innerHTML = e.data;
      localTimes(el);
    });
    source.addEventListener("end", function () { end(source); el.dataset.ended = "1"; });
  }

  function log(pre) {
    var source = listen(pre.dataset.log);
    function atBottom() { return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30; }
    source.addEventListener("reset", function () { pre.textContent = ""; pre.classList.remove("done"); });
    source.addEventListener("chunk", function (e) {
      var chunk = JSON.parse(e.data);
      var follow = atBottom();
      var span = document.createElement("span");
      if (chunk.err) span.className = "err";
      span.textContent = chunk.text;
      pre.appendChild(span);
      if (follow) pre.scrollTop = pre.scrollHeight;
    });
    source.addEventListener("paused", function () { pre.classList.add("done"); });
    source.addEventListener("end", function () { end(source); pre.classList.add("done"); });
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) e.preventDefault();
  });

  document.addEventListener("change", function (e) {
    var form = e.target.form;
    if (form && form.hasAttribute("data-autosubmit") && (e.target.tagName === "SELECT" || e.target.type === "checkbox")) {
      form.requestSubmit();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    document.querySelectorAll("[data-refresh]").forEach(refresher);
    document.querySelectorAll("[data-stream]").forEach(stream);
    document.querySelectorAll("pre[data-log]").forEach(log);
    showLive();
  });
  window.addEventListener("beforeunload", function () { sources.forEach(function (s) { s.close(); }); });
})();
