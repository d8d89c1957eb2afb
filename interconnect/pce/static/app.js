// Secure Traffic Engine GUI: plain DOM and SVG, no framework, no build step, nothing fetched
// from outside this server. Every text from the server goes in with textContent (never
// innerHTML): node names and CVE descriptions come from files and from NVD.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAP_W = 1000;
const MAP_H = 640;

const state = {
  topology: null,
  paths: [],
  selectedPath: null,
  selectedNode: null,
  selectedLink: null,
  view: "map",
};

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

async function api(method, url, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data.detail || data.title || `HTTP ${response.status}`;
    const error = new Error(message);
    error.problem = data;
    throw error;
  }
  return data;
}

function siColor(si) {
  const hue = Math.max(0, Math.min(100, si)) * 1.2;
  return `hsl(${hue.toFixed(0)} 65% 40%)`;
}

function fmt(value, digits = 1) {
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
}

function nodeName(id) {
  const node = state.topology && state.topology.nodes.find((n) => n.id === id);
  return node ? node.name : id;
}

function toast(message) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

// ------------------------------------------------------------------ loading

async function refresh() {
  const [topology, paths] = await Promise.all([api("GET", "/api/topology"), api("GET", "/api/paths")]);
  state.topology = topology;
  state.paths = paths;
  if (state.selectedPath && !paths.some((p) => p.name === state.selectedPath)) state.selectedPath = null;
  document.getElementById("topology-name").textContent = topology.name;
  fillNodeSelects();
  renderMap();
  renderPaths();
  renderPathDetails();
  if (state.selectedNode) await showNode(state.selectedNode, false);
  if (state.selectedLink) showLink(state.selectedLink);
}

let refreshTimer = null;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().catch((e) => console.error(e)), 80);
}

// ------------------------------------------------------------------ map

function position(node) {
  return [node.x * MAP_W, node.y * MAP_H];
}

function renderMap() {
  const topology = state.topology;
  const byId = new Map(topology.nodes.map((n) => [n.id, n]));
  const big = topology.nodes.length > 60;
  const radius = big ? 4 : 16;
  const linksLayer = document.getElementById("links");
  const nodesLayer = document.getElementById("nodes");
  linksLayer.replaceChildren();
  nodesLayer.replaceChildren();

  const selected = state.paths.find((p) => p.name === state.selectedPath);
  const onPath = new Set(selected && selected.route ? selected.route.nodes : []);

  for (const link of topology.links) {
    const [x1, y1] = position(byId.get(link.a));
    const [x2, y2] = position(byId.get(link.b));
    const used = link.reserved_mbps > 0 ? " busy" : "";
    const line = svg("line", {
      x1, y1, x2, y2, class: `link${link.up ? "" : " down"}${used}`, "data-id": link.id,
      "stroke-width": big ? 1 : 2.5,
    });
    const title = svg("title");
    title.textContent = `${link.id}: ${fmt(link.capacity_mbps, 0)} Mbit/s, ${fmt(link.reserved_mbps, 0)} reserved, ` +
      `${fmt(link.delay_us)} µs${link.up ? "" : " (down)"}`;
    line.append(title);
    line.addEventListener("click", () => showLink(link.id));
    linksLayer.append(line);
  }

  for (const node of topology.nodes) {
    const [x, y] = position(node);
    const classes = ["node", node.kind];
    if (!node.up) classes.push("down");
    if (onPath.has(node.id)) classes.push("on-path");
    if (state.selectedNode === node.id) classes.push("selected");
    const group = svg("g", { class: classes.join(" "), "data-id": node.id, transform: `translate(${x} ${y})` });
    const fill = siColor(node.security_index);
    let shape;
    const r = node.kind === "site" || node.kind === "aggregator" ? radius * 0.7 : radius;
    if (node.kind === "access") shape = svg("rect", { x: -r, y: -r, width: 2 * r, height: 2 * r, rx: 4 });
    else if (node.kind === "aggregator") shape = svg("polygon", { points: `0,${-r * 1.3} ${r * 1.3},0 0,${r * 1.3} ${-r * 1.3},0` });
    else shape = svg("circle", { r });
    shape.setAttribute("class", "shape");
    shape.setAttribute("fill", fill);
    group.append(shape);
    const title = svg("title");
    title.textContent = `${node.name} (${node.kind}) SI ${fmt(node.security_index, 2)}` +
      `${node.vulnerabilities ? `, ${node.vulnerabilities} CVE(s)` : ""}${node.up ? "" : ", down"}`;
    group.append(title);
    if (!big) {
      const label = svg("text", { y: r + 15, "text-anchor": "middle" });
      label.textContent = node.name.length > 22 ? node.id : node.name;
      group.append(label);
      if (node.kind === "router" || node.kind === "access") {
        const si = svg("text", { y: 4, "text-anchor": "middle", class: "si" });
        si.textContent = fmt(node.security_index, 0);
        si.setAttribute("fill", "#fff");
        si.setAttribute("style", "fill:#fff;stroke:none;font-weight:600");
        group.append(si);
      }
    }
    group.addEventListener("click", () => showNode(node.id, true));
    nodesLayer.append(group);
  }

  const pathLayer = document.getElementById("path-layer");
  pathLayer.replaceChildren();
  if (selected && selected.route) {
    const points = selected.route.nodes.map((id) => position(byId.get(id)).join(",")).join(" ");
    const line = svg("polyline", {
      id: "selected-path", points, "data-name": selected.name, "data-nodes": selected.route.nodes.join(" "),
      "data-version": selected.version,
    });
    pathLayer.append(line);
  }
}

