// swarmguard node dashboard: plain JS, no build step. Reads the node's /v1 API with the bearer
// token from sessionStorage (never from or into a URL) and follows /v1/events with fetch streaming.
"use strict";

const TOKEN_KEY = "swarmguard.token";
const SEVERITY_SCALE = [[0, "#f2f4f7"], [0.08, "#fde9a9"], [0.25, "#f9b36b"], [0.5, "#e8663d"], [1, "#8e1b1b"]];
const PLOT_CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };   // drag zooms, double-click resets
const state = { population: null, cohort: "", sortKey: "severity", sortDir: -1, rows: [], selected: null,
                status: null, refreshing: false, again: false, authFailed: false };

class AuthNeeded extends Error {}

function $(id) { return document.getElementById(id); }
function token() { return sessionStorage.getItem(TOKEN_KEY); }
function authHeaders() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }

async function api(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store", credentials: "same-origin" });
  if (response.status === 401 || response.status === 403) { tokenRefused(response.status); throw new AuthNeeded(); }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || ("HTTP " + response.status + " on " + path));
  return body;
}

// ------------------------------------------------------------------ token prompt
// A token the node refuses (expired, revoked, mistyped: 401; without the read role: 403) is
// dropped from session storage, so it is not sent again, and the prompt says why.
function tokenRefused(status) {
  const had = token() !== null;
  sessionStorage.removeItem(TOKEN_KEY);
  banner(null);
  if (status === 403) askForToken("The node accepted that token but it may not read: paste a token with the read (or admin) role.");
  else askForToken(had ? "The node refused the stored token (expired, revoked or mistyped): paste a valid one." : "");
}

function askForToken(message) {
  state.authFailed = true;
  const dialog = $("token-dialog");
  $("token-error").textContent = message || "";
  document.body.dataset.tokenPrompt = "shown";
  if (!dialog.open) dialog.showModal();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token-input").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token-input").value = "";
  $("token-dialog").close();
  document.body.dataset.tokenPrompt = "answered";
  state.authFailed = false;
  start();
});

// ------------------------------------------------------------------ banners and empty states
function banner(html, kind) {
  const el = $("banner");
  if (!html) { el.hidden = true; el.innerHTML = ""; return; }
  el.hidden = false; el.className = "banner" + (kind ? " " + kind : ""); el.innerHTML = html;
}

function nodeDown(e) {
  const why = e instanceof TypeError ? "the connection failed" : e.message;   // fetch's TypeError: no answer at all
  banner(`The node did not answer (${why}). Retrying every second; check that <code>swarmguard serve</code> is running ` +
         `at ${window.location.origin}.`, "error");
  state.status = null;           // re-read everything once it answers again
}

function emptyMessage(status) {
  const pop = status.populations[state.population] || { windows_closed: 0, agents: 0, open_window_vectors: 0 };
  const origin = window.location.origin;
  if (pop.agents > 0) return null;
  if (pop.open_window_vectors > 0) {
    const end = status.window_end ? new Date(status.window_end * 1000).toLocaleTimeString() : "soon";
    return `${pop.open_window_vectors} vectors in the open window; the first window closes at ${end} ` +
           `(windows are ${status.window_seconds} s), then the agents appear here.`;
  }
  return `No spans received yet: point <code>OTEL_EXPORTER_OTLP_ENDPOINT</code> at this node ` +
         `(<code>OTEL_EXPORTER_OTLP_ENDPOINT=${origin}</code>, traces go to <code>${origin}/v1/traces</code>), ` +
         `or POST behaviour vectors (NDJSON) to <code>${origin}/v1/behaviors</code>.`;
}

// ------------------------------------------------------------------ formatting
function fmtP(p) {
  if (p === null || p === undefined) return "–";
  if (p === 0) return "< 1e-300";
  return p < 1e-3 ? p.toExponential(2) : p.toFixed(4);
}
function fmtProb(p) { return p === null || p === undefined ? "–" : p.toFixed(3); }
function severityColor(s) {
  if (s >= 50) return "#8e1b1b"; if (s >= 25) return "#e8663d"; if (s >= 8) return "#d99a2b"; return "#98a2b3";
}
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }

