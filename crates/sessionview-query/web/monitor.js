// The live session monitor: sign in with a keypair, list the sessions it may see, follow
// GET /events/session (read with fetch: EventSource cannot send the signature headers) and
// re-read each session an event names, so the table changes as the projector commits.
"use strict";

const ROW_FIELDS = "id name type status status_info status_changed created_at terminated_at " +
  "occupied_slots access_key domain_name group_name user_email image containers { id }";
const DETAIL_FIELDS = ROW_FIELDS.replace("containers { id }", "") + " registry tag scaling_group " +
  "result num_queries cluster_template containers { id role status status_info occupied_slots }";
const PAGE = 100;
const MAX_ROWS = 500;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const state = {
  keys: null,
  sessions: new Map(),
  selected: null,
  generation: 0,
  abort: null,
  lastEventId: null,
  pending: new Set(),
  flushing: false,
  statusChanges: 0,
};

function $(id) { return document.getElementById(id); }

function showError(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = !message;
}

function setLive(on, text) {
  const live = $("live");
  live.className = "live " + (on ? "on" : "off");
  live.textContent = text || (on ? "live" : "not connected");
}

function statusFilter() {
  const v = $("status").value;
  return v ? v.split(",") : null;
}

function ownerFilter() {
  return $("owner").value.trim() || null;
}

function admits(s) {
  const statuses = statusFilter();
  const owner = ownerFilter();
  return (!statuses || statuses.includes(s.status)) && (!owner || s.access_key === owner);
}

function formatAge(from) {
  const secs = Math.max(0, Math.floor((Date.now() - Date.parse(from)) / 1000));
  if (secs < 60) return secs + "s";
  if (secs < 3600) return Math.floor(secs / 60) + "m " + (secs % 60) + "s";
  if (secs < 86400) return Math.floor(secs / 3600) + "h " + Math.floor((secs % 3600) / 60) + "m";
  return Math.floor(secs / 86400) + "d " + Math.floor((secs % 86400) / 3600) + "h";
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
  return (Number.isInteger(v) ? v : v.toFixed(1)) + " " + units[u];
}

// occupied_slots is a JSON string of slot name → amount (decimal strings).
function formatSlots(json) {
  let slots;
  try { slots = JSON.parse(json || "{}"); } catch (e) { return String(json); }
  return Object.entries(slots)
    .map(([k, v]) => k + " " + (k === "mem" && /^\d+$/.test(String(v)) ? formatBytes(v) : v))
    .join(" · ");
}

function cell(tr, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  tr.appendChild(td);
  return td;
}

function sortedSessions() {
  return [...state.sessions.values()]
    .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""))
    .slice(0, MAX_ROWS);
}

function render(changed) {
  const tbody = $("sessions").tBodies[0];
  const rows = document.createDocumentFragment();
  for (const s of sortedSessions()) {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    if (s.id === state.selected) tr.classList.add("selected");
    if (changed && changed.has(s.id)) tr.classList.add("changed");
    cell(tr, s.name);
    cell(tr, s.status, "status " + s.status).title = s.status_info || "";
    cell(tr, formatAge(s.created_at), "age").dataset.from = s.created_at;
    cell(tr, formatSlots(s.occupied_slots), "mono");
    cell(tr, (s.containers || []).length);
    cell(tr, s.access_key, "mono");
    cell(tr, s.status_changed ? new Date(s.status_changed).toLocaleTimeString() : "");
    tr.addEventListener("click", () => select(s.id));
    rows.appendChild(tr);
  }
  tbody.replaceChildren(rows);
  $("count").textContent = state.sessions.size + " shown";
}

function tickAges() {
  for (const td of document.querySelectorAll("#sessions td.age")) {
    td.textContent = formatAge(td.dataset.from);
  }
}

async function query(text, variables) {
  const body = await graphql(state.keys, text, variables);
  if (body.errors && body.errors.length) throw new Error(body.errors.map((e) => e.message).join("; "));
  return body.data;
}

async function load() {
  const data = await query(
    "query($limit: Int!, $status: String, $ak: String) { compute_session_list(limit: $limit, " +
    "offset: 0, status: $status, access_key: $ak, order_key: \"created_at\", order_asc: false) " +
    "{ total_count items { " + ROW_FIELDS + " } } }",
    { limit: PAGE, status: $("status").value || null, ak: ownerFilter() },
  );
  const list = data.compute_session_list;
  state.sessions = new Map(list.items.map((s) => [s.id, s]));
  render();
  $("count").textContent = list.items.length + " of " + list.total_count;
}