// ------------------------------------------------------------------ paths view

function renderPaths() {
  const body = document.querySelector("#paths-table tbody");
  body.replaceChildren();
  document.getElementById("no-paths").hidden = state.paths.length > 0;
  for (const path of state.paths) {
    const r = path.request;
    const route = path.route;
    const row = el("tr", {
      class: `${path.name === state.selectedPath ? "selected" : ""} ${path.status}`, "data-name": path.name,
    },
      el("td", { text: path.name }),
      el("td", { text: nodeName(r.source) }),
      el("td", { text: nodeName(r.destination) }),
      el("td", { text: fmt(r.bandwidth_mbps, 3) }),
      el("td", { text: fmt(r.max_delay_us, 1) }),
      el("td", { text: fmt(r.min_security, 2) }),
      el("td", { text: path.status, title: path.reason || "" }),
      el("td", { text: route ? route.nodes.map(nodeName).join(" → ") : path.reason }),
      el("td", { text: route ? fmt(route.delay_us) : "" }),
      el("td", { text: route ? fmt(route.min_security_index, 2) : "" }),
      el("td", { text: route ? fmt(route.bottleneck_mbps, 0) : "" }),
      el("td", {},
        el("button", { class: "small", text: "Show", onclick: () => selectPath(path.name, true) }),
        " ",
        el("button", { class: "small delete-path", text: "Delete", onclick: () => deletePath(path.name) })),
    );
    body.append(row);
  }
}

function selectPath(name, switchToMap) {
  state.selectedPath = name;
  renderMap();
  renderPaths();
  renderPathDetails();
  if (switchToMap) setView("map");
}

function renderPathDetails() {
  const box = document.getElementById("path-details");
  const path = state.paths.find((p) => p.name === state.selectedPath);
  box.hidden = !path;
  if (!path) return;
  const r = path.request;
  const route = path.route;
  box.replaceChildren(
    el("h2", { text: `Path ${path.name}` }),
    el("p", {}, `${nodeName(r.source)} → ${nodeName(r.destination)}, ${fmt(r.bandwidth_mbps, 3)} Mbit/s, ` +
      `max ${fmt(r.max_delay_us)} µs, minimum SI ${fmt(r.min_security, 2)}`),
    route
      ? el("p", { id: "path-summary" },
        `Route: ${route.nodes.map(nodeName).join(" → ")}. Delay ${fmt(route.delay_us)} µs, lowest SI ` +
        `${fmt(route.min_security_index, 2)}, bottleneck ${fmt(route.bottleneck_mbps, 0)} Mbit/s, ` +
        `path security ${fmt(route.path_security, 2)} %. Version ${path.version}.`)
      : el("p", { class: "error", id: "path-summary" }, `Unroutable: ${path.reason}`),
  );
}

