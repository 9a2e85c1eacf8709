// WhatsApp message templates in the composer. When the customer last wrote more than 24 h
// ago, WhatsApp takes no free text: the composer then offers "Send template" — one of the
// account's approved templates (GET …/templates), an input per parameter, the preview as it
// will read — sent with POST …/template. app.js calls renderTemplates after it draws the
// messages; a sent template comes back through onSent. docs/channels/whatsapp.md.

import { enc, get, post } from "./api.js";
import { fill, h } from "./dom.js";
import { lang } from "./i18n.js";

const TEXT = {
  en: {
    offer: "Send template",
    closed: "The customer last wrote over 24 hours ago: WhatsApp takes only an approved template now.",
    pick: "Template",
    send: "Send template",
    preview: "Preview",
    not_sendable: "not sendable",
  },
  ru: {
    offer: "Отправить шаблон",
    closed: "Клиент писал больше 24 часов назад: WhatsApp сейчас принимает только одобренный шаблон.",
    pick: "Шаблон",
    send: "Отправить шаблон",
    preview: "Предпросмотр",
    not_sendable: "недоступен",
  },
};

function tr(key) {
  return (TEXT[lang()] || TEXT.en)[key] || TEXT.en[key];
}

// The open conversation's templates (null: not loaded, or none to offer).
const T = { convId: null, list: null, count: -1, chosen: "", values: {}, seq: 0, error: "", els: null, onSent: null };

/** Offer templates on the drawn conversation when its window is closed (app.js). */
export function renderTemplates(convId, els, messages, onSent) {
  T.els = els;
  T.onSent = onSent;
  if (convId !== T.convId) {
    Object.assign(T, { convId, list: null, count: -1, chosen: "", values: {}, error: "" });
  }
  const count = (messages || []).length;
  if (convId && count !== T.count) {
    T.count = count;
    load();
  }
  apply();
}

async function load() {
  const id = T.convId;
  const seq = ++T.seq;
  try {
    const list = await get(`/api/v1/conversations/${enc(id)}/templates`);
    if (seq !== T.seq || id !== T.convId) return;
    T.list = list;
  } catch {
    if (seq === T.seq) T.list = null;
  }
  apply();
}

function box(els) {
  if (!els.templateBox) {
    els.templateBox = h("details", { class: "template-box", "data-testid": "template-box", hidden: true });
    els.composer.prepend(els.templateBox);
  }
  return els.templateBox;
}

function chosen() {
  const items = (T.list && T.list.items) || [];
  return items.find((t) => key(t) === T.chosen) || items.find((t) => t.sendable) || null;
}

function key(t) {
  return `${t.name}:${t.language}`;
}

function preview(t) {
  return t.text.replace(/\{\{\s*(\d+)\s*\}\}/g, (m, n) => T.values[`${key(t)}:${n}`] || `{{${n}}}`);
}

function apply() {
  const els = T.els;
  if (!els || !els.composer) return;
  const details = box(els);
  const list = T.list;
  const offer = Boolean(list && !list.window_open && list.items.length);
  details.hidden = !offer;
  if (!offer) {
    fill(details);
    return;
  }
  const open = details.open;
  const tpl = chosen();
  const select = h(
    "select",
    {
      "data-testid": "template-select",
      onchange: (e) => {
        T.chosen = e.target.value;
        apply();
      },
    },
    list.items.map((t) =>
      h(
        "option",
        { value: key(t), disabled: !t.sendable, selected: tpl && key(t) === key(tpl) },
        t.sendable ? `${t.name} (${t.language})` : `${t.name} (${t.language}) — ${tr("not_sendable")}: ${t.status}`,
      ),
    ),
  );
  const shown = h("p", { class: "template-preview", "data-testid": "template-preview" }, tpl ? preview(tpl) : "");
  const inputs = tpl
    ? tpl.params.map((what, i) =>
        h(
          "label",
          { class: "template-param" },
          what,
          " ",
          h("input", {
            type: "text",
            maxlength: 1024,
            "data-testid": `template-param-${i + 1}`,
            value: T.values[`${key(tpl)}:${i + 1}`] || "",
            oninput: (e) => {
              T.values[`${key(tpl)}:${i + 1}`] = e.target.value;
              fill(shown, preview(tpl));
            },
          }),
        ),
      )
    : [];
  fill(
    details,
    h("summary", { "data-testid": "template-offer" }, tr("offer")),
    h("p", { class: "hint" }, tr("closed")),
    h("label", {}, tr("pick"), " ", select),
    ...inputs,
    h("span", { class: "hint" }, tr("preview")),
    shown,
    T.error ? h("p", { class: "error", role: "alert", "data-testid": "template-error" }, T.error) : null,
    h("button", { type: "button", class: "primary", "data-testid": "template-send", disabled: !tpl, onclick: () => send(tpl) }, tr("send")),
  );
  details.open = open;
}

async function send(tpl) {
  const id = T.convId;
  if (!tpl || !id) return;
  const params = tpl.params.map((_, i) => T.values[`${key(tpl)}:${i + 1}`] || "");
  T.error = "";
  try {
    const msg = await post(`/api/v1/conversations/${enc(id)}/template`, { name: tpl.name, language: tpl.language, params });
    if (T.convId !== id) return;
    T.values = {};
    if (T.els && T.els.templateBox) T.els.templateBox.open = false;
    if (T.onSent) T.onSent(msg);
  } catch (err) {
    T.error = err.message;
  }
  apply();
}
