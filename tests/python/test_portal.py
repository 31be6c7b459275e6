"""The web portal in a real browser: Debian's Chromium driven by Playwright (no browser is
downloaded) against a real `meridian serve` over the demo survey, its images and spectra,
and the real Gaia sample. Each test does what a person does (types a query with
completion, runs it, sorts, filters, plots, selects, opens a cutout, logs in, uploads a
file) and checks what the page shows against the services or an independent reader
(pandas, astropy). Every request the pages make is watched: none may leave the machine.
Screenshots of each main view are kept in tests/artifacts/portal (or
$MERIDIAN_TEST_ARTIFACTS)."""

import io
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from conftest import Server, add_users, personal_env, run

warnings.simplefilter("ignore")
ARTIFACTS = Path(os.environ.get("MERIDIAN_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts")) / "portal"
OUTSIDE = []


@pytest.fixture(scope="module")
def data(store, tmp_path_factory):
    """The demo survey (objects, sources, images, spectra, a density HiPS), and the Gaia
    sample beside it."""
    tmp = tmp_path_factory.mktemp("portal")
    d = tmp / "data"
    run("demo", "--objects", 20000, "--no-serve", "--quiet", data_dir=d)
    os.symlink(store / "catalogs" / "gaia", d / "catalogs" / "gaia")
    # The demo makes a density map of its objects for the sky view.
    assert (d / "hips" / "demo_object-density" / "properties").exists()
    return tmp


@pytest.fixture(scope="module")
def server(data):
    env = personal_env(data)
    add_users(data / "data", env, "ada")
    with Server(data / "data", env=env) as s:
        yield s.url.removesuffix("/tap") + "/"


@pytest.fixture
def page(browser, server, request):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    errors = []

    def route(r):
        if r.request.url.startswith(server) or r.request.url.startswith(("data:", "blob:")):
            return r.continue_()
        OUTSIDE.append(r.request.url)
        return r.abort()
    ctx.route("**/*", route)
    p = ctx.new_page()
    p.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    p.goto(server)
    p.wait_for_selector("text=Tables")
    p.wait_for_selector("button.name:has-text('demo_object')")
    yield p
    # The page as the test left it (kept with the screenshots: a failure's last state).
    shot(p, f"last-{request.node.name}")
    assert not errors, errors
    ctx.close()


def login(page, user="ada"):
    page.click("nav >> text=Your data")
    page.fill("input[autocomplete=username]", user)
    page.fill("input[type=password]", f"{user}-password")
    page.click("form button[type=submit]")
    page.wait_for_selector("[data-testid=user]")


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def tap_csv(server, query, **extra):
    r = requests.post(server + "tap/sync", data={"LANG": "ADQL", "QUERY": query, "FORMAT": "csv",
                                                 "MAXREC": 10**7, **extra})
    assert r.status_code == 200, r.text
    return pd.read_csv(io.StringIO(r.text))


def type_query(page, text):
    if not page.locator(".cm-content").is_visible():
        page.click("nav >> text=Query")
    page.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.type(text, delay=5)


def start_query(page, text):
    """Types the query and runs it with Ctrl-Enter (Escape first closes the completion)."""
    type_query(page, text)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Enter")


def run_query(page, text):
    start_query(page, text)
    page.wait_for_selector("[data-testid=row-count]", timeout=60000)
    page.wait_for_selector(".row .cell[role=gridcell]:not(.placeholder)", timeout=30000)


# The grid recycles its row elements: a row's place is its aria-rowindex, not its place
# among the elements.
FIRST_ROW = ".row[aria-rowindex='1']"


def grid_rows(page):
    """The rows on screen, in order: lists of cell texts (without the row number)."""
    return page.eval_on_selector_all(
        ".row:not([hidden])",
        "rs => rs.map(r => [Number(r.getAttribute('aria-rowindex')), "
        "Array.from(r.querySelectorAll('[role=gridcell]'), c => c.textContent)])"
        ".sort((a, b) => a[0] - b[0]).map(x => x[1])")


def header_names(page):
    return page.eval_on_selector_all(".head [role=columnheader] button.sort",
                                     "bs => bs.map(b => b.textContent.replace(/[▲▼]/g, '').trim())")


