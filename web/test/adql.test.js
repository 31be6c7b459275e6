import { describe, expect, test } from "vitest";
import { errorPosition, offsetOf, tablesOf, bigTableWarning, schemaModel, completions, resolveQualifier, joinQuery } from "../src/lib/adql.js";

const model = schemaModel(
  [
    { schema_name: "public", table_name: "gaia", description: "Gaia DR3", nrows: 5_000_000 },
    { schema_name: "public", table_name: "tycho2", description: null, nrows: 2_500 },
    { schema_name: "ivoa", table_name: "ivoa.obscore", description: "images", nrows: null },
  ],
  [
    { table_name: "gaia", column_name: "ra", datatype: "double", unit: "deg", ucd: "pos.eq.ra", description: "Right ascension" },
    { table_name: "gaia", column_name: "phot_g_mean_mag", datatype: "real", unit: "mag", ucd: "phot.mag", description: "G" },
    { table_name: "tycho2", column_name: "vtmag", datatype: "real", unit: "mag", ucd: null, description: null },
    { table_name: "ivoa.obscore", column_name: "s_region", datatype: "double", unit: "deg", ucd: null, description: null },
  ],
);

describe("error positions", () => {
  test("are read from the server's message", () => {
    expect(errorPosition("line 2, column 17: expected an expression")).toEqual({ line: 2, column: 17 });
    expect(errorPosition("no position here")).toBeNull();
  });
  test("map to offsets, clamped to the text", () => {
    const text = "SELECT a\nFROM t\nWHERE x";
    expect(offsetOf(text, 2, 6)).toBe(14);
    expect(text[offsetOf(text, 3, 7)]).toBe("x");
    expect(offsetOf(text, 9, 99)).toBe(text.length);
  });
});

describe("the big-table warning", () => {
  test("names a whole read of a large table", () => {
    expect(bigTableWarning("SELECT * FROM gaia", model.sizes)).toEqual({ table: "gaia", rows: 5_000_000 });
    expect(bigTableWarning("select ra from GAIA as g join tycho2 t on 1=1", model.sizes)?.table).toBe("gaia");
  });
  test("is quiet with TOP, LIMIT or WHERE, or on small tables", () => {
    expect(bigTableWarning("SELECT TOP 10 * FROM gaia", model.sizes)).toBeNull();
    expect(bigTableWarning("SELECT * FROM gaia LIMIT 5", model.sizes)).toBeNull();
    expect(bigTableWarning("SELECT * FROM gaia WHERE ra < 1", model.sizes)).toBeNull();
    expect(bigTableWarning("SELECT * FROM tycho2", model.sizes)).toBeNull();
  });
  test("is not fooled by comments and strings", () => {
    expect(bigTableWarning("SELECT * FROM gaia -- WHERE ra < 1", model.sizes)?.table).toBe("gaia");
    expect(bigTableWarning("SELECT 'TOP 5' FROM gaia", model.sizes)?.table).toBe("gaia");
  });
});

describe("completion", () => {
  const at = (text) => completions(text, text.length, model);
  test("offers tables with their sizes", () => {
    const c = at("SELECT * FROM gai");
    expect(c.from).toBe(14);
    const gaia = c.options.find((o) => o.label === "gaia");
    expect(gaia.detail).toBe("5,000,000 rows");
  });
  test("offers the columns of the tables the query reads, with units", () => {
    const c = at("SELECT phot FROM gaia");
    // The cursor after `phot`.
    const d = completions("SELECT phot FROM gaia", 11, model);
    const col = d.options.find((o) => o.label === "phot_g_mean_mag");
    expect(col.detail).toBe("real [mag]");
    expect(col.info).toContain("UCD phot.mag");
    expect(c.options.some((o) => o.label === "vtmag")).toBe(false);
  });
  test("offers an alias's columns after its dot", () => {
    const d = completions("SELECT t. FROM tycho2 AS t", 9, model);
    expect(d.options.map((o) => o.label)).toEqual(["vtmag"]);
    expect(resolveQualifier("SELECT g.ra FROM gaia g", "g", model).table_name).toBe("gaia");
  });
  test("offers a schema's tables after its dot, and ADQL functions", () => {
    const d = at("SELECT * FROM ivoa.");
    expect(d.options.map((o) => o.label)).toEqual(["obscore"]);
    expect(at("SELECT DIST").options.some((o) => o.label === "DISTANCE" && o.type === "function")).toBe(true);
  });
  test("tables of a query are found in FROM and JOIN", () => {
    expect(tablesOf('SELECT * FROM gaia g JOIN "tycho2" t ON 1=1 JOIN ivoa.obscore o ON 1=1')).toEqual(["gaia", "tycho2", "ivoa.obscore"]);
  });
});

describe("joins through foreign keys", () => {
  const m = schemaModel(
    [
      { schema_name: "catalogs", table_name: "gaia", nrows: 10 },
      { schema_name: "catalogs", table_name: "tycho2", nrows: 10 },
      { schema_name: "catalogs", table_name: "x1p5__gaia__tycho2", nrows: 5 },
    ],
    [],
    [
      { key_id: "x1p5__gaia__tycho2_catalog", from_table: "x1p5__gaia__tycho2", target_table: "gaia", from_column: "id1", target_column: "source_id" },
      { key_id: "x1p5__gaia__tycho2_reference", from_table: "x1p5__gaia__tycho2", target_table: "tycho2", from_column: "id2", target_column: "_healpix_29" },
      { key_id: "unknown", from_table: "elsewhere", target_table: "gaia", from_column: "a", target_column: "b" },
    ],
  );
  test("a table's keys become its joins, and the query joins both catalogs", () => {
    const t = m.byTable.get("x1p5__gaia__tycho2");
    expect(t.joins).toEqual([
      { target: "gaia", on: [["id1", "source_id"]] },
      { target: "tycho2", on: [["id2", "_healpix_29"]] },
    ]);
    expect(m.byTable.get("gaia").joins).toEqual([]);
    expect(joinQuery(t)).toBe(
      "SELECT TOP 100 t0.*, t1.*, t2.*\n" +
        "FROM x1p5__gaia__tycho2 AS t0\n" +
        "JOIN gaia AS t1 ON t1.source_id = t0.id1\n" +
        "JOIN tycho2 AS t2 ON t2._healpix_29 = t0.id2",
    );
  });
});
