// The operators' inbox: conversation list, the conversation, the CRM panel.
// Talks to /api/v1 only (docs/web-inbox.md). Every text is rendered as a text node
// (dom.js h()/fill()); no HTML strings are ever built from data.

import { ApiProblem, Live, call, enc, get, patch, post, saveToken, savedToken, whenUnauthorized } from "./api.js";
import { commentReply, renderComments } from "./comments.js";
import { companyCard } from "./companies.js";
import { documentsCard, documentsEvent } from "./documents.js";
import { fill, h } from "./dom.js";
import { LANGUAGES, lang, setLang, t, when } from "./i18n.js";
import { reportsTab } from "./reports.js";
import { renderTemplates } from "./templates.js";

const root = document.getElementById("app");
const FILTER_KEY = "omniroute.filter";
const PHONE_CHANNELS = new Set(["mango", "zadarma", "megafon", "pbx", "phone", "telephony"]);
const CHANNEL_GLYPH = {
  api: "API", email: "@", telegram: "TG", whatsapp: "WA", viber: "Vb", vk: "VK", avito: "Av", phone: "☎",
  webchat: "Web",
};
const TICKS = { queued: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };

const S = {
  me: null,
  users: new Map(),
  pipelines: new Map(),
  filter: localStorage.getItem(FILTER_KEY) || "all",
  status: "open",
  q: "",
  list: [],
  listCursor: null,
  counts: null,
  openId: null,
  detail: null,
  messages: [],
  olderCursor: null,
  entity: null, // {entity, contact, tasks} of the open conversation's lead or deal
  target: "", // the stage picked in the stage selector
  draft: {}, // field name → text typed, not saved yet
  extraFields: [],
  fieldErrors: {}, // field name → message
  stageError: [],
  crmNote: "",
  myTasks: [],
  view: "list",
  live: false,
  pending: [], // attachments of the reply being written: {name, file_id?, uploading}
  asNote: false,
  visitor: null, // the open webchat conversation's visitor: {online, typing, verified, page}
};

let els = null; // the shell's elements once signed in
let live = null;

// --- start ------------------------------------------------------------------------

whenUnauthorized(() => signOut(t("session_expired")));
window.addEventListener("hashchange", route);
start();

async function start() {
  if (!savedToken()) return showLogin();
  try {
    S.me = await get("/api/v1/me");
  } catch (err) {
    if (err instanceof ApiProblem && (err.status === 401 || err.status === 403)) {
      saveToken("");
      return showLogin(err.status === 403 ? t("no_access") : t("session_expired"));
    }
    showLogin(t("network_error"));
    setTimeout(start, 3000);
    return;
  }
  await boot();
}

function langPicker(onChange) {
  return h(
    "select",
    {
      class: "lang",
      "aria-label": t("language"),
      "data-testid": "lang",
      onchange: (e) => {
        setLang(e.target.value);
        onChange();
      },
    },
    LANGUAGES.map(([code, name]) => h("option", { value: code, selected: code === lang() }, name)),
  );
}

function showLogin(message = "") {
  els = null;
  root.className = "login-screen";
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "data-testid": "token",
  });
  const error = h("p", { class: "error", role: "alert", "data-testid": "login-error" }, message);
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (e) => {
        e.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        try {
          S.me = await call("GET", "/api/v1/me", { token });
        } catch (err) {
          const text = err.status === 401 ? t("bad_token") : err.status === 403 ? t("no_access") : err.message;
          fill(error, text);
          return;
        }
        saveToken(token);
        await boot();
      },
    },
    h("div", { class: "login-top" }, h("h1", {}, t("login_title")), langPicker(() => showLogin(error.textContent))),
    h("p", { class: "hint" }, t("login_hint")),
    h("label", { for: "token" }, t("token")),
    input,
    h("button", { type: "submit", class: "primary", "data-testid": "sign-in" }, t("sign_in")),
    error,
  );
  fill(root, form);
  input.focus();
}

function signOut(message = "") {
  typingStop();
  if (live) live.stop();
  live = null;
  saveToken("");
  Object.assign(S, { me: null, openId: null, detail: null, entity: null, list: [], messages: [] });
  watchVisitor();
  history.replaceState(null, "", location.pathname);
  showLogin(message);
}

async function boot() {
  document.title = `omniroute · ${t("title")}`;
  const [users, pipelines] = await Promise.all([
    get("/api/v1/users").catch(() => ({ items: [] })),
    get("/api/v1/pipelines").catch(() => ({ pipelines: [] })),
  ]);
  S.users = new Map(users.items.map((u) => [u.id, u]));
  S.pipelines = new Map(pipelines.pipelines.map((p) => [p.id, p]));
  buildShell();
  live = new Live({
    onEvent,
    onResync: () => refreshAll(),
    onState: (up) => {
      S.live = up;
      renderLive();
      if (up) refreshAll(); // whatever happened while away that the cursor cannot replay
    },
  });
  live.start();
  await refreshAll();
  route();
}

async function refreshAll() {
  await Promise.all([refreshList(), refreshTasks(), S.openId ? refreshConv() : null]);
}

// --- the shell --------------------------------------------------------------------