// ------------------------------------------------------------------ top table
function renderTable() {
  const body = $("top-table").querySelector("tbody");
  const rows = state.rows.slice();
  const key = state.sortKey, dir = state.sortDir;
  rows.sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === y) return 0; if (x === null || x === undefined) return 1; if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * dir;
  });
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.agent = r.agent_id;
    if (r.agent_id === state.selected) tr.classList.add("selected");
    cell(tr, r.agent_id, "agent");
    cell(tr, r.cohort || "", "cohort").title = r.cohort || "";
    const sev = cell(tr, "", "num"); const badge = document.createElement("span");
    badge.className = "sev"; badge.textContent = r.severity; badge.style.background = severityColor(r.severity); sev.appendChild(badge);
    cell(tr, fmtP(r.p_value), "num");
    cell(tr, r.isolated ? "yes" : "no", r.isolated ? "yes" : "no");
    cell(tr, fmtProb(r.consensus_probability) + (r.evidence_count ? ` (${r.evidence_count})` : ""), "num");
    cell(tr, r.first_flagged === null ? "–" : "window " + r.first_flagged, "num");
    cell(tr, r.top_features.map((f) => `${f.feature} ${(100 * f.share).toFixed(0)}%`).join(", "), "features");
    tr.addEventListener("click", () => drill(r.agent_id));
    body.appendChild(tr);
  }
  for (const th of $("top-table").querySelectorAll("th[data-key]")) {
    th.classList.toggle("sorted-asc", th.dataset.key === key && dir > 0);
    th.classList.toggle("sorted-desc", th.dataset.key === key && dir < 0);
  }
}

for (const th of document.querySelectorAll("#top-table th[data-key]")) {
  th.addEventListener("click", () => {
    if (state.sortKey === th.dataset.key) state.sortDir = -state.sortDir;
    else { state.sortKey = th.dataset.key; state.sortDir = th.dataset.key === "p_value" ? 1 : -1; }
    renderTable();
  });
}
$("cohort-filter").addEventListener("change", (e) => { state.cohort = e.target.value; refresh(); });
$("population").addEventListener("change", (e) => { state.population = e.target.value; state.selected = null; refresh(); });

function fillSelect(select, values, current, allLabel) {
  const want = (allLabel !== undefined ? [""] : []).concat(values);
  const have = Array.from(select.options).map((o) => o.value);
  if (want.join("\u0000") !== have.join("\u0000")) {
    select.replaceChildren(...want.map((v) => { const o = document.createElement("option"); o.value = v; o.textContent = v || allLabel; return o; }));
  }
  select.value = current || "";
}

// ------------------------------------------------------------------ charts
function windowTick(windows) { return Math.max(1, Math.ceil(windows.length / 10)); }   // whole windows only

function heatmap(div, z, x, y, title, height, showscale) {
  const data = [{ type: "heatmap", z, x, y: y.map(plotText), zmin: 0, zmax: 100, colorscale: SEVERITY_SCALE, xgap: 1, ygap: 1, showscale,
                  hoverongaps: false, colorbar: { title: { text: "severity" }, thickness: 10 },
                  hovertemplate: "%{y}<br>window %{x}<br>severity %{z}<extra></extra>" }];
  const layout = { title: { text: title, font: { size: 12 } }, margin: { l: 110, r: 10, t: 26, b: 30 }, height,
                   xaxis: { title: { text: "window" }, type: "category" }, yaxis: { automargin: true, autorange: "reversed", type: "category" } };
  document.getElementById(div).style.height = height + "px";
  return Plotly.react(div, data, layout, PLOT_CONFIG);
}