async function deletePath(name) {
  try {
    await api("DELETE", `/api/paths/${encodeURIComponent(name)}`);
    if (state.selectedPath === name) state.selectedPath = null;
    await refresh();
  } catch (error) {
    toast(error.message);
  }
}

// ------------------------------------------------------------------ compute form

function fillNodeSelects() {
  const endpoints = state.topology.nodes;
  const groups = [["access", "Access nodes"], ["site", "Hospitals"], ["aggregator", "Aggregator"], ["router", "Routers"]];
  for (const id of ["source-node", "destination-node"]) {
    const select = document.getElementById(id);
    const keep = select.value;
    select.replaceChildren(el("option", { value: "", text: "placeholder", disabled: true }));
    for (const [kind, label] of groups) {
      const nodes = endpoints.filter((n) => n.kind === kind);
      if (!nodes.length) continue;
      const group = el("optgroup", { label });
      for (const n of nodes) group.append(el("option", { value: n.id, text: n.name }));
      select.append(group);
    }
    select.value = keep && endpoints.some((n) => n.id === keep) ? keep : "";
  }
}

function openForm() {
  hidePanels();
  document.getElementById("compute-form").hidden = false;
  document.getElementById("form-error").hidden = true;
  document.getElementById("path-name").focus();
}

function hidePanels() {
  for (const id of ["compute-form", "node-panel", "link-panel"]) document.getElementById(id).hidden = true;
  state.selectedNode = null;
  state.selectedLink = null;
}

async function submitForm(event) {
  event.preventDefault();
  const error = document.getElementById("form-error");
  error.hidden = true;
  const form = event.target;
  const body = {
    name: form.name.value.trim(),
    source: form.source.value,
    destination: form.destination.value,
    bandwidth_mbps: Number(form.bandwidth_mbps.value),
    max_delay_us: Number(form.max_delay_us.value),
    min_security: Number(form.min_security.value),
  };
  try {
    const path = await api("POST", "/api/paths", body);
    state.selectedPath = path.name;
    form.hidden = true;
    await refresh();
    setView("map");
    toast(`Path ${path.name} installed: ${path.route.nodes.map(nodeName).join(" → ")}`);
  } catch (e) {
    const constraint = e.problem && e.problem.constraint ? ` [${e.problem.constraint}]` : "";
    error.textContent = `${e.problem && e.problem.title ? e.problem.title + ": " : ""}${e.message}${constraint}`;
    error.hidden = false;
  }
}

// ------------------------------------------------------------------ node and link panels