function buildShell() {
  root.className = "inbox";
  const composerText = els ? els.text.value : "";
  els = {};
  els.live = h("span", { class: "live", "data-testid": "live", role: "status" });
  els.header = h(
    "header",
    { class: "top" },
    h("a", { class: "brand", href: "#/" }, h("span", { class: "logo", "aria-hidden": "true" }), h("span", { class: "brand-text" }, t("title"))),
    els.live,
    h("span", { class: "spacer" }),
    langPicker(() => {
      buildShell();
      refreshAll();
    }),
    reportsTab(S.me), // directors and admins only (inbox/web/reports.js)
    h("span", { class: "me", "data-testid": "me" }, S.me.name),
    h("button", { class: "ghost", onclick: () => signOut(), "data-testid": "sign-out" }, t("sign_out")),
  );
  // list pane
  els.tabs = h("div", { class: "tabs", role: "tablist" });
  els.statusSel = h(
    "select",
    {
      "aria-label": t("status_any"),
      "data-testid": "status-filter",
      onchange: (e) => {
        S.status = e.target.value;
        refreshList();
      },
    },
    ["open", "snoozed", "closed", ""].map((s) =>
      h("option", { value: s, selected: S.status === s }, t(s ? `status_${s}` : "status_any")),
    ),
  );
  let searchTimer = null;
  els.search = h("input", {
    type: "search",
    placeholder: t("search"),
    "aria-label": t("search"),
    value: S.q,
    oninput: (e) => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        S.q = e.target.value.trim();
        refreshList();
      }, 300);
    },
  });
  els.list = h("ul", { class: "conv-list", "data-testid": "conversations" });
  els.more = h("button", { class: "ghost more", hidden: true, onclick: () => refreshList(true) }, t("load_more"));
  els.listPane = h(
    "section",
    { class: "pane list-pane", "aria-label": t("title") },
    els.tabs,
    h("div", { class: "list-tools" }, els.statusSel, els.search),
    els.list,
    els.more,
  );
  // conversation pane
  els.convHead = h("div", { class: "conv-head" });
  els.visitorBar = h("div", { class: "visitor-bar", "data-testid": "visitor", hidden: true });
  els.messages = h("ol", { class: "messages", "data-testid": "messages", "aria-live": "polite" });
  els.text = h("textarea", { rows: 3, "data-testid": "reply-text", value: composerText });
  els.text.addEventListener("input", operatorTyping);
  els.text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      send();
    }
  });
  els.pendingList = h("ul", { class: "pending" });
  els.composerError = h("p", { class: "error", role: "alert", "data-testid": "reply-error" });
  // Said before anyone types: this conversation's channel cannot take a reply (notes can).
  els.replyBlocked = h("p", { class: "reply-blocked", role: "status", "data-testid": "reply-blocked", hidden: true });
  els.noteBox = h("input", {
    type: "checkbox",
    checked: S.asNote,
    "data-testid": "as-note",
    onchange: (e) => {
      S.asNote = e.target.checked;
      renderComposer();
    },
  });
  els.file = h("input", {
    type: "file",
    multiple: true,
    class: "visually-hidden",
    "data-testid": "attach",
    onchange: (e) => upload([...e.target.files]).finally(() => (e.target.value = "")),
  });
  els.sendBtn = h("button", { type: "submit", class: "primary", "data-testid": "send" });
  els.attachLabel = h("label", { class: "ghost button attach" }, els.file, h("span", { "aria-hidden": "true" }, "+"), t("attach"));
  els.composer = h(
    "form",
    {
      class: "composer",
      onsubmit: (e) => {
        e.preventDefault();
        send();
      },
    },
    els.replyBlocked,
    els.pendingList,
    els.text,
    h(
      "div",
      { class: "composer-row" },
      h("label", { class: "check" }, els.noteBox, " ", t("as_note")),
      els.attachLabel,
      h("span", { class: "spacer" }),
      els.sendBtn,
    ),
    els.composerError,
  );
  els.convEmpty = h("p", { class: "empty" }, t("pick_conversation"));
  els.convPane = h(
    "section",
    { class: "pane conv-pane", "data-testid": "conversation" },
    els.convHead,
    els.visitorBar,
    els.messages,
    els.composer,
    els.convEmpty,
  );
  // CRM pane
  els.crm = h("div", { class: "crm-body", "data-testid": "crm" });
  els.crmPane = h(
    "aside",
    { class: "pane crm-pane", "aria-label": t("crm") },
    h(
      "div",
      { class: "crm-head narrow-only" },
      h("button", { class: "ghost", onclick: () => go(S.openId ? `#/c/${S.openId}` : "#/") }, "← ", t("to_conversation")),
    ),
    els.crm,
  );
  els.toasts = h("div", { class: "toasts", "aria-live": "assertive" });
  fill(root, els.header, h("main", { class: "panes" }, els.listPane, els.convPane, els.crmPane), els.toasts);
  renderLive();
  renderTabs();
  renderList();
  renderConv();
  renderComposer();
  renderCrm();
  setView(S.view);
}

function renderLive() {
  if (!els) return;
  els.live.dataset.live = S.live ? "on" : "off";
  fill(els.live, t(S.live ? "live" : "offline"));
}

function toast(text, kind = "info") {
  if (!els) return;
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  els.toasts.appendChild(item);
  setTimeout(() => item.remove(), 6000);
}

function fail(err) {
  if (err instanceof ApiProblem && err.status === 409) toast(t("conflict"), "error");
  else toast(err.message || String(err), "error");
}

// --- navigation (one pane at a time on a narrow screen; the browser's back works) ----

function go(hash) {
  if (location.hash !== hash) location.hash = hash;
  else route();
}

function route() {
  if (!els) return;
  const m = /^#\/c\/([^/]+)(\/crm)?$/.exec(location.hash);
  if (!m) {
    setView("list");
    return;
  }
  const id = decodeURIComponent(m[1]);
  setView(m[2] ? "crm" : "conv");
  if (id !== S.openId) openConversation(id);
}

function setView(view) {
  S.view = view;
  root.dataset.view = view;
}

// --- the conversation list --------------------------------------------------------

function channelKey(channel) {
  return PHONE_CHANNELS.has(channel) ? "phone" : channel;
}

function channelIcon(channel) {
  const key = channelKey(channel);
  const label = t(`channel_${key}`) === `channel_${key}` ? channel : t(`channel_${key}`);
  return h(
    "span",
    { class: `ch ch-${key}`, title: label, "aria-label": label, "data-channel": channel },
    CHANNEL_GLYPH[key] || channel.slice(0, 2).toUpperCase(),
  );
}

