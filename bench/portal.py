#!/usr/bin/env python3
"""The web portal in headless Chromium: first paint, scrolling a 10^6-row result, drawing
10^6 points.

    python3 bench/portal.py                      # 10^6 rows: about 5 minutes on 2 cores
    python3 bench/portal.py --rows 100000        # a short run

Debian's Chromium driven by Playwright (software WebGL: SwiftShader), against `meridian
serve` on loopback with the release binary (else the debug one; `--meridian` names one).

Data: `meridian generate --profile narrow --seed 1` (--rows objects), ingested once as
`bench_object` under --work and reused.

Measurements:
- first paint: a new browser context (empty cache) opens `/`; the browser's
  first-contentful-paint, and the time until the query page is usable (the editor and the
  schema browser's tables shown), best and median of --repeat;
- scroll: the whole table as a result (`SELECT * FROM bench_object`, run from the page),
  then the grid scrolled by requestAnimationFrame steps of 3, 10 and 40 rows a frame
  (a brisk wheel, a fling, faster than any reading) for 4 s each, and by jumps to 20
  places; frames per second (beside the page's idle frame rate) and the 95th percentile
  frame time while scrolling, rows fetched against rows scrolled past, and the time from a
  jump to its rows on screen. Twice: in Chromium without a GPU (`--disable-gpu`: CPU
  raster and the software compositor, the closest headless stand-in for a browser whose
  GPU composites) and in Chromium compositing through SwiftShader's emulated GL (as the
  WebGL plots need here), where the emulation, not the page, sets the pace;
- scatter: the Plots page drawing ra against dec of every row: the time from the click
  to the drawn plot (fetching three columns of 10^6 rows included), the draw alone, the
  share of the plot's pixels inked (the points must show, not only be drawn), and a zoom
  step.

Results go to bench/results/portal-<time>.json with the machine description.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from images import Server, meridian_bin  # noqa: E402

CHROMIUM = "/usr/lib/chromium/chromium"


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


# The grid recycles row elements: the first row on screen is the lowest aria-rowindex.
FIRST_ROW = """const firstRow = () => Math.min(...Array.from(
  document.querySelectorAll('.row:not([hidden])'), (r) => Number(r.getAttribute('aria-rowindex'))));
"""

SCROLL = """async ([rowsPerFrame, seconds]) => {
""" + FIRST_ROW + """  const s = document.querySelector('.scroller');
  const times = [];
  const before = window.__meridianGrid.rows;
  const startRow = firstRow();
  // Scroll bar pixels per row: rows keep their height below the grid's height cap, and
  // stand in proportion above it.
  const perRow = (s.scrollHeight - s.clientHeight) / Math.max(1, Number(s.getAttribute('aria-rowcount')));
  let last = performance.now();
  const end = last + seconds * 1000;
  await new Promise((done) => {
    function step(now) {
      times.push(now - last);
      last = now;
      s.scrollTop += rowsPerFrame * perRow;
      if (now < end && s.scrollTop + s.clientHeight < s.scrollHeight) requestAnimationFrame(step);
      else done();
    }
    requestAnimationFrame(step);
  });
  const frames = times.slice(1);
  frames.sort((a, b) => a - b);
  const total = frames.reduce((a, b) => a + b, 0);
  return { frames: frames.length, fps: frames.length / (total / 1000),
           p95_ms: frames[Math.floor(frames.length * 0.95)], max_ms: frames[frames.length - 1],
           rows_scrolled: firstRow() - startRow, rows_fetched: window.__meridianGrid.rows - before };
}"""

IDLE = """async (seconds) => {
  let frames = 0;
  const end = performance.now() + seconds * 1000;
  await new Promise((done) => {
    function step(now) { frames += 1; if (now < end) requestAnimationFrame(step); else done(); }
    requestAnimationFrame(step);
  });
  return frames / seconds;
}"""

JUMP = """async (fraction) => {
""" + FIRST_ROW + """  const s = document.querySelector('.scroller');
  const t0 = performance.now();
  const before = firstRow();
  s.scrollTop = (s.scrollHeight - s.clientHeight) * fraction;
  // Until the rows drawn there are the new ones, all of them loaded.
  await new Promise((done) => {
    function check() {
      if (firstRow() !== before && !document.querySelector('.row:not([hidden]) .placeholder')) done();
      else requestAnimationFrame(check);
    }
    requestAnimationFrame(check);
  });
  return performance.now() - t0;
}"""


def open_result(browser, base, rows):
    """A page showing the whole table as a result; (context, page, seconds to the grid)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.goto(base)
    page.wait_for_selector("button.name:has-text('bench_object')")
    page.fill("input[aria-label='Row limit (MAXREC)']", str(rows + 1))
    page.locator(".cm-content").click()
    page.keyboard.type("SELECT * FROM bench_object")
    page.keyboard.press("Escape")
    t0 = time.perf_counter()
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".row .cell[role=gridcell]:not(.placeholder)", timeout=600_000)
    seconds = time.perf_counter() - t0
    total = int(page.inner_text("[data-testid=row-count]").replace(",", ""))
    assert total == rows, total
    return ctx, page, seconds