def completion(page, label):
    """Waits for the completion list to offer `label` (asking for it with Ctrl-Space, as a
    person would, if it has not opened by itself)."""
    option = page.locator(".cm-tooltip-autocomplete li", has_text=label).first
    try:
        option.wait_for(timeout=5000)
    except Exception:
        page.keyboard.press("Control+Space")
        option.wait_for(timeout=10000)
    # CodeMirror ignores Enter for a moment after the list opens (its interaction delay).
    page.wait_for_timeout(150)
    return option


def test_query_with_completion_runs_and_shows_the_rows(page, server):
    page.locator(".cm-content").click()
    page.keyboard.type("SELECT TOP 25 objectId, ra, dec, g_mag FROM demo_obj", delay=10)
    completion(page, "demo_object")
    page.keyboard.press("Enter")
    page.keyboard.type(" WHERE g_m", delay=10)
    completion(page, "g_mag")
    # Completion shows the column's unit and type.
    assert "mag" in page.locator(".cm-tooltip-autocomplete").inner_text()
    page.keyboard.press("Enter")
    page.keyboard.type(" < 21 ORDER BY objectId", delay=5)
    text = page.locator(".cm-content").inner_text()
    assert text == "SELECT TOP 25 objectId, ra, dec, g_mag FROM demo_object WHERE g_mag < 21 ORDER BY objectId"
    shot(page, "query")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("[data-testid=row-count]", timeout=60000)
    page.wait_for_selector(".row .cell[role=gridcell]:not(.placeholder)")
    want = tap_csv(server, text)
    assert page.inner_text("[data-testid=row-count]") == str(len(want)) == "25"
    assert header_names(page) == ["objectId", "ra", "dec", "g_mag"]
    rows = grid_rows(page)
    assert [int(r[0]) for r in rows] == want.objectId.tolist()
    assert [float(r[1]) for r in rows] == pytest.approx(want.ra.tolist(), rel=1e-9)
    # Units and descriptions from the service's metadata.
    assert page.locator(".head .unit").nth(1).inner_text() == "deg"
    shot(page, "results")
    # The query is in the history.
    page.click("nav >> text=Query")
    assert "ORDER BY objectId" in page.locator("section[aria-label=History]").inner_text()


def test_an_error_is_marked_at_its_place_in_the_editor(page, server):
    bad = "SELECT TOP 5 ra,\n  dec FROM demo_object WHERE dec >> 3"
    type_query(page, bad)
    page.keyboard.press("Escape")
    page.click("button:has-text('Run')")
    err = page.locator("[data-testid=query-error]")
    err.wait_for(timeout=30000)
    # The server's own message, with its line and column.
    r = requests.post(server + "tap/sync", data={"LANG": "ADQL", "QUERY": bad})
    m = re.search(r"line (\d+), column (\d+)", r.text)
    assert m, r.text
    assert f"Line {m.group(1)}, column {m.group(2)}" in err.inner_text()
    mark = page.locator(".cm-lintRange-error")
    mark.wait_for()
    # The mark is on the line the server named, where it said.
    line = page.locator(".cm-line").nth(int(m.group(1)) - 1)
    assert line.locator(".cm-lintRange-error").count() == 1
    col = page.evaluate("""() => {
        const el = document.querySelector('.cm-lintRange-error');
        const line = el.closest('.cm-line');
        const r = document.createRange(); r.setStart(line, 0); r.setEnd(el, 0);
        return r.toString().length + 1; }""")
    assert col == int(m.group(2))
    shot(page, "query-error")


def test_schema_browser_examples_and_the_big_table_warning(page, server):
    page.click("button[aria-label='Columns of demo_object']")
    browser_text = page.locator("section[aria-label='Schema browser']").inner_text()
    assert "pos.eq.ra" in browser_text and "deg" in browser_text
    type_query(page, "SELECT TOP 3 ")
    page.locator("section[aria-label='Schema browser'] button.name", has_text="g_mag").first.click()
    page.keyboard.type(" FROM ", delay=5)
    page.locator("section[aria-label='Schema browser'] button.name", has_text="demo_object").first.click()
    assert page.locator(".cm-content").inner_text() == "SELECT TOP 3 g_mag FROM demo_object"
    # The service's examples.
    examples = page.locator("section[aria-label=Examples] button")
    assert examples.count() >= 3
    examples.first.click()
    assert "demo_object" in page.locator(".cm-content").inner_text()
    # A whole-table read of a big table is warned about (the threshold is the user's).
    page.evaluate("localStorage.setItem('meridian.bigTableRows', '10000')")
    page.reload()
    page.wait_for_selector("button.name:has-text('demo_object')")
    type_query(page, "SELECT * FROM demo_object")
    warn = page.locator("[data-testid=big-table-warning]")
    warn.wait_for()
    assert "20,000 rows" in warn.inner_text()
    type_query(page, "SELECT * FROM demo_object WHERE g_mag < 20")
    assert page.locator("[data-testid=big-table-warning]").count() == 0