function userName(id) {
  if (!id) return t("nobody");
  return S.users.get(id)?.name || id;
}

function renderTabs() {
  const tabs = [
    ["mine", "filter_mine"],
    ["unassigned", "filter_unassigned"],
    ["all", "filter_all"],
  ];
  fill(
    els.tabs,
    tabs.map(([key, label]) => {
      const c = S.counts?.[key];
      return h(
        "button",
        {
          role: "tab",
          class: ["tab", S.filter === key && "active"],
          "aria-selected": S.filter === key ? "true" : "false",
          "data-testid": `filter-${key}`,
          onclick: () => {
            S.filter = key;
            localStorage.setItem(FILTER_KEY, key);
            renderTabs();
            refreshList();
          },
        },
        t(label),
        c && c.unread ? h("span", { class: "badge", title: t("unread", { n: c.unread }) }, c.unread) : null,
        c ? h("span", { class: "count" }, c.open) : null,
      );
    }),
  );
}

let listSeq = 0;

async function refreshList(more = false) {
  if (!els) return;
  const query = { limit: 50 };
  if (S.filter === "mine") query.assignee = "me";
  if (S.filter === "unassigned") query.unassigned = "true";
  if (S.status) query.status = S.status;
  if (S.q) query.q = S.q;
  if (more && S.listCursor) query.cursor = S.listCursor;
  const seq = ++listSeq;
  try {
    const [page, counts] = await Promise.all([
      get("/api/v1/conversations", query),
      more ? S.counts : get("/api/v1/conversations/counts"),
    ]);
    if (seq !== listSeq) return; // a newer refresh is under way
    S.list = more ? [...S.list, ...page.items] : page.items;
    S.listCursor = page.next_cursor;
    S.counts = counts;
  } catch (err) {
    if (err.status !== 401) fail(err);
    return;
  }
  renderTabs();
  renderList();
}

function renderList() {
  if (!S.list.length) {
    fill(els.list, h("li", { class: "empty" }, t("no_conversations")));
  } else {
    fill(els.list, S.list.map(listItem));
  }
  els.more.hidden = !S.listCursor;
}

function listItem(c) {
  const open = c.id === S.openId;
  return h(
    "li",
    { class: ["conv-item", open && "active", c.unread && "unread"], "data-id": c.id, "data-testid": "conversation-item" },
    h(
      "a",
      { href: `#/c/${enc(c.id)}`, "aria-current": open ? "true" : null },
      channelIcon(c.channel),
      h(
        "span",
        { class: "item-main" },
        h(
          "span",
          { class: "row1" },
          h("strong", { class: "name" }, c.contact_name || t("unknown_contact")),
          h("time", { datetime: c.last_message_at || "" }, when(c.last_message_at)),
        ),
        h(
          "span",
          { class: "row2" },
          h("span", { class: "last" }, c.last_text || ""),
          c.unread
            ? h("span", { class: "badge", "data-testid": "unread", title: t("unread", { n: c.unread }) }, c.unread)
            : null,
        ),
        h(
          "span",
          { class: "row3" },
          userName(c.assignee_id),
          c.status !== "open" ? ` · ${t(`conv_${c.status}`)}` : "",
        ),
      ),
    ),
  );
}

// --- the conversation ---------------------------------------------------------------

async function openConversation(id) {
  typingStop();
  S.openId = id;
  S.visitor = null;
  S.detail = null;
  S.messages = [];
  S.olderCursor = null;
  S.entity = null;
  S.pending = [];
  resetCrmDraft();
  if (els) {
    els.text.value = "";
    fill(els.composerError);
  }
  renderList();
  renderConv();
  renderComposer();
  renderCrm();
  await refreshConv(true);
  if (S.openId === id && els && S.view !== "list") els.text.focus({ preventScroll: true });
}

function resetCrmDraft() {
  S.target = "";
  S.draft = {};
  S.extraFields = [];
  S.fieldErrors = {};
  S.stageError = [];
  S.crmNote = "";
}

let convSeq = 0;

async function refreshConv(first = false) {
  const id = S.openId;
  if (!id) return;
  const seq = ++convSeq;
  let detail;
  let page;
  try {
    [detail, page] = await Promise.all([
      get(`/api/v1/conversations/${enc(id)}`),
      get(`/api/v1/conversations/${enc(id)}/messages`, { limit: 50 }),
    ]);
  } catch (err) {
    if (seq === convSeq && err.status === 404) {
      S.openId = null;
      go("#/");
      renderConv();
    }
    if (err.status !== 401 && err.status !== 404) fail(err);
    return;
  }
  if (seq !== convSeq || S.openId !== id) return;
  const older = S.messages.filter((m) => !page.items.some((n) => n.id === m.id));
  const keepOlder = !first && older.length && S.olderCursor !== page.next_cursor;
  S.messages = sortMessages(keepOlder ? [...older, ...page.items] : page.items);
  if (!keepOlder) S.olderCursor = page.next_cursor;
  const target = detail.deal || detail.lead;
  const changedTarget = !S.detail || (S.detail.deal || S.detail.lead)?.id !== target?.id;
  S.detail = detail;
  renderConv(first);
  watchVisitor();
  if (changedTarget) resetCrmDraft();
  await refreshEntity();
  const c = detail.conversation;
  if (c.unread > 0 && (first || (document.visibilityState === "visible" && S.view !== "list"))) {
    post(`/api/v1/conversations/${enc(id)}/read`).catch(() => {});
  }
}

