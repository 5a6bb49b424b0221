// pivot dashboard: reads the controller's JSON API (the same answers `pivotctl --json` prints),
// follows its live events, and acts through it when the signed-in role may. No framework, no
// build step; every piece of text from the controller goes in with textContent, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVG = "http://www.w3.org/2000/svg";

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replaces `el`'s children, leaving out the absent ones.
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined));
}

function s(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

// ---- numbers in words -------------------------------------------------------------------

function watts(w) {
  if (w === null || w === undefined || !isFinite(w)) return "–";
  const a = Math.abs(w);
  if (a >= 1e6) return (w / 1e6).toFixed(3) + " MW";
  if (a >= 1e3) return (w / 1e3).toFixed(1) + " kW";
  return w.toFixed(0) + " W";
}
const usd = (v, d = 2) => (v === null || v === undefined || !isFinite(v) ? "–" : v.toLocaleString(undefined, { minimumFractionDigits: d, maximumFractionDigits: d }));
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return s.toFixed(0) + " s ago";
  if (s < 5400) return (s / 60).toFixed(0) + " min ago";
  if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
  return (s / 86400).toFixed(0) + " d ago";
}
const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "–");
const when = (iso) => (iso ? new Date(iso).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : "–");
const get = (obj, path) => path.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);

// ---- state ------------------------------------------------------------------------------

const state = {
  who: null,        // GET /api/session
  csrf: null,
  status: null,
  economics: null,
  history: { site: [], market: [] },
  windows: { demand_response: [], schedule: [] },
  devices: [],
  sort: { key: "host_id", dir: 1 },
  minutes: 60,
  events: null,
};
window.pivotDashboard = state; // for people poking at it in the console, and for the browser test

// ---- the API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || "HTTP " + status);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(path, opts = {}) {
  const init = { credentials: "same-origin", headers: {} };
  if (opts.method) init.method = opts.method;
  if (opts.body !== undefined) {
    init.body = JSON.stringify(opts.body);
    init.headers["content-type"] = "application/json";
  }
  if (init.method && init.method !== "GET") init.headers["x-pivot-csrf"] = state.csrf || "dashboard";
  const r = await fetch(path, init);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

function toast(text, error) {
  const t = $("#toast");
  t.textContent = text;
  t.className = "toast" + (error ? " error" : "");
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), error ? 8000 : 4000);
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// ---- status cards -----------------------------------------------------------------------

function renderStatus(st) {
  state.status = st;
  $("#site-id").textContent = st.site_id + " · controller " + st.controller_version;
  $("#mode").textContent = "policy " + st.policy + " — " + st.mode;
  // What a dwell holds back, and what failed moves hold, under the mode (pivotctl status's lines).
  const held = (st.held || []).map((h) => "held " + h.device_id + " until " + h.until + ": " + h.reason);
  const notes = (st.waiting || []).map((w) => "waiting: " + w).concat(held);
  $("#mode").title = notes.length ? notes.join("\n") : "What the controller runs on: economic decisions, or the safe policy and why";
  $("#mode").classList.toggle("has-notes", notes.length > 0);
  if (notes.length) $("#mode").textContent += " · " + notes.length + (notes.length === 1 ? " note" : " notes") + " (hover)";
  for (const el of document.querySelectorAll("[data-field]")) {
    const v = get(st, el.dataset.field);
    el.dataset.value = v === null || v === undefined ? "" : String(v);
    const unit = el.dataset.unit;
    el.textContent = unit === "W" ? watts(v) : unit === "usd_h" ? (v === null || v === undefined ? "–" : usd(v) + " USD/h") : v === null || v === undefined ? "–" : String(v);
  }
  const headroom = st.cap_in_force_w - st.committed_power_w;
  const hr = $("#headroom");
  hr.dataset.value = String(headroom);
  hr.textContent = watts(headroom);
  const pct = st.cap_in_force_w > 0 ? (100 * st.committed_power_w) / st.cap_in_force_w : 0;
  $("#committed-bar").style.width = Math.min(100, pct).toFixed(1) + "%";
  $("#committed-bar").parentElement.classList.toggle("over", pct > 100);
  if (st.economics) renderEconomics(st.economics);
  renderDrNow(st.demand_response);
  // The live point on the charts, until the next history sample lands.
  const at = st.as_of;
  const last = state.history.site[state.history.site.length - 1];
  if (!last || Date.parse(at) > Date.parse(last.at)) {
    state.history.site.push({ at, cap_w: st.cap_in_force_w, committed_w: st.committed_power_w, measured_w: st.measured_power_w,
      mining_w: st.mining_power_w, ai_w: st.ai_power_w, margin_usd_per_h: st.margin_usd_per_h, live: true });
    if (st.economics) state.history.market.push({ at, hashprice_usd_per_ph_day: st.economics.hashprice_usd_per_ph_day,
      energy_usd_per_mwh: st.economics.energy_price_usd_per_mwh, live: true });
    drawCharts();
  }
}

