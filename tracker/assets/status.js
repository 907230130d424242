// septet tracker status page: polls /api/status once a second and redraws.
// Every value is written with textContent (never as HTML).
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function num(n) {
  return Number(n).toLocaleString("en-US");
}

function rate(r) {
  if (r === undefined) return "–";
  return r >= 100 ? Math.round(r).toString() : r.toFixed(r >= 10 ? 1 : 2);
}

function fill(tbody, rows, columns, emptyText) {
  const body = document.createDocumentFragment();
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", "empty", emptyText);
    td.colSpan = columns;
    tr.appendChild(td);
    body.appendChild(tr);
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const c of cells) tr.appendChild(c);
    body.appendChild(tr);
  }
  tbody.replaceChildren(body);
}

function td(text, cls) {
  return el("td", cls, text);
}

function peerRow(p) {
  const state = el("td");
  state.appendChild(el("span", "pill " + p.state, p.state));
  if (p.slow > 0 && p.state !== "gone") state.appendChild(el("span", "pill probation", "probation"));
  const inUse = td(p.in_use, "num");
  const bar = el("span", "bar");
  const fillBar = el("i");
  fillBar.style.width = (p.slots ? Math.min(100, (100 * p.in_use) / p.slots) : 0) + "%";
  bar.appendChild(fillBar);
  inUse.appendChild(bar);
  const seen = td(duration(p.last_seen_ago_s) + " ago", "num");
  if (p.state === "suspect") seen.classList.add("warn");
  return [
    td(p.peer_id, "num"),
    td(p.addr, "addr"),
    state,
    td(p.slots, "num"),
    inUse,
    td(num(p.leases), "num"),
    td(p.failures, p.failures > 0 ? "num bad" : "num"),
    td(p.slow, p.slow > 0 ? "num warn" : "num"),
    seen,
  ];
}

function spark(t) {
  const svg = $("spark");
  const ns = "http://www.w3.org/2000/svg";
  const W = 600, H = 90, pad = 6;
  const series = [t.requests, t.leases_granted, t.leases_ended];
  const n = Math.max(1, ...series.map((s) => s.length));
  const max = Math.max(1, ...t.leases_granted, ...t.leases_ended);
  const maxReq = Math.max(1, ...t.requests);
  const x = (i) => W - ((n - 1 - i) / Math.max(1, 59)) * W;
  const y = (v, m) => H - pad - (v / m) * (H - 2 * pad);
  const parts = [];
  for (let g = 1; g <= 3; g++) {
    const line = document.createElementNS(ns, "line");
    line.setAttribute("class", "grid");
    line.setAttribute("x1", 0); line.setAttribute("x2", W);
    line.setAttribute("y1", (H * g) / 4); line.setAttribute("y2", (H * g) / 4);
    parts.push(line);
  }
  if (t.requests.length > 0) {
    const area = document.createElementNS(ns, "polygon");
    const pts = t.requests.map((v, i) => x(i) + "," + y(v, maxReq));
    pts.push(x(t.requests.length - 1) + "," + H, x(0) + "," + H);
    area.setAttribute("points", pts.join(" "));
    area.setAttribute("class", "requests");
    parts.push(area);
  }
  // Ended underneath, wide and pale, so granted stays visible on top where they agree.
  for (const [cls, s] of [["ended", t.leases_ended], ["granted", t.leases_granted]]) {
    if (s.length === 0) continue;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", s.map((v, i) => x(i) + "," + y(v, max)).join(" "));
    line.setAttribute("class", cls);
    parts.push(line);
  }
  svg.replaceChildren(...parts);
  const last = (s) => (s.length ? s[s.length - 1] : undefined);
  $("l-granted").textContent = rate(last(t.leases_granted));
  $("l-ended").textContent = rate(last(t.leases_ended));
  $("l-requests").textContent = rate(last(t.requests));
  $("l-max").textContent = "scale: leases 0–" + rate(max) + "/s, requests 0–" + rate(maxReq) + "/s";
}