function sortMessages(items) {
  const at = (m) => m.received_at || m.sent_at || "";
  return [...items].sort((a, b) => (at(a) < at(b) ? -1 : at(a) > at(b) ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

async function loadOlder() {
  if (!S.olderCursor || !S.openId) return;
  try {
    const page = await get(`/api/v1/conversations/${enc(S.openId)}/messages`, { before: S.olderCursor, limit: 50 });
    S.messages = sortMessages([...page.items, ...S.messages]);
    S.olderCursor = page.next_cursor;
    renderMessages(false);
  } catch (err) {
    fail(err);
  }
}

function renderConv(scroll = false) {
  if (!els) return;
  const has = Boolean(S.openId);
  els.convEmpty.hidden = has;
  els.convHead.hidden = !has;
  els.messages.hidden = !has;
  els.composer.hidden = !has;
  renderComposer();
  if (!has) {
    fill(els.convHead);
    fill(els.messages);
    watchVisitor();
    return;
  }
  renderHead();
  renderMessages(scroll);
}

function renderHead() {
  const d = S.detail;
  const back = h("button", { class: "ghost narrow-only back", onclick: () => go("#/"), "aria-label": t("back") }, "←");
  if (!d) {
    fill(els.convHead, back);
    return;
  }
  const c = d.conversation;
  const me = S.me.id;
  const actions = [];
  if (c.assignee_id !== me) actions.push(button(t("take"), () => act("take"), "take"));
  const assignable = [...S.users.values()].filter((u) => u.active && u.role !== "no_access" && u.id !== c.assignee_id);
  actions.push(
    h(
      "select",
      {
        "aria-label": t("assign"),
        "data-testid": "assign",
        onchange: (e) => e.target.value && act("assign", { user_id: e.target.value }),
      },
      h("option", { value: "" }, t("assign_to")),
      assignable.map((u) => h("option", { value: u.id }, u.name)),
    ),
  );
  if (c.assignee_id) actions.push(button(t("unassign"), () => act("unassign"), "unassign"));
  if (c.status === "open") actions.push(button(t("close"), () => act("close"), "close"));
  else actions.push(button(t("reopen"), () => act("reopen"), "reopen"));
  actions.push(
    h(
      "select",
      { "aria-label": t("snooze"), "data-testid": "snooze", onchange: (e) => e.target.value && snooze(e.target.value) },
      h("option", { value: "" }, t("snooze")),
      ["1h", "3h", "tomorrow", "week"].map((k) => h("option", { value: k }, t(`snooze_${k}`))),
    ),
  );
  actions.push(
    h("button", { class: "ghost narrow-only", onclick: () => go(`#/c/${enc(c.id)}/crm`), "data-testid": "open-crm" }, t("crm"), " →"),
  );
  const statusText = c.status === "snoozed" && c.snoozed_until
    ? t("snoozed_until", { at: when(c.snoozed_until) })
    : t(`conv_${c.status}`);
  fill(
    els.convHead,
    back,
    channelIcon(c.channel),
    h(
      "div",
      { class: "who" },
      h("h2", { "data-testid": "conversation-title" }, d.contact?.name || t("unknown_contact")),
      h(
        "p",
        { class: "sub" },
        h("span", { "data-testid": "conversation-status", "data-status": c.status }, statusText),
        " · ",
        t("assignee"),
        ": ",
        h("span", { "data-testid": "conversation-assignee" }, userName(c.assignee_id)),
      ),
    ),
    h("div", { class: "actions" }, actions),
  );
}

function button(label, onclick, testid, cls = "ghost") {
  return h("button", { type: "button", class: cls, onclick, "data-testid": testid }, label);
}

async function act(action, body) {
  const id = S.openId;
  try {
    await post(`/api/v1/conversations/${enc(id)}/${action}`, body);
  } catch (err) {
    fail(err);
  }
  if (S.openId === id) await refreshConv();
  refreshList();
}

function snooze(choice) {
  const until = new Date();
  if (choice === "1h") until.setHours(until.getHours() + 1);
  if (choice === "3h") until.setHours(until.getHours() + 3);
  if (choice === "tomorrow") {
    until.setDate(until.getDate() + 1);
    until.setHours(9, 0, 0, 0);
  }
  if (choice === "week") until.setDate(until.getDate() + 7);
  return act("snooze", { until: until.toISOString() });
}

function renderMessages(scroll) {
  const box = els.messages;
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const items = S.messages.map(messageItem);
  if (S.olderCursor) {
    items.unshift(h("li", { class: "older" }, h("button", { class: "ghost", onclick: loadOlder }, t("load_older"))));
  }
  fill(box, items);
  if (scroll || nearBottom) box.scrollTop = box.scrollHeight;
  renderVisitor(); // "has read" follows the replies' ticks
  renderComments(S.openId, els, S.messages); // a comment conversation's post and actions
  renderTemplates(S.openId, els, S.messages, templateSent); // WhatsApp, window closed
}

function templateSent(msg) {
  S.messages = sortMessages([...S.messages.filter((m) => m.id !== msg.id), msg]);
  renderMessages(true);
}

function messageItem(m) {
  const dir = m.direction;
  const meta = [channelIcon(m.channel)];
  if (dir === "note") meta.push(h("span", { class: "dir" }, t("note_label")), " · ", userName(m.author_id));
  else if (dir === "out") meta.push(h("span", { class: "dir" }, t("dir_out")), " · ", m.automatic ? t("automatic") : userName(m.author_id));
  else meta.push(h("span", { class: "dir" }, t("dir_in")), m.sender?.name ? ` · ${m.sender.name}` : "");
  meta.push(" · ", h("time", { datetime: m.received_at || "" }, when(m.received_at || m.sent_at)));
  if (m.edited_at) meta.push(" · ", t("edited"));
  const body = [];
  if (m.call) body.push(callRecord(m.call));
  if (m.text) body.push(h("div", { class: "text" }, m.text));
  if (m.attachments?.length) body.push(h("ul", { class: "files" }, m.attachments.map(attachmentItem)));
  const footer = [];
  if (dir === "out" && m.state) {
    footer.push(
      h(
        "span",
        { class: `tick tick-${m.state}`, "data-testid": "tick", "data-state": m.state, title: t(`state_${m.state}`) },
        TICKS[m.state] || m.state,
        h("span", { class: "visually-hidden" }, ` ${t(`state_${m.state}`)}`),
      ),
    );
  }
  if (m.error) footer.push(h("span", { class: "msg-error" }, m.error));
  return h(
    "li",
    {
      class: ["msg", `msg-${dir}`, m.call && "msg-call"],
      "data-id": m.id,
      "data-direction": dir,
      "data-testid": "message",
      "aria-label": dir === "note" ? t("dir_note") : t(`dir_${dir}`),
    },
    h("div", { class: "meta" }, meta),
    body,
    footer.length ? h("div", { class: "foot" }, footer) : null,
  );
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(Number(seconds));
  const mm = Math.floor(s / 60);
  const ss = String(s % 60).padStart(2, "0");
  return `${mm}:${ss}`;
}

function callRecord(c) {
  const answered = Boolean(c.answered_at) || (c.talk_s ?? 0) > 0;
  const parts = [h("span", { class: "call-icon", "aria-hidden": "true" }, "☎ "), answered ? t("call") : t("call_missed")];
  const secs = c.talk_s ?? c.duration_s;
  if (secs) parts.push(" · ", duration(secs));
  if (c.disposition) parts.push(" · ", String(c.disposition));
  if (c.recording_url) {
    parts.push(
      " · ",
      h("a", { href: c.recording_url, target: "_blank", rel: "noopener noreferrer", "data-testid": "recording" }, t("recording")),
    );
  }
  return h("div", { class: "call" }, parts);
}

function attachmentItem(a) {
  const label = a.name || a.file_id || t("attachment");
  const size = a.size ? ` (${Math.max(1, Math.round(a.size / 1024))} KB)` : "";
  if (a.url) {
    return h("li", {}, h("a", { href: a.url, target: "_blank", rel: "noopener noreferrer", "data-testid": "attachment" }, "↓ ", label), size);
  }
  if (a.file_id) {
    return h("li", {}, h("button", { type: "button", class: "link", onclick: () => download(a), "data-testid": "attachment" }, "↓ ", label), size);
  }
  return h("li", {}, "↓ ", label, size);
}

async function download(a) {
  try {
    const resp = await call("GET", `/api/v1/files/${enc(a.file_id)}`, { raw: true });
    const url = URL.createObjectURL(await resp.blob());
    const link = h("a", { href: url, download: a.name || a.file_id });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    fail(err);
  }
}

// --- the reply box ------------------------------------------------------------------

// A conversation whose channel cannot take a reply (the API says so, with the reason in
// operator words) is written to as internal notes only.
function replyBlocked() {
  const d = S.detail;
  return Boolean(d && d.conversation?.id === S.openId && d.can_reply === false);
}

function noteMode() {
  return S.asNote || replyBlocked();
}

function renderComposer() {
  if (!els) return;
  const blocked = replyBlocked();
  const code = blocked ? S.detail.reply_blocked : null;
  const key = `reply_blocked_${code}`;
  els.replyBlocked.hidden = !blocked;
  fill(els.replyBlocked, blocked ? (t(key) !== key ? t(key) : S.detail.reply_blocked_reason || t("reply_blocked_unavailable")) : "");
  els.noteBox.disabled = blocked;
  els.noteBox.checked = noteMode();
  const asNote = noteMode();
  els.text.placeholder = asNote ? t("note_placeholder") : t("reply_placeholder");
  els.composer.classList.toggle("as-note", asNote);
  els.attachLabel.hidden = asNote;
  fill(els.sendBtn, asNote ? t("save_note") : t("send"));
  const uploading = S.pending.some((p) => p.uploading);
  els.sendBtn.disabled = uploading;
  fill(
    els.pendingList,
    S.pending.map((p, i) =>
      h(
        "li",
        { class: "chip", "data-testid": "pending-file" },
        p.name,
        p.uploading ? ` — ${t("uploading")}` : "",
        h("button", { type: "button", class: "link", "aria-label": t("remove"), onclick: () => {
          S.pending.splice(i, 1);
          renderComposer();
        } }, "×"),
      ),
    ),
  );
}

async function upload(files) {
  for (const file of files) {
    const item = { name: file.name, uploading: true };
    S.pending.push(item);
    renderComposer();
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const stored = await call("POST", "/api/v1/files", { form });
      item.file_id = stored.file_id;
    } catch (err) {
      S.pending.splice(S.pending.indexOf(item), 1);
      fill(els.composerError, err.message);
    }
    item.uploading = false;
    renderComposer();
  }
}

let sending = false;

async function send() {
  const id = S.openId;
  if (!id || sending) return;
  const text = els.text.value;
  fill(els.composerError);
  const asNote = noteMode();
  const attachments = asNote ? [] : S.pending.filter((p) => p.file_id).map((p) => ({ file_id: p.file_id }));
  if (!text.trim() && !attachments.length) return;
  if (!asNote) typingStop();
  sending = true;
  els.sendBtn.disabled = true;
  try {
    const msg = asNote
      ? await post(`/api/v1/conversations/${enc(id)}/notes`, { text })
      : await post(`/api/v1/conversations/${enc(id)}/messages`, { text, attachments, ...commentReply() });
    if (S.openId === id) {
      els.text.value = "";
      if (!asNote) S.pending = [];
      S.messages = sortMessages([...S.messages.filter((m) => m.id !== msg.id), msg]);
      renderMessages(true);
    }
  } catch (err) {
    fill(els.composerError, err.message);
  } finally {
    sending = false;
    renderComposer();
  }
}

// --- the CRM panel ----------------------------------------------------------------

async function refreshEntity() {
  const d = S.detail;
  const target = d && (d.deal ? ["deal", d.deal] : d.lead ? ["lead", d.lead] : null);
  if (!target) {
    S.entity = null;
    renderCrm();
    return;
  }
  const [kind, entity] = target;
  try {
    const full = await get(`/api/v1/${kind}s/${enc(entity.id)}`);
    if (S.detail !== d) return;
    S.entity = { kind, ...full };
  } catch (err) {
    // The panel still shows what the conversation carried.
    S.entity = { kind, entity, contact: d.contact, tasks: [] };
    if (err.status !== 404 && err.status !== 401) fail(err);
  }
  renderCrm();
}

async function refreshTasks() {
  try {
    const got = await get("/api/v1/tasks", { status: "open", limit: 20 });
    S.myTasks = got.tasks || [];
  } catch {
    S.myTasks = [];
  }
  renderCrm();
}

function card(title, testid, ...children) {
  return h("section", { class: "card", "data-testid": testid }, h("h3", {}, title), children);
}

function renderCrm() {
  if (!els) return;
  const parts = [];
  const d = S.detail;
  if (S.openId && d) {
    const contact = S.entity?.contact || d.contact;
    if (contact) {
      parts.push(
        card(
          t("contact"),
          "contact",
          h("p", { class: "contact-name" }, contact.name || t("unknown_contact")),
          contact.phones?.length ? h("p", {}, h("span", { class: "label" }, `${t("phones")}: `), contact.phones.join(", ")) : null,
          contact.emails?.length ? h("p", {}, h("span", { class: "label" }, `${t("emails")}: `), contact.emails.join(", ")) : null,
        ),
      );
    }
    if (S.entity) parts.push(entityCard(S.entity));
    if (S.entity || contact) parts.push(companyCard(S.entity?.entity, contact, renderCrm));
    if (S.entity?.kind === "deal") parts.push(documentsCard(S.entity.entity.id, renderCrm));
    else parts.push(h("p", { class: "muted" }, t("nothing_linked")));
    if (S.entity) parts.push(taskCard(t("tasks"), S.entity.tasks || [], "entity-tasks"));
  }
  parts.push(taskCard(t("my_tasks"), S.myTasks, "my-tasks"));
  const focused = document.activeElement;
  const focusKey = focused && els.crm.contains(focused) ? focused.dataset.focusKey : null;
  fill(els.crm, parts);
  if (focusKey) els.crm.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`)?.focus();
}

function taskCard(title, tasks, testid) {
  return card(
    title,
    testid,
    tasks.length
      ? h(
          "ul",
          { class: "tasks" },
          tasks.map((task) =>
            h(
              "li",
              { class: ["task", task.status === "done" && "done"] },
              h("span", {}, task.title || ""),
              task.deadline ? h("small", {}, " · ", t("deadline", { at: when(task.deadline) })) : null,
              task.status === "done" ? h("small", {}, " · ", t("task_done")) : null,
            ),
          ),
        )
      : h("p", { class: "muted" }, t("no_tasks")),
  );
}

function shown(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function entityCard({ kind, entity }) {
  const pipeline = S.pipelines.get(entity.pipeline_id);
  const stages = pipeline ? pipeline.stages : [];
  const stageName = (id) => stages.find((s) => s.id === id)?.name || id;
  const current = stages.find((s) => s.id === entity.stage_id);
  const target = stages.find((s) => s.id === S.target);
  // Which fields to show: the filled ones, and those the current and the picked stage need.
  const required = new Map();
  for (const s of [current, target]) for (const f of s?.required_fields || []) required.set(f, s);
  const names = [
    ...new Set([...Object.keys(entity.fields || {}), ...required.keys(), ...S.extraFields, ...Object.keys(S.fieldErrors)]),
  ];
  const rows = names.map((name) => {
    const value = name in S.draft ? S.draft[name] : shown(entity.fields?.[name]);
    const need = required.get(name);
    const error = S.fieldErrors[name];
    const inputId = `field-${name}`;
    return h(
      "div",
      { class: ["field", error && "invalid"], "data-field": name },
      h("label", { for: inputId }, name, need ? h("span", { class: "req", title: t("required_for", { stage: need.name }) }, " *") : null),
      h("input", {
        id: inputId,
        name,
        value,
        "data-focus-key": inputId,
        "data-testid": `field-${name}`,
        "aria-invalid": error ? "true" : "false",
        "aria-describedby": error ? `${inputId}-error` : null,
        oninput: (e) => {
          S.draft[name] = e.target.value;
        },
      }),
      error ? h("p", { class: "field-error", id: `${inputId}-error`, role: "alert", "data-testid": `field-error-${name}` }, error) : null,
    );
  });
  const newName = h("input", { placeholder: t("field_name"), "aria-label": t("field_name"), "data-focus-key": "new-field" });
  const stageForm = entity.open
    ? h(
        "form",
        {
          class: "stage-move",
          onsubmit: (e) => {
            e.preventDefault();
            moveStage(kind, entity);
          },
        },
        h(
          "select",
          {
            "aria-label": t("stage"),
            "data-testid": "stage-select",
            onchange: (e) => {
              S.target = e.target.value;
              S.fieldErrors = {};
              S.stageError = [];
              S.crmNote = "";
              renderCrm();
            },
          },
          stages
            .filter((s) => s.id !== entity.stage_id)
            .map((s) => h("option", { value: s.id, selected: s.id === S.target }, s.name)),
        ),
        h("button", { type: "submit", class: "primary", "data-testid": "move-stage" }, t("move_stage")),
      )
    : null;
  if (entity.open && !S.target && stages.length) {
    const next = stages.filter((s) => s.id !== entity.stage_id);
    S.target = next[stages.indexOf(current)]?.id || next[0]?.id || "";
    if (S.target) queueMicrotask(renderCrm); // show the picked stage's required fields
  }
  return card(
    t(kind),
    "entity",
    entity.title ? h("p", { class: "entity-title" }, entity.title) : null,
    h(
      "p",
      {},
      h("span", { class: "label" }, `${t("pipeline")}: `),
      pipeline ? pipeline.name : entity.pipeline_id,
    ),
    h(
      "p",
      {},
      h("span", { class: "label" }, `${t("stage")}: `),
      h("strong", { "data-testid": "current-stage", "data-stage": entity.stage_id }, stageName(entity.stage_id)),
      entity.open ? null : ` (${t("closed_entity")})`,
    ),
    Object.keys(entity.visit || {}).length
      ? h("div", { class: "lead-visit", "data-testid": "lead-visit" }, h("h4", {}, t("lead_visit")), visitList(visitOfMeta(entity.visit)))
      : null,
    stageForm,
    S.stageError.length ? h("ul", { class: "stage-errors", role: "alert", "data-testid": "stage-errors" }, S.stageError.map((m) => h("li", {}, m))) : null,
    S.crmNote ? h("p", { class: "ok", role: "status", "data-testid": "crm-note" }, S.crmNote) : null,
    h("h4", {}, t("fields")),
    rows.length ? h("div", { class: "fields" }, rows) : h("p", { class: "muted" }, t("no_fields")),
    h(
      "div",
      { class: "field-tools" },
      newName,
      h(
        "button",
        {
          type: "button",
          class: "ghost",
          onclick: () => {
            const name = newName.value.trim();
            if (name && !S.extraFields.includes(name)) S.extraFields.push(name);
            renderCrm();
          },
        },
        t("add_field"),
      ),
      h("button", { type: "button", class: "primary", "data-testid": "save-fields", onclick: () => saveFields(kind, entity) }, t("save_fields")),
    ),
    kind === "lead" && entity.open
      ? h("button", { type: "button", class: "ghost convert", "data-testid": "convert", onclick: () => convertLead(entity) }, t("convert"))
      : null,
  );
}

async function moveStage(kind, entity) {
  if (!S.target) return;
  const pipeline = S.pipelines.get(entity.pipeline_id);
  const stage = pipeline?.stages.find((s) => s.id === S.target);
  const stageName = stage?.name || S.target;
  S.fieldErrors = {};
  S.stageError = [];
  S.crmNote = "";
  try {
    await post(`/api/v1/${kind}s/${enc(entity.id)}/stage`, { stage_id: S.target });
    S.crmNote = t("moved", { stage: stageName });
    S.target = "";
  } catch (err) {
    if (err.code === "stage_refused") {
      const missing = new Set(err.body.missing_fields || []);
      for (const e of err.errors) {
        if (!String(e.field).startsWith("fields.")) continue;
        // A required field, or one an entry condition tests ("the payment due date is
        // set"): either way an input for it is offered, with what it needs.
        const name = e.field.slice(7);
        const text = missing.has(name) ? t("required_missing", { stage: stageName }) : t("condition_unmet", { what: e.message });
        S.fieldErrors[name] = S.fieldErrors[name] ? `${S.fieldErrors[name]} ${text}` : text;
      }
      S.stageError = (err.body.unmet || []).map(String);
    } else {
      S.stageError = [err.message];
    }
    renderCrm();
    const first = Object.keys(S.fieldErrors)[0];
    if (first) els.crm.querySelector(`#${CSS.escape(`field-${first}`)}`)?.focus();
    return;
  }
  await refreshEntity();
}

function parseValue(text, original) {
  const s = text.trim();
  if (s === "") return null;
  if (Array.isArray(original)) return s.split(",").map((x) => x.trim()).filter(Boolean);
  if (typeof original === "string") return s;
  if (typeof original === "boolean" || original === undefined || original === null) {
    if (s === "true") return true;
    if (s === "false") return false;
  }
  if (/^-?\d+(\.\d+)?$/.test(s)) return Number(s);
  return s;
}

async function saveFields(kind, entity) {
  const fields = {};
  for (const [name, text] of Object.entries(S.draft)) {
    const original = entity.fields?.[name];
    if (text === shown(original)) continue;
    fields[name] = parseValue(text, original);
  }
  if (!Object.keys(fields).length) return;
  try {
    await patch(`/api/v1/${kind}s/${enc(entity.id)}`, { fields });
  } catch (err) {
    const byField = (err.errors || []).filter((e) => String(e.field).startsWith("fields"));
    S.stageError = byField.length ? byField.map((e) => `${e.field}: ${e.message}`) : [err.message];
    renderCrm();
    return;
  }
  for (const name of Object.keys(fields)) {
    delete S.draft[name];
    if (fields[name] !== null) delete S.fieldErrors[name];
  }
  S.crmNote = t("saved");
  await refreshEntity();
}

async function convertLead(entity) {
  try {
    await post(`/api/v1/leads/${enc(entity.id)}/convert`, {});
  } catch (err) {
    fail(err);
    return;
  }
  resetCrmDraft();
  await refreshConv();
  S.crmNote = t("converted");
  renderCrm();
}

// --- live updates -----------------------------------------------------------------

const timers = new Map();

function soon(key, fn, ms = 120) {
  if (timers.has(key)) return;
  timers.set(
    key,
    setTimeout(() => {
      timers.delete(key);
      fn();
    }, ms),
  );
}

function onEvent(ev) {
  const type = String(ev.type || "");
  const refs = ev.refs || {};
  if (type.startsWith("message.") || type.startsWith("conversation.") || type === "comment.moderated") {
    soon("list", () => refreshList());
    if (refs.conversation_id && refs.conversation_id === S.openId) {
      soon("conv", () => refreshConv());
      if (isWebchat()) soon("visitor", () => refreshVisitor());
    }
  }
  if (/^(lead|deal|contact)\./.test(type)) {
    const open = S.entity?.entity?.id;
    if (open && (refs.lead_id === open || refs.deal_id === open)) soon("conv", () => refreshConv());
    if (type === "lead.converted" || type === "deal.created") soon("list", () => refreshList());
  }
  if (type.startsWith("task.")) soon("tasks", () => refreshTasks());
  if (type.startsWith("document.")) documentsEvent(refs);
  if (type === "notification.created") {
    const data = ev.data || {};
    toast(`${t("notification")}: ${data.text || ""}`);
  }
}

// --- the website chat's visitor (webchat conversations) -------------------------------

// Presence and typing are not events of the log (docs/channels/webchat-protocol.md):
// while a webchat conversation is open and the page is visible, its visitor is asked for
// every VISITOR_POLL_MS, and at once on the conversation's events.
const VISITOR_POLL_MS = 1500;
let visitorTimer = null;
let watchedVisitor = null;
let visitorSeq = 0;

function isWebchat() {
  const c = S.detail?.conversation;
  return Boolean(c && c.id === S.openId && c.channel === "webchat");
}

function watchVisitor() {
  const id = isWebchat() ? S.openId : null;
  if (id === watchedVisitor) return;
  clearInterval(visitorTimer);
  visitorTimer = null;
  watchedVisitor = id;
  if (!id) {
    S.visitor = null;
    renderVisitor();
    return;
  }
  refreshVisitor();
  visitorTimer = setInterval(() => {
    if (document.visibilityState === "visible") refreshVisitor();
  }, VISITOR_POLL_MS);
}

async function refreshVisitor() {
  const id = watchedVisitor;
  if (!id || !els) return;
  const seq = ++visitorSeq;
  let visitor;
  try {
    visitor = await get(`/api/v1/conversations/${enc(id)}/visitor`);
  } catch {
    return; // a blip: the next poll asks again; a lost conversation is refreshConv's
  }
  if (seq !== visitorSeq || watchedVisitor !== id || S.openId !== id) return;
  S.visitor = visitor;
  renderVisitor();
}

function renderVisitor() {
  if (!els) return;
  const bar = els.visitorBar;
  const show = Boolean(S.openId) && isWebchat();
  bar.hidden = !show;
  if (!show) {
    fill(bar);
    return;
  }
  const v = S.visitor;
  const online = Boolean(v?.online);
  const lastOut = [...S.messages].reverse().find((m) => m.direction === "out");
  const presence = v ? (online ? "online" : "offline") : "unknown";
  fill(
    bar,
    h(
      "p",
      { class: "presence", role: "status" },
      h("span", { class: ["dot", online && "on"], "aria-hidden": "true" }),
      h("span", { class: "label" }, `${t("visitor")}: `),
      h("strong", { "data-testid": "visitor-presence", "data-state": presence }, v ? t(online ? "visitor_online" : "visitor_offline") : "…"),
      v?.typing ? h("span", { class: "typing", "data-testid": "visitor-typing" }, " · ", t("visitor_typing")) : null,
      lastOut?.state === "read" ? h("span", { "data-testid": "visitor-read" }, " · ", t("visitor_read")) : null,
      v?.verified ? h("span", { class: "muted" }, " · ", t("visitor_verified")) : null,
    ),
    v ? visitList(v.page || {}) : null,
  );
}

/** A lead's flat visit (page_url, referrer, page_title, utm_*) as the visitor's page. */
function visitOfMeta(visit) {
  const utm = {};
  for (const key of ["source", "medium", "campaign", "term", "content"]) utm[key] = visit[`utm_${key}`];
  return { url: visit.page_url, referrer: visit.referrer, title: visit.page_title, utm };
}

/** Page, referrer and campaign: text and http(s) links only (dom.js), never markup. */
function visitList(page) {
  const rows = [];
  if (page.url) rows.push([t("visit_page"), visitLink(page.url, page.title), "visit-page"]);
  if (page.referrer) rows.push([t("visit_referrer"), visitLink(page.referrer), "visit-referrer"]);
  const utm = Object.entries(page.utm || {})
    .filter(([, value]) => value)
    .map(([key, value]) => `utm_${key}=${value}`)
    .join(" · ");
  if (utm) rows.push([t("visit_utm"), utm, "visit-utm"]);
  if (!rows.length) return h("p", { class: "muted" }, t("visit_none"));
  return h(
    "dl",
    { class: "visit" },
    rows.map(([label, value, testid]) => [h("dt", {}, label), h("dd", { "data-testid": testid }, value)]),
  );
}

function visitLink(url, title) {
  return h("a", { href: url, target: "_blank", rel: "noopener noreferrer", title: title || null }, title ? `${title} — ${url}` : url);
}

// The operator's typing, told to the visitor's widget: at most every TYPING_EVERY_MS while
// the box changes, "stopped" after TYPING_IDLE_MS without a key, on send and on leaving.
const TYPING_EVERY_MS = 2500;
const TYPING_IDLE_MS = 4000;
const typingState = { conv: null, sentAt: 0, idle: null };

function operatorTyping() {
  if (!isWebchat() || noteMode()) return;
  if (!els.text.value) {
    typingStop();
    return;
  }
  const id = S.openId;
  const now = Date.now();
  if (typingState.conv !== id || now - typingState.sentAt > TYPING_EVERY_MS) {
    if (typingState.conv !== id) typingStop();
    typingState.conv = id;
    typingState.sentAt = now;
    post(`/api/v1/conversations/${enc(id)}/typing`, { on: true }).catch(() => {});
  }
  clearTimeout(typingState.idle);
  typingState.idle = setTimeout(typingStop, TYPING_IDLE_MS);
}

function typingStop() {
  clearTimeout(typingState.idle);
  const id = typingState.conv;
  if (!id) return;
  typingState.conv = null;
  typingState.sentAt = 0;
  post(`/api/v1/conversations/${enc(id)}/typing`, { on: false }).catch(() => {});
}
