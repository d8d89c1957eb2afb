// The patients' consent dashboard. Hand-written, no build step, nothing loaded from outside.
// Text from the server is only ever set with textContent (never as HTML).
"use strict";

const API = "/patient/api";
const state = { csrf: null, patient: null, overview: null, events: null, requestIds: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function notify(message) {
  const box = $("notice");
  box.textContent = "";
  // A new text node, so that screen readers announce a repeated message again.
  window.setTimeout(() => { box.textContent = message; }, 30);
  $("alert").textContent = "";
}

function fail(message) {
  $("alert").textContent = message;
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 && path !== "/session") showSignIn("Your session has ended. Please sign in again.");
    const error = new Error(data.detail || data.title || `error ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// -- signing in ------------------------------------------------------------------------------

function showSignIn(message) {
  if (state.events) state.events.close();
  state.events = null;
  state.csrf = null;
  $("dashboard-view").hidden = true;
  $("who").hidden = true;
  $("sign-in-view").hidden = false;
  if (message) fail(message);
  $("code").focus();
}

async function showDashboard(session) {
  state.csrf = session.csrf_token;
  state.patient = session.patient;
  $("patient-id").textContent = session.patient;
  $("sign-in-view").hidden = true;
  $("who").hidden = false;
  $("dashboard-view").hidden = false;
  await Promise.all([loadOverview(), loadActivity()]);
  follow();
}

async function signIn(event) {
  event.preventDefault();
  const code = $("code").value.trim();
  if (!code) {
    fail("Please type the enrolment code the hospital gave you.");
    $("code").focus();
    return;
  }
  try {
    const session = await call("POST", "/session", { code });
    $("code").value = "";
    await showDashboard(session);
    notify(`Signed in. Welcome, patient ${session.patient}.`);
    $("main").focus();
  } catch (error) {
    fail(`Sign-in failed: ${error.message}`);
    $("code").focus();
  }
}

async function signOut() {
  try {
    await call("DELETE", "/session");
  } catch (error) {
    /* already signed out */
  }
  showSignIn();
  notify("You are signed out.");
}

// -- research choices ------------------------------------------------------------------------

const WORDS = { PERMIT: "Allowed", DENY: "Refused", NO_CONSENT: "Not decided yet" };

function dataChoices(purpose) {
  const chosen = new Set(purpose.exclusions.map((e) => `${e.kind}:${e.value}`));
  const fieldset = el("fieldset", { class: "exclusions" },
    el("legend", { text: `Data to keep out of ${purpose.title.toLowerCase()}` }));
  const data = state.overview.data;
  if (!data.length) fieldset.append(el("p", { class: "muted", text: "Your record holds no data of this kind." }));
  for (const item of data) {
    const id = `x-${purpose.code}-${item.kind}-${item.value}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const box = el("input", { type: "checkbox", id, "data-kind": item.kind, "data-value": item.value });
    box.checked = chosen.has(`${item.kind}:${item.value}`);
    const label = item.kind === "class"
      ? `All my ${item.words} (${item.records} records)`
      : `${item.words} (${item.records})`;
    fieldset.append(el("p", { class: item.kind === "class" ? "check" : "check indent" }, box, el("label", { for: id, text: label })));
  }
  // Folded away unless something is kept out already: most patients decide per purpose only.
  const count = purpose.exclusions.length;
  const details = el("details", { class: "data-choices" },
    el("summary", { text: count ? `Keep some of my data out (${count} chosen)` : "Keep some of my data out" }), fieldset);
  details.open = count > 0;
  return details;
}

function checkedExclusions(card) {
  return [...card.querySelectorAll("fieldset.exclusions input:checked")].map((box) =>
    box.dataset.kind === "class" ? { class: box.dataset.value } : { code: box.dataset.value });
}

function keptOut(card) {
  return [...card.querySelectorAll("fieldset.exclusions input:checked")].map((box) => box.labels[0].textContent);
}

async function choose(purpose, decision, card) {
  const words = keptOut(card);
  const exclude = decision === "permit" ? checkedExclusions(card) : [];
  try {
    const saved = await call("PUT", `/research/${purpose.code}`, { decision, exclude });
    await Promise.all([loadOverview(), loadActivity()]);
    const what = decision === "permit"
      ? `You allow ${purpose.title.toLowerCase()}${exclude.length ? `, keeping out: ${words.join("; ")}` : ""}.`
      : `You refuse ${purpose.title.toLowerCase()}.`;
    notify(`Saved as consent version ${saved.version}. ${what} This counts from the next training round.`);
    const again = document.querySelector(`article[data-purpose="${purpose.code}"] .status`);
    if (again) again.focus();
  } catch (error) {
    fail(`Not saved: ${error.message}`);
  }
}

