// The documents of the open deal, on its card (docs/documents.md): the registry of the
// deal's documents (type, number, date, version, status), "Create document" from a
// configured template, download (DOCX, PDF, signed scan), upload the signed scan, mark
// sent, send to the customer through the deal's conversation (its refusal — a channel
// that cannot carry files — is shown as the card's error). app.js calls documentsCard(dealId, redraw) while drawing the CRM panel and
// documentsEvent(refs) on a document.* event of the live feed.

import { call, enc, get, post } from "./api.js";
import { h } from "./dom.js";
import { lang, when } from "./i18n.js";

const TEXT = {
  en: {
    documents: "Documents",
    create: "Create document",
    none: "No documents yet.",
    download: "DOCX",
    pdf: "PDF",
    signed_copy: "Signed copy",
    upload_signed: "Upload signed",
    mark_sent: "Mark sent",
    send: "Send to customer",
    sent_via: "Sent via",
    version: "v",
    generated: "generated",
    sent: "sent",
    signed: "signed",
    pending: "being made",
  },
  ru: {
    documents: "Документы",
    create: "Создать документ",
    none: "Документов пока нет.",
    download: "DOCX",
    pdf: "PDF",
    signed_copy: "Подписанный",
    upload_signed: "Загрузить подписанный",
    mark_sent: "Отправлен",
    send: "Отправить клиенту",
    sent_via: "Отправлено через",
    version: "в.",
    generated: "создан",
    sent: "отправлен",
    signed: "подписан",
    pending: "создаётся",
  },
};

const tr = (key) => (TEXT[lang()] || TEXT.en)[key] ?? TEXT.en[key];

const state = { dealId: null, docs: [], types: null, pick: "", error: "", loadFailed: false, note: "", busy: false };
let redrawPanel = () => {};

async function load(dealId) {
  try {
    if (state.types === null) state.types = (await get("/api/v1/document-types")).items || [];
    const page = await get("/api/v1/documents", { deal_id: dealId, limit: 100 });
    if (state.dealId !== dealId) return;
    state.docs = page.items || [];
    // Only a failed load's error is cleared by a good one: an action's refusal stays.
    if (state.loadFailed) state.error = "";
    state.loadFailed = false;
  } catch (err) {
    state.error = err.message;
    state.loadFailed = true;
  }
  redrawPanel();
}

async function act(work) {
  state.busy = true;
  state.note = "";
  state.error = "";
  redrawPanel();
  try {
    await work();
  } catch (err) {
    state.error = err.message;
  } finally {
    state.busy = false;
    await load(state.dealId);
  }
}

async function download(doc, format) {
  const resp = await call("GET", `/api/v1/documents/${enc(doc.id)}/file`, { query: { format }, raw: true });
  const blob = await resp.blob();
  const match = /filename\*=UTF-8''([^;]+)/.exec(resp.headers.get("Content-Disposition") || "");
  const a = h("a", { href: URL.createObjectURL(blob), download: match ? decodeURIComponent(match[1]) : `${doc.number}.${format}` });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function uploadSigned(doc) {
  const input = h("input", {
    type: "file",
    accept: "application/pdf,image/jpeg,image/png,image/tiff",
    hidden: true,
    "data-testid": "signed-file",
    onchange: (e) => {
      const [file] = e.target.files;
      if (!file) return;
      const form = new FormData();
      form.append("file", file, file.name);
      act(() => call("POST", `/api/v1/documents/${enc(doc.id)}/signed`, { form }));
    },
  });
  return input;
}

/** Send through the deal's conversation (the API picks it); a refusal says why. */
function sendToCustomer(doc) {
  return act(async () => {
    const sent = await post(`/api/v1/documents/${enc(doc.id)}/send`, { format: doc.pdf_file_id ? "pdf" : "docx" });
    const via = sent.document?.history?.at(-1)?.via;
    state.note = via ? `${tr("sent_via")} ${via}` : tr("sent");
  });
}

function row(doc) {
  const title = state.types?.find((x) => x.type === doc.type)?.title || doc.title || doc.type;
  const upload = uploadSigned(doc);
  return h(
    "li",
    { class: "document", "data-testid": "document-row", dataset: { status: doc.status, type: doc.type } },
    h("span", { class: "doc-title" }, title, " № ", doc.number ?? "…"),
    h("small", {}, " · ", tr("version"), String(doc.version), " · ", when(doc.date, true)),
    h("small", { class: ["doc-status", doc.status], "data-testid": "document-status" }, " · ", tr(doc.status)),
    h(
      "div",
      { class: "doc-actions" },
      doc.file_id ? h("button", { type: "button", "data-testid": "doc-download", onclick: () => download(doc, "docx") }, tr("download")) : null,
      doc.pdf_file_id ? h("button", { type: "button", onclick: () => download(doc, "pdf") }, tr("pdf")) : null,
      doc.signed_file_id
        ? h("button", { type: "button", "data-testid": "doc-signed", onclick: () => download(doc, "signed") }, tr("signed_copy"))
        : null,
      doc.status !== "pending"
        ? h("button", { type: "button", "data-testid": "doc-send", disabled: state.busy, onclick: () => sendToCustomer(doc) }, tr("send"))
        : null,
      doc.status === "generated"
        ? h("button", { type: "button", "data-testid": "doc-mark-sent", disabled: state.busy, onclick: () => act(() => post(`/api/v1/documents/${enc(doc.id)}/sent`)) }, tr("mark_sent"))
        : null,
      doc.status !== "pending"
        ? h("button", { type: "button", "data-testid": "doc-upload-signed", disabled: state.busy, onclick: () => upload.click() }, tr("upload_signed"))
        : null,
      upload,
    ),
  );
}

/** The documents card of a deal (a fresh element each draw; the data is kept here). */
export function documentsCard(dealId, redraw) {
  redrawPanel = redraw;
  if (state.dealId !== dealId) {
    Object.assign(state, { dealId, docs: [], error: "", note: "", pick: "" });
    load(dealId);
  }
  const types = state.types || [];
  if (!state.pick && types.length) state.pick = types[0].type;
  const create = () => act(() => post(`/api/v1/deals/${enc(dealId)}/documents`, { type: state.pick }));
  return h(
    "section",
    { class: "card", "data-testid": "documents" },
    h("h3", {}, tr("documents")),
    types.length
      ? h(
          "div",
          { class: "doc-create" },
          h(
            "select",
            { "data-testid": "doc-type", "aria-label": tr("create"), onchange: (e) => (state.pick = e.target.value) },
            types.map((x) => h("option", { value: x.type, selected: x.type === state.pick }, x.title)),
          ),
          h("button", { type: "button", "data-testid": "doc-create", disabled: state.busy, onclick: create }, tr("create")),
        )
      : null,
    state.error ? h("p", { class: "error", role: "alert", "data-testid": "doc-error" }, state.error) : null,
    state.note ? h("p", { class: "muted", role: "status", "data-testid": "doc-note" }, state.note) : null,
    state.docs.length ? h("ul", { class: "tasks documents" }, state.docs.map(row)) : h("p", { class: "muted" }, tr("none")),
  );
}

/** A document.* event: reload when it is about the shown deal. */
export function documentsEvent(refs) {
  if (state.dealId && refs.deal_id === state.dealId) load(state.dealId);
}