// ---- economics --------------------------------------------------------------------------

function renderEconomics(e) {
  state.economics = e;
  const rows = [
    ["hashprice", usd(e.hashprice_usd_per_ph_day) + " USD/PH/day", e.btc_price_usd > 0 && e.network_hashrate_ehs > 0
      ? "BTC " + usd(e.btc_price_usd, 0) + " USD, network " + usd(e.network_hashrate_ehs, 0) + " EH/s" : "USD per PH/s per day, as the source gives it"],
    ["energy price", usd(e.energy_price_usd_per_mwh) + " USD/MWh", "real-time; a cost on every load"],
    ["mining value", usd(e.mining_value_usd_per_mwh, 0) + " USD/MWh", "at the fleet's " + usd(e.fleet_efficiency_j_per_th, 1) + " J/TH: hashprice × 1000 ÷ (24 × J/TH)"],
    ["mining margin", usd(e.mining_value_usd_per_mwh - e.energy_price_usd_per_mwh, 0) + " USD/MWh", "mining value − energy price"],
    ["AI value", usd(e.ai_value_usd_per_mwh, 0) + " USD/MWh", usd(e.ai_spot_usd_per_gpu_hour) + " USD per GPU-hour × GPUs ÷ host draw"],
    ["AI margin", usd(e.ai_value_usd_per_mwh - e.energy_price_usd_per_mwh, 0) + " USD/MWh", "AI value − energy price"],
    ["AI demand", e.ai_gpu_demand === null || e.ai_gpu_demand === undefined ? "all GPUs" : e.ai_gpu_demand + " GPUs", "GPUs that pending and running jobs want"],
  ];
  const t = $("#economics");
  t.replaceChildren(...rows.map(([k, v, x]) => h("tr", {}, h("td", {}, k), h("td", { "data-econ": k }, v), h("td", {}, x))));
  if (!e.usable) banner("The market inputs are not usable; the safe policy is in force: " + (e.problems || []).join("; "));
  else banner("");
  $("#classes tbody").replaceChildren(...(e.miner_classes || []).map((c) =>
    h("tr", {}, h("td", {}, c.model || "(unidentified)"), h("td", { class: "num" }, c.count), h("td", { class: "num" }, usd(c.efficiency_j_per_th, 1)),
      h("td", { class: "num" }, usd(c.value_usd_per_mwh, 1)),
      h("td", { class: "num" }, h("span", { class: "badge " + (c.margin_usd_per_mwh >= 0 ? "ok" : "failed") }, usd(c.margin_usd_per_mwh, 1))))));
  $("#inputs tbody").replaceChildren(...(e.inputs || []).map((i) =>
    h("tr", { title: i.problem || "" }, h("td", {}, i.name), h("td", {}, h("span", { class: "badge " + i.health }, i.health)),
      h("td", { class: "num" }, i.value === null || i.value === undefined ? "–" : usd(i.value)), h("td", {}, ago(i.at)), h("td", { class: "muted small" }, i.source))));
}

// ---- charts -----------------------------------------------------------------------------

function frame(svg) {
  const w = svg.clientWidth || 600, hgt = svg.clientHeight || 240;
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.replaceChildren();
  return { w, h: hgt, left: 58, right: 10, top: 8, bottom: 20 };
}

