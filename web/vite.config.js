import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";
import { copyFileSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";

// Aladin Lite (GPL-3.0 / LGPL-3.0) is shipped as its own unmodified file with its notices,
// beside the project's Apache-2.0 bundle, and loaded only when the sky view opens.
function aladinLite() {
  let outDir;
  return {
    name: "meridian-aladin-lite",
    apply: "build",
    configResolved(c) {
      outDir = resolve(c.root, c.build.outDir);
    },
    closeBundle() {
      const from = resolve("node_modules/aladin-lite");
      const to = join(outDir, "vendor/aladin-lite");
      mkdirSync(to, { recursive: true });
      for (const f of ["dist/aladin.js", "LICENSE", "COPYING", "COPYING.LESSER", "README.md", "package.json"]) {
        copyFileSync(join(from, f), join(to, f.replace("dist/", "")));
      }
    },
  };
}

export default defineConfig({
  // Relative paths: the portal works under any prefix the service is mounted at.
  base: "./",
  plugins: [svelte(), aladinLite()],
  build: {
    target: "es2022",
    chunkSizeWarningLimit: 2000,
    sourcemap: false,
  },
  test: {
    include: ["test/**/*.test.js"],
    environment: "node",
  },
});