function renderLanes(h) {
  const windows = h.windows.map((w) => w.window);
  $("cohort-lanes").hidden = !windows.length;
  if (!windows.length) { Plotly.purge("cohort-lanes"); Plotly.purge("agent-lanes"); $("agent-lanes").style.height = "auto";
    $("agent-lanes").innerHTML = '<div class="empty">The swim lanes fill in as windows close.</div>'; return; }
  if ($("agent-lanes").querySelector(".empty")) $("agent-lanes").innerHTML = "";
  heatmap("cohort-lanes", h.cohort_lanes.severity, windows, h.cohort_lanes.cohorts, "largest severity per cohort", 60 + 26 * h.cohort_lanes.cohorts.length, false);
  const labels = h.agent_lanes.agents.map((a, i) => `${a} (${h.agent_lanes.cohorts[i]})`);
  heatmap("agent-lanes", h.agent_lanes.severity, windows, labels, "most anomalous agents now (blank: not active, or below that window's kept top)", Math.max(200, 60 + 14 * labels.length), true);
}

function renderCalibration(h) {
  const c = h.calibration, edges = c.bin_edges;
  const centers = edges.slice(0, -1).map((e, i) => (e + edges[i + 1]) / 2);
  const cohorts = Object.keys(c.cohorts);
  $("calibration").style.height = cohorts.length ? "" : "auto";
  if (!cohorts.length) { Plotly.purge("calibration"); $("calibration").innerHTML = '<div class="empty">No window has closed yet.</div>'; return; }
  if ($("calibration").querySelector(".empty")) $("calibration").innerHTML = "";
  const bins = centers.length;
  const density = (name) => c.cohorts[name].map((n) => n / (c.agents[name] || 1) * bins);
  if (cohorts.length > 4) {     // many cohorts: one row each, coloured by density (white = flat)
    $("calibration").style.height = Math.max(300, 90 + 14 * cohorts.length) + "px";
    const z = cohorts.map(density), zmax = Math.max(2, ...z.flat());
    return Plotly.react("calibration", [{ type: "heatmap", x: centers, y: cohorts.map(plotText), z, zmin: 0, zmax,
        colorscale: [[0, "#2f5fb3"], [1 / zmax, "#ffffff"], [1, "#c0392b"]], colorbar: { title: { text: "density" }, thickness: 10 },
        hovertemplate: "%{y}<br>p ≈ %{x:.3f}<br>density %{z:.2f}<extra></extra>" }],
      { margin: { l: 10, r: 10, t: 26, b: 40 }, title: { text: `window ${c.window}: density of p-values per cohort (white = flat)`, font: { size: 12 } },
        xaxis: { title: { text: "p-value" }, range: [0, 1] }, yaxis: { automargin: true, tickfont: { size: 9 }, autorange: "reversed" } }, PLOT_CONFIG);
  }
  const data = cohorts.map((name) => ({ type: "bar", name: plotText(name), x: centers, y: density(name),
                                        hovertemplate: `${plotText(name)}<br>p in [%{x:.3f}±${(0.5 / bins).toFixed(3)}]<br>density %{y:.2f}<extra></extra>` }));
  const layout = { barmode: "group", bargap: 0.05, margin: { l: 45, r: 10, t: 26, b: 40 }, legend: { orientation: "h", y: -0.25 },
                   title: { text: `window ${c.window}: density of p-values (1 = flat)`, font: { size: 12 } },
                   xaxis: { title: { text: "p-value" }, range: [0, 1] }, yaxis: { title: { text: "density" }, rangemode: "tozero" },
                   shapes: [{ type: "line", x0: 0, x1: 1, y0: 1, y1: 1, line: { dash: "dash", color: "#667085", width: 1 } }] };
  return Plotly.react("calibration", data, layout, PLOT_CONFIG);
}

const PARTITION_FILL = "#f5c27a";
function esc(text) { const d = document.createElement("div"); d.textContent = String(text); return d.innerHTML; }
// Plotly reads trace names and annotations as a small HTML dialect (<i>, <br>, <a href>):
// names from settings or peers' answers go in escaped, shown as the characters they are
const plotText = esc;
function ago(seconds) { return seconds === null || seconds === undefined ? "never" : `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s ago`; }
function stamp(at) { return new Date(at * 1000).toISOString(); }