function axes(svg, f, t0, t1, y0, y1, fmt) {
  const x = (t) => f.left + ((t - t0) / (t1 - t0 || 1)) * (f.w - f.left - f.right);
  const y = (v) => f.h - f.bottom - ((v - y0) / (y1 - y0 || 1)) * (f.h - f.top - f.bottom);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    svg.append(s("line", { x1: f.left, x2: f.w - f.right, y1: y(v), y2: y(v), class: "axis" }));
    const tx = s("text", { x: f.left - 6, y: y(v) + 4, "text-anchor": "end" });
    tx.textContent = fmt(v);
    svg.append(tx);
  }
  const ticks = Math.max(2, Math.min(6, Math.floor((f.w - f.left) / 130)));
  const fmtT = t1 - t0 < 600000 ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + ((t1 - t0) * i) / ticks;
    const tx = s("text", { x: x(t), y: f.h - 4, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" });
    tx.textContent = new Date(t).toLocaleTimeString([], fmtT);
    svg.append(tx);
  }
  return { x, y };
}

// The chart's time span: the chosen range, or from the first sample when the history is younger.
function span() {
  const t1 = Date.now();
  const range = t1 - state.minutes * 60000;
  const first = Math.min(...state.history.site.concat(state.history.market).map((r) => Date.parse(r.at)).filter(isFinite));
  let t0 = isFinite(first) && first > range ? first - 10000 : range;
  if (t1 - t0 < 120000) t0 = t1 - 120000;
  return [t0, t1];
}

function shade(svg, f, sc, t0, t1, from, to, fill, label) {
  const a = Math.max(t0, from), b = Math.min(t1, to);
  if (!(b > a)) return;
  const r = s("rect", { x: sc.x(a), y: f.top, width: Math.max(1, sc.x(b) - sc.x(a)), height: f.h - f.top - f.bottom, fill });
  const title = s("title");
  title.textContent = label;
  r.append(title);
  svg.append(r);
}

function path(points, sc) {
  return points.map(([t, v], i) => (i ? "L" : "M") + sc.x(t).toFixed(1) + " " + sc.y(v).toFixed(1)).join(" ");
}

function area(lower, upper, sc) {
  if (!upper.length) return "";
  const top = upper.map(([t, v], i) => (i ? "L" : "M") + sc.x(t).toFixed(1) + " " + sc.y(v).toFixed(1)).join(" ");
  const bottom = lower.slice().reverse().map(([t, v]) => "L" + sc.x(t).toFixed(1) + " " + sc.y(v).toFixed(1)).join(" ");
  return top + " " + bottom + " Z";
}

function shadeWindows(svg, f, sc, t0, t1) {
  for (const e of state.windows.demand_response || []) {
    const end = Date.parse(e.cancelled_at || e.ends_at);
    shade(svg, f, sc, t0, t1, Date.parse(e.created_at || e.deadline), end, "var(--dr)", "demand response " + e.event_id + ": " + watts(e.target_power_w) + " (" + e.state + ")");
  }
  for (const w of state.windows.schedule || []) {
    shade(svg, f, sc, t0, t1, Date.parse(w.from), Date.parse(w.to), "var(--sched)", "schedule window " + w.name + (w.cap_w ? ": cap " + watts(w.cap_w) : ""));
  }
}

