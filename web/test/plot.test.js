import { describe, expect, test } from "vitest";
import { extent, histogram, density, rowsInBox, inPolygon, normalize, selectionFilter } from "../src/lib/plot.js";
import { parseHipsList, chooseSurvey, polygonVertices, centreOf } from "../src/lib/sky.js";
import { idColumn, lightCurveSource, lightCurveQuery } from "../src/lib/lightcurve.js";
import { errorMessage } from "../src/lib/api.js";
import { addHistory, loadHistory } from "../src/lib/history.js";

describe("binning", () => {
  test("histograms put the maximum in the last bin and skip NaN", () => {
    const h = histogram([0, 1, 2, 3, 4, NaN], 4);
    expect(h.counts).toEqual([1, 1, 1, 2]);
    expect(h.edges).toEqual([0, 1, 2, 3, 4]);
    expect(extent([NaN, 3, -1])).toEqual([-1, 3]);
    expect(extent([NaN])).toBeNull();
  });
  test("density maps count points per cell", () => {
    const d = density([0, 0, 1, 1], [0, 0, 1, 1], 2, 2);
    expect(Array.from(d.grid)).toEqual([2, 0, 0, 2]);
    expect(d.max).toBe(2);
  });
});

describe("selections", () => {
  test("a box selects the rows inside it", () => {
    expect(rowsInBox([10, 11, 12], [1, 2, 3], [1.5, 3], [5, 6, 7], [5.5, 7])).toEqual([11, 12]);
  });
  test("polygons", () => {
    const square = [[0, 0], [1, 0], [1, 1], [0, 1]];
    expect(inPolygon(0.5, 0.5, square)).toBe(true);
    expect(inPolygon(1.5, 0.5, square)).toBe(false);
  });
  test("as a server filter", () => {
    expect(selectionFilter([3, 5])).toBe("_row:in:3,5");
    expect(selectionFilter([])).toBeNull();
  });
  test("normalize to GL space, flipped on request", () => {
    expect(Array.from(normalize([0, 5, 10], [0, 10]))).toEqual([-1, 0, 1]);
    expect(Array.from(normalize([0, 10], [0, 10], true))).toEqual([1, -1]);
  });
});

describe("sky", () => {
  test("the HiPS list and the choice of survey", () => {
    const list = parseHipsList("creator_did = ivo://x/a\nhips_service_url = http://h/hips/a\ndataproduct_type = image\nhips_tile_format = png fits\nobs_title = M13\n\n" +
      "hips_service_url = http://h/hips/c\ndataproduct_type = catalog\n");
    expect(list.length).toBe(2);
    expect(chooseSurvey(list)).toEqual({ url: "http://h/hips/a", format: "png", title: "M13" });
    expect(chooseSurvey([])).toBeNull();
  });
  test("DALI polygons", () => {
    expect(polygonVertices([1, 2, 3, 4, 5, 6])).toEqual([[1, 2], [3, 4], [5, 6]]);
    expect(polygonVertices([1, 2, 3])).toBeNull();
  });
  test("the centre of points across RA 0", () => {
    const c = centreOf([359, 1], [0, 0]);
    expect(c.ra === 0 || Math.abs(c.ra - 360) < 1e-9 || Math.abs(c.ra) < 1e-9).toBe(true);
    expect(c.fov).toBeGreaterThan(2);
  });
});

describe("light curves", () => {
  const tables = [
    { table_name: "obj", columns: [{ column_name: "objectId", ucd: "meta.id;meta.main" }, { column_name: "g_mag", ucd: "phot.mag" }] },
    { table_name: "src", columns: [
      { column_name: "sourceId", ucd: "meta.id;meta.main" }, { column_name: "objectId", ucd: "meta.id" },
      { column_name: "band", ucd: "meta.id;instr.filter" }, { column_name: "midpointMjdTai", ucd: "time.epoch", unit: "d" },
      { column_name: "psfFlux", ucd: "phot.flux.density", unit: "nJy" }, { column_name: "psfFluxErr", ucd: "stat.error;phot.flux.density" }] },
  ];
  test("are found by the object's identifier and a time column", () => {
    expect(idColumn([{ name: "objectId", ucd: "meta.id;meta.main" }, { name: "ra" }])).toBe("objectId");
    const s = lightCurveSource(tables, "objectId");
    expect(s).toMatchObject({ table: "src", time: "midpointMjdTai", value: "psfFlux", error: "psfFluxErr", band: "band", kind: "flux" });
    expect(lightCurveQuery(s, 42)).toBe('SELECT "midpointMjdTai", "psfFlux", "psfFluxErr", "band" FROM src WHERE "objectId" = 42 ORDER BY "midpointMjdTai"');
    expect(lightCurveQuery(s, "o'1")).toContain("= 'o''1'");
  });
});

describe("server messages", () => {
  test("DALI VOTable errors, JSON and text", () => {
    const vot = '<VOTABLE><RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">line 1, column 8: unknown column &apos;x&apos;</INFO></RESOURCE></VOTABLE>';
    expect(errorMessage(vot)).toBe("line 1, column 8: unknown column 'x'");
    expect(errorMessage('{"error": "no such table"}', "application/json")).toBe("no such table");
    expect(errorMessage("Error: quota exceeded")).toBe("quota exceeded");
  });
});

describe("history", () => {
  test("newest first, repeated queries move up, per user", () => {
    const store = new Map();
    const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
    addHistory(storage, "ada", { query: "a", lang: "ADQL" });
    addHistory(storage, "ada", { query: "b", lang: "ADQL" });
    addHistory(storage, "ada", { query: "a", lang: "ADQL" });
    expect(loadHistory(storage, "ada").map((e) => e.query)).toEqual(["a", "b"]);
    expect(loadHistory(storage, "bob")).toEqual([]);
  });
});
