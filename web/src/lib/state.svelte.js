// The portal's shared state: who is logged in, the service's tables, the result being
// explored, and the selection that the grid, the plots and the sky view share.
import { getJson, tapSync, rowsOf, ServiceError } from "./api.js";
import { schemaModel } from "./adql.js";

export const app = $state({
  page: "query",
  user: null,
  scopes: [],
  schema: null,
  schemaError: null,
  // { jobId, resultId, query, lang, columns: [{name, type, unit, ucd, description}], total, rows }
  result: null,
  sort: [],
  filters: {},
  // Rows of the result (`_row`) selected in any view, and which view made the selection.
  selection: { rows: [], from: null },
  // Only the selected rows are shown in the grid.
  selectionOnly: false,
  // The row whose details (images, spectra, light curve) are shown.
  row: null,
  // A banner for a lost connection or an expired login.
  trouble: null,
  editorText: "",
});

export function go(page) {
  app.page = page;
  if (location.hash !== `#/${page}`) history.replaceState(null, "", `#/${page}`);
}

export async function refreshUser() {
  try {
    // Anonymous callers are told 401: not a lost login.
    const who = await getJson("api/auth/whoami", { quiet: true });
    app.user = who.user;
    app.scopes = who.scopes ?? [];
  } catch (e) {
    if (e instanceof ServiceError && (e.kind === "auth" || e.status === 401 || e.status === 403)) {
      app.user = null;
      app.scopes = [];
    } else {
      throw e;
    }
  }
}

export async function loadSchema() {
  app.schemaError = null;
  try {
    const [tables, columns, keys] = await Promise.all([
      tapSync("SELECT schema_name, table_name, description, nrows, table_index FROM TAP_SCHEMA.tables ORDER BY table_index", { maxrec: 100000 }),
      tapSync("SELECT table_name, column_name, datatype, unit, ucd, description, principal, column_index FROM TAP_SCHEMA.columns ORDER BY table_name, column_index", { maxrec: 1000000 }),
      tapSync("SELECT k.key_id, k.from_table, k.target_table, c.from_column, c.target_column FROM TAP_SCHEMA.keys AS k JOIN TAP_SCHEMA.key_columns AS c ON c.key_id = k.key_id ORDER BY k.key_id", { maxrec: 100000 }),
    ]);
    app.schema = schemaModel(rowsOf(tables), rowsOf(columns), rowsOf(keys));
  } catch (e) {
    app.schemaError = e.message;
  }
}

/** The column descriptions (unit, UCD, description) TAP_SCHEMA gives for `name`, if any. */
export function describeColumn(name, query) {
  if (!app.schema) return {};
  const lower = (query ?? "").toLowerCase();
  for (const t of app.schema.byTable.values()) {
    if (!lower.includes(t.table_name.toLowerCase().split(".").pop())) continue;
    const c = t.columns.find((c) => c.column_name === name);
    if (c) return c;
  }
  return {};
}

export function setSelection(rows, from) {
  app.selection = { rows, from };
}

/** The result's columns holding positions: [ra, dec] names, or null. */
export function positionColumns(columns) {
  const byUcd = (u) => columns.find((c) => (c.ucd ?? "").split(";").includes(u))?.name;
  const byName = (...names) => columns.find((c) => names.includes(c.name.toLowerCase()))?.name;
  const ra = byUcd("pos.eq.ra") ?? byName("ra", "ra_icrs", "raj2000", "ra1", "s_ra", "coord_ra");
  const dec = byUcd("pos.eq.dec") ?? byName("dec", "de", "dec_icrs", "dej2000", "decl", "dec1", "s_dec", "coord_dec");
  return ra && dec ? [ra, dec] : null;
}
