// Tollgate console: the few things a page needs a script for. Pages are server-rendered
// HTML and work without it; this adds confirmations, the copy button and the health
// strip. Loaded from this origin only (the CSP forbids inline script), and it never
// writes HTML: text goes in with textContent.
"use strict";

(function () {
  // A form with data-confirm asks before it is sent (revoke, rotate, disable).
  document.addEventListener(
    "submit",
    function (event) {
      var form = event.target;
      var message = form.getAttribute && form.getAttribute("data-confirm");
      if (message && !window.confirm(message)) {
        event.preventDefault();
      }
    },
    true
  );

  function select(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // A button with data-copy="ID" copies the text of the element ID.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent;
    function copied() {
      button.textContent = "Copied";
      setTimeout(function () {
        button.textContent = "Copy";
      }, 2000);
    }
    function fallback() {
      select(source);
      try {
        if (document.execCommand("copy")) copied();
      } catch (e) {
        /* the text stays selected: the operator copies it by hand */
      }
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(copied, fallback);
    } else {
      fallback();
    }
  });

  // ---- health strip: /readyz and /metrics (open paths, no credentials) ----

  // Prometheus text: name -> [{labels: {k: v}, value: number}].
  function parseMetrics(text) {
    var out = {};
    text.split("\n").forEach(function (line) {
      if (!line || line.charAt(0) === "#") return;
      var m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m) return;
      var labels = {};
      if (m[3]) {
        m[3].replace(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g, function (_, k, v) {
          labels[k] = v;
          return "";
        });
      }
      (out[m[1]] = out[m[1]] || []).push({ labels: labels, value: parseFloat(m[4]) });
    });
    return out;
  }

  function show(strip, name, text, state, title) {
    var item = strip.querySelector('[data-health="' + name + '"] b');
    if (!item) return;
    item.textContent = text;
    item.className = state;
    if (title) item.title = title;
    else item.removeAttribute("title");
  }

  function getText(url) {
    return fetch(url, { cache: "no-store", credentials: "omit" }).then(function (r) {
      return r.text().then(function (body) {
        return { status: r.status, body: body };
      });
    });
  }

  function refresh(strip) {
    getText("/readyz")
      .then(function (r) {
        var ready = JSON.parse(r.body);
        show(strip, "store", ready.store === "ok" ? "ok" : "unreachable", ready.store === "ok" ? "ok" : "bad");
        var deployments = ready.deployments || [];
        var open = deployments.filter(function (d) {
          return d.state !== "closed";
        });
        var detail = deployments
          .map(function (d) {
            return d.model + " / " + d.deployment + ": " + d.state.replace("_", "-");
          })
          .join("\n");
        if (!deployments.length) {
          show(strip, "circuits", "none reported", "unknown");
        } else if (!open.length) {
          show(strip, "circuits", deployments.length + " closed", "ok", detail);
        } else {
          show(strip, "circuits", open.length + " of " + deployments.length + " open or probing", "bad", detail);
        }
      })
      .catch(function () {
        show(strip, "store", "no answer", "bad");
        show(strip, "circuits", "no answer", "unknown");
      });
    getText("/metrics")
      .then(function (r) {
        if (r.status !== 200) throw new Error("metrics " + r.status);
        var metrics = parseMetrics(r.body);
        var redis = metrics.tollgate_redis_up;
        if (!redis) show(strip, "redis", "not configured", "unknown");
        else if (redis[0].value === 1) show(strip, "redis", "up", "ok");
        else show(strip, "redis", "down", "bad");
        var spool = metrics.tollgate_spool_depth_records;
        if (!spool) {
          show(strip, "spool", "not reported", "unknown");
        } else {
          var depth = spool[0].value;
          show(
            strip,
            "spool",
            depth + (depth === 1 ? " record" : " records") + " waiting",
            depth > 10000 ? "bad" : "ok",
            "usage records written locally and not yet in the store"
          );
        }
      })
      .catch(function () {
        show(strip, "redis", "unknown", "unknown");
        show(strip, "spool", "unknown", "unknown");
      });
  }

  function start() {
    var strip = document.getElementById("health");
    if (!strip) return;
    refresh(strip);
    setInterval(function () {
      if (!document.hidden) refresh(strip);
    }, 15000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
