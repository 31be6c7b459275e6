// The results grid's logic: which windows of rows to fetch for what is on screen, a small
// cache of fetched windows, and the per-column filter syntax the server applies.

/** Rows one window fetch asks for. */
export const PAGE_ROWS = 200;

/** Page numbers covering rows [first, last] (inclusive), plus `ahead` pages around. */
export function pagesFor(first, last, total, ahead = 1, pageRows = PAGE_ROWS) {
  if (total <= 0 || last < first) return [];
  const lastPage = Math.floor((total - 1) / pageRows);
  const a = Math.max(0, Math.floor(first / pageRows) - ahead);
  const b = Math.min(lastPage, Math.floor(Math.min(last, total - 1) / pageRows) + ahead);
  const out = [];
  for (let p = a; p <= b; p++) out.push(p);
  return out;
}

/**
 * Browsers cap an element's height (Chromium near 33.5 million pixels, Firefox near 17.9
 * million): beyond the cap the scroll bar stands for the rows in proportion. Below it the
 * browser scrolls the rows itself, and only rows coming into view are drawn anew.
 */
export const MAX_SCROLL_PX = 8_000_000;

/** This browser's usable scroll height: 90% of the height it gives a very tall element. */
export function browserScrollCap(doc = globalThis.document) {
  if (!doc?.body) return MAX_SCROLL_PX;
  const probe = doc.createElement("div");
  probe.style.cssText = "position:absolute;visibility:hidden;height:1000000000px;width:1px;";
  doc.body.appendChild(probe);
  const h = probe.offsetHeight;
  probe.remove();
  return h > 0 ? Math.max(MAX_SCROLL_PX, Math.floor(Math.min(h, 1e9) * 0.9)) : MAX_SCROLL_PX;
}

/**
 * The rows to draw for a scroll position, rows of `rowH` pixels in a rows area of
 * `viewport` pixels: `{ height, items: [{ index, start }] }` with `start` in pixels from
 * the top of the rows' box. Up to `maxPx` the rows sit at their own place; beyond, the
 * scroll position picks a row in proportion and the rows are drawn from the top of the
 * view, so any number of rows can be reached.
 */
export function virtualRows({ scrollTop, viewport, total, rowH, overscan = 8, maxPx = MAX_SCROLL_PX }) {
  const full = total * rowH;
  const height = Math.min(full, maxPx);
  const visible = Math.max(1, Math.floor(viewport / rowH));
  let first;
  let offset;
  if (full <= maxPx) {
    first = Math.floor(Math.max(0, scrollTop) / rowH);
    offset = first * rowH;
  } else {
    const frac = Math.min(1, Math.max(0, scrollTop / Math.max(1, height - viewport)));
    first = Math.round(frac * Math.max(0, total - visible));
    offset = Math.max(0, scrollTop);
  }
  const items = [];
  // Rows drawn at most: the slots a recycling list keeps.
  const slots = visible + 2 * overscan + 1;
  if (total <= 0) return { height, items, slots };
  const a = Math.max(0, first - overscan);
  const b = Math.min(total - 1, first + visible + overscan);
  for (let i = a; i <= b; i++) items.push({ index: i, start: offset + (i - first) * rowH });
  return { height, items, slots };
}

/**
 * The rows of `items` placed in `count` slots, row i in slot i % count (null where no row):
 * a row keeps its slot while it stays in view, so scrolling by k rows rewrites only the k
 * slots whose rows came into view, and the elements are reused rather than made anew.
 * Needs `count` at least the number of (consecutive) rows. Slots whose row and place are
 * those of `prev` keep `prev`'s object.
 */
export function slotRows(items, count, prev = []) {
  const out = new Array(count).fill(null);
  for (const it of items) {
    const s = it.index % count;
    // The same object where nothing changed: the slot is left as it is.
    const p = prev.length === count ? prev[s] : null;
    out[s] = p && p.index === it.index && p.start === it.start ? p : it;
  }
  return out;
}

