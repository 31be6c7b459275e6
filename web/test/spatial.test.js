import { describe, expect, test } from "vitest";
import { buildIndex, readIndex, spatialIndex } from "../src/lib/spatial.js";

function points(n, seed = 7) {
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
  const x = new Float32Array(n);
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x[i] = rnd();
    y[i] = rnd();
  }
  return { x, y };
}

describe("the scatter plot's spatial index", () => {
  test("finds the points of a box as a search of every point does", () => {
    const { x, y } = points(70000);
    const index = readIndex(buildIndex(x, y));
    const [x0, y0, x1, y1] = [-0.3, 0.1, 0.05, 0.4];
    const found = index.range(x0, y0, x1, y1).sort((a, b) => a - b);
    const expected = [];
    for (let i = 0; i < x.length; i++) if (x[i] >= x0 && x[i] <= x1 && y[i] >= y0 && y[i] <= y1) expected.push(i);
    expect(found).toEqual(expected);
    expect(found.length).toBeGreaterThan(1000);
  });

  test("is the serialised form regl-scatterplot reads (KDBush version 1 header)", () => {
    const data = buildIndex(new Float32Array([0, 1]), new Float32Array([0, 1]));
    const [magic, versionAndType] = new Uint8Array(data, 0, 2);
    expect(magic).toBe(0xdb);
    expect(versionAndType >> 4).toBe(1);
  });

  test("is built where no worker exists", async () => {
    const { x, y } = points(100);
    const index = readIndex(await spatialIndex(x, y));
    expect(index.numItems).toBe(100);
  });
});
