// The sandbox's web channel: renders the snapshot the server pushes, sends commands, clicks and modal submits.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let role = params.get("as") || localStorage.getItem("sandbox-as") || "member";
let snapshot = null;
let socket = null;
const rendered = new Map(); // message id -> {key, el}
const dismissedModals = new Set();
let shownModal = null;
let optionsFor = null; // the command whose option fields are shown

// -- server --------------------------------------------------------------------------------------------
function connect() {
  if (socket) socket.close();
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/events?as=${role}`);
  socket = ws;
  $("status").textContent = "connecting…";
  ws.onmessage = (event) => { if (ws === socket) render(JSON.parse(event.data)); };
  ws.onclose = () => {
    if (ws !== socket) return;
    $("status").textContent = "disconnected — retrying";
    setTimeout(connect, 1000);
  };
}

async function post(path, body) {
  const response = await fetch(path, body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: `HTTP ${response.status}` }; }
  showError(response.ok ? "" : (data.error || `HTTP ${response.status}`));
  return response.ok;
}

function showError(text) {
  $("error").hidden = !text;
  $("error").textContent = text;
}

// -- rendering -----------------------------------------------------------------------------------------
function render(state) {
  snapshot = state;
  $("status").textContent = state.bot_ready ? `connected as ${state.viewer.name}` : "the bot is starting…";
  $("status").dataset.ready = state.bot_ready ? "yes" : "no";
  const note = $("model-note");
  note.textContent = state.model.noise_only ? `⚠ ${state.model.note}` : state.model.note;
  note.classList.toggle("noise", state.model.noise_only);
  $("gallery-link").href = `/gallery?as=${role}`;
  $("admin-link").href = `/gallery/admin/${state.viewer.id}`;
  $("admin-link").hidden = role !== "admin";
  const main = $("messages");
  const atBottom = main.scrollHeight - main.scrollTop - main.clientHeight < 80;
  const keep = new Set();
  for (const message of state.messages) {
    keep.add(message.id);
    const key = `${message.version}`;
    let entry = rendered.get(message.id);
    if (!entry || entry.key !== key) {
      const el = renderMessage(message);
      if (entry) entry.el.replaceWith(el);
      entry = { key, el };
      rendered.set(message.id, entry);
    }
    main.appendChild(entry.el); // keeps the order; moving a node does not re-render it
  }
  for (const [id, entry] of rendered) {
    if (!keep.has(id)) { entry.el.remove(); rendered.delete(id); }
  }
  if (atBottom) main.scrollTop = main.scrollHeight;
  renderModal(state.modal);
  if (optionsFor) updateComposer();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function userName(id) {
  if (!snapshot) return id;
  for (const user of Object.values(snapshot.users)) if (user.id === id) return user.name;
  return id;
}

function formatContent(text) {
  const escaped = text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  return escaped
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<b>$1</b>")
    .replace(/&lt;@!?(\d+)&gt;/g, (m, id) => `<b>@${userName(id)}</b>`)
    .replace(/&lt;(https?:\/\/[^\s&]+(?:&amp;[^\s&]+)*)&gt;/g, "$1")
    // a jump link to another message of this channel scrolls to it, as in Discord
    .replace(/https:\/\/discord\.com\/channels\/\d+\/\d+\/(\d+)/g, (m, id) => `<a href="#m${id}">↑ jump to the message</a>`)
    .replace(/\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank">$1</a>')
    .replace(/(^|[\s(])(https?:\/\/[^\s<)]+)/g, '$1<a href="$2" target="_blank">$2</a>');
}

function renderMessage(message) {
  const node = el("div", { class: "msg" + (message.ephemeral ? " ephemeral" : ""), "data-id": message.id, id: `m${message.id}` });
  if (message.used) {
    const what = message.used.command ? `used /${message.used.command}` : "clicked a button";
    node.append(el("div", { class: "used", text: `↳ ${message.used.user} ${what}` }));
  }
  const head = el("div", {}, el("span", { class: "author" + (message.bot ? " bot" : ""), text: message.author }));
  if (message.edited) head.append(el("span", { class: "edited", text: "(edited)" }));
  node.append(head);
  if (message.loading) {
    node.append(el("div", { class: "thinking", text: `${message.author} is thinking…` }));
  }
  if (message.content) {
    const content = el("div", { class: "content" });
    content.innerHTML = formatContent(message.content);
    node.append(content);
  }
  for (const embed of message.embeds || []) {
    const box = el("div", { class: "embed" });
    if (embed.title) box.append(el("b", { text: embed.title }));
    if (embed.description) { const d = el("div"); d.innerHTML = formatContent(embed.description); box.append(d); }
    for (const field of embed.fields || []) box.append(el("div", { text: `${field.name}: ${field.value}` }));
    node.append(box);
  }
  for (const file of message.attachments) {
    if ((file.content_type || "").startsWith("image/")) {
      node.append(el("a", { href: file.url, target: "_blank" },
        el("img", { class: "attachment", src: file.url, alt: file.filename, "data-filename": file.filename })));
    } else {
      node.append(el("a", { class: "file", href: file.url, target: "_blank", text: file.filename }));
    }
  }
  for (const row of message.components || []) node.append(renderRow(message, row));
  if (message.ephemeral) node.append(el("div", { class: "only-you", text: "👁 Only you can see this" }));
  return node;
}

function renderRow(message, row) {
  const box = el("div", { class: "row" });
  for (const item of row.components || [row]) {
    if (item.type === 2) {
      const label = `${item.emoji ? item.emoji.name + " " : ""}${item.label || ""}`.trim();
      if (item.style === 5) {
        box.append(el("a", { href: item.url, target: "_blank", text: label }));
        continue;
      }
      box.append(el("button", {
        type: "button", class: `style-${item.style || 2}`, disabled: !!item.disabled,
        "data-custom-id": item.custom_id, text: label,
        onclick: () => post("/api/click", { as: role, message_id: message.id, custom_id: item.custom_id }),
      }));
    } else if (item.type === 3) {
      const select = el("select", {
        disabled: !!item.disabled, "aria-label": item.placeholder || "choose",
        onchange: () => post("/api/click", { as: role, message_id: message.id, custom_id: item.custom_id, values: [select.value] }),
      }, el("option", { value: "", text: item.placeholder || "Make a selection" }));
      for (const option of item.options || []) select.append(el("option", { value: option.value, text: option.label }));
      box.append(select);
    }
  }
  return box;
}

// -- modals --------------------------------------------------------------------------------------------
function modalInputs(modal) {
  const inputs = [];
  for (const item of modal.components || []) {
    if (item.type === 1) for (const c of item.components || []) inputs.push({ label: c.label, input: c });
    else if (item.type === 18 && item.component) inputs.push({ label: item.label, input: item.component });
  }
  return inputs;
}

function renderModal(modal) {
  const open = modal && !dismissedModals.has(modal.interaction_id) ? modal : null;
  if ((open && open.interaction_id) === (shownModal && shownModal.interaction_id)) return;
  shownModal = open;
  $("modal-backdrop").hidden = !open;
  const form = $("modal");
  form.replaceChildren();
  if (!open) return;
  form.append(el("h2", { text: open.title }));
  for (const { label, input } of modalInputs(open)) {
    const attrs = {
      name: input.custom_id, placeholder: input.placeholder, required: !!input.required,
      minlength: input.min_length, maxlength: input.max_length,
    };
    const field = input.style === 2 ? el("textarea", attrs) : el("input", { type: "text", ...attrs });
    field.value = input.value || "";
    form.append(el("label", {}, label || input.custom_id, field));
  }
  form.append(el("div", { class: "actions" },
    el("button", { type: "button", text: "Cancel", onclick: () => { dismissedModals.add(open.interaction_id); renderModal(null); } }),
    el("button", { type: "submit", text: "Submit" })));
  form.onsubmit = async (event) => {
    event.preventDefault();
    const values = {};
    for (const field of form.querySelectorAll("input, textarea")) values[field.name] = field.value;
    dismissedModals.add(open.interaction_id);
    renderModal(null);
    await post("/api/modal", { as: role, interaction_id: open.interaction_id, values });
  };
}

// -- the composer --------------------------------------------------------------------------------------
function commands() { return snapshot ? snapshot.commands : []; }

function typedCommand() {
  const match = $("input").value.match(/^\/(\S+)/);
  return match ? commands().find((c) => c.name === match[1]) : null;
}

function subcommandPaths(command) {
  const paths = [];
  for (const option of command.options || []) {
    if (option.type === 1) paths.push({ path: option.name, option });
    if (option.type === 2) for (const sub of option.options || []) paths.push({ path: `${option.name} ${sub.name}`, option: sub });
  }
  return paths;
}

function updateComposer() {
  const text = $("input").value;
  const box = $("suggestions");
  if (/^\/\S*$/.test(text)) {
    const prefix = text.slice(1);
    const found = commands().filter((c) => c.name.startsWith(prefix));
    box.replaceChildren(...found.map((c) => el("div", {
      "data-command": c.name, onclick: () => { $("input").value = `/${c.name} `; $("input").focus(); updateComposer(); },
    }, `/${c.name}`, el("small", { text: c.description }))));
    box.hidden = !found.length;
  } else {
    box.hidden = true;
  }
  const command = typedCommand();
  optionsFor = command;
  if ((command ? command.name : undefined) !== $("options").dataset.command) buildOptions(command);
}

function buildOptions(command) {
  const panel = $("options");
  panel.replaceChildren();
  panel.hidden = !command;
  if (!command) { delete panel.dataset.command; return; }
  panel.dataset.command = command.name;
  const subs = subcommandPaths(command);
  const leaf = el("span", { class: "leaf" });
  if (subs.length) {
    const select = el("select", { id: "subcommand", "aria-label": "subcommand" },
      ...subs.map((s) => el("option", { value: s.path, text: s.path })));
    select.onchange = () => fillLeaf(leaf, subs.find((s) => s.path === select.value).option.options || []);
    panel.append(el("label", {}, `/${command.name}`, select), leaf);
    fillLeaf(leaf, subs[0].option.options || []);
  } else {
    panel.append(leaf);
    fillLeaf(leaf, command.options || []);
  }
}

function fillLeaf(leaf, options) {
  leaf.replaceChildren();
  for (const option of options) {
    let field;
    const common = { "data-option": option.name, "data-type": option.type, title: option.description };
    if (option.choices && option.choices.length) {
      field = el("select", common, el("option", { value: "", text: "—" }),
        ...option.choices.map((c) => el("option", { value: String(c.value), text: c.name })));
    } else if (option.type === 5) {
      field = el("select", common, el("option", { value: "", text: "—" }),
        el("option", { value: "true", text: "true" }), el("option", { value: "false", text: "false" }));
    } else if (option.type === 6) {
      field = el("select", common, el("option", { value: "", text: "—" }),
        ...Object.values(snapshot.users).map((u) => el("option", { value: u.id, text: u.name })));
    } else if (option.type === 11) {
      field = el("input", { ...common, type: "file", accept: "image/*" });
    } else if (option.type === 4 || option.type === 10) {
      field = el("input", { ...common, type: "number", step: option.type === 4 ? "1" : "any", min: option.min_value, max: option.max_value });
    } else {
      field = el("input", { ...common, type: "text", placeholder: option.description, size: 14 });
    }
    leaf.append(el("label", {}, el("span", { class: option.required ? "required" : "", text: option.name }), field));
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text) return;
  const command = typedCommand();
  if (!command) {
    showError(text.startsWith("/") ? `There is no command ${text.split(/\s/)[0]}; type / to see them.`
      : "This channel takes slash commands: type / to see them, e.g. /imagine a red fox.");
    return;
  }
  const sub = $("subcommand");
  const path = sub ? `${command.name} ${sub.value}` : command.name;
  const rest = text.replace(/^\/\S+\s*/, "");
  const options = {};
  const form = new FormData();
  let firstText = null;
  for (const field of $("options").querySelectorAll("[data-option]")) {
    const name = field.dataset.option;
    const type = Number(field.dataset.type);
    if (type === 11) { if (field.files.length) form.append(name, field.files[0]); continue; }
    if (type === 3 && !field.value && firstText === null && field.tagName === "INPUT") firstText = name;
    if (field.value === "") continue;
    options[name] = type === 4 ? parseInt(field.value, 10) : type === 10 ? parseFloat(field.value) : type === 5 ? field.value === "true" : field.value;
  }
  if (rest && firstText !== null) options[firstText] = rest;
  form.append("payload", JSON.stringify({ as: role, command: path, options }));
  if (await post("/api/command", form)) {
    $("input").value = "";
    optionsFor = null;
    updateComposer();
  }
}

// -- start ---------------------------------------------------------------------------------------------
$("viewer").value = role;
$("viewer").onchange = () => {
  role = $("viewer").value;
  localStorage.setItem("sandbox-as", role);
  for (const entry of rendered.values()) entry.el.remove();
  rendered.clear();
  shownModal = null;
  connect();
};
$("input").addEventListener("input", updateComposer);
$("composer").addEventListener("submit", send);
connect();