// Re-reads the sessions events named (50 per request), then updates their rows.
async function flush() {
  if (state.flushing || !state.pending.size) return;
  state.flushing = true;
  try {
    while (state.pending.size) {
      const ids = [...state.pending].slice(0, 50);
      ids.forEach((id) => state.pending.delete(id));
      const vars = {};
      const decls = [];
      const fields = [];
      ids.forEach((id, i) => {
        vars["i" + i] = id;
        decls.push("$i" + i + ": UUID!");
        fields.push("s" + i + ": compute_session(id: $i" + i + ") { " + ROW_FIELDS + " }");
      });
      const data = await query("query(" + decls.join(", ") + ") { " + fields.join(" ") + " }", vars);
      const changed = new Set();
      ids.forEach((id, i) => {
        const s = data["s" + i];
        const old = state.sessions.get(id);
        if (s && admits(s)) {
          if (!old || old.status !== s.status) {
            changed.add(id);
            if (old) state.statusChanges += 1;
          }
          state.sessions.set(id, s);
        } else if (old) {
          state.sessions.delete(id);
        }
      });
      document.body.dataset.statusChanges = String(state.statusChanges);
      render(changed);
      if (state.selected && ids.includes(state.selected)) showDetail(state.selected);
    }
  } catch (err) {
    showError("Refreshing sessions failed: " + err.message);
  } finally {
    state.flushing = false;
  }
}

// One Server-Sent Events block: remembers its id, queues the session it names.
function onBlock(block) {
  let data = "";
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") state.lastEventId = value;
    else if (field === "data") data += value;
  }
  if (!data) return;
  let event;
  try { event = JSON.parse(data); } catch (e) { return; }
  if (event && typeof event.sessionId === "string" && UUID.test(event.sessionId)) {
    state.pending.add(event.sessionId);
    setTimeout(flush, 150);
  }
}

// Follows the stream until signed out, reconnecting (with Last-Event-ID) 2 s after it ends.
async function listen(generation) {
  while (generation === state.generation) {
    try {
      const path = "/events/session";
      const headers = await signedHeaders(state.keys, "GET", path, null);
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      state.abort = new AbortController();
      const response = await fetch(path, { headers, signal: state.abort.signal, cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status + ": " + (await response.text()).slice(0, 200));
      setLive(true);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
      setLive(false, "reconnecting");
    } catch (err) {
      if (generation !== state.generation) return;
      setLive(false, "reconnecting: " + err.message);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function select(id) {
  state.selected = id;
  for (const tr of $("sessions").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  await showDetail(id);
}

async function showDetail(id) {
  try {
    const data = await query("query($id: UUID!) { compute_session(id: $id) { " + DETAIL_FIELDS + " } }", { id });
    const s = data.compute_session;
    if (!s || state.selected !== id) return;
    $("detail").hidden = false;
    $("detail-title").textContent = s.name;
    const dl = document.createDocumentFragment();
    for (const [label, value] of [
      ["id", s.id], ["type", s.type], ["status", s.status], ["status info", s.status_info],
      ["status changed", s.status_changed], ["created", s.created_at], ["terminated", s.terminated_at],
      ["owner", s.access_key], ["user", s.user_email], ["domain", s.domain_name], ["group", s.group_name],
      ["image", s.image], ["registry", s.registry], ["scaling group", s.scaling_group],
      ["occupied slots", formatSlots(s.occupied_slots)], ["result", s.result], ["queries", s.num_queries],
    ]) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value == null ? "—" : String(value);
      if (label === "status") dd.className = "status " + s.status;
      dl.append(dt, dd);
    }
    $("detail-fields").replaceChildren(dl);
    const rows = document.createDocumentFragment();
    for (const c of s.containers || []) {
      const tr = document.createElement("tr");
      cell(tr, c.id.slice(0, 8), "mono").title = c.id;
      cell(tr, c.role);
      cell(tr, c.status, "status " + c.status);
      cell(tr, c.status_info);
      cell(tr, formatSlots(c.occupied_slots), "mono");
      rows.appendChild(tr);
    }
    $("detail-containers").tBodies[0].replaceChildren(rows);
  } catch (err) {
    showError("Reading the session failed: " + err.message);
  }
}

async function signIn(e) {
  e.preventDefault();
  const keys = { accessKey: $("ak").value.trim(), secretKey: $("sk").value };
  if (!keys.accessKey || !keys.secretKey) {
    showError("Enter an access key and its secret key (sessionview keypair create prints them).");
    return;
  }
  state.generation += 1;
  if (state.abort) state.abort.abort();
  state.keys = keys;
  state.lastEventId = null;
  try {
    const kp = (await query("{ keypair { access_key role domain_name user_email } }")).keypair;
    if (!kp) throw new Error("the server does not know this keypair");
    $("who").textContent = "Signed in as " + (kp.user_email || kp.access_key) + " (" + kp.role + ", domain " + kp.domain_name + ")";
    showError("");
    await load();
    document.body.dataset.signedIn = "true";
    listen(state.generation);
  } catch (err) {
    state.keys = null;
    state.generation += 1;
    showError("Sign-in failed: " + err.message);
  }
}

async function refilter() {
  if (!state.keys) return;
  try {
    await load();
    showError("");
  } catch (err) {
    showError("Listing sessions failed: " + err.message);
  }
}

function start() {
  const problem = insecureContextProblem();
  if (problem) {
    showError(problem);
    $("signin").disabled = true;
    return;
  }
  $("keys").addEventListener("submit", signIn);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); refilter(); });
  $("status").addEventListener("change", refilter);
  $("owner").addEventListener("change", refilter);
  $("close").addEventListener("click", () => {
    state.selected = null;
    $("detail").hidden = true;
    for (const tr of $("sessions").tBodies[0].rows) tr.classList.remove("selected");
  });
  setInterval(tickAges, 1000);
}

start();
