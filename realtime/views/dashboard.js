// avbind dashboard: renders the state the server pushes over /ws (or, where a WebSocket cannot
// connect, polls /state). Every string comes from the network, so text goes in with textContent
// and attributes, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#9467bd",
                 "#8c564b", "#17becf"];
const DEFAULT_W = 600, H = 46, LANES_H = 30;
const cards = new Map();

function base() { return location.pathname.replace(/[^/]*$/, ""); }

function el(parent, tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function num(x, digits) { return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "?"; }

function age(seconds) {
  if (typeof seconds !== "number") return "?";
  return seconds < 10 ? seconds.toFixed(1) + " s" : Math.round(seconds) + " s";
}

function card(name) {
  let c = cards.get(name);
  if (c) return c;
  const node = document.getElementById("card").content.firstElementChild.cloneNode(true);
  node.dataset.stream = name;
  node.querySelector(".stream-name").textContent = name;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "timeline");
  svg.setAttribute("viewBox", `0 0 ${DEFAULT_W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  node.querySelector(".timeline-box").appendChild(svg);
  c = {node, svg, q: (sel) => node.querySelector(sel)};
  cards.set(name, c);
  // keep the page in name order, as the server sends it
  document.getElementById("streams").appendChild(node);
  return c;
}

function renderBars(box, top) {
  box.replaceChildren();
  for (const item of top || []) {
    const row = el(box, "div", "bar");
    const track = el(row, "div", "track");
    const fill = el(track, "div", "fill");
    fill.style.width = Math.max(0, Math.min(1, Number(item.score) || 0)) * 100 + "%";
    el(track, "span", "name", String(item.label));
    el(row, "span", "score", num(item.score, 2));
  }
}

function svgEl(parent, tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function renderTimeline(svg, events, now, window) {
  svg.replaceChildren();
  const W = svg.clientWidth || DEFAULT_W;  // drawn in CSS pixels, so text is never stretched
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const x = (t) => Math.max(0, Math.min(W, ((t - (now - window)) / window) * W));
  const lanes = [];
  const placed = events.map((e) => {
    const t1 = e.t1 === null ? now : e.t1;
    let lane = lanes.findIndex((end) => end <= e.t0);
    if (lane < 0) { lane = lanes.length; lanes.push(t1); } else { lanes[lane] = t1; }
    return {e, t1, lane};
  });
  const n = Math.max(1, lanes.length), h = LANES_H / n;
  for (const {e, t1, lane} of placed) {
    const x0 = x(e.t0), x1 = Math.max(x0 + 2, x(t1));
    const g = svgEl(svg, "g", {});
    svgEl(g, "title", {}, `${e.label}: ${num(e.start, 1)}-${e.end === null ? "now" : num(e.end, 1)} s, ` +
          `mean ${num(e.confidence, 2)}, peak ${num(e.peak, 2)}${e.cut ? " (cut off: stream ended)" : ""}`);
    svgEl(g, "rect", {x: x0, y: 2 + lane * h, width: x1 - x0, height: h - 2, rx: 2,
                      fill: PALETTE[(Number(e.class_index) || 0) % PALETTE.length],
                      "fill-opacity": e.t1 === null ? 0.95 : 0.7});
    if (x1 - x0 > String(e.label).length * 5.5 + 6 && h >= 10) svgEl(g, "text", {x: x0 + 3, y: 2 + lane * h + h / 2 + 3}, String(e.label));
  }
  for (const [t, label] of [[window, `-${window} s`], [window / 2, `-${window / 2} s`], [0, "now"]]) {
    const px = x(now - t);
    svgEl(svg, "line", {x1: px, x2: px, y1: LANES_H + 2, y2: LANES_H + 6, stroke: "#666"});
    svgEl(svg, "text", {x: Math.min(W - 22, Math.max(0, px - 10)), y: H - 2, class: "axis"}, label);
  }
}

function renderStream(s, state) {
  const c = card(s.name);
  const st = c.q(".state");
  st.textContent = s.state;
  st.className = "state " + s.state;
  c.node.classList.toggle("gone", s.state === "ended" || s.state === "silent");
  c.q(".sources").textContent = (s.sources || []).length ? "sources: " + s.sources.join(", ") : "";
  const msg = c.q(".message");
  let note = s.message || "";
  if (s.state === "silent") note = `no message for ${age(s.last_message_age_s)}` + (note ? "; last: " + note : "");
  msg.textContent = note && (s.sources || []).length ? "· " + note : note;
  msg.className = "message " + (s.level || "");
  const seg = s.segment;
  const label = c.q(".segment-label");
  label.textContent = seg ? String(seg.label) : "no segment yet";
  label.classList.toggle("background", !!(seg && seg.is_background));
  let meta = "";
  if (seg) {
    meta = `confidence ${num(seg.confidence, 2)}, ${num(seg.start, 1)}-${num(seg.end, 1)} s`;
    if (seg.verb && !seg.is_background) meta += ` · verb ${seg.verb.label}, noun ${seg.noun ? seg.noun.label : "?"}`;
    if (seg.degraded_steps) meta += ` · ${seg.degraded_steps} degraded steps`;
  }
  c.q(".segment-meta").textContent = meta;
  renderBars(c.q(".bars"), seg ? seg.top : []);
  renderTimeline(c.svg, s.events || [], state.time, state.window_s);
  const img = c.q(".preview");
  if (s.preview) {
    if (img.dataset.seq !== String(s.preview.seq)) {
      img.dataset.seq = String(s.preview.seq);
      img.src = base() + "preview/" + encodeURIComponent(s.name) + ".jpg?seq=" + s.preview.seq;
    }
    img.hidden = false;
  } else {
    img.hidden = true;
  }
  const lat = s.latency_ms || {};
  c.q(".latency").textContent = lat.p50 === null || lat.p50 === undefined ? "latency -"
    : `latency p50 ${num(lat.p50, 0)} ms, p99 ${num(lat.p99, 0)} ms`;
  c.q(".rate").textContent = `${num(s.steps_per_s, 1)} steps/s, ${num(s.fps, 1)} fps`;
  const drops = Object.entries(s.drops || {}).map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`);
  if (s.lost) drops.push(`lost in transit ${s.lost}`);
  if (s.restarts) drops.push(`engine restarted ${s.restarts}x`);
  c.q(".drops").textContent = drops.length ? "drops: " + drops.join(", ") : "no drops";
  c.q(".age").textContent = `last message ${age(s.last_message_age_s)} ago`;
}

