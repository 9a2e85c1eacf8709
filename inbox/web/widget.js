/* omniroute website live chat — the widget a site embeds with one line:
 *   <script src="https://crm.example.com/widget/<account>.js" async></script>
 * Plain JavaScript, no build step, no dependencies. Everything it draws lives in a Shadow
 * DOM under one host element; styles are a constructed stylesheet (no inline <style> or
 * style attributes in the host page, no eval, no inline handlers), so a site with a strict
 * CSP allows only our origin in script-src, connect-src (https + wss) and img-src.
 * Nothing a visitor or an operator wrote is inserted as HTML: text nodes only.
 * Wire contract: docs/channels/webchat-protocol.md; embedding: docs/channels/webchat.md.
 */
(function () {
  "use strict";

  // ---- where we come from --------------------------------------------------------------
  var script = document.currentScript;
  if (!script || !/\/widget\/[^/]+\.js/.test(script.src || "")) {
    var all = document.getElementsByTagName("script");
    for (var i = all.length - 1; i >= 0; i--) {
      if ((all[i].src || "").indexOf("/widget/") >= 0) { script = all[i]; break; }
    }
  }
  if (!script) return;
  var srcUrl = new URL(script.src, location.href);
  var found = /^(.*)\/widget\/([^/]+)\.js$/.exec(srcUrl.pathname);
  if (!found) return;
  var BASE = srcUrl.origin + found[1];
  var ACCOUNT = decodeURIComponent(found[2]);
  var API = BASE + "/webchat/" + encodeURIComponent(ACCOUNT);
  var KEY = "omniroute-webchat:" + ACCOUNT;
  if (window.__omnirouteWebchat && window.__omnirouteWebchat[ACCOUNT]) return; // loaded twice
  window.__omnirouteWebchat = window.__omnirouteWebchat || {};
  window.__omnirouteWebchat[ACCOUNT] = true;

  var LANG = /^en/i.test(document.documentElement.lang || "") ? "en" : "ru";
  var T = {
    ru: {
      open: "Открыть чат", close: "Закрыть чат", title: "Чат с нами", message: "Сообщение",
      placeholder: "Напишите сообщение…", send: "Отправить", attach: "Прикрепить файл",
      name: "Имя", phone: "Телефон", email: "E-mail", start: "Начать чат", question: "Ваш вопрос",
      required: "Заполните поле", sending: "отправляется…", failed: "не отправлено",
      sent: "отправлено", read: "прочитано", typing: "Оператор печатает…",
      answerBy: "Спасибо! Мы ответим до ", back: "Снова на связи: ", unread: "новых сообщений: ",
      tooLong: "Слишком длинное сообщение", contact: "Оставьте телефон или e-mail, чтобы мы могли ответить", tooMany: "Слишком часто, подождите немного",
      uploadFailed: "Файл не загружен: ", you: "Вы", operator: "Оператор", leave: "Отправить"
    },
    en: {
      open: "Open chat", close: "Close chat", title: "Chat with us", message: "Message",
      placeholder: "Type a message…", send: "Send", attach: "Attach a file",
      name: "Name", phone: "Phone", email: "E-mail", start: "Start chat", question: "Your question",
      required: "Please fill this in", sending: "sending…", failed: "not sent",
      sent: "sent", read: "read", typing: "An operator is typing…",
      answerBy: "Thank you! We will answer by ", back: "Back online: ", unread: "new messages: ",
      tooLong: "The message is too long", contact: "Leave a phone or an e-mail so that we can answer", tooMany: "Too many messages, please wait a little",
      uploadFailed: "File not uploaded: ", you: "You", operator: "Operator", leave: "Send"
    }
  }[LANG];

  // ---- state kept across page loads (localStorage, per account) -------------------------
  var saved = load();
  function load() {
    try {
      var v = JSON.parse(localStorage.getItem(KEY) || "{}");
      return { token: v.token || null, pending: Array.isArray(v.pending) ? v.pending : [], prechat: !!v.prechat };
    } catch (e) {
      return { token: null, pending: [], prechat: false };
    }
  }
  function save() {
    try {
      localStorage.setItem(KEY, JSON.stringify({
        token: saved.token, prechat: saved.prechat,
        pending: saved.pending.map(function (p) {
          return { client_id: p.client_id, text: p.text, attachments: p.attachments, label: p.label, kind: p.kind, contact: p.contact, at: p.at };
        })
      }));
    } catch (e) { /* storage blocked: this tab only */ }
  }

  var settings = readSettings();
  function readSettings() {
    var s = {};
    var given = window.omnirouteChatSettings || {};
    var ds = script.dataset || {};
    ["identifier", "identifier_hash", "name", "email", "phone"].forEach(function (k) {
      var fromData = ds[k.replace(/_(.)/g, function (_, c) { return c.toUpperCase(); })];
      var v = given[k] !== undefined ? given[k] : fromData;
      if (typeof v === "string" && v) s[k] = v;
    });
    return s;
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
  }

  function pageInfo() {
    var q = new URLSearchParams(location.search), utm = {};
    ["source", "medium", "campaign", "term", "content"].forEach(function (k) {
      var v = q.get("utm_" + k);
      if (v) utm[k] = v;
    });
    return { url: location.href, referrer: document.referrer || "", title: document.title || "", utm: utm };
  }

  // ---- HTTP ------------------------------------------------------------------------------
  // Resolves to {status, body, retryAfter}; status 0 = the network failed (no answer).
  function call(method, path, body, isForm) {
    var headers = {};
    if (saved.token) headers["X-Visitor-Token"] = saved.token;
    if (body !== undefined && !isForm) headers["Content-Type"] = "application/json";
    return fetch(API + path, {
      method: method, headers: headers, credentials: "omit", mode: "cors", cache: "no-store",
      body: body === undefined ? undefined : isForm ? body : JSON.stringify(body)
    }).then(function (r) {
      var ra = parseFloat(r.headers.get("Retry-After") || "");
      return r.json().catch(function () { return {}; }).then(function (b) {
        return { status: r.status, body: b || {}, retryAfter: isFinite(ra) ? ra : null };
      });
    }, function () { return { status: 0, body: {}, retryAfter: null }; });
  }

  function backoff(attempt) {
    var ms = Math.min(30000, 1000 * Math.pow(2, Math.min(attempt, 5)));
    return ms / 2 + Math.random() * ms / 2; // jitter: many visitors do not come back at once
  }
  function retryable(status) { return status === 0 || status === 408 || status === 429 || status >= 500; }

  // ---- DOM helpers (text nodes only) -----------------------------------------------------
  function h(tag, attrs) {
    var el = document.createElement(tag);
    for (var k in attrs || {}) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (var i = 2; i < arguments.length; i++) if (arguments[i]) el.appendChild(arguments[i]);
    return el;
  }
  function safeHref(raw) {
    try {
      var u = new URL(String(raw), BASE + "/");
      if (u.protocol === "http:" || u.protocol === "https:") return u.href;
    } catch (e) { /* not a URL */ }
    return null;
  }
  function colour(c) { return /^#[0-9a-fA-F]{3,8}$/.test(c || "") ? c : "#1f6feb"; }
  function when(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return "";
    try {
      return new Intl.DateTimeFormat(LANG === "en" ? "en-GB" : "ru-RU", { dateStyle: "medium", timeStyle: "short" }).format(d);
    } catch (e) { return d.toLocaleString(); }
  }

  var CSS = [
    ":host{all:initial}",
    "[hidden]{display:none!important}",
    "*{box-sizing:border-box;font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;font-size:15px;line-height:1.4}",
    ".launcher{position:fixed;bottom:20px;z-index:2147483000;width:56px;height:56px;border-radius:50%;border:0;cursor:pointer;background:var(--accent);color:#fff;box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center}",
    ".launcher svg{width:26px;height:26px;fill:#fff}",
    ".badge{position:absolute;top:-4px;right:-4px;min-width:20px;height:20px;border-radius:10px;background:#d1242f;color:#fff;font-size:12px;padding:0 5px;display:flex;align-items:center;justify-content:center}",
    ".right{right:20px}.left{left:20px}",
    ":focus-visible{outline:3px solid #0a58ca;outline-offset:2px}",
    ".panel{position:fixed;bottom:88px;z-index:2147483001;width:370px;height:560px;max-height:calc(100vh - 110px);background:#fff;color:#1b1f24;border-radius:14px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden}",
    ".panel[hidden]{display:none}",
    "header{background:var(--accent);color:#fff;padding:12px 14px;display:flex;align-items:center;gap:8px}",
    "header h2{margin:0;flex:1;font-size:16px;font-weight:600;color:#fff}",
    ".x{background:transparent;border:0;color:#fff;font-size:22px;cursor:pointer;width:36px;height:36px;border-radius:8px}",
    ".body{flex:1;overflow-y:auto;padding:12px;background:#f6f8fa;display:flex;flex-direction:column;gap:8px}",
    ".note{color:#424a53;background:#fff;border-radius:10px;padding:10px 12px;white-space:pre-wrap}",
    ".msg{max-width:82%;padding:8px 11px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere}",
    ".in{align-self:flex-end;background:var(--accent);color:#fff;border-bottom-right-radius:4px}",
    ".out{align-self:flex-start;background:#fff;color:#1b1f24;border:1px solid #d0d7de;border-bottom-left-radius:4px}",
    ".meta{display:block;font-size:11px;opacity:.85;margin-top:3px;text-align:right}",
    ".failed{background:#fff;color:#a40e26;border:1px solid #a40e26}",
    ".msg a{color:inherit;text-decoration:underline}.msg img{display:block;max-width:100%;border-radius:8px;margin-top:4px}",
    ".typing{font-size:13px;color:#57606a;padding:0 14px 4px;min-height:18px;background:#f6f8fa}",
    ".status{font-size:13px;color:#a40e26;padding:0 14px}",
    "form{display:flex;flex-direction:column;gap:8px;padding:10px 12px;border-top:1px solid #d0d7de;background:#fff}",
    "label{font-size:13px;color:#424a53;display:flex;flex-direction:column;gap:3px}",
    "input,textarea{width:100%;border:1px solid #8c959f;border-radius:8px;padding:8px 10px;color:#1b1f24;background:#fff}",
    "textarea{resize:none;min-height:42px;max-height:120px}",
    ".row{display:flex;gap:8px;align-items:flex-end}.row label{flex:1}",
    ".btn{background:var(--accent);color:#fff;border:0;border-radius:8px;padding:9px 14px;cursor:pointer;font-weight:600}",
    ".icon{background:#eaeef2;color:#24292f;border:0;border-radius:8px;width:40px;height:40px;cursor:pointer;font-size:18px}",
    ".vh{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    "@media (max-width:480px){.panel{inset:0;width:100%;height:100%;max-height:none;border-radius:0;bottom:0}}"
  ].join("\n");

  // ---- widget state ----------------------------------------------------------------------
  var config = null, session = null, sessionP = null, cursor = null;
  var rendered = {}; // message id -> element
  var byClient = {}; // client id -> element
  var lastOperatorId = null, unread = 0, isOpen = false;
  var ui = {};

  function mount() {
    var host = document.createElement("div");
    host.setAttribute("data-omniroute-webchat", ACCOUNT);
    var root = host.attachShadow({ mode: "open" });
    var css = ":host{--accent:" + colour(config.colour) + "}\n" + CSS;
    if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet && CSSStyleSheet.prototype.replaceSync) {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(css); // constructed: not an inline style as far as CSP is concerned
      root.adoptedStyleSheets = [sheet];
    } else {
      root.appendChild(h("style", { text: css }));
    }
    var side = config.position === "left" ? "left" : "right";
    var icon = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    icon.setAttribute("viewBox", "0 0 24 24");
    icon.setAttribute("aria-hidden", "true");
    var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H8l-5 4V5a2 2 0 0 1 2-2z");
    icon.appendChild(path);
    ui.badge = h("span", { class: "badge", hidden: true, "aria-hidden": "true" });
    ui.launcher = h("button", { type: "button", class: "launcher " + side, "aria-label": T.open, "aria-expanded": "false",
      "aria-controls": "omniroute-panel", "data-part": "launcher", onclick: function () { if (isOpen) close(); else open(); } });
    ui.launcher.appendChild(icon);
    ui.launcher.appendChild(ui.badge);
    ui.title = h("h2", { id: "omniroute-title", text: T.title });
    ui.closeBtn = h("button", { type: "button", class: "x", "aria-label": T.close, "data-part": "close", text: "×", onclick: close });
    ui.body = h("div", { class: "body", role: "log", "aria-live": "polite", "aria-label": T.title, tabindex: "0", "data-part": "log" });
    ui.typing = h("div", { class: "typing", "aria-live": "polite", "data-part": "typing" });
    ui.status = h("div", { class: "status", role: "status", "data-part": "status" });
    ui.foot = h("div", null);
    ui.panel = h("div", { class: "panel " + side, id: "omniroute-panel", role: "dialog", "aria-modal": "false",
      "aria-labelledby": "omniroute-title", hidden: true, "data-part": "panel", onkeydown: panelKeys },
      h("header", null, ui.title, ui.closeBtn), ui.body, ui.typing, ui.status, ui.foot);
    root.appendChild(ui.launcher);
    root.appendChild(ui.panel);
    ui.root = root;
    document.body.appendChild(host);
  }

  function panelKeys(ev) {
    if (ev.key === "Escape") { ev.preventDefault(); close(); return; }
    if (ev.key !== "Tab") return;
    // keep Tab inside the open dialog
    var items = Array.prototype.filter.call(
      ui.panel.querySelectorAll("button,input,textarea,[tabindex='0']"),
      function (e) { return !e.disabled && e.getAttribute("tabindex") !== "-1" && e.getClientRects().length > 0; });
    if (!items.length) return;
    var first = items[0], last = items[items.length - 1], active = ui.root.activeElement;
    if (ev.shiftKey && active === first) { ev.preventDefault(); last.focus(); }
    else if (!ev.shiftKey && active === last) { ev.preventDefault(); first.focus(); }
  }

  function open() {
    isOpen = true;
    ui.panel.hidden = false;
    ui.launcher.setAttribute("aria-expanded", "true");
    ui.launcher.setAttribute("aria-label", T.close);
    unread = 0;
    showBadge();
    refreshConfig().then(function () { render(); markRead(); });
  }
  function close() {
    isOpen = false;
    ui.panel.hidden = true;
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.setAttribute("aria-label", T.open);
    ui.launcher.focus();
  }
  function showBadge() {
    ui.badge.hidden = unread === 0;
    ui.badge.textContent = unread ? String(unread) : "";
    ui.launcher.setAttribute("aria-label", unread && !isOpen ? T.open + " (" + T.unread + unread + ")" : isOpen ? T.close : T.open);
  }
  function say(text) { ui.status.textContent = text || ""; }

  function prechatFields() {
    return (config.prechat || []).filter(function (f) { return /^(name|phone|email)$/.test(f.field); });
  }
  function needsPrechat() {
    return !saved.prechat && !settings.identifier && !saved.pending.length && prechatFields().length > 0 &&
      !Object.keys(rendered).length;
  }

  // ---- views -----------------------------------------------------------------------------
  var view = null;
  function render() {
    var want = !config.online && !hasConversation() ? "offline" : needsPrechat() ? "prechat" : "chat";
    if (want === view) { focusFirst(); return; }
    view = want;
    while (ui.foot.firstChild) ui.foot.removeChild(ui.foot.firstChild);
    if (want === "chat") chatView(); else contactForm(want);
    focusFirst();
  }
  function hasConversation() { return Object.keys(rendered).length > 0 || saved.pending.length > 0; }
  function focusFirst() {
    if (!isOpen) return;
    var f = ui.foot.querySelector("input,textarea");
    if (f) f.focus();
  }

  function greeting() {
    if (ui.greet) return;
    ui.greet = h("p", { class: "note", "data-part": "greeting", text: config.greeting || "" });
    ui.body.insertBefore(ui.greet, ui.body.firstChild);
  }

  function field(name, required, type) {
    var input = h("input", { name: name, type: type, required: required, "aria-required": required ? "true" : "false",
      autocomplete: name === "phone" ? "tel" : name, "data-field": name });
    if (settings[name]) input.value = settings[name];
    return h("label", null, document.createTextNode(T[name] + (required ? " *" : "")), input);
  }

  function contactForm(kind) {
    var offline = kind === "offline";
    var fields = prechatFields();
    if (offline && !ui.offNote) {
      var note = config.offline_text || "";
      if (config.next_open_at) note += (note ? "\n" : "") + T.back + when(config.next_open_at);
      ui.offNote = h("p", { class: "note", "data-part": "offline-note", text: note });
      ui.body.insertBefore(ui.offNote, ui.body.firstChild);
    } else if (!offline) greeting();
    var form = h("form", { "data-part": offline ? "offline-form" : "prechat-form", novalidate: true });
    fields.forEach(function (f) {
      form.appendChild(field(f.field, !!f.required, f.field === "email" ? "email" : f.field === "phone" ? "tel" : "text"));
    });
    var text = null;
    if (offline) {
      text = h("textarea", { name: "text", required: true, maxlength: String(limit()), "data-field": "text" });
      form.appendChild(h("label", null, document.createTextNode(T.question + " *"), text));
    }
    form.appendChild(h("button", { type: "submit", class: "btn", "data-part": "submit", text: offline ? T.leave : T.start }));
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var contact = {}, bad = null;
      Array.prototype.forEach.call(form.querySelectorAll("input,textarea"), function (i) {
        var v = i.value.trim();
        i.removeAttribute("aria-invalid");
        if (i.required && !v && !bad) bad = i;
        if (i.required && !v) i.setAttribute("aria-invalid", "true");
        if (v && i.name !== "text") contact[i.name] = v;
      });
      if (bad) { say(T.required + ": " + (T[bad.name] || T.question)); bad.focus(); return; }
      if (offline && !contact.phone && !contact.email && !settings.phone && !settings.email && !settings.identifier) {
        say(T.contact);
        (form.querySelector("[data-field=phone]") || form.querySelector("[data-field=email]") || text).focus();
        return;
      }
      say("");
      for (var k in contact) settings[k] = contact[k];
      saved.prechat = true;
      save();
      if (offline) {
        ensureSession(true);
        queue({ client_id: uuid(), text: text.value.trim(), kind: "offline", contact: contact, at: new Date().toISOString() });
        view = "sent";
        while (ui.foot.firstChild) ui.foot.removeChild(ui.foot.firstChild);
      } else {
        ensureSession(true).then(function () { render(); });
      }
    });
    ui.foot.appendChild(form);
  }

  function limit() { return (config.limits && config.limits.text_max) || 4000; }

  function chatView() {
    greeting();
    var input = h("textarea", { id: "omniroute-input", rows: "1", placeholder: T.placeholder, maxlength: String(limit()),
      "aria-label": T.message, "data-part": "input" });
    var file = h("input", { type: "file", class: "vh", tabindex: "-1", "aria-hidden": "true",
      accept: "image/png,image/jpeg,image/gif,image/webp,application/pdf,.docx,.xlsx,text/plain" });
    var attach = h("button", { type: "button", class: "icon", "aria-label": T.attach, "data-part": "attach", text: "📎",
      onclick: function () { file.click(); } });
    var sendBtn = h("button", { type: "submit", class: "btn", "data-part": "send", text: T.send });
    var form = h("form", { "data-part": "chat-form" }, h("div", { class: "row" }, attach, input, sendBtn), file);
    var submit = function () {
      var text = input.value.trim();
      if (!text) return;
      if (text.length > limit()) { say(T.tooLong); return; }
      say("");
      input.value = "";
      typing(false);
      queue({ client_id: uuid(), text: text, kind: "message", at: new Date().toISOString() });
    };
    form.addEventListener("submit", function (ev) { ev.preventDefault(); submit(); input.focus(); });
    input.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); submit(); }
    });
    input.addEventListener("input", function () { typing(input.value.length > 0); });
    file.addEventListener("change", function () {
      var f = file.files && file.files[0];
      file.value = "";
      if (f) upload(f);
    });
    ui.foot.appendChild(form);
    ui.input = input;
    ensureSession(false);
  }

  // ---- messages in the log ---------------------------------------------------------------
  function bubble(direction, text, attachments) {
    var el = h("div", { class: "msg " + (direction === "in" ? "in" : "out"), "data-direction": direction });
    el.appendChild(h("span", { class: "vh", text: (direction === "in" ? T.you : T.operator) + ": " }));
    el.appendChild(document.createTextNode(text || "")); // never parsed as HTML
    (attachments || []).forEach(function (a) {
      var href = safeHref(a.url);
      if (!href) { el.appendChild(h("span", { class: "meta", text: a.name || "" })); return; }
      var link = h("a", { href: href, target: "_blank", rel: "noopener noreferrer nofollow", text: a.name || href });
      if (/^image\/(png|jpeg|gif|webp)$/.test(a.mime_type || "")) link.appendChild(h("img", { src: href, alt: a.name || "" }));
      el.appendChild(h("span", { class: "meta" }, link));
    });
    var meta = h("span", { class: "meta", "data-part": "state" });
    el.appendChild(meta);
    el._meta = meta;
    return el;
  }
  function setState(el, state) {
    el.setAttribute("data-state", state);
    if (el._meta) el._meta.textContent = T[state] || "";
    el.classList.toggle("failed", state === "failed");
  }
  function append(el) {
    var stick = ui.body.scrollHeight - ui.body.scrollTop - ui.body.clientHeight < 40;
    ui.body.appendChild(el);
    if (stick || el.getAttribute("data-direction") === "in") ui.body.scrollTop = ui.body.scrollHeight;
  }

  function onMessage(m) {
    if (!m || !m.id) return;
    if (m.cursor) cursor = m.cursor;
    var el = rendered[m.id] || (m.client_id && byClient[m.client_id]);
    if (el && m.attachments && m.attachments.length && !el.querySelector("a")) {
      // the optimistic bubble of an upload: now with its link (and picture)
      var fresh = bubble(m.direction, m.text, m.attachments);
      fresh.setAttribute("data-client-id", m.client_id || "");
      setState(fresh, el.getAttribute("data-state") || "sent");
      el.parentNode.replaceChild(fresh, el);
      el = fresh;
      if (m.client_id) byClient[m.client_id] = el;
    }
    if (el) {
      rendered[m.id] = el;
      el.setAttribute("data-id", m.id);
      if (el.getAttribute("data-state") !== "read") setState(el, "sent");
      dropPending(m.client_id);
      return;
    }
    el = bubble(m.direction, m.text, m.attachments);
    el.setAttribute("data-id", m.id);
    if (m.client_id) { el.setAttribute("data-client-id", m.client_id); byClient[m.client_id] = el; }
    rendered[m.id] = el;
    if (m.direction === "in") { setState(el, "sent"); dropPending(m.client_id); }
    else {
      lastOperatorId = m.id;
      typingShown(false);
      if (!isOpen || document.hidden) { unread++; showBadge(); }
    }
    append(el);
    if (view === "prechat" || view === "offline") { view = null; if (isOpen) render(); }
    markRead();
  }

  function onRead(upTo) {
    var mine = ui.body.querySelectorAll(".msg.in[data-id]");
    var hit = -1;
    for (var i = 0; i < mine.length; i++) if (mine[i].getAttribute("data-id") === upTo) hit = i;
    for (var j = 0; j <= hit; j++) setState(mine[j], "read");
  }

  var typingTimer = null;
  function typingShown(on) {
    ui.typing.textContent = on ? T.typing : "";
    clearTimeout(typingTimer);
    if (on) typingTimer = setTimeout(function () { typingShown(false); }, 30000);
  }

  function onFrame(f) {
    if (!f || typeof f !== "object") return;
    if (f.type === "message" || (!f.type && f.id)) onMessage(f);
    else if (f.type === "typing") typingShown(!!f.on);
    else if (f.type === "read") onRead(f.up_to);
    else if (f.type === "ping") wsSend({ type: "pong" });
    if (f.cursor && f.type !== "message") cursor = f.cursor;
  }

  // ---- sending: optimistic bubble, retried with the same client_id until answered ---------
  function queue(p) {
    saved.pending.push(p);
    save();
    if (p.kind !== "offline") showPending(p);
    deliver(p, 0);
  }
  function showPending(p) {
    if (byClient[p.client_id]) return;
    var el = bubble("in", p.text || p.label || "", []);
    el.setAttribute("data-client-id", p.client_id);
    setState(el, "sending");
    byClient[p.client_id] = el;
    append(el);
  }
  function dropPending(clientId) {
    if (!clientId) return;
    var before = saved.pending.length;
    saved.pending = saved.pending.filter(function (p) { return p.client_id !== clientId; });
    if (saved.pending.length !== before) save();
  }
  var timers = {};
  function deliver(p, attempt) {
    if (p.busy) return;
    p.busy = true;
    clearTimeout(timers[p.client_id]);
    ensureSession(false).then(function (ok) {
      if (!ok) return { status: 0, body: {}, retryAfter: null };
      var body = { client_id: p.client_id, text: p.text, page: pageInfo() };
      if (p.attachments && p.attachments.length) body.attachments = p.attachments;
      if (p.kind === "offline") for (var k in p.contact || {}) body[k] = p.contact[k];
      return call("POST", p.kind === "offline" ? "/offline" : "/messages", body);
    }).then(function (r) {
      p.busy = false;
      if (r.status >= 200 && r.status < 300) {
        dropPending(p.client_id);
        var el = byClient[p.client_id];
        if (el && r.body.id) {
          el.setAttribute("data-id", r.body.id);
          rendered[r.body.id] = el;
          if (el.getAttribute("data-state") === "sending") setState(el, "sent");
        }
        if (p.kind === "offline") offlineDone(r.body.answer_expected_at);
        return;
      }
      if (r.status === 401) { saved.token = null; session = null; save(); }
      if (retryable(r.status) || r.status === 401) {
        if (r.status === 429) say(T.tooMany);
        var wait = r.retryAfter !== null ? r.retryAfter * 1000 : backoff(attempt);
        timers[p.client_id] = setTimeout(function () { deliver(p, attempt + 1); }, wait);
        return;
      }
      // refused for good (too long, bad attachment): say so, keep the text visible
      dropPending(p.client_id);
      var failed = byClient[p.client_id];
      if (failed) setState(failed, "failed");
      if (p.kind === "offline") {
        // give the form back with the question in it
        view = null;
        render();
        var box = ui.foot.querySelector("[data-field=text]");
        if (box) box.value = p.text;
      }
      var code = r.body.code;
      say(code === "contact_required" ? T.contact : r.status === 413 || code === "text_too_long" ? T.tooLong :
        r.body.detail || r.body.title || T.failed);
    });
  }
  function retryAll() {
    saved.pending.forEach(function (p) { deliver(p, 0); });
  }
  function offlineDone(at) {
    var text = T.answerBy + when(at || config.next_open_at || "");
    ui.body.appendChild(h("p", { class: "note", "data-part": "answer-by", text: text }));
    say("");
  }

  function upload(f) {
    var max = (config.limits && config.limits.upload_max_bytes) || 10485760;
    if (f.size > max) { say(T.uploadFailed + f.name); return; }
    ensureSession(false).then(function () {
      var form = new FormData();
      form.append("file", f, f.name);
      return call("POST", "/uploads", form, true);
    }).then(function (r) {
      if (r.status !== 200 || !r.body.file_id) { say(T.uploadFailed + f.name); return; }
      queue({ client_id: uuid(), text: "", attachments: [{ file_id: r.body.file_id }], label: r.body.name || f.name,
        kind: "message", at: new Date().toISOString() });
    });
  }

  // ---- session ---------------------------------------------------------------------------
  function ensureSession(force) {
    if (sessionP) return force ? sessionP.then(function () { return ensureSession(true); }) : sessionP;
    if (session && !force) return Promise.resolve(true);
    var body = { page: pageInfo() };
    if (saved.token) body.visitor_token = saved.token;
    ["identifier", "identifier_hash", "name", "email", "phone"].forEach(function (k) { if (settings[k]) body[k] = settings[k]; });
    var startConn = !session;
    sessionP = call("POST", "/session", body).then(function (r) {
      sessionP = null;
      if (r.status !== 200 || !r.body.visitor_token) return false;
      saved.token = r.body.visitor_token;
      save();
      session = r.body;
      if (startConn) return history().then(function () { connect(); return true; });
      return true;
    });
    return sessionP;
  }

  function history() {
    // every item of this visitor's feed from the start, in order (pages followed)
    var rounds = 0;
    cursor = null;
    function page() {
      var q = cursor ? "?after=" + encodeURIComponent(cursor) + "&wait=0" : "?wait=0";
      return call("GET", "/feed" + q).then(function (r) {
        if (r.status !== 200) return;
        (r.body.items || []).forEach(onFrame);
        var moved = r.body.cursor && r.body.cursor !== cursor;
        if (r.body.cursor) cursor = r.body.cursor;
        if ((r.body.items || []).length && moved && ++rounds < 50) return page();
      });
    }
    return page().then(function () { if (!cursor) cursor = session && session.cursor; });
  }

  // ---- live: WebSocket with reconnect from the cursor; long-poll when sockets fail --------
  var ws = null, wsFails = 0, wsTimer = null, polling = false;
  function connect() {
    if (!session || (ws && ws.readyState <= 1)) return;
    clearTimeout(wsTimer);
    var url = API.replace(/^http/, "ws") + "/ws?token=" + encodeURIComponent(saved.token) +
      (cursor ? "&after=" + encodeURIComponent(cursor) : "");
    var sock;
    try { sock = new WebSocket(url); } catch (e) { return wsFailed(); }
    ws = sock;
    var opened = false;
    sock.onopen = function () { opened = true; wsFails = 0; stopPolling(); markRead(); retryAll(); };
    sock.onmessage = function (ev) {
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      onFrame(f);
    };
    sock.onclose = function () {
      if (ws === sock) ws = null;
      if (!opened) wsFails++;
      wsFailed();
    };
  }
  function wsFailed() {
    if (wsFails >= 2 && !polling) poll();
    wsTimer = setTimeout(connect, backoff(wsFails));
  }
  function wsSend(obj) {
    if (ws && ws.readyState === 1) { ws.send(JSON.stringify(obj)); return true; }
    return false;
  }
  function poll() {
    polling = true;
    var attempt = 0;
    (function next() {
      if (!polling) return;
      var q = "?wait=25" + (cursor ? "&after=" + encodeURIComponent(cursor) : "");
      call("GET", "/feed" + q).then(function (r) {
        if (!polling) return;
        if (r.status === 200) {
          attempt = 0;
          (r.body.items || []).forEach(onFrame);
          if (r.body.cursor) cursor = r.body.cursor;
          next();
        } else setTimeout(next, backoff(attempt++));
      });
    })();
  }
  function stopPolling() { polling = false; }

  var typingOn = false, typingSentAt = 0, typingIdle = null;
  function typing(on) {
    clearTimeout(typingIdle);
    var now = Date.now();
    if (on) {
      if (!typingOn || now - typingSentAt > 2500) { wsSend({ type: "typing", on: true }); typingSentAt = now; }
      typingOn = true;
      typingIdle = setTimeout(function () { typing(false); }, 4000);
    } else if (typingOn) {
      typingOn = false;
      wsSend({ type: "typing", on: false });
    }
  }

  var readSent = null;
  function markRead() {
    if (!isOpen || document.hidden || !lastOperatorId || readSent === lastOperatorId) return;
    if (wsSend({ type: "read", up_to: lastOperatorId })) readSent = lastOperatorId;
  }

  function wake() {
    // back from background, network or bfcache: resume at once (sockets die silently on iOS)
    if (!session) return;
    if (!ws || ws.readyState > 1) { wsFails = Math.min(wsFails, 1); connect(); }
    retryAll();
    markRead();
  }
  window.addEventListener("online", wake);
  window.addEventListener("pageshow", wake);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { wake(); unread = 0; if (isOpen) showBadge(); } });

  // ---- start -----------------------------------------------------------------------------
  function refreshConfig() {
    return call("GET", "/config?lang=" + LANG).then(function (r) {
      if (r.status === 200) config = r.body;
      return r.status;
    });
  }

  function start(attempt) {
    attempt = attempt || 0;
    refreshConfig().then(function (status) {
      if (status !== 200 && retryable(status) && attempt < 2) {
        setTimeout(function () { start(attempt + 1); }, backoff(attempt)); // a blip at load; a refused Origin looks the same (CORS hides the 403)
        return;
      }
      if (status !== 200) {
        if (window.console) console.warn("omniroute webchat: not available for this site (" + ACCOUNT + ")");
        return;
      }
      mount();
      window.omnirouteChat = {
        open: open,
        close: close,
        setUser: function (user) {
          for (var k in user || {}) if (typeof user[k] === "string") settings[k] = user[k];
          return ensureSession(true);
        }
      };
      // a returning visitor: their pending messages go out and replies arrive before they open
      if (saved.token || saved.pending.length) {
        ensureSession(false).then(function () {
          saved.pending.forEach(function (p) { if (p.kind !== "offline") showPending(p); });
          retryAll();
        });
      }
    });
  }
  if (document.body) start(0); else document.addEventListener("DOMContentLoaded", function () { start(0); });
})();