function drawPower() {
  const svg = $("#power-chart");
  const f = frame(svg);
  const rows = state.history.site.filter((r) => r.at);
  const [t0, t1] = span();
  const pts = rows.map((r) => ({ t: Date.parse(r.at), ...r })).filter((r) => r.t >= t0);
  const siteCap = state.status ? state.status.site_cap_w : 0;
  const ymax = Math.max(siteCap, ...pts.map((p) => Math.max(p.cap_w, p.committed_w, p.measured_w || 0))) * 1.05 || 1;
  const sc = axes(svg, f, t0, t1, 0, ymax, (v) => watts(v));
  shadeWindows(svg, f, sc, t0, t1);
  if (pts.length) {
    const zero = pts.map((p) => [p.t, 0]);
    const mining = pts.map((p) => [p.t, p.mining_w]);
    const ai = pts.map((p) => [p.t, p.mining_w + p.ai_w]);
    const committed = pts.map((p) => [p.t, Math.max(p.committed_w, p.mining_w + p.ai_w)]);
    const cap = pts.map((p) => [p.t, p.cap_w]);
    const headTop = pts.map((p) => [p.t, Math.max(p.cap_w, Math.max(p.committed_w, p.mining_w + p.ai_w))]);
    svg.append(s("path", { d: area(committed, headTop, sc), fill: "var(--headroom)" }));
    svg.append(s("path", { d: area(ai, committed, sc), fill: "var(--other)" }));
    svg.append(s("path", { d: area(mining, ai, sc), fill: "var(--ai)" }));
    svg.append(s("path", { d: area(zero, mining, sc), fill: "var(--mining)" }));
    svg.append(s("path", { d: path(cap, sc), fill: "none", stroke: "var(--cap)", "stroke-width": 2 }));
    svg.dataset.points = String(pts.length);
    svg.dataset.lastCommitted = String(pts[pts.length - 1].committed_w);
    svg.dataset.minCap = String(Math.min(...pts.map((p) => p.cap_w)));
  }
  if (siteCap) svg.append(s("line", { x1: f.left, x2: f.w - f.right, y1: sc.y(siteCap), y2: sc.y(siteCap), stroke: "var(--site)", "stroke-dasharray": "5 4" }));
}

function drawPrices() {
  const svg = $("#price-chart");
  const f = frame(svg);
  const [t0, t1] = span();
  const pts = state.history.market.map((m) => [Date.parse(m.at), m.energy_usd_per_mwh]).filter(([t, v]) => t >= t0 && isFinite(v));
  const e = state.economics;
  const refs = [];
  for (const c of (e && e.miner_classes) || []) refs.push({ v: c.value_usd_per_mwh, color: "var(--breakeven)", label: (c.model || "unidentified") + " breakeven" });
  if (e && e.ai_value_usd_per_mwh > 0) refs.push({ v: e.ai_value_usd_per_mwh, color: "var(--aivalue)", label: "AI value" });
  const vals = pts.map((p) => p[1]).concat(refs.map((r) => r.v));
  const ymin = Math.min(0, ...vals), ymax = Math.max(10, ...vals) * 1.1;
  const sc = axes(svg, f, t0, t1, ymin, ymax, (v) => v.toFixed(0));
  shadeWindows(svg, f, sc, t0, t1);
  let lastLabelY = -100;
  for (const r of refs.sort((a, b) => b.v - a.v)) {
    const ln = s("line", { x1: f.left, x2: f.w - f.right, y1: sc.y(r.v), y2: sc.y(r.v), stroke: r.color, "stroke-dasharray": "6 4" });
    const title = s("title");
    title.textContent = r.label + ": " + usd(r.v, 0) + " USD/MWh";
    ln.append(title);
    svg.append(ln);
    const y = sc.y(r.v) - 3;
    if (y - lastLabelY < 12) continue; // the line stays; its name is in its tooltip
    lastLabelY = y;
    const tx = s("text", { x: f.w - f.right - 4, y, "text-anchor": "end" });
    tx.textContent = r.label;
    svg.append(tx);
  }
  if (pts.length) {
    svg.append(s("path", { d: path(pts, sc), fill: "none", stroke: "var(--energy)", "stroke-width": 2 }));
    svg.dataset.points = String(pts.length);
    svg.dataset.maxEnergy = String(Math.max(...pts.map((p) => p[1])));
    svg.dataset.lastEnergy = String(pts[pts.length - 1][1]);
  }
}

