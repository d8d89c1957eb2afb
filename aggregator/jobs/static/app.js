// The data scientists' page of the PAROMA-MED job service: jobs list, a job's detail with
// accuracy and loss per round (SVG drawn here), site admissions with reasons, the model card.
// Everything comes from the service's own API with the bearer token typed in (kept for the tab only).
"use strict";

const FINAL = ["completed", "failed", "cancelled"];
const COLOURS = ["#0b63b6", "#c2410c", "#1a7f37", "#7c3aed", "#b42318", "#0e7490", "#a16207", "#be185d"];
const state = { token: sessionStorage.getItem("paroma-job-token") || "", selected: null, timer: null, cards: {} };

const $ = (id) => document.getElementById(id);

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${state.token}` },
  });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail ? `${problem.title}: ${problem.detail}` : problem.title;
    } catch (_) { /* not problem details */ }
    const error = new Error(`${response.status} ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// -- jobs list --------------------------------------------------------------------------------

function stateBadge(value) {
  return `<span class="state ${escapeHtml(value)}">${escapeHtml(value)}</span>`;
}

async function refreshJobs() {
  const jobs = await api("/api/jobs");
  const body = $("jobs").querySelector("tbody");
  body.innerHTML = jobs
    .map(
      (j) => `<tr data-job="${escapeHtml(j.id)}" class="${j.id === state.selected ? "selected" : ""}">
        <td><code>${escapeHtml(j.id)}</code></td><td>${escapeHtml(j.name)}</td><td>${stateBadge(j.state)}</td>
        <td>${j.completed_rounds} / ${j.total_rounds}</td><td>${escapeHtml(j.participating_sites.join(", ") || "–")}</td>
        <td>${escapeHtml(j.owner)}</td><td>${escapeHtml(j.submitted.slice(0, 19).replace("T", " "))}</td></tr>`
    )
    .join("");
  $("no-jobs").hidden = jobs.length > 0;
  for (const row of body.querySelectorAll("tr")) {
    row.addEventListener("click", () => selectJob(row.dataset.job));
  }
}

// -- charts -----------------------------------------------------------------------------------

function series(job, metric) {
  const names = new Set();
  for (const r of job.rounds) for (const name of Object.keys(r.sites)) names.add(name);
  const out = [...names].sort().map((name) => ({
    name,
    points: job.rounds
      .map((r) => [r.round, r.sites[name] && r.sites[name].evaluate ? r.sites[name].evaluate[metric] : undefined])
      .filter(([, v]) => typeof v === "number"),
  }));
  const mean = job.rounds
    .map((r) => {
      const values = Object.values(r.sites).map((s) => (s.evaluate || {})[metric]).filter((v) => typeof v === "number");
      return [r.round, values.length ? values.reduce((a, b) => a + b, 0) / values.length : undefined];
    })
    .filter(([, v]) => typeof v === "number");
  out.push({ name: "mean", points: mean, dashed: true });
  return out;
}

function drawChart(svg, job, metric) {
  const W = 420, H = 240, L = 42, R = 12, T = 12, B = 30;
  const lines = series(job, metric);
  const values = lines.flatMap((s) => s.points.map(([, v]) => v));
  // the range of the values drawn, padded (accuracy stays within [0, 1], loss above 0)
  const min = values.length ? Math.min(...values) : 0;
  const max = values.length ? Math.max(...values) : 1;
  const pad = Math.max(0.02, (max - min) * 0.15);
  const lo = Math.max(0, min - pad);
  const hi = metric === "accuracy" ? Math.min(1, max + pad) : max + pad;
  const rounds = Math.max(1, job.total_rounds);
  const x = (r) => L + (rounds === 1 ? (W - L - R) / 2 : ((r - 1) / (rounds - 1)) * (W - L - R));
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    parts.push(`<line class="grid" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>`);
    parts.push(`<text x="${L - 6}" y="${y(v) + 3}" text-anchor="end">${v.toFixed(3)}</text>`);
  }
  const step = Math.max(1, Math.ceil(rounds / 10));
  for (let r = 1; r <= rounds; r += step) {
    parts.push(`<text x="${x(r)}" y="${H - B + 14}" text-anchor="middle">${r}</text>`);
  }
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">round</text>`);
  parts.push(`<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${H - B}"/>`);
  parts.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>`);
  lines.forEach((s, i) => {
    const colour = s.dashed ? "#1d2733" : COLOURS[i % COLOURS.length];
    const d = s.points.map(([r, v], k) => `${k ? "L" : "M"}${x(r).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    if (d) {
      parts.push(
        `<path class="series" data-series="${escapeHtml(s.name)}" d="${d}" fill="none" stroke="${colour}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5 4"' : ""}/>`
      );
    }
    for (const [r, v] of s.points) {
      parts.push(
        `<circle class="point" data-series="${escapeHtml(s.name)}" data-round="${r}" data-value="${v}" cx="${x(r).toFixed(1)}" cy="${y(v).toFixed(1)}" r="3" fill="${colour}"><title>${escapeHtml(s.name)} round ${r}: ${v.toFixed(4)}</title></circle>`
      );
    }
  });
  svg.innerHTML = parts.join("");
  $("legend").innerHTML = lines
    .map((s, i) => `<span><i style="background:${s.dashed ? "#1d2733" : COLOURS[i % COLOURS.length]}"></i>${escapeHtml(s.name)}</span>`)
    .join("");
}

// -- model card (the registry's Markdown: headings, lists, tables, code, bold) -------------------

function inline(text) {
  return escapeHtml(text)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
}