def test_a_running_query_can_be_cancelled(page, server):
    slow = ("SELECT COUNT(*) FROM demo_source AS a JOIN demo_source AS b ON a.band = b.band "
            "JOIN demo_source AS c ON b.band = c.band")
    start_query(page, slow)
    page.wait_for_selector("button:has-text('Cancel')")
    page.wait_for_selector("text=/EXECUTING|QUEUED/", timeout=20000)
    job = re.search(r"job (\w+)", page.locator("[role=status]").first.inner_text()).group(1)
    page.click("button:has-text('Cancel')")
    page.wait_for_selector("text=The query was cancelled.", timeout=20000)
    for _ in range(100):
        if requests.get(f"{server}tap/async/{job}/phase").text.strip() == "ABORTED":
            break
        time.sleep(0.1)
    assert requests.get(f"{server}tap/async/{job}/phase").text.strip() == "ABORTED"
    assert page.locator("button:has-text('Run')").is_enabled()


def test_jobs_are_listed_live_and_reopened(page, server):
    type_query(page, "SELECT objectId, ra, dec FROM demo_object WHERE dec > 30")
    page.keyboard.press("Escape")
    page.click("button:has-text('Submit job')")
    note = page.locator("text=/Job \\w+ submitted/")
    note.wait_for()
    job = re.search(r"Job (\w+)", note.inner_text()).group(1)
    page.click("nav >> text=Jobs")
    row = page.locator(f"tr[data-job='{job}']")
    row.wait_for()
    # Live: the phase turns COMPLETED without a reload, with the row count.
    row.locator(".phase.COMPLETED").wait_for(timeout=30000)
    want = len(tap_csv(server, "SELECT objectId FROM demo_object WHERE dec > 30"))
    assert row.locator("td").nth(4).inner_text() == f"{want:,}"
    shot(page, "jobs")
    row.locator("button:has-text('Open')").click()
    # The count is the first window's: wait for it rather than read the grid while it loads.
    page.wait_for_function(f"document.querySelector('[data-testid=row-count]')?.textContent === '{want:,}'")
    page.click("nav >> text=Jobs")
    page.locator(f"tr[data-job='{job}'] button:has-text('Delete')").click()
    page.locator(f"tr[data-job='{job}']").wait_for(state="detached")
    assert requests.get(f"{server}tap/async/{job}").status_code == 404


