// The company card on the CRM panel (docs/companies.md): the company of the open deal or
// lead (its company_id), else of its contact. Shows name, INN, KPP, type, address and
// responsible; "Edit" turns them into inputs saved with PATCH /api/v1/companies/{id}
// (a bad INN or KPP comes back as the field's error and is shown next to it). A contact
// without a company gets "Add company": created by POST /api/v1/companies (an INN already
// known answers that company, so nothing is duplicated), then the contact is linked.
// app.js calls companyCard(entity, contact, redraw) while drawing the panel.

import { ApiProblem, enc, get, patch, post } from "./api.js";
import { h } from "./dom.js";
import { lang } from "./i18n.js";

const TEXT = {
  en: {
    company: "Company",
    none: "No company.",
    add: "Add company",
    edit: "Edit",
    save: "Save",
    cancel: "Cancel",
    name: "Name",
    inn: "INN",
    kpp: "KPP",
    type: "Type",
    address: "Address",
    responsible: "Responsible",
    customer: "customer",
    partner: "partner",
    supplier: "supplier",
    competitor: "competitor",
    other: "other",
  },
  ru: {
    company: "Компания",
    none: "Компании нет.",
    add: "Добавить компанию",
    edit: "Изменить",
    save: "Сохранить",
    cancel: "Отмена",
    name: "Название",
    inn: "ИНН",
    kpp: "КПП",
    type: "Тип",
    address: "Адрес",
    responsible: "Ответственный",
    customer: "клиент",
    partner: "партнёр",
    supplier: "поставщик",
    competitor: "конкурент",
    other: "другое",
  },
};
const TYPES = ["customer", "partner", "supplier", "competitor", "other"];
const FIELDS = ["name", "inn", "kpp", "address"];
const tr = (key) => (TEXT[lang()] || TEXT.en)[key] ?? TEXT.en[key];

const state = { id: null, company: null, editing: false, draft: {}, errors: {}, error: "", busy: false };
// Companies added here, by contact id: the panel's contact is the one read before.
const linked = new Map();
let redrawPanel = () => {};

async function load(id) {
  try {
    const got = await get(`/api/v1/companies/${enc(id)}`);
    if (state.id !== id) return;
    state.company = got.company;
    state.error = "";
  } catch (err) {
    state.company = null;
    state.error = err.status === 404 ? "" : err.message;
  }
  redrawPanel();
}

function problems(err) {
  const out = {};
  if (err instanceof ApiProblem) {
    for (const e of err.errors || []) out[String(e.field).split(".").pop()] = e.message;
  }
  return out;
}

async function act(work, after) {
  state.busy = true;
  redrawPanel();
  try {
    await work();
    state.errors = {};
    state.error = "";
    state.editing = false;
  } catch (err) {
    state.errors = problems(err);
    state.error = Object.keys(state.errors).length ? "" : err.message;
  } finally {
    state.busy = false;
    if (after) await after();
    redrawPanel();
  }
}

function input(key) {
  return h(
    "label",
    { class: "field" },
    h("span", { class: "label" }, tr(key)),
    h("input", {
      value: state.draft[key] ?? "",
      "data-testid": `company-${key}`,
      "data-focus-key": `company-${key}`,
      "aria-invalid": state.errors[key] ? "true" : null,
      oninput: (e) => (state.draft[key] = e.target.value),
    }),
    state.errors[key] ? h("small", { class: "error", role: "alert" }, state.errors[key]) : null,
  );
}

function typeSelect() {
  return h(
    "label",
    { class: "field" },
    h("span", { class: "label" }, tr("type")),
    h(
      "select",
      { "data-testid": "company-type", onchange: (e) => (state.draft.type = e.target.value) },
      TYPES.map((x) => h("option", { value: x, selected: x === (state.draft.type || "customer") }, tr(x))),
    ),
  );
}

function changes() {
  const body = {};
  for (const key of [...FIELDS, "type"]) {
    const value = (state.draft[key] ?? "").trim();
    if (value && value !== (state.company?.[key] ?? "")) body[key] = value;
  }
  return body;
}

function editForm(contact) {
  const creating = !state.company;
  const save = creating
    ? () =>
        act(async () => {
          const made = await post("/api/v1/companies", changes());
          if (contact) {
            await post(`/api/v1/companies/${enc(made.id)}/contacts`, { contact_id: contact.id });
            linked.set(contact.id, made.id);
          }
          state.id = made.id;
        }, () => state.id && load(state.id))
    : () => act(() => patch(`/api/v1/companies/${enc(state.company.id)}`, changes()), () => load(state.company.id));
  return h(
    "form",
    { class: "company-form", "data-testid": "company-form", onsubmit: (e) => (e.preventDefault(), save()) },
    FIELDS.map(input),
    typeSelect(),
    h(
      "div",
      { class: "doc-actions" },
      h("button", { type: "submit", "data-testid": "company-save", disabled: state.busy }, tr("save")),
      h("button", { type: "button", onclick: () => ((state.editing = false), (state.errors = {}), redrawPanel()) }, tr("cancel")),
    ),
  );
}

function shown(company) {
  const line = (key, value) => (value ? h("p", {}, h("span", { class: "label" }, `${tr(key)}: `), value) : null);
  return [
    h("p", { class: "contact-name", "data-testid": "company-name" }, company.name),
    line("inn", company.inn),
    line("kpp", company.kpp),
    line("type", tr(company.type)),
    line("address", company.address),
    line("responsible", company.responsible_id),
  ];
}

/** The company card of the open lead/deal or contact (a fresh element each draw). */
export function companyCard(entity, contact, redraw) {
  redrawPanel = redraw;
  const id = entity?.company_id || contact?.company_id || (contact && linked.get(contact.id)) || null;
  if (state.id !== id) {
    Object.assign(state, { id, company: null, editing: false, draft: {}, errors: {}, error: "" });
    if (id) load(id);
  }
  const startEdit = () => {
    state.draft = Object.fromEntries([...FIELDS, "type"].map((k) => [k, state.company?.[k] ?? ""]));
    state.editing = true;
    redrawPanel();
  };
  let body;
  if (state.editing) body = editForm(contact);
  else if (state.company)
    body = [shown(state.company), h("button", { type: "button", "data-testid": "company-edit", onclick: startEdit }, tr("edit"))];
  else
    body = [
      h("p", { class: "muted" }, tr("none")),
      contact ? h("button", { type: "button", "data-testid": "company-add", onclick: startEdit }, tr("add")) : null,
    ];
  return h(
    "section",
    { class: "card", "data-testid": "company" },
    h("h3", {}, tr("company")),
    state.error ? h("p", { class: "error", role: "alert" }, state.error) : null,
    body,
  );
}
