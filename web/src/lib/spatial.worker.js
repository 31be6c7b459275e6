// Builds a scatter plot's spatial index off the page's thread (see spatial.js).
import { buildIndex } from "./spatial.js";

self.onmessage = ({ data: { x, y } }) => {
  try {
    const index = buildIndex(x, y);
    self.postMessage({ index }, [index]);
  } catch (e) {
    self.postMessage({ error: String(e?.message ?? e) });
  }
};