function renderPurposes() {
  const box = $("purposes");
  box.textContent = "";
  for (const purpose of state.overview.purposes) {
    const titleId = `purpose-${purpose.code}-title`;
    const card = el("article", { class: "purpose", "data-purpose": purpose.code, "data-decision": purpose.decision, "aria-labelledby": titleId });
    card.append(el("h3", { id: titleId, text: purpose.title }));
    card.append(el("p", { text: purpose.explanation }));
    const status = el("p", { class: "status", tabindex: "-1" },
      "Now: ", el("strong", { class: `decision ${purpose.decision}`, text: WORDS[purpose.decision] || purpose.decision }));
    if (purpose.exclusions.length) {
      status.append(`, except ${purpose.exclusions.map((e) => e.words).join(", ")}`);
    }
    card.append(status);
    for (const named of purpose.organizations) {
      card.append(el("p", { class: "org-decision", "data-organization": named.organization },
        `For studies of ${named.organization}: `,
        el("strong", { class: `decision ${named.decision}`, text: WORDS[named.decision] || named.decision }),
        " (your answer to their request)"));
    }
    card.append(dataChoices(purpose));
    const allowed = purpose.decision === "PERMIT";
    const grant = el("button", { type: "button", class: "grant", text: allowed ? "Save my data choices" : `Allow ${purpose.title.toLowerCase()}` });
    grant.addEventListener("click", () => choose(purpose, "permit", card));
    const refuse = el("button", { type: "button", class: "refuse secondary", text: allowed ? "Withdraw my consent" : "Refuse" });
    refuse.addEventListener("click", () => choose(purpose, "deny", card));
    if (purpose.decision === "DENY") refuse.setAttribute("aria-describedby", `${titleId}-refused`);
    card.append(el("div", { class: "actions" }, grant, refuse));
    if (purpose.decision === "DENY") {
      card.append(el("p", { id: `${titleId}-refused`, class: "muted", text: "You have refused; pressing Refuse again records the refusal anew." }));
    }
    box.append(card);
  }
}

function renderConsents() {
  const list = $("consents");
  list.textContent = "";
  if (!state.overview.consents.length) {
    list.append(el("li", { class: "muted", text: "The hospital holds no consent for you: no research uses your data until you decide." }));
  }
  for (const consent of state.overview.consents) {
    const item = el("li", { class: "card", "data-consent": consent.id });
    item.append(el("h3", { text: consent.decision === "permit" ? "Permission" : consent.decision === "deny" ? "Refusal" : "Consent" }));
    item.append(el("p", { class: "summary", text: consent.summary }));
    const origin = { dashboard: "made by you on this page", request: "your answer to a study's request", hospital: "recorded by the hospital" }[consent.origin];
    item.append(el("p", { class: "muted", text: `Signed ${String(consent.signed || "").slice(0, 10)} · version ${consent.version} · ${origin} · ${consent.id}` }));
    list.append(item);
  }
}

async function loadOverview() {
  state.overview = await call("GET", "/overview");
  $("site-name").textContent = `${state.overview.site.name}: research consent dashboard`;
  renderPurposes();
  renderConsents();
}

// -- requests from studies (pushed live) -----------------------------------------------------

function renderRequests(requests) {
  const list = $("requests");
  list.textContent = "";
  $("no-requests").hidden = requests.length > 0;
  $("requests-count").textContent = requests.length ? `${requests.length} waiting` : "";
  for (const request of requests) {
    const titleId = `request-${request.id}-title`;
    const item = el("li", { class: "card request", "data-request": request.id, "aria-labelledby": titleId });
    item.append(el("h3", { id: titleId, text: request.study }));
    item.append(el("p", { text: `${request.organization} asks to use your data for ${request.purpose_words.toLowerCase()}.` }));
    if (request.message) item.append(el("blockquote", { text: request.message }));
    const accept = el("button", { type: "button", class: "accept", text: "Accept", "aria-describedby": titleId });
    const decline = el("button", { type: "button", class: "decline secondary", text: "Decline", "aria-describedby": titleId });
    accept.addEventListener("click", () => answer(request, true));
    decline.addEventListener("click", () => answer(request, false));
    item.append(el("div", { class: "actions" }, accept, decline));
    list.append(item);
  }
}

async function answer(request, accept) {
  try {
    const result = await call("POST", `/requests/${request.id}`, { accept });
    await Promise.all([loadOverview(), loadActivity(), loadRequests()]);
    notify(`${accept ? "Accepted" : "Declined"}: ${request.study} (consent ${result.consent}, version ${result.version}). This counts from the next training round.`);
    $("requests-title").focus();
  } catch (error) {
    fail(`Not saved: ${error.message}`);
  }
}