function render(s) {
  const L = s.levels, T = s.totals;
  $("meta").textContent =
    "v" + s.version + " · up " + duration(s.uptime_s) + " · lease TTL " + duration(s.lease_ttl_s) +
    " · heartbeat timeout " + duration(s.heartbeat_timeout_s);
  $("c-alive").textContent = num(L.peers.alive);
  $("c-peers").textContent = L.peers.suspect + " suspect · " + L.peers.gone + " gone" +
    (L.on_probation ? " · " + L.on_probation + " on probation" : "");
  $("c-slots").textContent = num(L.slots_in_use) + " / " + num(L.slots);
  $("c-free").textContent = num(L.slots_free) + " free to lease";
  $("c-queue").textContent = num(L.queue_length);
  $("c-queue-slots").textContent = L.queue_length ? num(L.queue_slots) + " slots asked" : "nobody waiting";
  $("c-leases").textContent = num(L.leases);
  $("c-granted").textContent = num(T.leases_granted) + " granted in all";
  const g = s.throughput.leases_granted;
  const recent = g.slice(-10);
  $("c-rate").textContent = recent.length ? rate(recent.reduce((a, b) => a + b, 0) / recent.length) : "–";
  $("c-ended").textContent = "10 s average · " + num(T.leases_expired) + " expired";
  $("c-faults").textContent = num(T.failures_reported) + " · " + num(T.hedges);
  $("c-rejected").textContent = num(T.handshakes_rejected) + " handshakes rejected";
  spark(s.throughput);

  fill($("peers").tBodies[0], s.peers.map(peerRow), 9, "no worker has registered yet");
  $("peers-count").textContent = s.peers_total > s.peers.length
    ? "first " + s.peers.length + " of " + num(s.peers_total) : num(s.peers_total) + " registered";

  fill($("queue").tBodies[0], s.queue.map((q) => [
    td(q.position, "num"), td(q.count, "num"), td(q.from || "in-process", "addr"), td(duration(q.waited_s), "num"),
  ]), 4, "nobody is waiting");
  $("queue-count").textContent = s.queue_total > s.queue.length
    ? "first " + s.queue.length + " of " + num(s.queue_total) : num(s.queue_total) + " waiting";

  fill($("leases").tBodies[0], s.leases.map((l) => {
    const holder = l.holder || (l.detached ? "detached (holder left)" : "in-process");
    const ttl = td(duration(l.ttl_left_s), "num");
    if (l.ttl_left_s < Math.min(10, s.lease_ttl_s / 4)) ttl.classList.add("warn");
    return [td(l.lease_id, "num"), td(l.slots, "num"), td(holder + (l.detached && l.holder ? " · detached" : ""), "addr"),
      td(duration(l.age_s), "num"), ttl];
  }), 5, "no lease in force");
  $("leases-count").textContent = s.leases_total > s.leases.length
    ? "first " + s.leases.length + " of " + num(s.leases_total) : num(s.leases_total) + " in force";

  const F = s.federation;
  fill($("siblings").tBodies[0], F.siblings.map((b) => {
    const link = td(b.up ? "up" : "down" + (b.error ? " (" + b.error + ")" : ""));
    if (!b.up) link.classList.add("warn");
    return [td(b.addr, "addr"), td(b.cluster || "?"), link, td(num(b.free) + " / " + num(b.slots), "num"),
      td(b.queued, "num"), td(b.borrowed, "num")];
  }), 6, "no sibling tracker (start with --federate ADDR to borrow slots from other clusters)");
  $("fed-summary").textContent = "cluster " + F.cluster + " · " + num(F.leases) + (F.leases === 1 ? " lease" : " leases") + " borrowing · " +
    num(F.slots_borrowed) + " slots borrowed, " + num(F.slots_lent) + " lent in all";
  const B = F.links_brokered;
  if (B.dialled_back + B.punched + B.spliced + B.failed > 0) {
    $("fed-summary").textContent += " · links brokered: " + num(B.dialled_back) + " dialled back, " + num(B.punched) +
      " punched, " + num(B.spliced) + " spliced, " + num(B.failed) + " failed";
  }
}

function setLive(ok, text) {
  $("live").className = ok ? "live" : "live stale";
  $("live-text").textContent = text;
}

async function poll() {
  try {
    const res = await fetch("/api/status", { cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    render(await res.json());
    setLive(true, "live · " + new Date().toLocaleTimeString("en-GB"));
  } catch (e) {
    setLive(false, "tracker unreachable (" + e.message + "); retrying");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
