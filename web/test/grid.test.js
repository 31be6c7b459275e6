import { describe, expect, test } from "vitest";
import { pagesFor, PageCache, parseColumnFilter, cycleSort, windowParams, formatValue, PAGE_ROWS, virtualRows, slotRows } from "../src/lib/grid.js";

describe("windows of rows", () => {
  test("cover what is on screen, and no more than a page around it", () => {
    expect(pagesFor(0, 30, 1_000_000)).toEqual([0, 1]);
    expect(pagesFor(500_010, 500_040, 1_000_000)).toEqual([2499, 2500, 2501]);
    expect(pagesFor(999_990, 1_000_020, 1_000_000)).toEqual([4998, 4999]);
    expect(pagesFor(0, 10, 0)).toEqual([]);
  });
  test("a million-row result fetches only the windows in view", () => {
    // Scrolling by one screen (33 rows) at a time through the first 10,000 rows.
    const fetched = new Set();
    for (let first = 0; first < 10_000; first += 33) pagesFor(first, first + 33, 1_000_000, 0).forEach((p) => fetched.add(p));
    expect(fetched.size * PAGE_ROWS).toBeLessThanOrEqual(10_200);
  });
  test("the cache keeps the most recently used pages", () => {
    const c = new PageCache(2);
    c.set(1, ["a"]);
    c.set(2, ["b"]);
    c.get(1);
    c.set(3, ["c"]);
    expect(c.has(1)).toBe(true);
    expect(c.has(2)).toBe(false);
    expect(c.size).toBe(2);
  });
});

describe("column filters", () => {
  test("numbers: comparisons, ranges, nulls", () => {
    expect(parseColumnFilter("g", "< 17.5", true).filters).toEqual(["g:lt:17.5"]);
    expect(parseColumnFilter("g", ">=3", true).filters).toEqual(["g:ge:3"]);
    expect(parseColumnFilter("g", "12..10", true).filters).toEqual(["g:ge:10", "g:le:12"]);
    expect(parseColumnFilter("g", "!= 2", true).filters).toEqual(["g:ne:2"]);
    expect(parseColumnFilter("g", "5", true).filters).toEqual(["g:eq:5"]);
    expect(parseColumnFilter("g", "null", true).filters).toEqual(["g:null"]);
    expect(parseColumnFilter("g", "!null", true).filters).toEqual(["g:notnull"]);
    expect(parseColumnFilter("g", "", true).filters).toEqual([]);
  });
  test("bad numbers are refused with a message", () => {
    expect(parseColumnFilter("g", "< abc", true).error).toMatch(/not a number/);
    expect(parseColumnFilter("g", "<", true).error).toMatch(/missing/);
    expect(parseColumnFilter("g", "bright", true).error).toMatch(/write a number/);
  });
  test("text is found anywhere in the value", () => {
    expect(parseColumnFilter("name", "NGC", false).filters).toEqual(["name:contains:NGC"]);
  });
});

describe("sorting and parameters", () => {
  test("a click cycles ascending, descending, none", () => {
    let k = cycleSort([], "ra");
    expect(k).toEqual([{ column: "ra", desc: false }]);
    k = cycleSort(k, "ra");
    expect(k).toEqual([{ column: "ra", desc: true }]);
    expect(cycleSort(k, "ra")).toEqual([]);
  });
  test("window parameters carry sort and every filter", () => {
    const p = windowParams({ offset: 200, limit: 200, columns: ["_row", "*"], sort: [{ column: "g", desc: true }], filters: ["g:lt:5", "ra:gt:1"] });
    expect(p.toString()).toBe("OFFSET=200&LIMIT=200&COLUMNS=_row%2C*&SORT=-g&FILTER=g%3Alt%3A5&FILTER=ra%3Agt%3A1");
  });
});

describe("values", () => {
  test("floats show the digits their type holds", () => {
    expect(formatValue(Math.fround(22.334331512451172), "Float32")).toBe("22.33433");
    expect(formatValue(266.404996123456789, "Float64")).toBe("266.4049961");
    expect(formatValue(1e-7, "Float64")).toBe("1.000000000e-7");
    expect(formatValue(null)).toBe("");
    expect(formatValue(42)).toBe("42");
    expect(formatValue([1, 2.5])).toBe("[1, 2.5]");
  });
});

describe("virtual rows", () => {
  test("below the cap, rows sit at their own place", () => {
    const v = virtualRows({ scrollTop: 2400, viewport: 240, total: 1000, rowH: 24, overscan: 2 });
    expect(v.height).toBe(24000);
    expect(v.items[0]).toEqual({ index: 98, start: 98 * 24 });
    expect(v.items.at(-1).index).toBe(100 + 10 + 2);
  });
  test("beyond the cap, every row is reachable, the last at the bottom", () => {
    const total = 50_000_000;
    const top = virtualRows({ scrollTop: 0, viewport: 600, total, rowH: 24, overscan: 0, maxPx: 8_000_000 });
    expect(top.height).toBe(8_000_000);
    expect(top.items[0]).toEqual({ index: 0, start: 0 });
    const end = virtualRows({ scrollTop: 8_000_000 - 600, viewport: 600, total, rowH: 24, overscan: 0, maxPx: 8_000_000 });
    expect(end.items.at(-1).index).toBe(total - 1);
    expect(end.items.at(-1).start + 24).toBeLessThanOrEqual(8_000_000);
    const mid = virtualRows({ scrollTop: (8_000_000 - 600) / 2, viewport: 600, total, rowH: 24, overscan: 0, maxPx: 8_000_000 });
    expect(Math.abs(mid.items[0].index - (total - 25) / 2)).toBeLessThan(2);
  });
  test("an empty result draws nothing", () => {
    expect(virtualRows({ scrollTop: 0, viewport: 600, total: 0, rowH: 24 }).items).toEqual([]);
  });
});

describe("slotRows", () => {
  test("keeps a row in its slot while it stays in view", () => {
    const a = virtualRows({ scrollTop: 2400, viewport: 240, total: 1000, rowH: 24, overscan: 2 });
    const b = virtualRows({ scrollTop: 2400 + 3 * 24, viewport: 240, total: 1000, rowH: 24, overscan: 2 });
    expect(a.slots).toBe(15);
    const sa = slotRows(a.items, a.slots);
    const sb = slotRows(b.items, b.slots);
    // Three rows left the top, three came in at the bottom: only their slots differ.
    const changed = sa.map((x, i) => x.index !== sb[i].index).filter(Boolean).length;
    expect(changed).toBe(3);
    for (const [i, x] of sb.entries()) expect(x.index % 15).toBe(i);
    // Given the slots before, the rows that stayed keep their objects.
    const kept = slotRows(b.items, b.slots, sa);
    expect(kept.filter((x, i) => x === sa[i]).length).toBe(12);
  });
  test("leaves slots empty past the last row", () => {
    const v = virtualRows({ scrollTop: 0, viewport: 240, total: 4, rowH: 24, overscan: 2 });
    const s = slotRows(v.items, v.slots);
    expect(s.filter(Boolean).map((x) => x.index)).toEqual([0, 1, 2, 3]);
    expect(s.length).toBe(15);
  });
});