// What the node says of its peers now, in words (a single node: how to add peers).
function renderRegionsText(c) {
  const el = $("regions-text");
  if (!c.peers.length) {
    el.dataset.peers = "none";
    el.innerHTML = `<p>Single node (region <b>${esc(c.region)}</b>): no peers, so there is nothing to be partitioned from. ` +
      `To add regions, start one node per region with <code>--region</code> and <code>--peers</code> naming the others' base URLs ` +
      `(<code>swarmguard serve --region us --peers http://eu-node:8470</code>), each holding a <code>peer</code> token of the others ` +
      `(<code>--peer-token-file</code>); the chart then shows each region's confidence and staleness, with the partitions shaded.</p>`;
    return;
  }
  const down = c.peers.filter((p) => !p.reachable), up = c.peers.filter((p) => p.reachable);
  el.dataset.peers = down.length ? "unreachable" : "reachable";
  const name = (p) => `${esc(p.url)}${p.region ? ` (region ${esc(p.region)})` : ""}`;
  const lines = [];
  if (down.length) lines.push(`<p class="down">Unreachable now: ${down.map((p) => `${name(p)}, last synced ${ago(p.seconds_since_sync)}` +
      (p.last_error ? ` (${esc(p.last_error)})` : "")).join("; ")}.</p>` +
      `<p>While a peer is unreachable its region's data in this node's view ages (staleness), and its part of the confidence ` +
      `falls once it is older than the allowed staleness (shaded: the intervals a peer was unreachable).</p>`);
  if (up.length) lines.push(`<p class="up">Reachable: ${up.map((p) => `${name(p)}, synced ${ago(p.seconds_since_sync)}`).join("; ")}.</p>`);
  lines.push(`<p>This node: region <b>${esc(c.region)}</b>, consistency ${esc(c.consistency)}.</p>`);
  el.innerHTML = lines.join("");
}

function renderCluster(c) {
  if (!c.at.length) { Plotly.purge("regions"); $("regions").style.height = "auto";
    $("regions").innerHTML = '<div class="empty">The regions\' confidence appears after the first window closes.</div>'; return; }
  if ($("regions").querySelector(".empty")) $("regions").innerHTML = "";
  $("regions").style.height = "";
  const x = c.at.map(stamp), data = [];
  if (c.confidence_factor.some((v) => v !== null))
    data.push({ type: "scatter", mode: "lines+markers", name: plotText(`${c.region} node confidence`), x, y: c.confidence_factor, line: { color: "#1d2330", width: 3 } });
  for (const g of c.regions) {
    if (!g.own) data.push({ type: "scatter", mode: "lines+markers", name: plotText(`${g.region} confidence part`), x, y: g.confidence_factor });
    if (!g.own) data.push({ type: "scatter", mode: "lines", name: plotText(`${g.region} staleness (s)`), x, y: g.staleness_seconds, yaxis: "y2", line: { dash: "dot" } });
  }
  const shapes = [], annotations = [];
  for (const p of c.partitions) {
    const label = `${p.region || p.peer} unreachable${p.ongoing ? " (now)" : ""}`;
    shapes.push({ type: "rect", xref: "x", yref: "paper", x0: stamp(p.from), x1: stamp(p.to), y0: 0, y1: 1,
                  fillcolor: PARTITION_FILL, opacity: 0.35, line: { width: 0 }, layer: "below", name: plotText(label) });
    annotations.push({ x: stamp((p.from + p.to) / 2), y: 1, xref: "x", yref: "paper", yanchor: "bottom", text: plotText(label), showarrow: false, font: { size: 11, color: "#9a5b00" } });
  }
  const stale = c.regions.flatMap((g) => g.staleness_seconds.filter((v) => v !== null));
  const layout = { margin: { l: 45, r: 45, t: 24, b: 40 }, legend: { orientation: "h", y: -0.3 }, shapes, annotations,
                   xaxis: { type: "date", title: { text: "time (node clock)" },
                            range: [stamp(Math.min(c.at[0], ...c.partitions.map((p) => p.from)) - 2), stamp(Math.max(c.at[c.at.length - 1], ...c.partitions.map((p) => p.to)) + 2)] },
                   yaxis: { title: { text: "confidence" }, range: [0, 1.05] },
                   yaxis2: { title: { text: "staleness s" }, overlaying: "y", side: "right", showgrid: false, rangemode: "tozero",
                             range: [0, Math.max(1, ...stale) * 1.1] } };
  return Plotly.react("regions", data, layout, PLOT_CONFIG);
}