function render(state) {
  const engine = document.getElementById("engine");
  const e = state.engine || {};
  engine.textContent = e.connected ? "engine: live" : e.last_message_age_s === null
    ? "engine: waiting for messages" : `engine: no message for ${age(e.last_message_age_s)}`;
  engine.className = "pill " + (e.connected ? "ok" : "bad");
  const m = state.model || {};
  document.getElementById("model").textContent = m.model ? `${m.model} on ${m.backend || "?"}` : "";
  const names = new Set();
  for (const s of state.streams || []) {
    names.add(s.name);
    try { renderStream(s, state); } catch (err) { console.error("stream", s.name, err); }  // one odd stream only
  }
  for (const [name, c] of cards) {
    if (!names.has(name)) { c.node.remove(); cards.delete(name); }
  }
  const box = document.getElementById("streams");
  for (const s of state.streams || []) box.appendChild(cards.get(s.name).node);  // name order
  document.getElementById("empty").hidden = names.size > 0;
}

function link(text, ok) {
  const node = document.getElementById("link");
  node.textContent = text;
  node.className = "pill " + (ok ? "ok" : "bad");
}

let polling = null;
function poll() {
  if (polling) return;
  link("dashboard: polling", true);
  polling = setInterval(() => {
    fetch(base() + "state", {cache: "no-store"}).then((r) => r.json()).then(render)
      .catch(() => link("dashboard: unreachable", false));
  }, 1000);
}

function connect(delay) {
  let ws;
  try {
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + base() + "ws");
  } catch (err) {
    poll();
    return;
  }
  let opened = false;
  ws.onopen = () => {
    opened = true; delay = 500;
    if (polling) { clearInterval(polling); polling = null; }
    link("dashboard: live", true);
  };
  ws.onmessage = (ev) => render(JSON.parse(ev.data));
  ws.onclose = () => {
    link("dashboard: reconnecting", false);
    if (!opened && delay >= 4000) poll();  // a WebSocket that never opens (a proxy): fall back to polling
    setTimeout(() => connect(Math.min(delay * 2, 8000)), delay);
  };
}

connect(500);