async function showNode(id, open) {
  if (open) {
    hidePanels();
    state.selectedNode = id;
  }
  const panel = document.getElementById("node-panel");
  let node;
  try {
    node = await api("GET", `/api/nodes/${encodeURIComponent(id)}`);
  } catch (e) {
    panel.hidden = true;
    state.selectedNode = null;
    return;
  }
  const rows = node.vulnerabilities.map((v) => el("tr", { "data-cve": v.cve_id },
    el("td", {}, el("strong", { text: v.cve_id }), el("div", { class: "vector", text: v.vector, title: v.description })),
    el("td", { class: `severity-${v.severity}`, text: `${fmt(v.base_score)} ${v.severity}` }),
    el("td", {}, el("input", {
      type: "number", min: 1, step: "any", value: v.remediation, class: "remediation", "aria-label": `remediation of ${v.cve_id}`,
      onchange: (e) => setRemediation(id, v.cve_id, Number(e.target.value)),
    })),
    el("td", { text: fmt(v.alpha, 2) }),
    el("td", {}, el("button", { class: "small", text: "✕", title: `remove ${v.cve_id}`, onclick: () => removeCve(id, v.cve_id) })),
  ));
  const cveForm = el("form", { id: "cve-form", onsubmit: (e) => addCve(e, id) },
    el("label", {}, "CVE", el("input", { id: "cve-id", class: "panel-input", placeholder: "CVE-2022-36786", required: true })),
    el("label", {}, "CVSS v3.x vector (optional: without it the CVE comes from NVD data)",
      el("input", { id: "cve-vector", class: "panel-input", placeholder: "CVSS:3.1/AV:N/AC:L/..." })),
    el("label", {}, "Remediation level (RE ≥ 1)", el("input", { id: "cve-remediation", class: "panel-input", type: "number", min: 1, step: "any", value: 1 })),
    el("p", { id: "cve-error", class: "error", role: "alert", hidden: true }),
    el("div", { class: "buttons" }, el("button", { type: "submit", id: "add-cve", class: "primary", text: "Add CVE" })),
  );
  const parts = [
    el("h2", { text: node.name }),
    el("p", {},
      `${node.kind}, security index `,
      el("span", { class: "si-badge", id: "node-si", style: `background:${siColor(node.security_index)}`, text: fmt(node.security_index, 2) }),
      " ",
      el("button", { class: "small", id: "toggle-node", text: node.up ? "Take down" : "Bring up", onclick: () => setNodeState(id, !node.up) })),
    node.paths.length ? el("p", { class: "muted", text: `Paths through it: ${node.paths.join(", ")}` }) : null,
    node.vulnerabilities.length
      ? el("table", { class: "cves" },
        el("thead", {}, el("tr", {}, el("th", { text: "CVE" }), el("th", { text: "CVSS" }), el("th", { text: "RE" }), el("th", { text: "α" }), el("th"))),
        el("tbody", {}, ...rows))
      : el("p", { class: "muted", text: "No known vulnerability." }),
    cveForm,
    el("p", { class: "notice", text: node.nvd_notice }),
  ];
  // A redraw (after any event) keeps what the operator was typing in the add-CVE form.
  const typing = ["cve-id", "cve-vector", "cve-remediation"].map((field) => {
    const input = document.getElementById(field);
    return input ? [field, input.value, document.activeElement === input] : null;
  }).filter((entry) => entry !== null);
  panel.replaceChildren(...parts.filter((part) => part !== null));
  if (!open) {
    for (const [field, value, focused] of typing) {
      const input = document.getElementById(field);
      input.value = value;
      if (focused) input.focus();
    }
  }
  panel.hidden = false;
  if (open) renderMap();
}

async function addCve(event, nodeId) {
  event.preventDefault();
  const error = document.getElementById("cve-error");
  const vector = document.getElementById("cve-vector").value.trim();
  const body = {
    cve_id: document.getElementById("cve-id").value.trim(),
    remediation: Number(document.getElementById("cve-remediation").value || 1),
  };
  if (vector) body.vector = vector;
  try {
    await api("POST", `/api/nodes/${encodeURIComponent(nodeId)}/vulnerabilities`, body);
    await refresh();
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  }
}

async function setRemediation(nodeId, cve, value) {
  try {
    await api("PATCH", `/api/nodes/${encodeURIComponent(nodeId)}/vulnerabilities/${cve}`, { remediation: value });
  } catch (e) {
    toast(e.message);
  }
  await refresh();
}

async function removeCve(nodeId, cve) {
  try {
    await api("DELETE", `/api/nodes/${encodeURIComponent(nodeId)}/vulnerabilities/${cve}`);
  } catch (e) {
    toast(e.message);
  }
  await refresh();
}

async function setNodeState(nodeId, up) {
  try {
    await api("PUT", `/api/nodes/${encodeURIComponent(nodeId)}/state`, { up });
  } catch (e) {
    toast(e.message);
  }
  await refresh();
}

