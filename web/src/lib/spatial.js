// The spatial index (KDBush) a scatter plot's lasso and hover search, built from the
// plot's two coordinate arrays. regl-scatterplot builds its own from an array of [x, y]
// pairs, which it copies to a worker element by element (about half a second for 10^6
// points); this builds the same serialised index from the typed arrays, in a worker that
// is handed copies of them (one pass each, transferred rather than cloned), and the plot
// reads it as is.
import KDBush from "kdbush";

/** The KDBush index of points (x[i], y[i]) as its serialised ArrayBuffer. */
export function buildIndex(x, y, nodeSize = 16) {
  const index = new KDBush(x.length, nodeSize, Float32Array);
  for (let i = 0; i < x.length; i++) index.add(x[i], y[i]);
  index.finish();
  return index.data;
}

/** Reads a serialised index (as regl-scatterplot does; for the tests). */
export function readIndex(data) {
  return KDBush.from(data);
}

/**
 * The index built in a worker (copies of the arrays are handed over); in the calling
 * thread where workers are not available.
 */
export function spatialIndex(x, y) {
  if (typeof Worker === "undefined") return Promise.resolve(buildIndex(x, y));
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./spatial.worker.js", import.meta.url), { type: "module" });
    const xs = Float32Array.from(x);
    const ys = Float32Array.from(y);
    worker.onmessage = (e) => {
      worker.terminate();
      if (e.data.error) reject(new Error(e.data.error));
      else resolve(e.data.index);
    };
    worker.onerror = (e) => {
      worker.terminate();
      reject(new Error(`the spatial index could not be built: ${e.message}`));
    };
    worker.postMessage({ x: xs, y: ys }, [xs.buffer, ys.buffer]);
  });
}