def test_the_grid_sorts_filters_and_pages_on_the_server(page, server):
    q = "SELECT source_id, ra, dec, phot_g_mean_mag FROM gaia"
    whole = tap_csv(server, q)
    run_query(page, q)
    assert page.inner_text("[data-testid=row-count]") == f"{len(whole):,}"
    # Only the rows on screen (and a page around them) were fetched.
    fetched = page.evaluate("window.__meridianGrid.rows")
    assert fetched <= 400 < len(whole)
    # Sort: descending magnitude after two clicks.
    page.click("button[aria-label='Sort by phot_g_mean_mag']")
    page.click("button[aria-label='Sort by phot_g_mean_mag']")
    page.wait_for_function("document.querySelector('[aria-sort=descending]') !== null")
    want = whole.sort_values("phot_g_mean_mag", ascending=False, kind="stable")
    top = float(want.phot_g_mean_mag.iloc[0])
    page.wait_for_function("Math.abs(Number(document.querySelectorAll(\"" + FIRST_ROW + " [role=gridcell]\")[3]"
                           f"?.textContent) - {top!r}) < 1e-4")
    # Filter: bright stars only.
    page.fill("input[aria-label='Filter phot_g_mean_mag']", "< 6")
    page.keyboard.press("Enter")
    bright = want[want.phot_g_mean_mag < 6]
    page.wait_for_function(
        f"document.querySelector('[data-testid=row-count]').textContent === '{len(bright):,}'")
    rows = grid_rows(page)
    shown = rows[:len(bright)]
    # Sorted by the server; ties in magnitude keep the result's order.
    mags = [float(r[3]) for r in shown]
    assert mags == sorted(mags, reverse=True)
    assert {int(r[0]) for r in shown} <= set(bright.source_id)
    # Scroll far down: the grid asks for the window there, not for everything before it.
    page.fill("input[aria-label='Filter phot_g_mean_mag']", "")
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"document.querySelector('[data-testid=row-count]').textContent === '{len(whole):,}'")
    before = page.evaluate("window.__meridianGrid.rows")
    page.eval_on_selector(".scroller", "s => s.scrollTop = s.scrollHeight * 0.8")
    page.wait_for_timeout(300)
    page.wait_for_selector(".row .cell[role=gridcell]:not(.placeholder)")
    first = page.eval_on_selector_all(".row:not([hidden])",
                                      "rs => Math.min(...rs.map(r => Number(r.getAttribute('aria-rowindex'))))")
    assert first > len(whole) * 0.7
    assert page.evaluate("window.__meridianGrid.rows") - before <= 800
    # The keyboard: End goes to the last row, Enter opens it.
    page.focus(".scroller")
    page.keyboard.press("End")
    page.wait_for_function(f"document.querySelector('.row.cur')?.getAttribute('aria-rowindex') === '{len(whole)}'")
    page.wait_for_selector(".row.cur .cell[role=gridcell]:not(.placeholder)")
    page.keyboard.press("Enter")
    page.locator("aside[aria-label='Selected row']").wait_for()
    page.click("button[aria-label='Close row details']")
    # Column statistics equal numpy's.
    page.click("button[aria-label='Statistics of phot_g_mean_mag']")
    stats = page.locator("[data-testid=column-stats]")
    stats.wait_for()
    dd = stats.locator("dd").all_inner_texts()
    g = whole.phot_g_mean_mag
    assert int(dd[0].replace(",", "")) == len(whole)
    assert float(dd[3]) == pytest.approx(g.min(), rel=1e-6)
    assert float(dd[5]) == pytest.approx(g.mean(), rel=1e-6)
    shot(page, "grid-stats")
    page.click("button[aria-label='Close statistics']")
    # Downloads of the filtered, sorted view in each format, read by independent readers.
    page.fill("input[aria-label='Filter phot_g_mean_mag']", "< 7")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('[data-testid=row-count]').textContent !== "
                           f"'{len(whole):,}'")
    expect = want[want.phot_g_mean_mag < 7]
    page.click("summary:has-text('Download')")
    for label, read in [("CSV", lambda b: pd.read_csv(io.BytesIO(b))),
                        ("Parquet", lambda b: pd.read_parquet(io.BytesIO(b))),
                        ("FITS", fits_frame), ("VOTable (BINARY2)", votable_frame)]:
        with page.expect_download() as d:
            page.click(f".menu a:has-text('{label}')")
        body = Path(d.value.path()).read_bytes()
        got = read(body)
        assert sorted(got.source_id.tolist()) == sorted(expect.source_id.tolist()), label
        assert got.phot_g_mean_mag.is_monotonic_decreasing, label


def fits_frame(body):
    from astropy.table import Table
    return Table.read(io.BytesIO(body), format="fits").to_pandas()


def votable_frame(body):
    from astropy.io.votable import parse_single_table
    return parse_single_table(io.BytesIO(body)).to_table().to_pandas()


def lasso(page, box, fractions):
    """Shift-drags a lasso through points given as fractions of the box."""
    pts = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in fractions]
    page.keyboard.down("Shift")
    page.mouse.move(*pts[0])
    page.mouse.down()
    for p in pts[1:] + [pts[0]]:
        page.mouse.move(*p, steps=8)
    page.mouse.up()
    page.keyboard.up("Shift")


