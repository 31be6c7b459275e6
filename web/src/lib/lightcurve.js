// Finding an object's time series: a table of the service with the object's identifier
// column, a time column (UCD time.epoch) and a flux or magnitude.

const ucds = (c) => (c.ucd ?? "").toLowerCase().split(";");

/** The identifier column of a result: UCD meta.id;meta.main, else a name like objectId. */
export function idColumn(columns) {
  return columns.find((c) => ucds(c).includes("meta.id") && ucds(c).includes("meta.main"))?.name
    ?? columns.find((c) => /^(object_?id|objid|source_id|id)$/i.test(c.name))?.name
    ?? null;
}

/**
 * Where the light curve of an object with identifier column `id` lives: { table, id, time,
 * value, error, band, kind } or null. `tables` are TAP_SCHEMA tables with their columns.
 */
export function lightCurveSource(tables, id) {
  for (const t of tables) {
    const cols = t.columns;
    const idc = cols.find((c) => c.column_name.toLowerCase() === id.toLowerCase());
    if (!idc) continue;
    // The object table itself has the id as its main id; a time series has it as a reference.
    if (ucds(idc).includes("meta.main")) continue;
    const time = cols.find((c) => ucds(c)[0] === "time.epoch") ?? cols.find((c) => /mjd|obs_?time|epoch/i.test(c.column_name));
    if (!time) continue;
    const isValue = (c) => !ucds(c).includes("stat.error") && (ucds(c).some((u) => u.startsWith("phot.flux") || u.startsWith("phot.mag")));
    const value = cols.find(isValue);
    if (!value) continue;
    const error = cols.find((c) => ucds(c).includes("stat.error") && ucds(c).some((u) => ucds(value).includes(u) && u.startsWith("phot")));
    const band = cols.find((c) => ucds(c).includes("instr.filter") || /^(band|filter)$/i.test(c.column_name));
    return {
      table: t.table_name, id: idc.column_name, time: time.column_name, timeUnit: time.unit,
      value: value.column_name, valueUnit: value.unit, error: error?.column_name ?? null, band: band?.column_name ?? null,
      kind: ucds(value).some((u) => u.startsWith("phot.mag")) ? "mag" : "flux",
    };
  }
  return null;
}

/** The ADQL of the light curve of object `value` from `src`. */
export function lightCurveQuery(src, value) {
  const v = typeof value === "string" && !/^-?\d+$/.test(value) ? `'${value.replace(/'/g, "''")}'` : String(value);
  const cols = [src.time, src.value, src.error, src.band].filter(Boolean).map((c) => `"${c}"`).join(", ");
  return `SELECT ${cols} FROM ${src.table} WHERE "${src.id}" = ${v} ORDER BY "${src.time}"`;
}