function showLink(id) {
  const link = state.topology.links.find((l) => l.id === id);
  if (!link) return;
  hidePanels();
  state.selectedLink = id;
  const panel = document.getElementById("link-panel");
  panel.replaceChildren(
    el("h2", { text: `Link ${nodeName(link.a)} – ${nodeName(link.b)}` }),
    el("p", {}, `Capacity ${fmt(link.capacity_mbps, 0)} Mbit/s, reserved ${fmt(link.reserved_mbps, 3)}, ` +
      `available ${fmt(link.available_mbps, 3)}; delay ${fmt(link.delay_us)} µs; ${link.up ? "up" : "down"}.`),
    el("button", {
      id: "toggle-link", text: link.up ? "Take down" : "Bring up",
      onclick: async () => {
        try {
          await api("PUT", `/api/links/${encodeURIComponent(id)}/state`, { up: !link.up });
        } catch (e) {
          toast(e.message);
        }
        await refresh();
      },
    }),
  );
  panel.hidden = false;
}

// ------------------------------------------------------------------ views and live updates

function setView(view) {
  state.view = view;
  for (const name of ["paths", "map"]) {
    document.getElementById(`view-${name}`).hidden = name !== view;
    document.getElementById(`tab-${name}`).setAttribute("aria-selected", String(name === view));
  }
}

function describe(event) {
  const d = event.data;
  const route = (p) => (p && p.route ? p.route.nodes.map(nodeName).join(" → ") : "");
  switch (event.kind) {
    case "path-installed": return `Path ${d.path.name} installed: ${route(d.path)}`;
    case "path-removed": return `Path ${d.path.name} removed`;
    case "path-rerouted": return `Path ${d.path.name} moved (${d.cause}): ${route(d.path)}`;
    case "path-unroutable": return `Path ${d.path.name} unroutable (${d.cause}): ${d.path.reason}`;
    case "path-restored": return `Path ${d.path.name} restored: ${route(d.path)}`;
    case "vulnerability-added": return `${d.exposure.cve_id} (${d.exposure.base_score}) on ${nodeName(d.node)}`;
    case "vulnerability-removed": return `${d.exposure.cve_id} removed from ${nodeName(d.node)}`;
    case "remediation-changed": return `RE of ${d.exposure.cve_id} on ${nodeName(d.node)}: ${d.exposure.remediation}`;
    case "security-index": return `Security index changed on ${Object.keys(d.changes).length} node(s)`;
    case "link-state": return `Link ${d.link} ${d.up ? "up" : "down"}`;
    case "node-state": return `Node ${nodeName(d.node)} ${d.up ? "up" : "down"}`;
    case "topology": return `Topology ${d.name} loaded (${d.nodes} nodes, ${d.links} links)`;
    default: return event.kind;
  }
}

function listen() {
  // The last few events first (the log starts filled), then every new one.
  const since = Math.max(0, (state.topology ? state.topology.last_event : 0) - 15);
  const source = new EventSource(`/api/events?since=${since}`);
  const live = document.getElementById("live");
  source.onopen = () => live.classList.add("on");
  source.onerror = () => live.classList.remove("on");
  // Chromium keeps a page with an open stream alive in its back-forward cache: close it on leave.
  window.addEventListener("pagehide", () => source.close());
  const kinds = ["topology", "vulnerability-added", "vulnerability-removed", "remediation-changed", "security-index",
    "link-state", "node-state", "path-installed", "path-removed", "path-rerouted", "path-unroutable", "path-restored"];
  for (const kind of kinds) {
    source.addEventListener(kind, (message) => {
      const event = JSON.parse(message.data);
      const text = describe(event);
      const log = document.getElementById("event-log");
      log.prepend(el("li", { "data-kind": event.kind, text }));
      while (log.children.length > 40) log.lastChild.remove();
      const fresh = state.topology && event.seq > state.topology.last_event;
      if (fresh && ["path-rerouted", "path-unroutable", "path-restored"].includes(event.kind)) toast(text);
      if (fresh) scheduleRefresh();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("tab-paths").addEventListener("click", () => setView("paths"));
  document.getElementById("tab-map").addEventListener("click", () => setView("map"));
  document.getElementById("open-compute").addEventListener("click", openForm);
  document.getElementById("cancel").addEventListener("click", () => { document.getElementById("compute-form").hidden = true; });
  document.getElementById("compute-form").addEventListener("submit", submitForm);
  refresh().then(listen).catch((e) => toast(`Cannot reach the engine: ${e.message}`));
});