def test_plots_are_linked_to_the_grid_and_the_sky(page, server):
    q = "SELECT objectId, ra, dec, g_mag, r_mag FROM demo_object"
    whole = tap_csv(server, q)
    run_query(page, q)
    page.click("button:has-text('Plot')")
    page.click("[role=tab]:has-text('Scatter')")
    page.select_option("select[aria-label='x column']", "ra")
    page.select_option("select[aria-label='y column']", "dec")
    page.wait_for_selector("[data-testid=scatter][data-drawn=true]", timeout=30000)
    box = page.locator("[data-testid=scatter] canvas").bounding_box()
    lasso(page, box, [(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7)])
    sel = page.locator("[data-testid=plot-selection]")
    sel.wait_for(timeout=10000)
    n = int(sel.inner_text().split()[0].replace(",", ""))
    assert 0 < n < len(whole)
    shot(page, "plot-scatter")
    # The selection filters the table on the server.
    page.click("button:has-text('Filter table to selection')")
    page.wait_for_function(f"document.querySelector('[data-testid=row-count]').textContent === '{n:,}'")
    rows = grid_rows(page)
    ras = [float(r[1]) for r in rows]
    # The lassoed rows are those inside the drawn region: a box in ra and dec.
    assert len(ras) > 0 and max(ras) - min(ras) < (whole.ra.max() - whole.ra.min()) * 0.6
    # The sky view shows the selection.
    page.click("nav >> text=Sky")
    page.wait_for_function("window.__meridianSky && window.__meridianSky.selected > 0", timeout=60000)
    assert page.evaluate("window.__meridianSky.selected") == min(n, 5000)
    # A histogram range selects rows and filters the table to the range.
    page.click("nav >> text=Results")
    page.click("button:has-text('Clear filters')")
    page.click("nav >> text=Plots")
    page.click("[role=tab]:has-text('Histogram')")
    page.select_option("select[aria-label='x column']", "g_mag")
    hist = page.locator("[data-testid=histogram][aria-label='Histogram of g_mag'] .u-over")
    hist.wait_for()
    page.wait_for_timeout(300)
    b = hist.bounding_box()
    page.mouse.move(b["x"] + b["width"] * 0.4, b["y"] + b["height"] / 2)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] * 0.6, b["y"] + b["height"] / 2, steps=5)
    page.mouse.up()
    page.wait_for_function("document.querySelector('[data-testid=plot-selection]') && "
                           f"document.querySelector('[data-testid=plot-selection]').textContent !== '{n:,} selected'")
    shot(page, "plot-histogram")
    page.click("button:has-text('Filter table to selection')")
    f = page.input_value("input[aria-label='Filter g_mag']")
    lo, hi = map(float, f.split(".."))
    want = ((whole.g_mag >= lo) & (whole.g_mag <= hi)).sum()
    page.wait_for_function(f"document.querySelector('[data-testid=row-count]').textContent === '{want:,}'")
    # Density and colour-magnitude views draw; PNG export gives an image.
    page.click("nav >> text=Plots")
    page.click("[role=tab]:has-text('Colour')")
    page.wait_for_selector("[data-testid=scatter][data-drawn=true]")
    with page.expect_download() as d:
        page.click("button:has-text('Export PNG')")
    assert Path(d.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.click("[role=tab]:has-text('Density')")
    page.wait_for_selector("[data-testid=density]")
    shot(page, "plot-density")


def test_sky_view_shows_the_hips_the_rows_mocs_and_footprints(page, server):
    hips_requests = []
    page.on("request", lambda r: "/hips/" in r.url and hips_requests.append(r.url))
    run_query(page, "SELECT TOP 500 objectId, ra, dec, g_mag FROM demo_object ORDER BY g_mag")
    page.click("nav >> text=Sky")
    page.wait_for_function("window.__meridianSky && window.__meridianSky.sources === 500", timeout=60000)
    page.wait_for_timeout(1500)
    assert any(re.search(r"/hips/[^/]+/Norder\d+/", u) for u in hips_requests), hips_requests[:5]
    assert "demo_object" in page.inner_text("[data-testid=sky-status]") or "HiPS" in page.inner_text(
        "[data-testid=sky-status]") or "rows shown" in page.inner_text("[data-testid=sky-status]")
    with page.expect_response(lambda r: "/moc/demo_object" in r.url) as resp:
        page.click("summary:has-text('Catalog MOCs')")
        page.check("label:has-text('demo_object') input")
    assert resp.value.status == 200
    with page.expect_response(lambda r: "tap/sync" in r.url):
        page.click("button:has-text('Image footprints')")
    page.wait_for_function("window.__meridianSky.footprints > 0")
    shot(page, "sky")
    # Clicking a source opens its row: the brightest row, where Aladin draws it.
    first = tap_csv(server, "SELECT TOP 1 objectId, ra, dec FROM demo_object ORDER BY g_mag")
    page.evaluate(f"window.__meridianSky.aladin.gotoRaDec({first.ra[0]}, {first.dec[0]})")
    page.evaluate("window.__meridianSky.aladin.setFoV(0.5)")
    box = page.locator("[data-testid=aladin]").bounding_box()
    for _ in range(10):
        page.wait_for_timeout(500)
        x, y = page.evaluate(f"window.__meridianSky.aladin.world2pix({first.ra[0]}, {first.dec[0]})")
        page.mouse.click(box["x"] + x, box["y"] + y)
        if page.evaluate("window.__meridianSky.clicked !== undefined"):
            break
    page.click("nav >> text=Results")
    detail = page.locator("aside[aria-label='Selected row']")
    detail.wait_for(timeout=10000)
    page.wait_for_function("document.querySelector(\"aside[aria-label='Selected row'] dl\")")
    assert str(int(first.objectId[0])) in detail.locator("dl").inner_text()


def test_row_details_show_images_cutouts_and_spectra(page, server):
    spec = tap_csv(server, "SELECT TOP 1 s_ra, s_dec FROM ivoa.obscore WHERE dataproduct_type = 'spectrum'")
    img = tap_csv(server, "SELECT TOP 1 s_ra, s_dec, obs_publisher_did FROM ivoa.obscore "
                          "WHERE dataproduct_type = 'image'")
    run_query(page, f"SELECT s_ra AS ra, s_dec AS dec FROM ivoa.obscore WHERE obs_publisher_did = "
                    f"'{img.obs_publisher_did[0]}'")
    page.click(FIRST_ROW)
    preview = page.locator("[data-testid=image-preview] img").first
    preview.wait_for(timeout=30000)
    page.wait_for_function("document.querySelector('[data-testid=image-preview] img').naturalWidth > 0")
    page.fill("input[aria-label='Cutout size in arcseconds']", "20")
    with page.expect_download() as d:
        page.locator("[data-testid=cutout-link]").first.click()
    from astropy.io import fits
    with fits.open(d.value.path()) as h:
        data = next(x.data for x in h if x.data is not None)
        assert 0 < data.shape[0] < 256 and 0 < data.shape[1] < 256
    shot(page, "row-images")
    run_query(page, f"SELECT {float(spec.s_ra[0])!r} AS ra, {float(spec.s_dec[0])!r} AS dec FROM demo_object WHERE objectId = 1")
    page.click(FIRST_ROW)
    page.locator("[data-testid=spectrum] canvas").first.wait_for(timeout=30000)
    assert "z =" in page.locator("aside[aria-label='Selected row']").inner_text()
    shot(page, "row-spectrum")


def test_light_curve_of_an_object(page, server):
    src = tap_csv(server, "SELECT TOP 1 objectId, COUNT(*) AS n FROM demo_source GROUP BY objectId ORDER BY n DESC")
    oid, n = int(src.objectId[0]), int(src.n[0])
    run_query(page, f"SELECT objectId, ra, dec FROM demo_object WHERE objectId = {oid}")
    page.click(FIRST_ROW)
    page.click("nav >> text=Plots")
    page.click("[role=tab]:has-text('Light curve')")
    status = page.locator("[data-testid=lightcurve-status]")
    page.wait_for_function("document.querySelector('[data-testid=lightcurve-status]').textContent.includes('points')",
                           timeout=30000)
    assert status.inner_text().startswith(f"{n} points")
    page.locator("[data-testid=lightcurve] canvas").first.wait_for()
    shot(page, "light-curve")


def test_your_data_login_mydb_and_files(page, server, tmp_path):
    page.click("nav >> text=Your data")
    page.fill("input[autocomplete=username]", "ada")
    page.fill("input[type=password]", "wrong-password")
    page.click("form button[type=submit]")
    page.wait_for_selector("text=Wrong user name or password.")
    page.fill("input[type=password]", "ada-password")
    page.click("form button[type=submit]")
    page.wait_for_selector("[data-testid=user]")
    assert page.inner_text("[data-testid=user]") == "ada"
    # MyDB: import a file (as by drag and drop, through the file chooser), describe, query,
    # drop.
    csv = tmp_path / "targets.csv"
    csv.write_text("name,ra,dec\nm13,250.42,36.46\nm31,10.68,41.27\nm42,83.82,-5.39\n")
    page.set_input_files("input[aria-label='Import a file into MyDB']", str(csv))
    tables = page.locator("[data-testid=mydb-tables]")
    tables.locator("code:has-text('targets')").wait_for(timeout=30000)
    tables.locator("li:has-text('targets') button:has-text('Describe')").click()
    assert "ra" in tables.locator("pre").inner_text()
    tables.locator("li:has-text('targets') button:has-text('Query')").click()
    assert "mydb.targets" in page.locator(".cm-content").inner_text()
    page.locator(".cm-content").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.querySelector('[data-testid=row-count]')?.textContent === '3'", timeout=30000)
    # A result saved to MyDB from the grid.
    run_query(page, "SELECT objectId, ra, dec FROM demo_object WHERE g_mag < 19")
    want = len(tap_csv(server, "SELECT objectId FROM demo_object WHERE g_mag < 19"))
    page.click("summary:has-text('Save…')")
    page.fill("input[aria-label='MyDB table name']", "bright")
    page.click(".panel button:has-text('Save')")
    msg = page.locator("[data-testid=save-message]")
    msg.wait_for(timeout=30000)
    assert f"{want} rows" in msg.inner_text(), msg.inner_text()
    page.click("nav >> text=Your data")
    tables.locator("code:has-text('bright')").wait_for()
    # Files: upload with progress, list, public link, move, delete.
    page.click("nav >> text=Your data")
    f = tmp_path / "notes.txt"
    f.write_bytes(b"observing notes\n" * 1000)
    page.set_input_files("input[aria-label='Upload files']", str(f))
    files = page.locator("[data-testid=files]")
    files.locator("tr:has-text('notes.txt')").wait_for(timeout=30000)
    assert page.locator("progress[aria-label='Upload of notes.txt']").get_attribute("value") == "1"
    assert "15.6 KiB" in files.locator("tr:has-text('notes.txt')").inner_text()
    shot(page, "your-data")
    files.locator("tr:has-text('notes.txt') button:has-text('Public link')").click()
    link = page.locator("input[aria-label='Public link of notes.txt']")
    link.wait_for()
    assert requests.get(link.input_value()).content == f.read_bytes()
    page.once("dialog", lambda d: d.accept("ada/moved.txt"))
    files.locator("tr:has-text('notes.txt') button:has-text('Move')").click()
    files.locator("tr:has-text('moved.txt')").wait_for()
    page.once("dialog", lambda d: d.accept())
    files.locator("tr:has-text('moved.txt') button:has-text('Delete')").click()
    files.locator("tr:has-text('moved.txt')").wait_for(state="detached")
    page.once("dialog", lambda d: d.accept())
    tables.locator("li:has-text('targets') button:has-text('Drop')").click()
    tables.locator("code:has-text('targets')").wait_for(state="detached")
    page.click("button:has-text('Log out')")
    page.wait_for_selector("form[aria-label='Log in']")


def test_an_expired_login_and_a_row_limit_have_clear_states(page, server):
    # An expired login: the token is revoked behind the page's back.
    login(page)
    cookie = next(c for c in page.context.cookies() if c["value"])
    requests.post(server + "api/auth/logout", headers={"Authorization": f"Bearer {cookie['value']}"})
    page.click("nav >> text=Query")
    start_query(page, "SELECT TOP 1 ra FROM demo_object")
    banner = page.locator("[data-testid=trouble]")
    banner.wait_for(timeout=20000)
    assert "log in again" in banner.inner_text()
    page.click("button:has-text('Continue without login')")
    banner.wait_for(state="detached")
    # A result larger than the row limit says so. (The failed query may have moved the page
    # to the results already: go back to the query form.)
    page.click("nav >> text=Query")
    page.fill("input[aria-label='Row limit (MAXREC)']", "100")
    run_query(page, "SELECT objectId FROM demo_object")
    assert "stopped at its row limit" in page.inner_text(".grid-page .toolbar")
    shot(page, "row-limit")


def test_no_request_left_the_machine():
    assert OUTSIDE == []


def test_a_lost_connection_shows_a_banner(browser, data, tmp_path):
    env = personal_env(tmp_path)
    s = Server(data / "data", env=env)
    base = s.url.removesuffix("/tap") + "/"
    p = browser.new_page(viewport={"width": 1280, "height": 800})
    p.goto(base)
    p.wait_for_selector("button.name:has-text('demo_object')")
    s.__exit__(None, None, None)
    start_query(p, "SELECT TOP 1 ra FROM demo_object")
    banner = p.locator("[data-testid=trouble]")
    banner.wait_for(timeout=20000)
    assert "connection to the service was lost" in banner.inner_text()
    assert p.locator("button:has-text('Run')").is_enabled()
    shot(p, "connection-lost")
    p.close()
