"""The example notebooks (notebooks/examples, issue 22 point 5) run top to bottom against a
real `meridian serve` over the demo survey (objects, sources, images, spectra) and the
Gaia sample, in the kernels the notebook hub offers (scripts/notebooks-setup.sh installs
them into ~/.cache/meridian/notebooks; their specs are written by
meridian_hub.config.write_kernels, as the hub does), with a real user's token in
MERIDIAN_TOKEN and nothing typed.

Each notebook is executed with the hub environment's `jupyter nbconvert --to notebook
--execute`, on a copy with one more cell at the end that prints the notebook's results as
JSON. Those results are then checked against independent computations made here: direct
HTTP requests to the service and astropy/pandas on the rows (a cone counted with
SkyCoord separations, a cross-match with search_around_sky, a light curve's means with
pandas, a cutout's pixels against the full image and its WCS, a stack's coverage from the
spectra's redshifts and wavelength ranges)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from conftest import ROOT, Server, add_users, personal_env, run, token_of

sys.path.insert(0, str(ROOT / "notebooks" / "python"))

HOME = Path(os.environ.get("MERIDIAN_NOTEBOOKS_HOME", Path.home() / ".cache/meridian/notebooks"))
EXAMPLES = ROOT / "notebooks" / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
USER = "nina"
MARK = "@@RESULTS@@"

# The notebook's variables each check reads, as an expression evaluated in its kernel.
RESULTS = {
    "01_cone_search_cmd.ipynb": """{
        "ra": RA, "dec": DEC, "radius": RADIUS, "n": len(stars), "n_async": n_async,
        "ids": [int(x) for x in stars["source_id"]], "n_field": len(field),
        "field": [FIELD_RA, FIELD_DEC]}""",
    "02_crossmatch_upload.ipynb": """{
        "mine": [[str(i), float(a), float(d)] for i, a, d in zip(mine["my_id"], mine["ra"], mine["dec"])],
        "pairs": [[str(i), int(s)] for i, s in zip(pairs["my_id"], pairs["source_id"])],
        "best": server, "radius": RADIUS_ARCSEC, "n_pairs": n_pairs, "recovered": int(recovered), "n": n}""",
    "03_mydb_and_storage.ipynb": """{
        "user": user, "n_saved": n_saved, "n_back": n_back, "n_red": int(n_red), "n_joined": n_joined,
        "n_xmatch": n_xmatch, "same_png": bool(same_png), "same_csv": bool(same_csv), "n_csv": n_csv,
        "public_status": anyone.status_code, "left": left, "n_pandas": len(df),
        "n_parquet": len(red)}""",
    "04_light_curve.ipynb": """{
        "object_id": OBJECT_ID, "n": len(lc), "n_served": len(detections), "same": same,
        "n_forced": n_forced,
        "summary": {b: [int(v[0]), float(v[1]), float(v[2])] for b, v in summary.items()}}""",
    "05_image_cutout.ipynb": """{
        "image_id": image_id, "ra": RA, "dec": DEC, "radius": RADIUS, "shape": list(cut.shape),
        "dx": dx, "dy": dy, "sum": float(np.nansum(cut.astype(float))), "n_images": len(found),
        "n_cutouts": len(cutouts), "n_objs": len(objs)}""",
    "06_spectra_stack.ipynb": """{
        "n_qso": n_qso, "grid": list(GRID), "wavelength": [float(x) for x in stack["WAVELENGTH"]],
        "N": [int(x) for x in stack["N"]], "corr": corr, "ratio": ratio,
        "ssa_n": len(found), "ssa_z": z}""",
    "07_datalab_clients.ipynb": """{
        "whoami": ac.whoAmI(), "n_dl": n_dl, "n_mydb": n_mydb, "n_sparcl": n_sparcl, "n_tap": n_tap,
        "ids": [int(x) for x in df["source_id"]], "n_spectra": len(spectra.records),
        "sparcl_user": client.authorized["Loggedin_As"],
        "services": [qc.get_svc_url(), sc.get_svc_url(), ac.get_svc_url()]}""",
}


def installed():
    """The notebook environments, or a failure saying how to install them."""
    need = {"jupyter": HOME / "hub/bin/jupyter", "meridian": HOME / "kernel/bin/python",
            "datalab": HOME / "datalab-kernel/bin/python"}
    missing = [str(p) for p in need.values() if not p.exists()]
    assert not missing, (
        f"the notebook environments are not installed in {HOME} (missing {', '.join(missing)}): "
        "run scripts/notebooks-setup.sh")
    for kernel in ("kernel", "datalab-kernel"):
        config = HOME / kernel / "etc/ipython/ipython_kernel_config.py"
        assert config.exists() and "meridian.kernel" in config.read_text(), (
            f"{config} does not load meridian.kernel: run scripts/notebooks-setup.sh again")
    return need


def tap_csv(base, query, token=None, **extra):
    """A TAP query's rows as a pandas DataFrame (a plain HTTP request, not the helper)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.post(f"{base}/tap/sync", headers=headers, data={
        "REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "csv", "MAXREC": 10**7, "QUERY": query, **extra})
    assert r.status_code == 200, r.text
    return pd.read_csv(io.StringIO(r.text))


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    tools = installed()
    tmp = tmp_path_factory.mktemp("examples")
    data = tmp / "data"
    run("demo", "--objects", 20000, "--no-serve", "--quiet", data_dir=data)
    os.symlink(store / "catalogs" / "gaia", data / "catalogs" / "gaia")
    env = personal_env(tmp)
    add_users(data, env, USER)

    # The kernel specifications, as the hub writes them for its users' servers.
    from meridian_hub.config import write_kernels
    jupyter = tmp / "jupyter"
    names = write_kernels([str(tools["meridian"]), str(tools["datalab"])], jupyter)
    assert sorted(names) == ["datalab", "meridian"], (
        f"write_kernels named the kernels {names}: each needs its own name (kernel.json in {jupyter})")
    home = tmp / "home"
    home.mkdir()
    with Server(data, env=env) as s:
        base = s.url.removesuffix("/tap")
        token = token_of(base, USER)
        yield {"base": base, "token": token, "jupyter": tools["jupyter"], "kernels": jupyter,
               "home": home, "tmp": tmp, "server": s}