function markdown(text) {
  const out = [];
  let list = false;
  let table = null;
  const close = () => {
    if (list) out.push("</ul>");
    if (table) out.push(`<table>${table.join("")}</table>`);
    list = false;
    table = null;
  };
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (/^\|.*\|$/.test(line)) {
      if (list) { out.push("</ul>"); list = false; }
      const cells = line.slice(1, -1).split("|").map((c) => c.trim());
      if (cells.every((c) => /^:?-+:?$/.test(c))) continue;
      const tag = table ? "td" : "th";
      table = table || [];
      table.push(`<tr>${cells.map((c) => `<${tag}>${inline(c)}</${tag}>`).join("")}</tr>`);
      continue;
    }
    if (/^- /.test(line)) {
      if (table) { out.push(`<table>${table.join("")}</table>`); table = null; }
      if (!list) { out.push("<ul>"); list = true; }
      out.push(`<li>${inline(line.slice(2))}</li>`);
      continue;
    }
    close();
    const heading = /^(#{1,3}) (.*)$/.exec(line);
    if (heading) out.push(`<h${heading[1].length}>${inline(heading[2])}</h${heading[1].length}>`);
    else if (line) out.push(`<p>${inline(line)}</p>`);
  }
  close();
  return out.join("\n");
}

// -- job detail -------------------------------------------------------------------------------

async function refreshDetail() {
  if (!state.selected) return;
  const job = await api(`/api/jobs/${encodeURIComponent(state.selected)}`);
  $("detail").hidden = false;
  $("detail").dataset.job = job.id;
  $("detail").dataset.state = job.state;
  $("detail-title").textContent = `${job.name} (${job.id})`;
  $("detail-state").className = `state ${job.state}`;
  $("detail-state").textContent = job.state;
  $("detail-reason").textContent = job.reason;
  $("progress-bar").style.width = `${(100 * job.completed_rounds) / Math.max(1, job.total_rounds)}%`;
  $("detail-progress").textContent =
    `${job.completed_rounds} of ${job.total_rounds} rounds completed` +
    (job.state === "running" ? ` · round ${job.current_round} running` : "") +
    ` · owner ${job.owner} · job spec sha256 ${job.spec_sha256.slice(0, 12)}…`;
  $("cancel").hidden = FINAL.includes(job.state);
  $("sites").querySelector("tbody").innerHTML = job.admissions.length
    ? job.admissions
        .map(
          (a) => `<tr data-site="${escapeHtml(a.site_id)}"><td>${escapeHtml(a.site_id)}</td>
          <td class="${a.accepted ? "accepted" : "refused"}">${a.accepted ? "admitted" : "refused"}</td>
          <td>${escapeHtml(a.reason)}</td></tr>`
        )
        .join("")
    : `<tr><td colspan="3" class="muted">waiting for the sites' answers</td></tr>`;
  drawChart($("accuracy-chart"), job, "accuracy");
  drawChart($("loss-chart"), job, "loss");
  const lines = await api(`/api/jobs/${encodeURIComponent(job.id)}/logs`);
  $("log").textContent = lines.map((l) => `${l.at.slice(11, 19)}  ${l.message}`).join("\n");
  if (job.model_id && !state.cards[job.id]) {
    state.cards[job.id] = await api(`/api/jobs/${encodeURIComponent(job.id)}/model-card`);
  }
  const card = state.cards[job.id];
  $("model-card").innerHTML = card
    ? `<p class="muted">model <code>${escapeHtml(card.model_id)}</code> · ${escapeHtml(card.state)} · weights sha256 <code>${escapeHtml(card.weights_sha256.slice(0, 16))}…</code></p>${markdown(card.markdown)}`
    : `<p class="muted">${job.state === "completed" ? "no model was registered" : "A model card appears when the job completes."}</p>`;
  if (card) $("model-card").dataset.model = card.model_id;
  else delete $("model-card").dataset.model;
}

function selectJob(id) {
  state.selected = id;
  location.hash = `job=${encodeURIComponent(id)}`;
  for (const row of $("jobs").querySelectorAll("tbody tr")) row.classList.toggle("selected", row.dataset.job === id);
  refreshDetail().catch((e) => showError(e.message));
}

async function tick() {
  try {
    await refreshJobs();
    await refreshDetail();
    showError("");
  } catch (e) {
    showError(e.message);
    if (e.status === 401) signOut();
  }
}

async function signIn(token) {
  state.token = token;
  try {
    const who = await api("/api/whoami");
    sessionStorage.setItem("paroma-job-token", token);
    $("whoami").textContent = `signed in as ${who.subject} (${who.role})`;
    $("whoami").dataset.subject = who.subject;
    $("sign-out").hidden = false;
    showError("");
    const hash = /job=([^&]+)/.exec(location.hash);
    if (hash) state.selected = decodeURIComponent(hash[1]);
    await tick();
    clearInterval(state.timer);
    state.timer = setInterval(tick, 1500);
  } catch (e) {
    state.token = "";
    showError(e.message);
  }
}

function signOut() {
  clearInterval(state.timer);
  state.token = "";
  state.selected = null;
  state.cards = {};
  sessionStorage.removeItem("paroma-job-token");
  $("whoami").textContent = "";
  delete $("whoami").dataset.subject;
  $("sign-out").hidden = true;
  $("detail").hidden = true;
  $("jobs").querySelector("tbody").innerHTML = "";
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
  $("token").value = "";
});
$("sign-out").addEventListener("click", signOut);
$("cancel").addEventListener("click", async () => {
  try {
    await api(`/api/jobs/${encodeURIComponent(state.selected)}/cancel`, { method: "POST" });
    await tick();
  } catch (e) {
    showError(e.message);
  }
});
if (state.token) signIn(state.token);
