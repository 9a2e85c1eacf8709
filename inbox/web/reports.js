// The Reports view (docs/reports.md): for directors and admins. A period, a grouping and a
// dimension; each report's figures as a chart (uPlot, vendored under /static/vendor/) and
// as tables, each downloadable as CSV through the API (with the operator's token).
//
// reportsTab(me) is the header's button (null for other roles); the view opens over the
// inbox and closes back to it.

import { call, get } from "./api.js";
import { fill, h } from "./dom.js";
import { lang } from "./i18n.js";

const REPORTS = ["volume", "responsiveness", "overdue", "funnel", "survey"];
// What each report's chart draws: columns of its first table, summed per period.
const CHART = {
  volume: { bars: ["inbound_messages"], lines: ["new_conversations", "new_leads", "repeat_leads", "calls_in"] },
  responsiveness: { bars: ["episodes"], lines: ["answered", "waiting"] },
  overdue: { bars: ["tasks_due"], lines: ["overdue_open", "completed_late"] },
  funnel: { bars: ["leads"], lines: ["converted", "deals", "won", "lost"] },
  survey: { bars: ["answers"], lines: [] },
};
const COLORS = ["#2563eb", "#d97706", "#16a34a", "#dc2626", "#7c3aed", "#0891b2"];
const WORDS = {
  en: {
    reports: "Reports", close: "Back to the inbox", from: "From", to: "To", group: "Group by",
    by: "Split by", none: "—", show: "Show", csv: "CSV", totals: "Totals", loading: "Loading…",
    day: "day", week: "week", month: "month", channel: "channel", source: "source",
    pipeline: "pipeline", responsible: "responsible", department: "department",
    volume: "Volume", responsiveness: "Responsiveness", overdue: "Overdue work", funnel: "Funnel",
    survey: "Survey", empty: "No figures for this period.",
  },
  ru: {
    reports: "Отчёты", close: "Назад ко входящим", from: "С", to: "По", group: "Группировка",
    by: "Разрез", none: "—", show: "Показать", csv: "CSV", totals: "Итого", loading: "Загрузка…",
    day: "день", week: "неделя", month: "месяц", channel: "канал", source: "источник",
    pipeline: "воронка", responsible: "ответственный", department: "отдел",
    volume: "Объём", responsiveness: "Скорость ответа", overdue: "Просрочки", funnel: "Воронка",
    survey: "Опросы", empty: "За этот период данных нет.",
  },
};

function w(key) {
  return (WORDS[lang()] || WORDS.en)[key] ?? key;
}

export function mayReport(me) {
  return me.role === "director" || me.role === "admin";
}

/** The header's Reports button, or null for a role that has no Reports view. */
export function reportsTab(me) {
  if (!mayReport(me)) return null;
  return h("button", { class: "ghost", "data-testid": "reports-tab", onclick: () => openReports() }, w("reports"));
}

let uplotLoading = null;

/** uPlot's IIFE build defines window.uPlot; loaded once, when the view first opens. */
function loadUplot() {
  if (window.uPlot) return Promise.resolve(window.uPlot);
  if (!uplotLoading) {
    uplotLoading = new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = "/static/vendor/uPlot.iife.min.js";
      s.onload = () => resolve(window.uPlot);
      s.onerror = () => reject(new Error("the chart library did not load"));
      document.head.append(s);
    });
  }
  return uplotLoading;
}

function ensureStyles() {
  if (document.querySelector("link[data-reports-css]")) return;
  document.head.append(h("link", { rel: "stylesheet", href: "/static/reports.css", "data-reports-css": "" }));
}

const iso = (d) => d.toISOString().slice(0, 10);

const state = {
  report: "volume",
  to: iso(new Date()),
  from: iso(new Date(Date.now() - 29 * 86400e3)),
  group: "day",
  by: "",
  charts: [],
};

let view = null;

export function openReports() {
  ensureStyles();
  if (view) view.remove();
  const select = (name, options) =>
    h(
      "select",
      { "data-testid": `reports-${name}`, "aria-label": w(name), onchange: (e) => { state[name] = e.target.value; show(); } },
      options.map((o) => h("option", { value: o, selected: state[name] === o }, o ? w(o) : w("none"))),
    );
  const date = (name) =>
    h("input", { type: "date", value: state[name], "data-testid": `reports-${name}`, "aria-label": w(name), onchange: (e) => { state[name] = e.target.value; show(); } });
  const tabs = h(
    "div",
    { class: "tabs", role: "tablist" },
    REPORTS.map((r) =>
      h("button", { role: "tab", class: ["tab", state.report === r && "active"], "aria-selected": String(state.report === r), "data-testid": `report-${r}`, onclick: () => { state.report = r; openReports(); } }, w(r)),
    ),
  );
  const body = h("div", { class: "reports-body", "data-testid": "reports-body" }, w("loading"));
  view = h(
    "section",
    { class: "reports-view", "data-testid": "reports", "aria-label": w("reports") },
    h(
      "header",
      { class: "reports-top" },
      h("h1", {}, w("reports")),
      h("span", { class: "spacer" }),
      h("button", { class: "ghost", "data-testid": "reports-close", onclick: () => closeReports() }, w("close")),
    ),
    tabs,
    h(
      "div",
      { class: "reports-controls" },
      h("label", {}, w("from"), " ", date("from")),
      h("label", {}, w("to"), " ", date("to")),
      h("label", {}, w("group"), " ", select("group", ["day", "week", "month"])),
      h("label", {}, w("by"), " ", select("by", ["", "channel", "source", "pipeline", "responsible", "department"])),
    ),
    body,
  );
  document.body.append(view);
  show();
}