async function loadRequests() {
  const requests = await call("GET", "/requests");
  state.requestIds = new Set(requests.map((r) => r.id));
  renderRequests(requests);
}

function follow() {
  if (state.events) state.events.close();
  const source = new EventSource(`${API}/events`);
  state.events = source;
  source.addEventListener("requests", (event) => {
    const requests = JSON.parse(event.data);
    const known = state.requestIds;
    const fresh = known ? requests.filter((r) => !known.has(r.id)) : [];
    state.requestIds = new Set(requests.map((r) => r.id));
    renderRequests(requests);
    if (fresh.length) notify(`New request from ${fresh.map((r) => r.study).join(", ")}.`);
  });
  source.addEventListener("consents", () => {
    loadOverview().catch(() => {});
    loadActivity().catch(() => {});
  });
  source.addEventListener("signed-out", () => {
    source.close();
    showSignIn("Your session has ended. Please sign in again.");
  });
  source.addEventListener("open", () => document.body.classList.add("live"));
  source.addEventListener("error", () => document.body.classList.remove("live"));
}

// -- activity --------------------------------------------------------------------------------

function describe(entry) {
  if (entry.kind === "data-release") {
    return `Study ${entry.job_name} (job ${String(entry.job).slice(0, 12)}…) used your data in round ${entry.round}, under consent ${entry.consent}.`;
  }
  if (entry.kind === "consent-change") {
    return `Consent ${entry.consent} ${entry.change === "created" ? "recorded" : "changed"} (version ${entry.version}).`;
  }
  if (entry.kind === "erasure") return `Erasure ${entry.event}.`;
  return `You: ${String(entry.action).replace(/-/g, " ")}.`;
}

async function loadActivity() {
  const activity = await call("GET", "/activity");
  const body = document.querySelector("#jobs tbody");
  body.textContent = "";
  $("no-jobs").hidden = activity.jobs.length > 0;
  $("jobs").hidden = activity.jobs.length === 0;
  for (const job of activity.jobs) {
    const rounds = job.rounds.join(", ");
    body.append(el("tr", { "data-job": job.job },
      el("td", {}, el("span", { text: job.job_name }), el("br"), el("code", { title: job.job, text: `${job.job.slice(0, 16)}…` })),
      el("td", { text: job.purpose }),
      el("td", { text: job.organization }),
      el("td", { class: "rounds", text: rounds }),
      el("td", { text: `${String(job.first_used).slice(0, 16).replace("T", " ")} – ${String(job.last_used).slice(0, 16).replace("T", " ")}` }),
      el("td", { text: job.consents.join(", ") })));
  }
  const history = $("history");
  history.textContent = "";
  for (const entry of activity.entries.slice().reverse()) {
    history.append(el("li", {}, el("time", { datetime: entry.time, text: String(entry.time).slice(0, 19).replace("T", " ") }), " ", describe(entry)));
  }
}

// -- erasure ---------------------------------------------------------------------------------

async function erase(event) {
  event.preventDefault();
  if (!$("erase-confirm").checked) {
    fail("Tick the box to confirm that you want your data erased.");
    $("erase-confirm").focus();
    return;
  }
  try {
    const result = await call("POST", "/erasure", { confirm: true });
    const box = $("erasure-result");
    box.textContent = "";
    box.append(el("h3", { text: "Your data was erased" }));
    box.append(el("p", { text: `${result.fhir_resources_deleted} records and ${result.consent_versions_deleted} consent versions were deleted. Your data is left out of every future training round. The request is recorded in the audit log (entry ${result.recorded.audit_seq}).` }));
    box.append(el("p", { text: `Kept: ${result.kept}.` }));
    const models = el("ul", { id: "trained-models" });
    for (const job of result.models_trained) {
      models.append(el("li", { "data-job": job.job }, `${job.job_name} (job sha256 ${job.job}), ${job.purpose} for ${job.organization}: rounds ${job.rounds.join(", ")}, ${String(job.first_used).slice(0, 10)} to ${String(job.last_used).slice(0, 10)}, under consent ${job.consents.join(", ")}`));
    }
    box.append(el("p", { text: result.models_trained.length ? "Models already trained with your data:" : "No model had been trained with your data." }));
    box.append(models);
    await Promise.all([loadOverview(), loadActivity()]);
    notify("Your data was erased.");
    box.focus();
  } catch (error) {
    fail(`Not erased: ${error.message}`);
  }
}

// -- start -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("erase-form").addEventListener("submit", erase);
  try {
    const session = await call("GET", "/session");
    await showDashboard(session);
    await loadRequests();
  } catch (error) {
    showSignIn();
  }
});
