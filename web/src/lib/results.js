// Opening a finished job's result for the grid, the plots and the sky view.
import { app, describeColumn } from "./state.svelte.js";
import { fetchWindow } from "./jobs.js";
import { windowParams } from "./grid.js";
import { selectionFilter } from "./plot.js";

/** Shows job `job`'s result (`result`) in the grid. */
export async function openJob(job, resultId = "result") {
  const { table, total } = await fetchWindow(job.id, windowParams({ offset: 0, limit: 1, columns: ["_row", "*"] }), { resultId });
  const query = job.parameters?.query ?? "";
  const columns = table.schema.fields
    .filter((f) => f.name !== "_row")
    .map((f) => {
      const meta = f.metadata ?? new Map();
      const tap = describeColumn(f.name, query);
      return {
        name: f.name,
        type: String(f.type),
        unit: meta.get("unit") || tap.unit || "",
        ucd: meta.get("ucd") || tap.ucd || "",
        description: meta.get("description") || tap.description || "",
      };
    });
  app.result = { jobId: job.id, resultId, query, lang: job.parameters?.lang ?? "ADQL", columns, total, rows: job.rows?.[resultId] ?? total, maxrec: Number(job.parameters?.maxrec ?? 0) };
  app.sort = [];
  app.filters = {};
  app.selection = { rows: [], from: null };
  app.selectionOnly = false;
  app.row = null;
}

/** The server's FILTER values for the grid's current filters and selection. */
export function currentFilters() {
  const out = [];
  for (const v of Object.values(app.filters)) out.push(...(v.filters ?? []));
  // The server bounds the list and says so.
  const selected = app.selectionOnly ? selectionFilter(app.selection.rows, Infinity) : null;
  if (selected) out.push(selected);
  return out;
}
