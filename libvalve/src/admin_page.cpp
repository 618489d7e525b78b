#include "admin_page.hpp"

namespace valve {

// Everything from status reaches the page through textContent, attributes or numbers, never as
// markup: a worker's output or an error message cannot inject anything.
const char *admin_page_html() {
  return R"page(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>valve</title>
<style>
:root{--fg:#1d2430;--mute:#6a7587;--line:#e2e6ed;--bg:#f5f7fa;--card:#fff;--ok:#1b8049;--warn:#a86a12;
  --bad:#c53030}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
  background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.25rem 1.1rem;padding:.75rem 1.2rem;
  background:#1d2430;color:#e8edf5}
header h1{margin:0 .4rem 0 0;font-size:1.2rem;letter-spacing:.03em}
header>span{white-space:nowrap}.k{color:#97a3b6;margin-right:.3em}
#reload.bad,#state.bad{color:#ff9b9b}#reload{white-space:normal}
main{padding:1rem 1.2rem 2rem;max-width:1200px;margin:0 auto}
#banner{display:none;margin:0 0 1rem;padding:.6rem .9rem;border-radius:6px;background:#fdecec;
  color:var(--bad);border:1px solid #f1b3b3;font-weight:600}
body.down #banner{display:block}body.down section{opacity:.55}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(125px,1fr));gap:.6rem}
.fig{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.55rem .8rem}
.fig .v{font-size:1.5rem;font-weight:600;font-variant-numeric:tabular-nums}
.fig .l{color:var(--mute);font-size:.8rem}
.spark{grid-column:span 2}svg{width:100%;height:44px;display:block}
h2{font-size:.8rem;margin:1.4rem 0 .5rem;color:var(--mute);text-transform:uppercase;letter-spacing:.08em}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.4rem .75rem;text-align:right;white-space:nowrap;border-bottom:1px solid var(--line)}
th{font-size:.78rem;color:var(--mute);font-weight:600;background:#fafbfc}
tbody tr:last-child td{border-bottom:0}th:nth-child(4),td:nth-child(4){text-align:left}
td.none{text-align:center;color:var(--mute)}
.st{display:inline-block;padding:0 .5rem;border-radius:9px;font-size:.8rem;background:#eef1f5;
  color:var(--mute)}
.st-ready{background:#e2f4e9;color:var(--ok)}.st-starting,.st-retiring{background:#fcf1de;color:var(--warn)}
.st-unhealthy{background:#fdecec;color:var(--bad)}
#totals{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:.45rem;margin:0}
#totals div{display:flex;justify-content:space-between;align-items:baseline;gap:.5rem;
  background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.35rem .75rem}
dt{color:var(--mute);font-size:.92em;white-space:nowrap}
dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}
@media (max-width:560px){header,main{padding-left:.7rem;padding-right:.7rem}.spark{grid-column:1/-1}}
</style>
</head>
<body>
<header><h1>valve</h1>
<span><span class="k">version</span><b id="version">–</b></span>
<span><span class="k">state</span><b id="state">–</b></span>
<span><span class="k">address</span><b id="address">–</b></span>
<span><span class="k">pid</span><b id="pid">–</b></span>
<span><span class="k">uptime</span><b id="uptime">–</b></span>
<span><span class="k">generation</span><b id="generation">–</b></span>
<span><span class="k">reload</span><b id="reload">–</b></span>
</header>
<main>
<div id="banner" role="alert">Disconnected</div>
<section class="figs">
<div class="fig"><div class="v" id="rate">–</div><div class="l">requests / s</div></div>
<div class="fig"><div class="v" id="latency">–</div><div class="l">mean latency (ms)</div></div>
<div class="fig"><div class="v" id="queue">–</div><div class="l">queued</div></div>
<div class="fig"><div class="v" id="in-progress">–</div><div class="l">in progress</div></div>
<div class="fig"><div class="v" id="connections">–</div><div class="l">connections</div></div>
<div class="fig spark">
<svg viewBox="0 0 120 40" preserveAspectRatio="none" aria-label="request rate, last 60 s">
<polygon id="spark-area" fill="#2f6fdf22" points=""/>
<polyline id="spark-line" fill="none" stroke="#2f6fdf" stroke-width="1.5"
 vector-effect="non-scaling-stroke" points=""/>
</svg><div class="l" id="spark-label">requests / s, last 60 s</div></div>
</section>
<section><h2>Workers</h2><div class="scroll"><table id="workers">
<thead><tr><th>id</th><th>pid</th><th>generation</th><th>state</th><th>requests</th><th>in flight</th>
<th>memory (MB)</th><th>age</th><th>idle</th><th>last used</th></tr></thead>
<tbody></tbody></table></div></section>
<section><h2>Totals</h2><dl id="totals"></dl></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const TOTALS = [["requests", "requests"], ["2xx", "2xx"], ["3xx", "3xx"], ["4xx", "4xx"], ["5xx", "5xx"],
  ["rejected", "rejected"], ["timeouts", "timeouts"], ["retries", "retries"], ["launches", "launches"],
  ["crashes", "crashes"], ["recycles", "recycles"], ["health_check_failures", "health check failures"]];
const STATES = new Set(["starting", "ready", "retiring", "unhealthy", "draining", "stopping"]);
const totalCells = {};
for (const [key, label] of TOTALS) {
  const div = document.createElement("div"), dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = label;
  dd.textContent = "–";
  dd.dataset.total = key;
  div.append(dt, dd);
  $("totals").append(div);
  totalCells[key] = dd;
}
const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
const show = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));
const fixed = (v, digits) => (num(v) === null ? "–" : v.toFixed(digits));
function duration(s) {
  if (num(s) === null) return "–";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (d) return d + "d " + (h % 24) + "h";
  if (h) return h + "h " + String(m % 60).padStart(2, "0") + "m";
  return m + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
}
function clock(iso) {
  if (!iso) return "never";
  const t = new Date(iso);
  return isNaN(t) ? String(iso) : t.toLocaleTimeString();
}
let prev = null, rates = [], lastGood = null;
function figures(s, t) {
  // Rates come from the server's own clock (uptime), so a slow poll does not skew them.
  const at = num(s.uptime_s), requests = num(t.requests), latency = num(t.latency_sum_s);
  let rate = null, mean = null;
  if (prev && prev.pid === s.pid && at > prev.at && requests >= prev.requests) {
    const served = requests - prev.requests;
    rate = served / (at - prev.at);
    if (served > 0 && latency !== null) mean = ((latency - prev.latency) / served) * 1000;
    rates.push(rate);
    if (rates.length > 60) rates.shift();
  } else if (prev) {
    rates = [];  // a different valvectl, or counters went back: start over
  }
  prev = at === null || requests === null ? null : { pid: s.pid, at, requests, latency };
  $("rate").textContent = rate === null ? "–" : rate.toFixed(rate < 10 ? 1 : 0);
  $("latency").textContent = mean === null ? "–" : mean.toFixed(mean < 10 ? 2 : 1);
  $("queue").textContent = show(s.queue);
  $("in-progress").textContent = show(s.requests_in_progress);
  $("connections").textContent = show(s.connections);
  const n = rates.length, peak = n ? Math.max(...rates) : 0, top = Math.max(1, peak);
  const step = 120 / Math.max(1, n - 1);
  const pts = rates.map((r, i) => (i * step).toFixed(1) + "," + (38 - (r / top) * 35).toFixed(1));
  $("spark-line").setAttribute("points", pts.join(" "));
  $("spark-area").setAttribute("points", n > 1 ? pts.join(" ") + " 120,40 0,40" : "");
  $("spark-label").textContent = "requests / s, last " + n + " s (peak " +
    (n ? peak.toFixed(peak < 10 ? 1 : 0) : "–") + ")";
}
function workerRow(w) {
  const tr = document.createElement("tr");
  tr.dataset.pid = show(w.pid);
  const rss = num(w.rss_bytes) ? (w.rss_bytes / 1048576).toFixed(1) : "–";
  const cells = [show(w.id), show(w.pid), show(w.generation), null, show(w.requests), show(w.in_flight),
    rss, duration(w.age_s), duration(w.idle_s), clock(w.last_used)];
  for (const value of cells) {
    const td = document.createElement("td");
    if (value === null) {
      const badge = document.createElement("span");
      badge.className = STATES.has(w.state) ? "st st-" + w.state : "st";
      badge.textContent = show(w.state);
      td.append(badge);
    } else {
      td.textContent = value;
    }
    tr.append(td);
  }
  if (w.last_used) tr.lastChild.title = String(w.last_used);
  return tr;
}
function render(s) {
  const t = s.totals || {}, reload = s.reload || {};
  for (const key of ["version", "state", "address", "pid", "generation"]) $(key).textContent = show(s[key]);
  $("state").classList.toggle("bad", s.state === "stopping" || s.state === "stopped");
  $("uptime").textContent = duration(s.uptime_s);
  const failed = reload.state === "failed";
  $("reload").textContent = show(reload.state) + (failed && reload.error ? ": " + reload.error : "");
  $("reload").classList.toggle("bad", failed);
  document.title = "valve " + show(s.state) + " · " + show(s.address);
  figures(s, t);
  const workers = Array.isArray(s.workers) ? s.workers.slice().sort((a, b) => a.id - b.id) : [];
  const rows = workers.map(workerRow);
  if (!rows.length) {
    const tr = document.createElement("tr"), td = document.createElement("td");
    td.colSpan = 10;
    td.className = "none";
    td.textContent = "no workers";
    tr.append(td);
    rows.push(tr);
  }
  $("workers").tBodies[0].replaceChildren(...rows);
  for (const [key] of TOTALS) totalCells[key].textContent = show(t[key]);
}
async function poll() {
  const abort = new AbortController(), timer = setTimeout(() => abort.abort(), 3000);
  try {
    const response = await fetch("status", { cache: "no-store", signal: abort.signal });
    if (!response.ok) throw new Error("status answered HTTP " + response.status);
    render(await response.json());
    lastGood = new Date();
    document.body.classList.remove("down");
  } catch (e) {
    const why = e.name === "AbortError" ? "no answer within 3 s" : e.message || String(e);
    $("banner").textContent = "Disconnected (" + why + ")" +
      (lastGood ? "; showing data from " + lastGood.toLocaleTimeString() : "") + ". Retrying…";
    document.body.classList.add("down");
  } finally {
    clearTimeout(timer);
    setTimeout(poll, 1000);
  }
}
poll();
</script>
</body>
</html>
)page";
}

}  // namespace valve
