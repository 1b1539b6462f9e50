// jmig's web view: log in, then follow the cluster over server-sent events.
"use strict";

const STATES = ["present", "remote", "inflight", "dirty", "pushed", "faulted"];
const $ = (id) => document.getElementById(id);
let source = null;
let selected = null;        // {node, envid}
let control = false;
let nodes = [];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}
const hex = (n) => n.toString(16).padStart(8, "0");

async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                               body: JSON.stringify(body), credentials: "same-origin"});
  let data = {};
  try { data = await r.json(); } catch (e) { /* no body */ }
  return {ok: r.ok, status: r.status, data};
}

function showLogin(message) {
  if (source) { source.close(); source = null; }
  $("view").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("status").textContent = "not logged in";
}

async function login(token) {
  const r = await post("/api/login", {token});
  if (!r.ok) { showLogin(r.data.error || `login failed (${r.status})`); return; }
  control = r.data.control;
  start();
}

async function start() {
  const r = await fetch("/api/state", {credentials: "same-origin"});
  if (r.status === 401) { showLogin(""); return; }
  $("login").hidden = true;
  $("view").hidden = false;
  $("logout").hidden = false;
  listen();
}

function listen() {
  if (source) source.close();
  const q = selected ? `?node=${encodeURIComponent(selected.node)}&envid=${selected.envid}` : "";
  source = new EventSource("/api/events" + q);
  source.addEventListener("state", (ev) => render(JSON.parse(ev.data)));
  source.onopen = () => { $("status").textContent = "live"; };
  source.onerror = async () => {
    $("status").textContent = "reconnecting…";
    const r = await fetch("/api/state", {credentials: "same-origin"});
    if (r.status === 401) showLogin("session ended; log in again");
  };
}

function select(node, envid) {
  selected = {node, envid};
  cells = [];
  $("pagemap").replaceChildren();
  listen();
}

function render(s) {
  control = s.control;
  nodes = s.nodes.map((n) => n.addr);
  if (s.selected) selected = s.selected;      // the server follows an env that moved
  const at = new Date(s.when * 1000).toLocaleTimeString();
  $("status").textContent = `live, ${at}` + (control ? ", control on" : ", read-only");
  $("nodes").replaceChildren(...s.nodes.map(renderNode));
  renderEnv(s);
}

function renderNode(n) {
  const box = el("div", {class: "node", "data-addr": n.addr});
  box.append(el("h2", {}, `${n.name || n.addr} `, el("span", {class: "meta"}, n.addr)));
  if (n.error) { box.append(el("p", {class: "error"}, n.error)); return box; }
  const m = n.memory || {};
  box.append(el("div", {class: "meta"},
    `${n.envs.length} envs, ${Math.round((m.used || 0) / 1048576)} of ` +
    `${Math.round((m.total || 0) / 1048576)} MiB used`));
  const t = el("table", {}, el("tr", {}, ...["env", "program", "status", "state", "pages"]
    .map((h) => el("th", {}, h))));
  for (const e of n.envs) {
    const pages = e.remote_pages ? `${e.pages} (${e.remote_pages} remote)` : `${e.pages}`;
    const row = el("tr", {class: "env", "data-envid": e.envid, "data-node": n.addr},
      el("td", {}, hex(e.envid)), el("td", {}, e.program || "-"), el("td", {}, e.status),
      el("td", {}, e.state || ""), el("td", {}, pages));
    if (selected && selected.node === n.addr && selected.envid === e.envid) row.classList.add("selected");
    row.addEventListener("click", () => select(n.addr, e.envid));
    t.append(row);
  }
  box.append(t);
  for (const j of n.jobs.filter((j) => j.state === "running")) {
    const p = j.progress || {};
    box.append(el("div", {class: "job", "data-job": j.id},
      `job ${j.id} ${j.kind} ${hex(j.envid || 0)} → ${j.target} (${j.method || "-"}) ` +
      `${p.stage || "starting"}${p.round ? ", round " + p.round : ""} `,
      el("progress", {max: p.total || 1, value: p.done || 0})));
  }
  return box;
}

let cells = [];
function renderEnv(s) {
  const pm = s.pagemap;
  if (!selected) return;
  $("selected").textContent = `env ${hex(selected.envid)} on ${selected.node}`;
  $("selected").setAttribute("data-node", selected.node);
  $("selected").setAttribute("data-envid", selected.envid);
  renderControls();
  if (!pm) { $("pagemap-note").textContent = "waiting for its pages…"; return; }
  if (pm.error) { $("pagemap-note").textContent = pm.error; return; }
  // expand runs to one state per page, then touch only the cells that changed
  const states = [];
  for (const [, count, st] of pm.runs) for (let i = 0; i < count; i++) states.push(st);
  const grid = $("pagemap");
  while (cells.length < states.length) {
    const c = el("div", {class: "cell"});
    cells.push(c); c.dataset.s = ""; grid.append(c);
  }
  while (cells.length > states.length) cells.pop().remove();
  states.forEach((st, i) => {
    if (cells[i].dataset.s !== String(st)) { cells[i].dataset.s = st; cells[i].className = "cell s-" + STATES[st]; }
  });
  $("legend").replaceChildren(...STATES.map((name) => el("span", {},
    el("span", {class: "swatch s-" + name}), `${name} `,
    el("b", {id: "count-" + name}, String(pm.counts[name] || 0)))));
  $("pagemap-note").textContent = `${pm.pages} pages` + (pm.truncated ? " (truncated)" : "");
}

function renderControls() {
  const box = $("controls");
  if (!control) { box.hidden = true; box.replaceChildren(); return; }
  if (box.dataset.for === `${selected.node}/${selected.envid}/${nodes.join(",")}`) return;
  box.dataset.for = `${selected.node}/${selected.envid}/${nodes.join(",")}`;
  box.hidden = false;
  const act = (action, extra) => async () => {
    const r = await post(`/api/env/${action}`, {node: selected.node, envid: selected.envid, ...extra});
    $("pagemap-note").textContent = r.ok ? `${action}: ok` : `${action}: ${r.data.error}`;
  };
  const to = el("select", {id: "migrate-to"}, ...nodes.filter((n) => n !== selected.node)
    .map((n) => el("option", {value: n}, n)));
  const method = el("select", {id: "migrate-method"}, ...["pgfault", "precopy", "normal"]
    .map((m) => el("option", {value: m}, m)));
  const b = (id, text, fn) => { const x = el("button", {id}, text); x.addEventListener("click", fn); return x; };
  box.replaceChildren(b("pause", "pause", act("pause")), b("resume", "resume", act("resume")),
    to, method, b("migrate", "migrate", () => act("migrate", {to: to.value, method: method.value})()));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    login($("login-token").value.trim());
  });
  $("logout").addEventListener("click", async () => { await post("/api/logout", {}); showLogin("logged out"); });
  const m = location.hash.match(/token=([0-9a-f]+)/);
  if (m) {
    history.replaceState(null, "", location.pathname);   // the token leaves the address bar
    login(m[1]);
  } else {
    start();
  }
});
