// The hub's stats page: fetches stats/json every `interval` seconds and draws it.
// Plain DOM and SVG, no libraries and no build step. Text goes in with textContent only.
// The stats token travels in an HttpOnly cookie set by the sign-in form (POST stats/login):
// this script never sees it, and it never appears in a URL.
(function () {
  "use strict";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function number(n) {
    if (n === null || n === undefined) { return "–"; }
    if (Math.abs(n) >= 1e9) { return (n / 1e9).toFixed(2) + " G"; }
    if (Math.abs(n) >= 1e6) { return (n / 1e6).toFixed(2) + " M"; }
    if (Math.abs(n) >= 1e4) { return (n / 1e3).toFixed(1) + " k"; }
    return Number.isInteger(n) ? String(n) : n.toFixed(1);
  }

  function perSecond(n) {
    var text = number(n);
    return (/[kMG]$/.test(text) ? text : text + " ") + "B/s";
  }

  function clock(seconds) {
    if (!seconds) { return "–"; }
    return new Date(seconds * 1000).toLocaleTimeString();
  }

  function card(label, value, field) {
    var c = el("div", { "class": "card", "data-field": field });
    c.appendChild(el("div", { "class": "label" }, label));
    c.appendChild(el("div", { "class": "value" }, value));
    return c;
  }

  function row(cells, attrs) {
    var tr = el("tr", attrs);
    cells.forEach(function (cell) {
      tr.appendChild(el("td", { "class": cell[2] || "", "data-field": cell[0] }, cell[1]));
    });
    return tr;
  }

  function head(names) {
    var tr = el("tr");
    names.forEach(function (n, i) { tr.appendChild(el("th", { "class": i < 2 ? "text" : "" }, n)); });
    var thead = el("thead");
    thead.appendChild(tr);
    return thead;
  }

  function renderSummary(doc) {
    var s = document.getElementById("summary");
    var t = doc.totals;
    s.replaceChildren(
      card("topics", t.topics, "topics"),
      card("connections", t.members, "members"),
      card("messages in", number(t.messages_in), "messages_in"),
      card("messages out", number(t.messages_out), "messages_out"),
      card("in / s", number(t.rates.messages_in), "rate_in"),
      card("out / s", number(t.rates.messages_out), "rate_out"),
      card("dropped", number(t.dropped), "dropped"),
      card("ignored (out senders)", number(t.ignored), "ignored"),
      card("queued bytes", number(t.queued_bytes), "queued_bytes")
    );
    if (doc.tunnel) {
      s.appendChild(card("agents online", doc.tunnel.agents_online, "agents_online"));
      s.appendChild(card("links", doc.tunnel.links, "links"));
      s.appendChild(card("link bytes", number(doc.tunnel.bytes), "link_bytes"));
      s.appendChild(card("dial failures", doc.tunnel.dial_failures, "dial_failures"));
    }
    if (doc.cluster) {
      // Relays sharing a Redis: the figures of all of them (docs/hub.md, "Topics across relays").
      var c = doc.cluster.totals;
      s.appendChild(card("relays", doc.cluster.relays, "cluster_relays"));
      s.appendChild(card("cluster topics", c.topics, "cluster_topics"));
      s.appendChild(card("cluster connections", c.members, "cluster_members"));
      s.appendChild(card("cluster in / s", number(c.rates.messages_in), "cluster_rate_in"));
      s.appendChild(card("cluster out / s", number(c.rates.messages_out), "cluster_rate_out"));
      s.appendChild(card("cluster dropped", number(c.dropped), "cluster_dropped"));
    }
  }

  function renderTopics(doc) {
    var box = document.getElementById("topics");
    var nodes = [];
    doc.topics.forEach(function (topic) {
      var label = topic.kind === "stream" ? "stream " + topic.name : topic.name;
      var h = el("h3", { "data-topic": topic.name, "data-kind": topic.kind }, label);
      var table = el("table", { "class": "topic", "data-topic": topic.name });
      table.appendChild(head(["topic", "kind", "members", "senders", "readers", "msgs in",
        "msgs out", "in/s", "out/s", "bytes in/s", "bytes out/s", "dropped", "ignored",
        "queued", "last activity"]));
      var body = el("tbody");
      body.appendChild(row([
        ["name", topic.name, "text"], ["kind", topic.kind, "text"], ["members", topic.members],
        ["senders", topic.senders], ["readers", topic.readers],
        ["messages_in", topic.messages_in], ["messages_out", topic.messages_out],
        ["rate_messages_in", number(topic.rates.messages_in)],
        ["rate_messages_out", number(topic.rates.messages_out)],
        ["rate_bytes_in", number(topic.rates.bytes_in)],
        ["rate_bytes_out", number(topic.rates.bytes_out)],
        ["dropped", topic.dropped], ["ignored", topic.ignored],
        ["queued_bytes", number(topic.queued_bytes)], ["last_activity", clock(topic.last_activity)]
      ], { "data-topic": topic.name }));
      table.appendChild(body);
      nodes.push(h, table);

      var members = el("table", { "class": "connections", "data-topic": topic.name });
      members.appendChild(head(["remote", "route", "#", "role", "since", "msgs in", "msgs out",
        "bytes in", "bytes out", "in/s", "out/s", "dropped", "queued", "paused", "last activity"]));
      var mbody = el("tbody");
      topic.connections.forEach(function (c) {
        mbody.appendChild(row([
          ["remote", c.remote, "text"], ["route", c.route, "text"], ["id", c.id],
          ["role", c.role], ["since", clock(c.since)],
          ["messages_in", c.messages_in], ["messages_out", c.messages_out],
          ["bytes_in", number(c.bytes_in)], ["bytes_out", number(c.bytes_out)],
          ["rate_messages_in", number(c.rates.messages_in)],
          ["rate_messages_out", number(c.rates.messages_out)],
          ["dropped", c.dropped], ["queued_bytes", number(c.queued_bytes)],
          ["paused", c.paused ? "yes" : "no"], ["last_activity", clock(c.last_activity)]
        ], { "data-connection": String(c.id) }));
      });
      members.appendChild(mbody);
      nodes.push(members);
    });
    box.replaceChildren.apply(box, nodes);
    document.getElementById("empty").hidden = doc.topics.length > 0;
  }

  function renderChart(doc) {
    var rates = {};
    doc.topics.forEach(function (topic) {
      rates[topic.kind + ":" + topic.name] = topic.rates.bytes_in + topic.rates.bytes_out;
    });
    chart.push(rates);
  }

  function setStatus(text, isError) {
    var status = document.getElementById("status");
    status.textContent = text;
    status.className = isError ? "error" : "muted";
  }

  function showSignIn(signedIn) {
    document.getElementById("sign-in").hidden = signedIn;
    document.getElementById("sign-out").hidden = !signedIn;
  }

  // The chart is chart.js's (shared with the client's status page), loaded before this file.
  var chart = window.nbbLiveChart(document.getElementById("chart"),
    document.getElementById("legend"), {
      format: perSecond,
      label: function (key) { return key.replace(/^both:/, "").replace(/^stream:/, "stream "); }
    });

  var refused = window.location.hash === "#sign-in-refused";
  if (refused) { history.replaceState(null, "", window.location.pathname); }

  function refresh() {
    var interval = 5;
    fetch("stats/json", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          showSignIn(false);
          throw new Error("these stats need the stats token: sign in");
        }
        if (!response.ok) { throw new Error("the relay answered " + response.status); }
        return response.json();
      })
      .then(function (doc) {
        interval = doc.interval || interval;
        showSignIn(doc.view === "full");
        renderSummary(doc);
        renderTopics(doc);
        renderChart(doc);
        if (refused) {
          setStatus("stats token not recognised", true);
          refused = false;
          return;
        }
        setStatus("updated " + clock(doc.time) + ", every " + interval + " s; rates over the last " +
          doc.window + " s · relay " + doc.version +
          (doc.view === "full" ? "" : " · totals only"), false);
      })
      .catch(function (error) { setStatus(String(error.message || error), true); })
      .then(function () { window.setTimeout(refresh, interval * 1000); });
  }

  refresh();
}());