function renderRegions(r, c) {
  renderRegionsText(c);
  if (c.peers.length) return renderCluster(c);
  // a single node: its own region's view per window (what its resolver holds)
  $("regions").style.height = r.regions.length ? "" : "auto";
  if (!r.regions.length) { Plotly.purge("regions"); $("regions").innerHTML = '<div class="empty">Regions appear after the first window closes.</div>'; return; }
  if ($("regions").querySelector(".empty")) $("regions").innerHTML = "";
  const data = [];
  for (const g of r.regions) {
    data.push({ type: "scatter", mode: "lines+markers", name: plotText(`${g.region} confidence`), x: r.windows, y: g.confidence_factor });
    data.push({ type: "scatter", mode: "lines", name: plotText(`${g.region} staleness (s)`), x: r.windows, y: g.staleness_seconds, yaxis: "y2", line: { dash: "dot" } });
  }
  const shapes = [];     // shade the windows where some region's view was partial (confidence below 1)
  r.windows.forEach((w, i) => {
    if (r.regions.some((g) => g.confidence_factor[i] !== null && g.confidence_factor[i] < 1))
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: w - 0.5, x1: w + 0.5, y0: 0, y1: 1, fillcolor: PARTITION_FILL, opacity: 0.3, line: { width: 0 } });
  });
  const layout = { margin: { l: 45, r: 45, t: 10, b: 40 }, legend: { orientation: "h", y: -0.3 }, shapes,
                   xaxis: { title: { text: "window" }, dtick: windowTick(r.windows) }, yaxis: { title: { text: "confidence" }, range: [0, 1.05] },
                   yaxis2: { title: { text: "staleness s" }, overlaying: "y", side: "right", tickmode: "auto", showgrid: false,
                              range: [0, Math.max(1, ...r.regions.flatMap((g) => g.staleness_seconds.filter((v) => v !== null))) * 1.1] } };
  return Plotly.react("regions", data, layout, PLOT_CONFIG);
}

function renderObservers(o) {
  const body = $("observers-table").querySelector("tbody");
  body.replaceChildren();
  $("observers-empty").hidden = o.observers.length > 0;
  $("observers-table").hidden = o.observers.length === 0;
  if (!o.observers.length) { $("observers-empty").innerHTML = "No observer evidence yet: observers POST it to <code>/v1/evidence</code> with an <code>observer</code> token."; return; }
  for (const r of o.observers) {
    const tr = document.createElement("tr");
    cell(tr, r.observer, r.flagged ? "flagged" : "");
    cell(tr, r.reports, "num");
    cell(tr, r.outlier_rate === null ? "–" : (100 * r.outlier_rate).toFixed(1) + "%", "num");
    cell(tr, r.expected_outliers === null ? "–" : r.expected_outliers.toFixed(1), "num");
    cell(tr, r.tail_bound === null ? "–" : r.tail_bound.toExponential(1), "num");
    cell(tr, r.flagged ? "flagged" : "no", r.flagged ? "flagged" : "no");
    body.appendChild(tr);
  }
}

