// Calls to Meridian's services from the portal. Every call goes to this service (relative
// URLs), with the login cookie; every failure becomes a ServiceError whose message says
// what the server said, or that the connection or the login was lost.
import { tableFromIPC } from "apache-arrow";

export class ServiceError extends Error {
  /** kind: "connection", "auth", "forbidden", "notfound", "toolarge", "usage", "server", "aborted" */
  constructor(message, { status = 0, kind = "server" } = {}) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

const listeners = new Set();
/** Calls `f(error)` on every lost connection and expired login (the app shows a banner). */
export function onTrouble(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

/** The message in a DALI error document (VOTable INFO QUERY_STATUS=ERROR), a JSON error or text. */
export function errorMessage(body, contentType = "") {
  const text = (body || "").trim();
  if (contentType.includes("json") || text.startsWith("{")) {
    try {
      const j = JSON.parse(text);
      return String(j.error ?? j.message ?? j.detail ?? text);
    } catch {
      /* not JSON after all */
    }
  }
  const info = text.match(/<INFO[^>]*name="QUERY_STATUS"[^>]*value="ERROR"[^>]*>([\s\S]*?)<\/INFO>/i)
    ?? text.match(/<INFO[^>]*value="ERROR"[^>]*name="QUERY_STATUS"[^>]*>([\s\S]*?)<\/INFO>/i);
  if (info) return unescapeXml(info[1].trim());
  const uws = text.match(/<uws:message>([\s\S]*?)<\/uws:message>/);
  if (uws) return unescapeXml(uws[1].trim());
  if (text.startsWith("<")) {
    const stripped = text.replace(/<[^>]+>/g, " ").replace(/\s+/g, " ").trim();
    return stripped || "the service answered with an error";
  }
  return text.replace(/^Error:\s*/, "") || "the service answered with an error";
}

export function unescapeXml(s) {
  return s
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_, n) => String.fromCodePoint(Number(n)))
    .replace(/&amp;/g, "&");
}

function kindOf(status) {
  if (status === 401) return "auth";
  if (status === 403) return "forbidden";
  if (status === 404) return "notfound";
  if (status === 413) return "toolarge";
  if (status >= 400 && status < 500) return "usage";
  return "server";
}

/** fetch() that throws a ServiceError for a lost connection or an error status. */
export async function request(url, options = {}) {
  const { quiet = false, ...init } = options;
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", ...init });
  } catch (e) {
    if (e?.name === "AbortError") throw new ServiceError("cancelled", { kind: "aborted" });
    const err = new ServiceError("The connection to the service was lost: check that it is running, then try again.", { kind: "connection" });
    listeners.forEach((f) => f(err));
    throw err;
  }
  if (!response.ok) {
    const body = await response.text().catch(() => "");
    const kind = kindOf(response.status);
    let message = errorMessage(body, response.headers.get("content-type") || "");
    if (kind === "auth") message = `Your login has expired or is not valid (${message}); log in again.`;
    if (kind === "toolarge") message = `Too large for the service: ${message}`;
    const err = new ServiceError(message, { status: response.status, kind });
    if (kind === "auth" && !quiet) listeners.forEach((f) => f(err));
    throw err;
  }
  return response;
}

export function form(params) {
  const body = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null) continue;
    if (Array.isArray(v)) v.forEach((x) => body.append(k, x));
    else body.append(k, String(v));
  }
  return body;
}

export async function postForm(url, params, options = {}) {
  return request(url, { method: "POST", body: form(params), ...options });
}

export async function getJson(url, options) {
  return (await request(url, options)).json();
}

export async function getText(url, options) {
  return (await request(url, options)).text();
}

export async function arrowTable(response) {
  return tableFromIPC(new Uint8Array(await response.arrayBuffer()));
}

/** A synchronous TAP query answered as an Arrow table (small queries: metadata, light curves). */
export async function tapSync(query, { lang = "ADQL", maxrec, signal } = {}) {
  const r = await postForm("tap/sync", {
    REQUEST: "doQuery", LANG: lang, QUERY: query, RESPONSEFORMAT: "arrow", MAXREC: maxrec,
  }, { signal });
  return arrowTable(r);
}

/** The rows of an Arrow table as plain objects (small tables only). */
export function rowsOf(table) {
  const names = table.schema.fields.map((f) => f.name);
  const cols = names.map((n) => table.getChild(n));
  const out = [];
  for (let i = 0; i < table.numRows; i++) {
    const row = {};
    names.forEach((n, j) => (row[n] = plain(cols[j].get(i))));
    out.push(row);
  }
  return out;
}

/** Arrow values as JSON-friendly ones (BigInt as Number when exact, else as text). */
export function plain(v) {
  if (typeof v === "bigint") {
    return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v.toString();
  }
  if (v && typeof v === "object" && typeof v.toArray === "function") return Array.from(v.toArray(), plain);
  return v;
}