def measure_scroll(page):
    page.evaluate(SCROLL, [3, 1])  # warm-up
    scroll = {"idle_fps": page.evaluate(IDLE, 2)}
    for speed in (3, 10, 40):
        page.evaluate("document.querySelector('.scroller').scrollTop = 0")
        page.wait_for_timeout(300)
        scroll[f"{speed}_rows_per_frame"] = page.evaluate(SCROLL, [speed, 4])
    jumps = [page.evaluate(JUMP, f) for f in [0.05 * i for i in range(1, 20)] + [0.999]]
    scroll["jump_to_rows_ms_median"] = statistics.median(jumps)
    scroll["jump_to_rows_ms_max"] = max(jumps)
    scroll["rows_fetched_total"] = page.evaluate("window.__meridianGrid.rows")
    return scroll


def inked(page):
    """The fraction of the scatter plot's pixels that are not its white background."""
    from io import BytesIO
    from PIL import Image
    img = Image.open(BytesIO(page.locator("[data-testid=scatter] canvas").screenshot())).convert("L")
    hist = img.histogram()
    return 1 - sum(hist[245:]) / sum(hist)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meridian", help="the meridian binary (default: target/release, else target/debug)")
    ap.add_argument("--work", default="/tmp/meridian-bench-portal")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    binary = meridian_bin(args)
    work = Path(args.work)
    data = work / f"data-{args.rows}"
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "binary": binary,
                          "chromium": sh(CHROMIUM, "--version").stdout.strip()},
              "args": vars(args)}
    if not (data / "catalogs" / "bench_object").exists():
        sh(binary, "--quiet", "--data-dir", data, "generate", "--out", work / f"survey-{args.rows}",
           "--seed", 1, "--objects", args.rows, "--profile", "narrow")
        files = sorted((work / f"survey-{args.rows}").glob("object-*.parquet"))
        sh(binary, "--quiet", "--data-dir", data, "ingest", "bench_object", *files)
    # Each run's jobs in a directory of their own: results of earlier runs would count
    # against the anonymous client's storage quota.
    jobs = work / "jobs"
    shutil.rmtree(jobs, ignore_errors=True)
    srv = Server(binary, data, env={"MERIDIAN_JOBS__DIR": str(jobs)})
    base = srv.url + "/"
    from playwright.sync_api import sync_playwright
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
            # First paint, each time with an empty cache.
            fcp, usable = [], []
            for _ in range(args.repeat):
                ctx = b.new_context(viewport={"width": 1280, "height": 800})
                page = ctx.new_page()
                t0 = time.perf_counter()
                page.goto(base)
                page.wait_for_selector("header.top")
                # The browser's first contentful paint where it reports one (headless
                # Chromium may not): else the moment the page's header is in the DOM,
                # both from the navigation's start.
                shown = page.evaluate("performance.now()")
                page.wait_for_selector("button.name:has-text('bench_object')")
                page.wait_for_selector(".cm-content")
                usable.append((time.perf_counter() - t0) * 1e3)
                paint = page.evaluate("(performance.getEntriesByType('paint').find("
                                      "e => e.name === 'first-contentful-paint') || {}).startTime ?? null")
                fcp.append(paint if paint is not None else shown)
                ctx.close()
            result["first_paint"] = {"fcp_ms": fcp, "usable_ms": usable,
                                     "fcp_best_ms": min(fcp), "fcp_median_ms": statistics.median(fcp),
                                     "usable_best_ms": min(usable),
                                     "usable_median_ms": statistics.median(usable)}
            # The whole table as a result, then scrolling: in this browser (compositing
            # through SwiftShader's GL, which WebGL needs) and in one without a GPU
            # (Chromium's CPU raster and software compositor, as where no GPU is usable).
            cpu = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
            ctx, page, result["query_to_grid_s"] = open_result(cpu, base, args.rows)
            result["scroll"] = {"cpu_compositing": measure_scroll(page)}
            ctx.close()
            cpu.close()
            ctx, page, _ = open_result(b, base, args.rows)
            result["scroll"]["swiftshader"] = measure_scroll(page)
            # 10^6 points.
            page.click("nav >> text=Plots")
            page.click("[role=tab]:has-text('Scatter')")
            page.select_option("select[aria-label='x column']", "ra")
            t0 = time.perf_counter()
            page.select_option("select[aria-label='y column']", "dec")
            page.wait_for_selector("[data-testid=scatter][data-drawn=true]", timeout=600_000)
            plot = page.evaluate("window.__meridianPlot")
            result["scatter"] = {"points": plot["points"], "draw_ms": plot["drawMs"],
                                 "select_to_drawn_s": time.perf_counter() - t0,
                                 "inked_fraction": inked(page)}
            # Drawn is not enough: the points must show (a million faint points once
            # vanished when alpha blending was off).
            assert result["scatter"]["inked_fraction"] > 0.3, result["scatter"]
            # Interaction: 30 zoom steps, frame times.
            box = page.locator("[data-testid=scatter] canvas").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            t0 = time.perf_counter()
            for _ in range(30):
                page.mouse.wheel(0, -120)
                page.evaluate("new Promise(r => requestAnimationFrame(() => r()))")
            result["scatter"]["zoom_step_ms"] = (time.perf_counter() - t0) / 30 * 1e3
            ctx.close()
            b.close()
    finally:
        srv.close()
    out = ROOT / "bench" / "results" / time.strftime("portal-%Y%m%dT%H%M%SZ.json", time.gmtime())
    out.write_text(json.dumps(result, indent=2))
    fp, sc, pl = result["first_paint"], result["scroll"], result["scatter"]
    print(f"first contentful paint: best {fp['fcp_best_ms']:.0f} ms, median {fp['fcp_median_ms']:.0f} ms; "
          f"query page usable: best {fp['usable_best_ms']:.0f} ms, median {fp['usable_median_ms']:.0f} ms")
    for name, m in sc.items():
        print(f"scroll {args.rows:,} rows, {name.replace('_', ' ')} (the page idles at {m['idle_fps']:.0f} frames/s):")
        for speed in (3, 10, 40):
            f = m[f"{speed}_rows_per_frame"]
            print(f"  {speed} rows a frame: {f['fps']:.1f} fps, p95 frame {f['p95_ms']:.1f} ms, "
                  f"{f['rows_scrolled']:,} rows scrolled past with {f['rows_fetched']:,} fetched")
        print(f"  jump to rows: median {m['jump_to_rows_ms_median']:.0f} ms (max "
              f"{m['jump_to_rows_ms_max']:.0f}); {m['rows_fetched_total']:,} rows fetched in all")
    print(f"scatter of {pl['points']:,} points: draw {pl['draw_ms']:.0f} ms; from the column choice to "
          f"the drawn plot {pl['select_to_drawn_s']:.2f} s (fetch included); zoom step "
          f"{pl['zoom_step_ms']:.0f} ms")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