// ------------------------------------------------------------------ drill-down
async function drill(agent) {
  state.selected = agent;
  for (const tr of $("top-table").querySelectorAll("tbody tr")) tr.classList.toggle("selected", tr.dataset.agent === agent);
  let d;
  try { d = await api(`/v1/dashboard/agents/${encodeURIComponent(agent)}?population=${encodeURIComponent(state.population)}`); }
  catch (e) { if (!(e instanceof AuthNeeded)) $("drill-summary").textContent = "could not load the agent: " + e.message; return; }
  $("drill-title").textContent = agent;
  $("drill-body").hidden = false;
  $("drill-summary").textContent = `cohort ${d.cohort} · severity ${d.severity} · p ${fmtP(d.p_value)} · ` +
    (d.first_flagged === null ? "never isolated" : `first flagged in window ${d.first_flagged}`) +
    ` · consensus ${fmtProb(d.consensus.probability)} from ${d.consensus.evidence_count} evidence · latest window ${d.window}`;
  document.body.dataset.drill = agent;
  const h = d.history;
  const shown = d.contributions.slice(0, 3).map((c) => h.features.indexOf(c.feature)).filter((j) => j >= 0);
  const data = [], layout = { margin: { l: 45, r: 10, t: 24, b: 36 }, showlegend: false, grid: { rows: 1, columns: shown.length, pattern: "independent" }, annotations: [] };
  shown.forEach((j, k) => { layout["xaxis" + (k === 0 ? "" : k + 1)] = { dtick: windowTick(h.windows) }; });
  shown.forEach((j, k) => {
    const ax = k === 0 ? "" : String(k + 1);
    const up = h.typical[j].map((t, i) => (t === null || h.spread[j][i] === null ? null : t + 2 * h.spread[j][i]));
    const lo = h.typical[j].map((t, i) => (t === null || h.spread[j][i] === null ? null : t - 2 * h.spread[j][i]));
    data.push({ x: h.windows, y: lo, mode: "lines", line: { width: 0 }, xaxis: "x" + ax, yaxis: "y" + ax, hoverinfo: "skip" });
    data.push({ x: h.windows, y: up, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(47,95,179,0.15)", xaxis: "x" + ax, yaxis: "y" + ax, name: "typical ± 2σ" });
    data.push({ x: h.windows, y: h.typical[j], mode: "lines", line: { dash: "dash", color: "#2f5fb3" }, xaxis: "x" + ax, yaxis: "y" + ax, name: "typical" });
    data.push({ x: h.windows, y: h.actual[j], mode: "lines+markers", line: { color: "#c0392b" }, xaxis: "x" + ax, yaxis: "y" + ax, name: "actual", connectgaps: false });
    layout.annotations.push({ text: plotText(h.features[j]), xref: `x${ax} domain`, yref: `y${ax} domain`, x: 0.5, y: 1.12, showarrow: false, font: { size: 12 } });
    if (d.first_flagged !== null)
      (layout.shapes = layout.shapes || []).push({ type: "line", xref: "x" + ax, yref: `y${ax} domain`, x0: d.first_flagged, x1: d.first_flagged, y0: 0, y1: 1, line: { color: "#c0392b", dash: "dot", width: 1 } });
  });
  await Plotly.react("drill-features", data, layout, PLOT_CONFIG);
  const contrib = d.contributions.filter((c) => c.share !== null).slice(0, 8).reverse();
  await Plotly.react("drill-contributions", [{ type: "bar", orientation: "h", y: contrib.map((c) => c.feature), x: contrib.map((c) => c.share),
      text: contrib.map((c) => `actual ${c.actual.toPrecision(3)} · typical ${c.typical === null ? "–" : c.typical.toPrecision(3)}`), textposition: "auto",
      marker: { color: "#e8663d" }, hovertemplate: "%{y}: %{x:.1%} of the distance<extra></extra>" }],
    { margin: { l: 10, r: 10, t: 22, b: 30 }, yaxis: { automargin: true }, title: { text: "share of the squared distance", font: { size: 12 } }, xaxis: { tickformat: ".0%",
      // shares are in [0, 1] and add up to 1 (whitened parts of the squared distance, docs/scoring.md)
      range: [0, 1] } }, PLOT_CONFIG);
  const body = $("drill-evidence").querySelector("tbody");
  body.replaceChildren();
  if (!d.evidence.length) { const tr = document.createElement("tr"); cell(tr, "no observer evidence about this agent").colSpan = 4; body.appendChild(tr); }
  for (const e of d.evidence) {
    const tr = document.createElement("tr");
    cell(tr, e.observer, e.flagged ? "flagged" : ""); cell(tr, e.evidence, "num");
    cell(tr, e.log_odds_sum === null ? "–" : e.log_odds_sum.toFixed(2), "num"); cell(tr, e.flagged ? "Byzantine" : "", e.flagged ? "flagged" : "");
    body.appendChild(tr);
  }
}

// ------------------------------------------------------------------ refresh loop
async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    const status = await api("/v1/dashboard/status");
    state.status = status;
    const names = Object.keys(status.populations);
    if (!state.population || !names.includes(state.population))
      state.population = names.slice().sort((a, b) => status.populations[b].agents - status.populations[a].agents)[0];
    fillSelect($("population"), names, state.population);
    $("node-info").textContent = `region ${status.region} · ${status.state} · window ${status.populations[state.population].windows_closed} closed · windows of ${status.window_seconds} s`;
    const p = encodeURIComponent(state.population);
    const cohort = state.cohort ? `&cohort=${encodeURIComponent(state.cohort)}` : "";
    const [top, history, observers, regions, cluster] = await Promise.all([
      api(`/v1/dashboard/top?top=50&population=${p}${cohort}`), api(`/v1/dashboard/history?windows=20&top=30&population=${p}`),
      api(`/v1/dashboard/observers?population=${p}`), api(`/v1/dashboard/regions?population=${p}`), api("/v1/dashboard/cluster")]);
    fillSelect($("cohort-filter"), top.cohorts, state.cohort, "all");
    state.rows = top.agents;
    const empty = emptyMessage(status);
    $("top-empty").hidden = !empty; $("top-empty").innerHTML = empty || "";
    $("top-table").hidden = !!empty;
    renderTable();
    document.body.dataset.window = String(top.window);
    document.body.dataset.renderedAt = String(Date.now());
    banner(null);
    renderLanes(history); renderCalibration(history); renderObservers(observers); renderRegions(regions, cluster);
    if (!state.selected && top.agents.length) state.selected = top.agents[0].agent_id;   // open the worst agent first
    if (state.selected) await drill(state.selected);
    document.body.dataset.ready = "yes";
  } catch (e) {
    if (!(e instanceof AuthNeeded)) nodeDown(e);
  } finally {
    state.refreshing = false;
    if (state.again) { state.again = false; refresh(); }
  }
}

