// Plot helpers: binning for histograms and density maps, and selections by range or by
// region, as lists of the result's row numbers (`_row`), which the grid and the sky share.

/** Finite min and max of `values`, or null when there is none. */
export function extent(values) {
  if (!values) return null;
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (Number.isFinite(v)) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return lo <= hi ? [lo, hi] : null;
}

/** Histogram of `values` in `bins` equal bins over [lo, hi]; the maximum goes in the last bin. */
export function histogram(values, bins, range = extent(values)) {
  const counts = new Float64Array(bins);
  if (!range || !values) return { edges: [], counts: Array.from(counts) };
  const [lo, hi] = range;
  const width = hi > lo ? (hi - lo) / bins : 1;
  for (const v of values) {
    if (!Number.isFinite(v) || v < lo || v > hi) continue;
    counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1;
  }
  const edges = Array.from({ length: bins + 1 }, (_, i) => lo + i * width);
  return { edges, counts: Array.from(counts) };
}

/** A 2-D histogram (row-major, `ny` rows of `nx`) of the points (x[i], y[i]). */
export function density(x, y, nx, ny, rx = extent(x), ry = extent(y)) {
  const grid = new Float64Array(nx * ny);
  if (!rx || !ry) return { grid, nx, ny, rx, ry, max: 0 };
  const sx = rx[1] > rx[0] ? nx / (rx[1] - rx[0]) : 0;
  const sy = ry[1] > ry[0] ? ny / (ry[1] - ry[0]) : 0;
  let max = 0;
  for (let i = 0; i < x.length; i++) {
    const a = x[i];
    const b = y[i];
    if (!Number.isFinite(a) || !Number.isFinite(b)) continue;
    const ix = Math.min(nx - 1, Math.floor((a - rx[0]) * sx));
    const iy = Math.min(ny - 1, Math.floor((b - ry[0]) * sy));
    if (ix < 0 || iy < 0) continue;
    const k = iy * nx + ix;
    grid[k] += 1;
    if (grid[k] > max) max = grid[k];
  }
  return { grid, nx, ny, rx, ry, max };
}

/** The rows (`rows[i]`) whose x lies in [lo, hi] and, if given, y in [ylo, yhi]. */
export function rowsInBox(rows, x, [lo, hi], y, yRange) {
  const out = [];
  for (let i = 0; i < x.length; i++) {
    if (!(x[i] >= lo && x[i] <= hi)) continue;
    if (y && yRange && !(y[i] >= yRange[0] && y[i] <= yRange[1])) continue;
    out.push(rows[i]);
  }
  return out;
}

/** Point-in-polygon (even-odd rule); `poly` is [[x, y], ...]. */
export function inPolygon(px, py, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i];
    const [xj, yj] = poly[j];
    if (yi > py !== yj > py && px < ((xj - xi) * (py - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** Values normalized to [-1, 1] over `range` (regl-scatterplot's coordinates); NaN stays NaN. */
export function normalize(values, range, flip = false) {
  const [lo, hi] = range ?? [0, 1];
  const span = hi > lo ? hi - lo : 1;
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const t = ((values[i] - lo) / span) * 2 - 1;
    out[i] = flip ? -t : t;
  }
  return out;
}

/**
 * A column of an Arrow table as a Float64Array (nulls as NaN). Without nulls the column's
 * own buffers are copied in one pass (per-value `get` is ten times slower on 10^6 rows).
 */
export function numbers(column) {
  const n = column.length;
  if (column.nullCount === 0) {
    const raw = column.toArray();
    if (raw instanceof Float64Array) return raw;
    const out = new Float64Array(n);
    if (raw instanceof BigInt64Array || raw instanceof BigUint64Array) {
      for (let i = 0; i < n; i++) out[i] = Number(raw[i]);
    } else {
      out.set(raw);
    }
    return out;
  }
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const v = column.get(i);
    out[i] = v === null || v === undefined ? NaN : Number(v);
  }
  return out;
}

/** Filters that keep the rows of a selection (`_row` values), for the server. */
export function selectionFilter(rows, max = 100_000) {
  if (!rows.length) return null;
  if (rows.length > max) return null;
  return `_row:in:${rows.join(",")}`;
}

/** Whether a column is numeric (by its Arrow or TAP datatype). */
export function isNumeric(type) {
  return /int|float|double|decimal|real|long|short|smallint|bigint|numeric/i.test(String(type ?? ""));
}
