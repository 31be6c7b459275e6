// Query-text helpers: where an error is, whether a query reads a whole large table, and the
// completions the editor offers (tables, columns and functions from TAP_SCHEMA).

/** { line, column } (1-based) named in a server message ("line 2, column 7"), or null. */
export function errorPosition(message) {
  const m = /line\s+(\d+)\s*,\s*column\s+(\d+)/i.exec(message || "");
  return m ? { line: Number(m[1]), column: Number(m[2]) } : null;
}

/** The document offset of a 1-based line and column in `text` (clamped to the text). */
export function offsetOf(text, line, column) {
  const lines = text.split("\n");
  const l = Math.min(Math.max(line, 1), lines.length);
  let offset = 0;
  for (let i = 0; i < l - 1; i++) offset += lines[i].length + 1;
  return offset + Math.min(Math.max(column - 1, 0), lines[l - 1].length);
}

/** Text with comments and string literals blanked, so that keywords inside them do not count. */
function code(query) {
  return query
    .replace(/--[^\n]*/g, " ")
    .replace(/\/\*[\s\S]*?\*\//g, " ")
    .replace(/'(?:[^']|'')*'/g, "''");
}

/** Tables a query reads (FROM and JOIN targets), as written, lower-cased. */
export function tablesOf(query) {
  const q = code(query);
  const out = [];
  const re = /\b(?:from|join)\s+((?:"[^"]+"|[A-Za-z_][\w]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w]*))?)/gi;
  let m;
  while ((m = re.exec(q))) out.push(m[1].replace(/"/g, "").toLowerCase());
  return out;
}

/**
 * A warning when the query reads a large table (more than `bigRows` rows) with neither TOP,
 * LIMIT nor WHERE: `{ table, rows }`, or null. `sizes` maps lower-case table names to rows.
 */
export function bigTableWarning(query, sizes, bigRows = 1_000_000) {
  const q = code(query);
  if (/\btop\s+\d+/i.test(q) || /\blimit\s+\d+/i.test(q) || /\bwhere\b/i.test(q)) return null;
  if (!/\bselect\b/i.test(q)) return null;
  for (const t of tablesOf(query)) {
    const rows = sizes.get(t) ?? sizes.get(t.split(".").pop());
    if (rows !== undefined && rows > bigRows) return { table: t, rows };
  }
  return null;
}

/** ADQL 2.1 functions (and Meridian's), for completion. */
export const ADQL_FUNCTIONS = [
  ["POINT", "POINT('ICRS', ra, dec): a position"],
  ["CIRCLE", "CIRCLE('ICRS', ra, dec, radius_deg)"],
  ["BOX", "BOX('ICRS', ra, dec, width_deg, height_deg)"],
  ["POLYGON", "POLYGON('ICRS', ra1, dec1, ra2, dec2, ...)"],
  ["CONTAINS", "1 = CONTAINS(POINT(...), CIRCLE(...)): inside a region"],
  ["INTERSECTS", "1 = INTERSECTS(region, region)"],
  ["DISTANCE", "DISTANCE(POINT(...), POINT(...)) in degrees"],
  ["AREA", "AREA(region) in square degrees"],
  ["COORD1", "COORD1(point): its longitude"],
  ["COORD2", "COORD2(point): its latitude"],
  ["COORDSYS", "COORDSYS(geometry)"],
  ["REGION", "REGION('STC-S text')"],
  ["COUNT", "COUNT(*)"], ["AVG", "AVG(x)"], ["MIN", "MIN(x)"], ["MAX", "MAX(x)"], ["SUM", "SUM(x)"],
  ["ABS", "ABS(x)"], ["CEILING", "CEILING(x)"], ["FLOOR", "FLOOR(x)"], ["ROUND", "ROUND(x, n)"],
  ["TRUNCATE", "TRUNCATE(x, n)"], ["SQRT", "SQRT(x)"], ["POWER", "POWER(x, y)"], ["EXP", "EXP(x)"],
  ["LOG", "LOG(x): natural logarithm"], ["LOG10", "LOG10(x)"], ["MOD", "MOD(x, y)"], ["PI", "PI()"],
  ["RAND", "RAND()"], ["DEGREES", "DEGREES(rad)"], ["RADIANS", "RADIANS(deg)"], ["SIN", "SIN(rad)"],
  ["COS", "COS(rad)"], ["TAN", "TAN(rad)"], ["ASIN", "ASIN(x)"], ["ACOS", "ACOS(x)"], ["ATAN", "ATAN(x)"],
  ["ATAN2", "ATAN2(y, x)"], ["LOWER", "LOWER(text)"], ["UPPER", "UPPER(text)"], ["COALESCE", "COALESCE(a, b, ...)"],
  ["IN_UNIT", "IN_UNIT(value, 'unit')"], ["CAST", "CAST(x AS type)"],
  ["IVO_HEALPIX_INDEX", "IVO_HEALPIX_INDEX(order, ra, dec)"],
  ["IVO_EPOCH_PROP_POS", "IVO_EPOCH_PROP_POS(ra, dec, parallax, pmra, pmdec, rv, ep0, ep1)"],
];

/** ADQL keywords for completion. */
export const ADQL_KEYWORDS = ("SELECT TOP DISTINCT FROM WHERE AND OR NOT JOIN LEFT RIGHT FULL OUTER INNER " +
  "NATURAL ON USING GROUP BY HAVING ORDER ASC DESC AS IS NULL BETWEEN LIKE ILIKE IN EXISTS " +
  "UNION INTERSECT EXCEPT WITH OFFSET CASE WHEN THEN ELSE END").split(" ");

/**
 * The completion model from TAP_SCHEMA rows: `tables` [{schema_name, table_name,
 * description, nrows}], `columns` [{table_name, column_name, unit, ucd, description, datatype}]
 * and `keys` [{key_id, from_table, target_table, from_column, target_column}] (each table's
 * foreign keys become its `joins`: [{target, on: [[from_column, target_column], ...]}]).
 */
export function schemaModel(tables, columns, keys = []) {
  const bySchema = new Map();
  const byTable = new Map();
  const sizes = new Map();
  for (const t of tables) {
    const entry = { ...t, columns: [], joins: [] };
    byTable.set(t.table_name.toLowerCase(), entry);
    if (!bySchema.has(t.schema_name)) bySchema.set(t.schema_name, []);
    bySchema.get(t.schema_name).push(entry);
    if (t.nrows !== null && t.nrows !== undefined) {
      sizes.set(t.table_name.toLowerCase(), Number(t.nrows));
    }
  }
  for (const c of columns) {
    const t = byTable.get(c.table_name.toLowerCase());
    if (t) t.columns.push(c);
  }
  const byKey = new Map();
  for (const k of keys) {
    const t = byTable.get(k.from_table.toLowerCase());
    if (!t) continue;
    if (!byKey.has(k.key_id)) {
      const join = { target: k.target_table, on: [] };
      byKey.set(k.key_id, join);
      t.joins.push(join);
    }
    byKey.get(k.key_id).on.push([k.from_column, k.target_column]);
  }
  return { bySchema, byTable, sizes };
}

/**
 * A query joining `table` to the tables its foreign keys name (a precomputed cross-match
 * table to both its catalogs, say): `SELECT TOP 100 t0.*, t1.*, ... FROM table AS t0 JOIN
 * target AS t1 ON t1.to = t0.from ...`.
 */
export function joinQuery(table) {
  const select = ["t0.*"];
  const from = [`FROM ${table.table_name} AS t0`];
  table.joins.forEach((j, i) => {
    const a = `t${i + 1}`;
    select.push(`${a}.*`);
    const on = j.on.map(([f, t]) => `${a}.${t} = t0.${f}`).join(" AND ");
    from.push(`JOIN ${j.target} AS ${a} ON ${on}`);
  });
  return `SELECT TOP 100 ${select.join(", ")}\n${from.join("\n")}`;
}

/** The table an alias or name before a dot refers to in `query` (`g` in `FROM gaia AS g`). */
export function resolveQualifier(query, qualifier, model) {
  const q = qualifier.toLowerCase();
  if (model.byTable.has(q)) return model.byTable.get(q);
  const re = /\b(?:from|join)\s+((?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*)(?:\s+(?:as\s+)?([A-Za-z_]\w*))?/gi;
  let m;
  while ((m = re.exec(code(query)))) {
    if (m[2] && m[2].toLowerCase() === q) return model.byTable.get(m[1].toLowerCase()) ?? null;
  }
  return null;
}

/**
 * Completion options at `pos` in `text`: `{ from, options: [{label, type, detail, info}] }`
 * or null. After `x.` it offers x's columns (x a table or an alias); elsewhere tables,
 * the columns of the tables the query reads, functions and keywords.
 */
export function completions(text, pos, model) {
  const before = text.slice(0, pos);
  const word = /([A-Za-z_][\w]*)?$/.exec(before);
  const from = pos - (word[1]?.length ?? 0);
  const dotted = /([A-Za-z_][\w]*)\.([A-Za-z_][\w]*)?$/.exec(before);
  const col = (c) => ({
    label: c.column_name, type: "property",
    detail: [c.datatype, c.unit ? `[${c.unit}]` : ""].filter(Boolean).join(" "),
    info: [c.description, c.ucd ? `UCD ${c.ucd}` : ""].filter(Boolean).join("\n"),
  });
  if (dotted) {
    const start = pos - (dotted[2]?.length ?? 0);
    const t = resolveQualifier(text, dotted[1], model);
    if (t) return { from: start, options: t.columns.map(col) };
    // A schema: its tables.
    const tables = model.bySchema.get(dotted[1]) ?? model.bySchema.get(dotted[1].toLowerCase()) ?? [];
    if (tables.length) {
      return { from: start, options: tables.map((t) => ({ label: t.table_name.split(".").pop(), type: "class", detail: "table", info: t.description ?? "" })) };
    }
    return null;
  }
  if (!word[1] && !/[\s,(]$/.test(before)) return null;
  const options = [];
  for (const t of model.byTable.values()) {
    options.push({ label: t.table_name, type: "class", detail: t.nrows != null ? `${Number(t.nrows).toLocaleString("en")} rows` : "table", info: t.description ?? "" });
  }
  const used = new Set(tablesOf(text));
  for (const name of used) {
    const t = model.byTable.get(name);
    if (t) t.columns.forEach((c) => options.push(col(c)));
  }
  for (const [f, info] of ADQL_FUNCTIONS) options.push({ label: f, type: "function", info, apply: `${f}(` });
  for (const k of ADQL_KEYWORDS) options.push({ label: k, type: "keyword" });
  return { from, options };
}
