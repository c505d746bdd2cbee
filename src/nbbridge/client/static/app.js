// The client's status page: fetches status.json every `interval` seconds and draws it.
// Plain DOM and SVG, no libraries and no build step. Text goes in with textContent only.
(function () {
  "use strict";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) { return "–"; }
    if (Math.abs(n) >= 1e9) { return (n / 1e9).toFixed(2) + " GB"; }
    if (Math.abs(n) >= 1e6) { return (n / 1e6).toFixed(2) + " MB"; }
    if (Math.abs(n) >= 1e4) { return (n / 1e3).toFixed(1) + " kB"; }
    return Math.round(n) + " B";
  }

  function perSecond(n) { return bytes(n) + "/s"; }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) { return "–"; }
    if (seconds < 60) { return Math.round(seconds) + " s"; }
    if (seconds < 3600) { return Math.round(seconds / 60) + " min"; }
    return (seconds / 3600).toFixed(1) + " h";
  }

  function card(label, value, field) {
    var c = el("div", { "class": "card", "data-field": field });
    c.appendChild(el("div", { "class": "label" }, label));
    c.appendChild(el("div", { "class": "value" }, value));
    return c;
  }

  function renderLink(link) {
    var state = card("link", link.state, "state");
    state.setAttribute("data-state", link.state);
    var cards = [
      state,
      card("relay", link.relay, "relay"),
      card("agent", link.agent, "agent"),
      card("up for", duration(link.up_for), "up_for"),
      card("round trip to the relay", link.rtt_ms === null ? "–" : link.rtt_ms + " ms", "rtt"),
      card("reconnects", link.reconnects, "reconnects")
    ];
    if (link.last_error) { cards.push(card("last error", link.last_error, "last_error")); }
    var session = (window.__nbbSession || {});
    if (session.state === "suspended") {
      cards.push(card("session", "suspended for " + duration(session.suspended_for) +
        " (" + session.channels + " connections kept)", "session"));
    } else if (session.resumes) {
      cards.push(card("session resumed", session.resumes + "× (last after " +
        duration(session.last_suspended_for) + ")", "session"));
    }
    document.getElementById("link").replaceChildren.apply(document.getElementById("link"), cards);
  }

  function renderForwards(forwards) {
    var rows = forwards.map(function (f) {
      var tr = el("tr", { "data-forward": f.service });
      var open = el("td", { "class": "text", "data-field": "line" });
      if (f.url) {
        open.appendChild(el("a", { href: f.url, target: "_blank", rel: "noopener" }, f.line));
      } else {
        open.textContent = f.line || "not listening";
      }
      tr.appendChild(el("td", { "class": "text", "data-field": "service" }, f.service));
      tr.appendChild(open);
      [["open", f.open], ["connections", f.connections], ["bytes_up", bytes(f.bytes_up)],
       ["bytes_down", bytes(f.bytes_down)], ["rate_up", perSecond(f.rate_up)],
       ["rate_down", perSecond(f.rate_down)]].forEach(function (cell) {
        tr.appendChild(el("td", { "data-field": cell[0] }, cell[1]));
      });
      return tr;
    });
    var body = document.querySelector("#forwards tbody");
    body.replaceChildren.apply(body, rows);
  }

  var chart = window.nbbLiveChart(document.getElementById("chart"),
    document.getElementById("legend"), { format: perSecond });

  function setStatus(text, isError) {
    var status = document.getElementById("status");
    status.textContent = text;
    status.className = isError ? "error" : "muted";
  }

  function refresh() {
    var interval = 2;
    fetch("status.json", { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("the client answered " + response.status); }
        return response.json();
      })
      .then(function (doc) {
        interval = doc.interval || interval;
        window.__nbbSession = doc.session; renderLink(doc.link);
        renderForwards(doc.forwards);
        var rates = {};
        doc.forwards.forEach(function (f) { rates[f.service] = f.rate_up + f.rate_down; });
        chart.push(rates);
        setStatus("updated " + new Date(doc.time * 1000).toLocaleTimeString() + ", every " +
          interval + " s · nbbridge " + doc.version, false);
      })
      .catch(function (error) {
        setStatus("no answer from the client: " + String(error.message || error), true);
      })
      .then(function () { window.setTimeout(refresh, interval * 1000); });
  }

  refresh();
}());