function drawHashprice() {
  const svg = $("#hashprice-chart");
  const f = frame(svg);
  const [t0, t1] = span();
  const hp = state.history.market.map((m) => [Date.parse(m.at), m.hashprice_usd_per_ph_day]).filter(([t, v]) => t >= t0 && isFinite(v));
  const mg = state.history.site.filter((r) => r.margin_usd_per_h !== null && r.margin_usd_per_h !== undefined).map((r) => [Date.parse(r.at), r.margin_usd_per_h]).filter(([t]) => t >= t0);
  const hmax = Math.max(1, ...hp.map((p) => p[1])) * 1.1;
  const sc = axes(svg, f, t0, t1, 0, hmax, (v) => v.toFixed(0));
  if (hp.length) svg.append(s("path", { d: path(hp, sc), fill: "none", stroke: "var(--hashprice)", "stroke-width": 2 }));
  if (mg.length) {
    const lo = Math.min(0, ...mg.map((p) => p[1])), hi = Math.max(1, ...mg.map((p) => p[1])) * 1.1;
    const y = (v) => f.h - f.bottom - ((v - lo) / (hi - lo || 1)) * (f.h - f.top - f.bottom);
    svg.append(s("path", { d: mg.map(([t, v], i) => (i ? "L" : "M") + sc.x(t).toFixed(1) + " " + y(v).toFixed(1)).join(" "), fill: "none", stroke: "var(--margin)", "stroke-width": 1.5 }));
    const tx = s("text", { x: f.w - f.right - 4, y: f.top + 10, "text-anchor": "end" });
    tx.textContent = "margin " + usd(mg[mg.length - 1][1], 0) + " USD/h (right scale " + usd(lo, 0) + "–" + usd(hi, 0) + ")";
    svg.append(tx);
  }
}

function drawCharts() {
  drawPower();
  drawPrices();
  drawHashprice();
}

// ---- plan, decisions, DR, overrides -------------------------------------------------------

function renderPlan(p) {
  const box = $("#plan");
  if (!p.exists || !p.summary) {
    box.replaceChildren(h("p", { class: "explain" }, "No plan yet: the controller plans within seconds of start, and again when something changes."));
    return;
  }
  const sm = p.summary;
  const head = h("p", {}, h("span", { class: "badge " + sm.state }, sm.state), " ", sm.plan_id, " — phase ",
    Math.min(sm.phase + 1, sm.phases), " of ", sm.phases, ", made ", when(sm.created_at), " under ", watts(p.cap_w), " (", p.cap_reason, ")");
  const reason = h("p", { class: "explain" }, sm.reason);
  const phases = p.phases.map((ph) => {
    const moves = ph.moves.slice(0, 50).map((m) =>
      h("li", {}, h("span", { class: "badge " + m.status }, m.status), " ", m.device_id, ": ", m.from || "?", " → ", m.to, m.detail ? " — " + m.detail : ""));
    const more = ph.moves.length > 50 ? h("li", { class: "muted" }, "… and " + (ph.moves.length - 50) + " more (pivotctl plan --json)") : null;
    return h("div", { class: "phase " + ph.state }, h("div", {}, h("span", { class: "badge " + ph.state }, ph.state), " ", ph.index + 1, ". ", ph.label,
      h("span", { class: "muted small" }, " — ", ph.moves.length, " moves, committed ", watts(ph.committed_w))),
      h("details", {}, h("summary", {}, "moves"), h("ul", { class: "feed" }, moves, more)));
  });
  const decisions = p.decisions.length ? h("ul", {}, p.decisions.map((d) => h("li", {}, d))) : null;
  fill(box, head, reason, decisions, phases);
}

function renderDecisions(list) {
  $("#decisions").replaceChildren(...list.map((r) =>
    h("li", { "data-kind": r.kind }, h("time", { datetime: r.at }, clock(r.at)), h("span", { class: "badge" }, r.kind), " ", r.reason,
      r.actor && r.actor !== "controller" ? h("span", { class: "muted small" }, " — " + r.actor) : null)));
}

function renderDrNow(d) {
  const box = $("#dr-now");
  if (!d) {
    box.replaceChildren(h("p", { class: "explain" }, "No event in force."));
    return;
  }
  const achieved = d.achieved_power_w;
  const met = achieved !== null && achieved !== undefined && achieved <= d.target_power_w;
  fill(box,
    h("p", {}, h("span", { class: "badge " + (met ? "ok" : "in_force") }, met ? "target met" : "working"), " ", d.event_id, ": reach ",
      h("b", { "data-dr": "target" }, watts(d.target_power_w)), " by ", when(d.deadline), ", hold until ", when(d.ends_at)),
    h("p", {}, "achieved ", h("b", { "data-dr": "achieved" }, watts(achieved)), " (committed draw now)",
      d.achievable_power_w !== null && d.achievable_power_w !== undefined ? "; lowest reachable " + watts(d.achievable_power_w) : ""),
    d.note ? h("p", { class: "error" }, d.note) : null);
}