function closeReports() {
  for (const c of state.charts) c.destroy();
  state.charts = [];
  view?.remove();
  view = null;
}

function query() {
  const q = { from: state.from, to: state.to, group: state.group };
  if (state.by) q.by = state.by;
  return q;
}

let asked = 0;

async function show() {
  const body = view?.querySelector(".reports-body");
  if (!body) return;
  const mine = ++asked;
  let report;
  let uPlot;
  try {
    [report, uPlot] = await Promise.all([get(`/api/v1/reports/${state.report}`, query()), loadUplot()]);
  } catch (err) {
    if (mine === asked) fill(body, h("p", { class: "error", role: "alert", "data-testid": "reports-error" }, err.detail || String(err)));
    return;
  }
  if (mine !== asked) return; // a later choice is on its way
  for (const c of state.charts) c.destroy();
  state.charts = [];
  const chartBox = h("div", { class: "reports-chart", "data-testid": "reports-chart" });
  fill(
    body,
    totals(report),
    chartBox,
    report.tables.map((t) => tableCard(report, t)),
  );
  const chart = drawChart(uPlot, report, chartBox);
  if (chart) state.charts.push(chart);
}

function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number" && !Number.isInteger(v)) return v.toFixed(2);
  return String(v);
}

function totals(report) {
  return h(
    "dl",
    { class: "reports-totals", "data-testid": "reports-totals", "aria-label": w("totals") },
    Object.entries(report.totals).map(([k, v]) =>
      h("div", { class: "total" }, h("dt", {}, k.replaceAll("_", " ")), h("dd", { "data-testid": `total-${k}`, "data-value": v === null ? "" : String(v) }, fmt(v))),
    ),
  );
}

function tableCard(report, table) {
  const download = async () => {
    const resp = await call("GET", `/api/v1/reports/${report.report}.csv`, { query: { ...query(), table: table.name }, raw: true });
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: `${report.report}-${table.name}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  };
  return h(
    "div",
    { class: "reports-table" },
    h(
      "div",
      { class: "reports-table-head" },
      h("h2", {}, table.name.replaceAll("_", " ")),
      h("button", { class: "ghost", "data-testid": `csv-${table.name}`, onclick: download }, w("csv")),
    ),
    table.rows.length
      ? h(
          "div",
          { class: "scroll" },
          h(
            "table",
            { "data-testid": `table-${table.name}` },
            h("thead", {}, h("tr", {}, table.columns.map((c) => h("th", { scope: "col" }, c.replaceAll("_", " "))))),
            h("tbody", {}, table.rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, fmt(c)))))),
          ),
        )
      : h("p", { class: "muted" }, w("empty")),
  );
}

/** The first table's chosen columns summed per period, as bars and lines over time. */
function drawChart(uPlot, report, box) {
  const spec = CHART[report.report];
  const table = report.tables[0];
  const pi = table.columns.indexOf("period");
  if (!spec || pi < 0) return null;
  const metrics = [...spec.bars, ...spec.lines].filter((m) => table.columns.includes(m));
  const sums = new Map();
  for (const row of table.rows) {
    const p = row[pi];
    if (!sums.has(p)) sums.set(p, Object.fromEntries(metrics.map((m) => [m, 0])));
    for (const m of metrics) sums.get(p)[m] += Number(row[table.columns.indexOf(m)] || 0);
  }
  const periods = [...sums.keys()].sort();
  const xs = periods.map((p) => Date.parse(p.length === 7 ? `${p}-01` : p) / 1000);
  if (!xs.length) xs.push(Date.parse(state.from) / 1000);
  const data = [xs, ...metrics.map((m) => periods.map((p) => sums.get(p)[m]))];
  if (!periods.length) for (let i = 1; i < data.length; i++) data[i] = [0];
  const bars = uPlot.paths.bars({ size: [0.6, 48] });
  const series = [
    {},
    ...metrics.map((m, i) => ({
      label: m.replaceAll("_", " "),
      stroke: COLORS[i % COLORS.length],
      fill: spec.bars.includes(m) ? `${COLORS[i % COLORS.length]}55` : undefined,
      width: 2,
      paths: spec.bars.includes(m) ? bars : undefined,
      points: { show: !spec.bars.includes(m) },
    })),
  ];
  const width = Math.max(320, Math.min(960, box.clientWidth || 720));
  return new uPlot({ width, height: 260, series, scales: { x: { time: true } } }, data, box);
}
