// The operator API over fetch, and the live WebSocket with resume by cursor.

const TOKEN_KEY = "omniroute.token";

export function savedToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function saveToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

/** A refusal of the API (problem+json): status, code, detail, errors [{in, field, message}]. */
export class ApiProblem extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || "http_error";
    this.errors = (body && body.errors) || [];
    this.body = body || {};
  }
}

let onUnauthorized = () => {};

export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/**
 * call("GET", "/api/v1/conversations", {query: {...}}) → the answer's JSON.
 * body: a JSON body; form: a FormData (multipart upload). Throws ApiProblem.
 */
export async function call(method, path, { query, body, form, token, raw } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  const headers = { Authorization: `Bearer ${token ?? savedToken()}` };
  let payload;
  if (form) payload = form;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, { method, headers, body: payload });
  } catch (err) {
    throw new ApiProblem(0, { code: "network_error", detail: String(err) });
  }
  if (resp.status === 401 && token === undefined) onUnauthorized();
  if (!resp.ok) {
    let problem = null;
    try {
      problem = await resp.json();
    } catch {
      /* not JSON */
    }
    throw new ApiProblem(resp.status, problem);
  }
  if (raw) return resp;
  if (resp.status === 204) return null;
  return resp.json();
}

export const get = (path, query) => call("GET", path, { query });
export const post = (path, body) => call("POST", path, { body: body ?? {} });
export const patch = (path, body) => call("PATCH", path, { body });
export const enc = encodeURIComponent;

/**
 * The live connection: GET /api/v1/ws?token=…&after=<cursor>. Reconnects by itself with
 * the last cursor it saw, so no event is lost across a drop. onEvent(event) for each
 * event, onResync() when the server says the gap was too long, onState(true|false).
 */
export class Live {
  constructor({ onEvent, onResync, onState }) {
    this.onEvent = onEvent;
    this.onResync = onResync;
    this.onState = onState;
    this.cursor = null;
    this.ws = null;
    this.stopped = true;
    this.retry = 0;
    this.timer = null;
    this.pinger = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = new URL(`${scheme}://${location.host}/api/v1/ws`);
    url.searchParams.set("token", savedToken());
    if (this.cursor !== null) url.searchParams.set("after", String(this.cursor));
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 0;
      this.onState(true);
      clearInterval(this.pinger);
      this.pinger = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ping" }));
      }, 25000);
    };
    ws.onmessage = (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (typeof frame.cursor === "number") this.cursor = Math.max(this.cursor ?? 0, frame.cursor);
      if (frame.type === "event") this.onEvent(frame.event);
      else if (frame.type === "resync") this.onResync();
    };
    ws.onclose = () => {
      clearInterval(this.pinger);
      if (this.ws !== ws) return;
      this.ws = null;
      this.onState(false);
      if (this.stopped) return;
      // 1 s, 2 s, 4 s … at most 15 s; a bad token shows up as /me answering 401.
      const delay = Math.min(15000, 1000 * 2 ** Math.min(this.retry, 4));
      this.retry += 1;
      this.timer = setTimeout(() => this.connect(), delay);
      if (this.retry >= 2) get("/api/v1/me").catch(() => {});
    };
  }
}