function renderDrList(list) {
  $("#dr-list tbody").replaceChildren(...list.map((e) =>
    h("tr", {}, h("td", {}, e.event_id), h("td", {}, h("span", { class: "badge " + e.state }, e.state)), h("td", { class: "num" }, watts(e.target_power_w)),
      h("td", { class: "num" }, watts(e.achieved_power_w)), h("td", { title: "deadline " + when(e.deadline) }, when(e.cancelled_at || e.ends_at)),
      h("td", {}, mayOperate() && !e.cancelled_at && e.state !== "ended" ? h("button", { onclick: () => cancelDr(e.event_id) }, "Cancel…") : null))));
}

function renderOverrides(list) {
  $("#overrides tbody").replaceChildren(...list.map((o) =>
    h("tr", { "data-target": o.target }, h("td", {}, o.target), h("td", {}, o.pin), h("td", {}, o.expires_at ? when(o.expires_at) : "until cleared"),
      h("td", {}, o.reason), h("td", { class: "muted small" }, o.actor),
      h("td", {}, mayOperate() ? h("button", { onclick: () => clearOverride(o.target) }, "Clear…") : null))));
}

// ---- devices ------------------------------------------------------------------------------

function deviceRow(d) {
  const phase = d.intent_status ? d.intent_status.phase.replace("INTENT_PHASE_", "").toLowerCase() : "";
  const stale = d.last_seen && Date.now() - Date.parse(d.last_seen) > 60000;
  const unreachable = d.reachable === false;
  const failed = phase === "failed" || phase === "rejected";
  return {
    d, phase, stale, unreachable, failed,
    work: d.kind === "miner" ? d.hashrate_ths : d.power_cap_w,
    intent: d.intent ? d.intent.target : "",
    problem: unreachable || failed || stale,
  };
}