def execute(service, name):
    """Runs notebook `name` (a copy with the results cell added) with nbconvert; returns
    the results the last cell printed."""
    nb = json.loads((EXAMPLES / name).read_text())
    assert nb["metadata"]["kernelspec"]["name"] in ("meridian", "datalab"), nb["metadata"]
    for cell in nb["cells"]:
        assert cell["cell_type"] != "code" or (not cell["outputs"] and cell["execution_count"] is None), \
            f"{name}: committed with outputs"
    code = ("import json as _json\n"
            f"print({MARK!r} + _json.dumps({RESULTS[name].strip()}, default=float))\n")
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "results", "metadata": {},
                        "outputs": [], "source": code})
    work = service["tmp"] / name.removesuffix(".ipynb")
    work.mkdir()
    path = work / name
    path.write_text(json.dumps(nb))
    env = {**os.environ,
           "MERIDIAN_URL": service["base"], "MERIDIAN_TOKEN": service["token"],
           "JUPYTER_PATH": str(service["kernels"]), "HOME": str(service["home"])}
    for var in ("PYTHONPATH", "MPLBACKEND"):
        env.pop(var, None)
    p = subprocess.run(
        [str(service["jupyter"]), "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=150", "--output", "executed.ipynb", str(path)],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (f"{name} failed:\n{p.stderr[-6000:]}\nservice log:\n"
                               + "".join(list(service["server"].log)[-20:]))
    done = json.loads((work / "executed.ipynb").read_text())
    figures = 0
    for cell in done["cells"]:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{name}: {out}"
            data = out.get("data", {})
            figures += "image/png" in data
            # A figure shown as its text only: the kernel's inline backend was not ready.
            assert not ("image/png" not in data and "".join(data.get("text/plain", "")).startswith("<Figure size")), \
                f"{name}: a figure came out as text: {out}"
    assert figures > 0, f"{name}: no figure shown"
    text = "".join("".join(o["text"]) for o in done["cells"][-1]["outputs"] if o.get("output_type") == "stream")
    line = [ln for ln in text.splitlines() if ln.startswith(MARK)]
    assert line, f"{name}: no results printed: {done['cells'][-1]['outputs']}"
    return json.loads(line[0][len(MARK):])


def separation_deg(ra1, dec1, ra2, dec2):
    from astropy.coordinates import SkyCoord
    return SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg


def test_every_example_is_checked():
    assert NOTEBOOKS, f"no example notebooks in {EXAMPLES}"
    assert sorted(RESULTS) == NOTEBOOKS


def test_cone_search_cmd(service):
    r = execute(service, "01_cone_search_cmd.ipynb")
    base = service["base"]
    # The cone counted with astropy over a box around it (no ADQL geometry involved).
    pad = r["radius"] / np.cos(np.radians(r["dec"] + r["radius"])) + 0.1
    box = tap_csv(base, f"SELECT source_id, ra, dec FROM gaia WHERE ra BETWEEN {r['ra'] - pad} AND {r['ra'] + pad} "
                        f"AND dec BETWEEN {r['dec'] - r['radius'] - 0.1} AND {r['dec'] + r['radius'] + 0.1}")
    inside = box[separation_deg(box["ra"], box["dec"], r["ra"], r["dec"]) <= r["radius"]]
    assert r["n"] == len(inside) == r["n_async"] > 50
    assert sorted(r["ids"]) == sorted(int(x) for x in inside["source_id"])
    fra, fdec = r["field"]
    box = tap_csv(base, f"SELECT ra, dec FROM gaia WHERE ra BETWEEN {fra - pad} AND {fra + pad} "
                        f"AND dec BETWEEN {fdec - r['radius'] - 0.1} AND {fdec + r['radius'] + 0.1}")
    assert r["n_field"] == int((separation_deg(box["ra"], box["dec"], fra, fdec) <= r["radius"]).sum())


def test_crossmatch_upload(service):
    from astropy.coordinates import SkyCoord, search_around_sky
    import astropy.units as u
    r = execute(service, "02_crossmatch_upload.ipynb")
    mine = pd.DataFrame(r["mine"], columns=["my_id", "ra", "dec"])
    # Every Gaia star near any of the uploaded positions, matched here with astropy.
    gaia = tap_csv(service["base"], "SELECT source_id, ra, dec FROM gaia WHERE "
                   "(ra BETWEEN 52 AND 62 AND dec BETWEEN 20 AND 28) OR (ra BETWEEN 58 AND 62 AND dec BETWEEN 29 AND 31)")
    assert mine["ra"].between(52, 62).all()
    i, j, _, _ = search_around_sky(SkyCoord(mine["ra"], mine["dec"], unit="deg"),
                                   SkyCoord(gaia["ra"], gaia["dec"], unit="deg"), r["radius"] * u.arcsec)
    expected = sorted((mine["my_id"][a], int(gaia["source_id"][b])) for a, b in zip(i, j))
    assert sorted(tuple(p) for p in r["pairs"]) == expected
    assert r["n_pairs"] == len(expected)
    # The moved stars come back, the blank positions match nothing.
    assert r["recovered"] == r["n"] == 60
    assert set(r["best"]) == {f"T{k:03d}" for k in range(60)}


def test_mydb_and_storage(service):
    r = execute(service, "03_mydb_and_storage.ipynb")
    base, token = service["base"], service["token"]
    assert r["user"] == USER
    cone = tap_csv(base, "SELECT phot_bp_mean_mag AS bp, phot_rp_mean_mag AS rp FROM gaia WHERE "
                         "1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 56.75, 24.12, 2))")
    assert r["n_saved"] == r["n_back"] == r["n_csv"] == len(cone)
    assert r["n_red"] == r["n_joined"] == r["n_xmatch"] == int(((cone["bp"] - cone["rp"]) > 1.0).sum()) > 0
    assert r["same_png"] and r["same_csv"]
    # vos:// URLs read by pandas and astropy (fsspec) in the kernel.
    assert r["n_pandas"] == len(cone)
    assert r["n_parquet"] == int(((cone["bp"] - cone["rp"]) > 1.0).sum())
    assert r["public_status"] == 200
    # The notebook cleaned up after itself: seen through Data Lab's MyDB call and VOSpace.
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    tables = s.get(f"{base}/query/list").text.split()
    assert not [t for t in tables if t.startswith("example_")], tables
    assert s.get(f"{base}/vospace/nodes/{USER}/example_files").status_code == 404
    assert r["left"] == []


def test_light_curve(service):
    r = execute(service, "04_light_curve.ipynb")
    base = service["base"]
    counts = tap_csv(base, "SELECT objectId, COUNT(*) AS n FROM demo_source GROUP BY objectId")
    top = counts.sort_values(["n", "objectId"], ascending=[False, True]).iloc[0]
    assert r["object_id"] == int(top["objectId"]) and r["n"] == int(top["n"])
    # `/lightcurve` (the demo's tables found by their prefix) gives the same detections,
    # and the object's forced photometry where the demo has a ForcedSource table.
    assert r["same"] and r["n_served"] == r["n"]
    tables = set(tap_csv(base, "SELECT table_name FROM tap_schema.tables")["table_name"])
    forced = 0
    if "demo_forced_source" in tables:
        forced = int(tap_csv(base, "SELECT COUNT(*) AS n FROM demo_forced_source "
                                   f"WHERE objectId = {r['object_id']}")["n"][0])
    assert r["n_forced"] == forced
    rows = tap_csv(base, f"SELECT band, psfFlux, psfFluxErr FROM demo_source WHERE objectId = {r['object_id']}")
    obj = tap_csv(base, f"SELECT * FROM demo_object WHERE objectId = {r['object_id']}").iloc[0]
    rows["w"] = 1 / rows["psfFluxErr"] ** 2
    rows["wf"] = rows["w"] * rows["psfFlux"]
    by = rows.groupby("band")[["w", "wf"]].sum()
    assert sorted(r["summary"]) == sorted(by.index)
    for band, (n, mag, catalog) in r["summary"].items():
        assert n == int((rows["band"] == band).sum())
        assert mag == pytest.approx(31.4 - 2.5 * np.log10(by.loc[band, "wf"] / by.loc[band, "w"]), abs=1e-9)
        assert catalog == pytest.approx(float(obj[f"{band}_mag"]), abs=1e-5)
        # The demo's objects are steady: the measured mean is the catalog's magnitude.
        assert abs(mag - catalog) < 0.05


def test_image_cutout(service):
    from astropy.io import fits
    from astropy.wcs import WCS
    r = execute(service, "05_image_cutout.ipynb")
    base = service["base"]
    assert r["n_cutouts"] == r["n_images"] > 1
    # The full image, through DataLink's #this link, and the cutout's place in it by WCS.
    dl = requests.get(f"{base}/datalink", params={"ID": r["image_id"]})
    assert dl.status_code == 200, dl.text
    from astropy.io.votable import parse_single_table
    t = parse_single_table(io.BytesIO(dl.content)).to_table()
    this = [row["access_url"] for row in t if row["semantics"] == "#this"][0]
    full = fits.open(io.BytesIO(requests.get(this).content))
    hdu = next(h for h in full if h.data is not None and h.data.ndim == 2)
    x, y = WCS(hdu.header).world_to_pixel_values(r["ra"], r["dec"])
    h, w = r["shape"]
    # The cutout is centred on the position (within a pixel) and holds the image's pixels.
    assert abs(r["dx"] + (w - 1) / 2 - x) <= 1.0 and abs(r["dy"] + (h - 1) / 2 - y) <= 1.0
    scale = np.sqrt(abs(np.linalg.det(WCS(hdu.header).pixel_scale_matrix))) * 3600
    assert w * scale == pytest.approx(2 * r["radius"] * 3600, abs=2 * scale)
    part = hdu.data[r["dy"]:r["dy"] + h, r["dx"]:r["dx"] + w].astype(float)
    assert float(np.nansum(part)) == pytest.approx(r["sum"], rel=1e-6)
    objs = tap_csv(base, "SELECT ra, dec FROM demo_object WHERE ra BETWEEN "
                         f"{r['ra'] - 0.05} AND {r['ra'] + 0.05} AND dec BETWEEN {r['dec'] - 0.05} AND {r['dec'] + 0.05}")
    near = separation_deg(objs["ra"], objs["dec"], r["ra"], r["dec"]) <= r["radius"] if len(objs) else []
    assert r["n_objs"] == int(np.sum(near))


def test_spectra_stack(service):
    r = execute(service, "06_spectra_stack.ipynb")
    base, token = service["base"], service["token"]
    count = tap_csv(base, "SELECT COUNT(*) AS n FROM spectra.demo_dr1 WHERE spectype = 'QSO'", token)
    assert r["n_qso"] == int(count["n"][0]) > 10
    assert r["ssa_n"] >= 1
    # Each pixel stacks at most the spectra whose rest-frame range (native pixels of 2 Å)
    # reaches it, and, but for masked pixels, all those that cover it whole.
    qso = tap_csv(base, "SELECT redshift, wavemin, wavemax, npix FROM spectra.demo_dr1 WHERE spectype = 'QSO'", token)
    wl = np.array(r["wavelength"])[:, None]
    half = r["grid"][2] / 2
    z1 = (1 + qso["redshift"]).to_numpy()[None, :]
    lo, hi = qso["wavemin"].to_numpy()[None, :], qso["wavemax"].to_numpy()[None, :]
    native = ((hi - lo) / (qso["npix"].to_numpy()[None, :] - 1)) / 2
    reach = (((lo - native) / z1 < wl + half) & ((hi + native) / z1 > wl - half)).sum(axis=1)
    whole = (((lo - native) / z1 <= wl - half) & ((hi + native) / z1 >= wl + half)).sum(axis=1)
    n = np.array(r["N"])
    assert (n <= reach).all(), np.flatnonzero(n > reach)
    assert np.mean(n >= whole - np.maximum(2, 0.1 * whole)) > 0.9
    assert n.max() > 0.5 * r["n_qso"]
    # The notebook's own (binned) stack and the server's agree.
    assert r["corr"] > 0.95 and abs(r["ratio"] - 1) < 0.05


def test_datalab_clients(service):
    r = execute(service, "07_datalab_clients.ipynb")
    base = service["base"]
    assert r["whoami"] == USER and r["sparcl_user"] == USER
    assert r["services"] == [f"{base}/query", f"{base}/storage", f"{base}/auth"]
    box = tap_csv(base, "SELECT source_id, ra, dec FROM gaia WHERE ra BETWEEN 55.3 AND 58.2 AND dec BETWEEN 23 AND 25.2")
    inside = box[separation_deg(box["ra"], box["dec"], 56.75, 24.12) <= 1.0]
    assert r["n_dl"] == r["n_mydb"] == len(inside)
    assert sorted(r["ids"]) == sorted(int(x) for x in inside["source_id"])
    qso = tap_csv(base, "SELECT COUNT(*) AS n FROM spectra.demo_dr1 WHERE spectype = 'QSO'", service["token"])
    assert r["n_sparcl"] == r["n_tap"] == int(qso["n"][0])
    assert r["n_spectra"] == 6