async function poll() {
  if (state.authFailed) return;
  try {
    const s = await api("/v1/dashboard/status");
    const before = state.status, pop = state.population;
    if (!before || !pop || !s.populations[pop] || !before.populations[pop] ||
        s.populations[pop].windows_closed !== before.populations[pop].windows_closed ||
        s.populations[pop].open_window_vectors !== before.populations[pop].open_window_vectors ||
        s.last_event_id !== before.last_event_id ||
        (s.peers_unreachable || []).join(" ") !== (before.peers_unreachable || []).join(" ")) refresh();
  } catch (e) { if (!(e instanceof AuthNeeded)) nodeDown(e); }
}

async function follow() {      // /v1/events with the bearer header: fetch streaming (EventSource cannot send headers)
  while (!state.authFailed) {
    try {
      const response = await fetch("/v1/events", { headers: { ...authHeaders(), Accept: "text/event-stream" }, cache: "no-store" });
      if (response.status === 401 || response.status === 403) { tokenRefused(response.status); return; }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      $("live").className = "live on";
      const reader = response.body.getReader(), decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          if (/^event: isolation$/m.test(block)) refresh();
        }
      }
    } catch (e) { /* the node went away: retry below */ }
    $("live").className = "live off";
    await new Promise((r) => setTimeout(r, 3000));
  }
}

let timer = null;
function start() {
  refresh().then(() => { if (!state.authFailed) follow(); });
  if (timer === null) timer = setInterval(poll, 1000);
}
start();