function renderDevices() {
  const q = $("#device-filter").value.trim().toLowerCase();
  const kind = $("#device-kind").value;
  const problems = $("#device-problems").checked;
  let rows = state.devices.map(deviceRow);
  rows = rows.filter((r) => (!kind || r.d.kind === kind) && (!problems || r.problem) &&
    (!q || [r.d.host_id, r.d.device_id, r.d.model, r.d.state, r.phase, r.intent].join(" ").toLowerCase().includes(q)));
  const { key, dir } = state.sort;
  const val = (r) => (key === "work" ? r.work : key === "phase" ? r.phase : key === "intent" ? r.intent : r.d[key]);
  rows.sort((a, b) => {
    const x = val(a), y = val(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * dir;
  });
  $("#device-count").textContent = rows.length + " of " + state.devices.length;
  $("#devices tbody").replaceChildren(...rows.map((r) => {
    const d = r.d;
    const flag = r.unreachable || r.failed ? "flag-bad" : r.stale ? "flag-warn" : "";
    const why = [r.unreachable ? "unreachable: " + (d.problem || "no answer") : "", r.failed ? "move failed: " + (d.intent_status.detail || "") : "", r.stale ? "not heard for " + ago(d.last_seen) : ""].filter(Boolean).join("; ");
    const work = d.kind === "miner" ? (d.hashrate_ths === null || d.hashrate_ths === undefined ? "–" : usd(d.hashrate_ths, 1) + " TH/s") : d.power_cap_w ? watts(d.power_cap_w) + " cap" : "–";
    return h("tr", { class: flag, title: why, "data-device": d.device_id },
      h("td", {}, d.host_id), h("td", {}, d.kind), h("td", {}, d.device_id), h("td", {}, d.model),
      h("td", {}, r.unreachable ? h("span", { class: "badge unreachable" }, "unreachable") : d.state ? h("span", { class: "badge " + d.state }, d.state) : ""),
      h("td", { class: "num" }, watts(d.power_w)), h("td", { class: "num" }, work), h("td", {}, ago(d.last_seen)),
      h("td", {}, r.intent), h("td", {}, r.phase ? h("span", { class: "badge " + r.phase }, r.phase + (d.intent_status.retrying ? " (retrying)" : "")) : ""));
  }));
  const targets = new Set(["miners"]);
  for (const d of state.devices) { targets.add(d.device_id); targets.add("host/" + d.host_id); }
  $("#targets").replaceChildren(...[...targets].map((t) => h("option", { value: t })));
}

// ---- loading --------------------------------------------------------------------------------

async function load(what) {
  try {
    switch (what) {
      case "draw": drawCharts(); break; // not an endpoint: redraw from what the page has
      case "status": renderStatus(await api("/api/status")); break;
      case "economics": renderEconomics(await api("/api/economics")); drawCharts(); break;
      case "plan": renderPlan(await api("/api/plan")); break;
      case "decisions": renderDecisions(await api("/api/decisions?limit=30")); break;
      case "dr": renderDrList(await api("/api/dr")); break;
      case "overrides": renderOverrides(await api("/api/overrides")); break;
      case "devices": state.devices = await api("/api/devices"); renderDevices(); break;
      case "history":
        state.history = await api("/api/history?minutes=" + state.minutes);
        state.windows = await api("/api/windows?minutes=" + state.minutes + "&ahead_minutes=10");
        drawCharts();
        break;
    }
  } catch (e) {
    if (e.status === 401) return signedOut(e.message);
    if (e.status === 503 && what === "economics") return; // no plan yet
    toast(what + ": " + e.message, true);
  }
}

// What the dashboard reads besides the status (which the event stream pushes).
const PANELS = ["economics", "history", "plan", "decisions", "dr", "overrides", "devices"];

async function loadAll() {
  await load("status");
  await Promise.all(PANELS.map(load));
}

const soon = {};
function refreshSoon(what, ms = 400) {
  clearTimeout(soon[what]);
  soon[what] = setTimeout(() => load(what), ms);
}

function follow() {
  if (state.events) state.events.close();
  const es = new EventSource("/api/events");
  state.events = es;
  const live = $("#live");
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  es.addEventListener("status", (ev) => renderStatus(JSON.parse(ev.data)));
  es.addEventListener("audit", (ev) => {
    const r = JSON.parse(ev.data);
    if (["decision", "plan", "demand_response", "override"].includes(r.kind)) refreshSoon("decisions");
    if (["decision", "plan", "status"].includes(r.kind)) refreshSoon("plan");
    if (["status", "agent", "telemetry"].includes(r.kind)) refreshSoon("devices", 1000);
    if (r.kind === "override") refreshSoon("overrides");
    if (r.kind === "demand_response") { refreshSoon("dr"); refreshSoon("history"); }
  });
  // The stream fell behind and events were dropped: what they would have refreshed is unknown,
  // so everything is read again (once, after the burst).
  es.addEventListener("missed", () => {
    for (const what of PANELS) refreshSoon(what, 1000);
  });
  es.addEventListener("signed_out", (ev) => { es.close(); signedOut(JSON.parse(ev.data).error); });
}

// ---- who is signed in, and actions -------------------------------------------------------

const mayOperate = () => !!(state.who && state.who.may_operate);

function renderWho() {
  const w = state.who;
  $("#who").textContent = w ? (w.open ? "open mode (no sign-in): " : "") + w.name + " · " + w.role : "";
  $("#sign-in").hidden = !!w;
  $("#sign-out").hidden = !(w && !w.open);
  for (const el of document.querySelectorAll(".operator-only")) el.hidden = !mayOperate();
  $("#read-only").hidden = !w || mayOperate();
}

function signedOut(message) {
  state.who = null;
  state.csrf = null;
  renderWho();
  $("#sign-in").hidden = false;
  $("#live").textContent = "signed out";
  $("#live").className = "live off";
  if (state.events) state.events.close();
  banner(message ? "Not signed in: " + message : "Sign in to see the site.");
  openLogin();
}

function openLogin() {
  $("#login-error").textContent = "";
  const d = $("#login");
  if (!d.open) d.showModal();
}

async function start() {
  try {
    state.who = await api("/api/session");
    state.csrf = state.who.csrf || null;
  } catch (e) {
    if (e.status === 401) return signedOut(e.message);
    banner("Cannot reach the controller: " + e.message);
    return;
  }
  renderWho();
  banner("");
  await loadAll();
  follow();
}

function confirmThen(text, action) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  d.returnValue = "";
  d.onclose = async () => {
    if (d.returnValue !== "ok") return;
    try {
      const msg = await action();
      toast(msg);
    } catch (e) {
      toast(e.message, true);
    }
    refreshSoon("overrides", 100);
    refreshSoon("dr", 100);
    refreshSoon("decisions", 300);
  };
  d.showModal();
}