/** A least-recently-used cache of pages (page number -> rows). */
export class PageCache {
  constructor(capacity = 40) {
    this.capacity = capacity;
    this.pages = new Map();
  }
  get(page) {
    const v = this.pages.get(page);
    if (v !== undefined) {
      this.pages.delete(page);
      this.pages.set(page, v);
    }
    return v;
  }
  has(page) {
    return this.pages.has(page);
  }
  set(page, rows) {
    this.pages.delete(page);
    this.pages.set(page, rows);
    while (this.pages.size > this.capacity) this.pages.delete(this.pages.keys().next().value);
  }
  clear() {
    this.pages.clear();
  }
  get size() {
    return this.pages.size;
  }
}

/**
 * A column filter as typed in the grid (`< 17.5`, `>= 3`, `= 5`, `!= 2`, `null`, `!null`,
 * `a..b`, or text to find) as the server's `FILTER` values (`column:op:value`).
 * Returns { filters: [...], error }.
 */
export function parseColumnFilter(column, input, numeric) {
  const s = (input ?? "").trim();
  if (!s) return { filters: [] };
  const f = (op, v) => (v === undefined ? `${column}:${op}` : `${column}:${op}:${v}`);
  if (/^(is\s+)?null$/i.test(s)) return { filters: [f("null")] };
  if (/^(!|not\s+)null$/i.test(s)) return { filters: [f("notnull")] };
  const range = /^(-?[\d.eE+-]+)\s*\.\.\s*(-?[\d.eE+-]+)$/.exec(s);
  if (range && numeric) {
    const [a, b] = [Number(range[1]), Number(range[2])];
    if (!Number.isFinite(a) || !Number.isFinite(b)) return { filters: [], error: `'${s}' is not a range of numbers` };
    return { filters: [f("ge", Math.min(a, b)), f("le", Math.max(a, b))] };
  }
  const m = /^(<=|>=|!=|<>|=|==|<|>)\s*(.*)$/.exec(s);
  if (m) {
    const op = { "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "=": "eq", "==": "eq", "!=": "ne", "<>": "ne" }[m[1]];
    const v = m[2].trim();
    if (!v) return { filters: [], error: `'${s}': a value is missing after ${m[1]}` };
    if (numeric && !Number.isFinite(Number(v))) return { filters: [], error: `'${v}' is not a number` };
    return { filters: [f(op, v)] };
  }
  if (numeric) {
    if (Number.isFinite(Number(s))) return { filters: [f("eq", s)] };
    return { filters: [], error: `'${s}': write a number, < x, >= x, a..b, null or !null` };
  }
  return { filters: [f("contains", s)] };
}

/** The SORT parameter for [{column, desc}]. */
export function sortParam(keys) {
  return keys.map((k) => (k.desc ? "-" : "") + k.column).join(",");
}

/** The next sort after a click on `column` (ascending, then descending, then none). */
export function cycleSort(keys, column) {
  const k = keys.find((x) => x.column === column);
  if (!k) return [{ column, desc: false }];
  if (!k.desc) return [{ column, desc: true }];
  return [];
}

/** Query parameters of a window or download: columns, sort and filters. */
export function windowParams({ offset, limit, columns, sort = [], filters = [] }) {
  const p = new URLSearchParams();
  if (offset !== undefined) p.set("OFFSET", String(offset));
  if (limit !== undefined) p.set("LIMIT", String(limit));
  if (columns) p.set("COLUMNS", columns.join(","));
  if (sort.length) p.set("SORT", sortParam(sort));
  for (const f of filters) p.append("FILTER", f);
  return p;
}

/**
 * A value as the grid shows it: single-precision floats with the 7 digits they hold,
 * doubles with up to 10, very small or large numbers in exponent form.
 */
export function formatValue(v, type = "") {
  return formatterFor(type)(v);
}

/** The formatter of values of Arrow type `type` (decided once per column, not per cell). */
export function formatterFor(type = "") {
  const isFloat = /float/i.test(type);
  const digits = /float32|float16|\bfloat\b(?!64)/i.test(type) ? 7 : 10;
  return (v) => format(v, isFloat, digits);
}

function format(v, isFloat, digits) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "NaN";
    if (Number.isInteger(v) && !isFloat) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-4 || a >= 1e9)) return v.toExponential(digits - 1);
    return String(Number(v.toPrecision(digits)));
  }
  if (Array.isArray(v)) return `[${v.map((x) => format(x, isFloat, digits)).join(", ")}]`;
  if (v instanceof Date) return v.toISOString();
  return String(v);
}
