// Building DOM without HTML strings: every text goes in as a text node, so nothing a
// customer or an operator wrote is ever parsed as markup.

/**
 * h("div", {class: "x", onclick: fn, dataset: {id: 1}}, "text", child, [more])
 * Attributes: "class", "dataset", "style" (object), on<event> handlers, boolean
 * properties (disabled, checked, hidden…), everything else via setAttribute.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "href" || key === "src") el.setAttribute(key, safeUrl(value));
    else if (key in BOOLEAN_PROPS) el[key] = Boolean(value);
    else if (key === "value") el.value = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

const BOOLEAN_PROPS = { disabled: 1, checked: 1, hidden: 1, selected: 1, multiple: 1, required: 1, autofocus: 1 };

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Only http(s), mailto, tel and same-origin links; anything else (javascript:, data:) is dropped. */
export function safeUrl(raw) {
  if (raw === null || raw === undefined) return "#";
  const text = String(raw);
  try {
    const url = new URL(text, location.href);
    if (["http:", "https:", "mailto:", "tel:", "blob:"].includes(url.protocol)) return url.href;
  } catch {
    /* not a URL */
  }
  return "#";
}