function cancelDr(id) {
  confirmThen("Cancel demand-response event " + id + "? The policies decide again at once.", async () => {
    await api("/api/dr/cancel", { method: "POST", body: { event_id: id } });
    return "demand response " + id + " cancelled";
  });
}

function clearOverride(target) {
  confirmThen("Clear the override on " + target + "? The policies decide for it again.", async () => {
    const r = await api("/api/overrides/clear", { method: "POST", body: { target } });
    return r.cleared ? target + ": override cleared" : target + " had no override";
  });
}

function wire() {
  $("#sign-in").addEventListener("click", openLogin);
  $("#sign-out").addEventListener("click", async () => {
    await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
    signedOut("");
  });
  $("#login-form").addEventListener("submit", async (ev) => {
    if (ev.submitter && ev.submitter.value === "cancel") return;
    ev.preventDefault();
    const token = ev.target.token.value.trim();
    try {
      state.who = await api("/api/session", { method: "POST", body: { token } });
      state.csrf = state.who.csrf;
      ev.target.token.value = "";
      $("#login").close();
      renderWho();
      banner("");
      await loadAll();
      follow();
    } catch (e) {
      $("#login-error").textContent = e.message;
    }
  });
  $("#curtail-all").addEventListener("click", () =>
    confirmThen("Curtail every miner of the site (an override: sleep) until you resume?", async () => {
      await api("/api/overrides", { method: "POST", body: { target: "miners", pin: "sleep", reason: "curtailed from the dashboard" } });
      return "miners: curtailed until resumed";
    }));
  $("#resume-all").addEventListener("click", () => clearOverride("miners"));
  $("#pin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const kind = f.pin.value, w = Number(f.watts.value);
    const pin = kind === "power_target_w" || kind === "gpu_cap_w" ? { [kind]: w } : kind;
    const body = { target: f.target.value.trim(), pin };
    if (f.hours.value) body.expires_in_s = Math.round(Number(f.hours.value) * 3600);
    const words = typeof pin === "string" ? pin : kind + " " + w;
    confirmThen("Pin " + body.target + " to " + words + (body.expires_in_s ? " for " + f.hours.value + " h" : " until cleared") + "?", async () => {
      const o = await api("/api/overrides", { method: "POST", body });
      return o.target + " pinned to " + o.pin;
    });
  });
  $("#dr-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = {
      target_power_w: Number(f.target_kw.value) * 1000,
      within_s: Math.round(Number(f.within_min.value) * 60),
      duration_s: Math.round(Number(f.duration_min.value) * 60),
    };
    confirmThen("Start a demand-response event: bring the site to " + watts(body.target_power_w) + " within " + f.within_min.value +
      " min and hold it " + f.duration_min.value + " min?", async () => {
      const e = await api("/api/dr", { method: "POST", body });
      return "demand response " + e.event_id + " started" + (e.note ? " — " + e.note : "");
    });
  });
  for (const id of ["#device-filter", "#device-kind", "#device-problems"]) $(id).addEventListener("input", renderDevices);
  for (const th of document.querySelectorAll("#devices th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      for (const o of document.querySelectorAll("#devices th")) o.className = "";
      th.className = state.sort.dir > 0 ? "asc" : "desc";
      renderDevices();
    });
  }
  $("#range").addEventListener("change", (ev) => { state.minutes = Number(ev.target.value); load("history"); });
  window.addEventListener("resize", () => refreshSoon("draw", 100));
  // History is sampled every few seconds by the controller; catch up now and then, and keep
  // "last seen" ages honest.
  setInterval(() => { if (state.who) { load("history"); renderDevices(); } }, 30000);
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  start();
});
