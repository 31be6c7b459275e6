"""The spectra services under hostile requests (regressions of an outside review): a group
made under the name a private dataset was shared with gets nothing; repeated values cost
nothing; tokens without `catalogs:read` read no spectra; a refresh token is good only for
renewing; stacks take each spectrum once and answer small numbers in few bytes; JSON
retrieves are bounded."""

import json
import time

import pytest
import requests

from conftest import Server, personal_env, run


def token(base, user):
    r = requests.post(f"{base}/api/auth/login", data={"username": user, "password": f"{user}-password"})
    assert r.status_code == 200, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("spectra-security")
    env = personal_env(d)
    for user in ("erin", "mallory"):
        run("user", "add", user, data_dir=d, input=f"{user}-password\n", env=env)
    coadd = shared / "spectra/desi_coadd-sv3-dark-26065.fits"
    run("spectra", "add", "DESI-EDR", *sorted((shared / "spectra").glob("desi_*.fits")), data_dir=d, env=env)
    # A group must exist to be named.
    p = run("spectra", "add", "DESI-GRP", coadd, "--private", "--reader-group", "astro",
            data_dir=d, env=env, check=False)
    assert p.returncode != 0 and "no group 'astro'" in p.stderr
    with Server(d, env=env) as s:
        base = s.url.removesuffix("/tap")
        r = requests.post(f"{base}/api/groups", data={"name": "astro"},
                          headers={"Authorization": f"Bearer {token(base, 'erin')}"})
        assert r.status_code in (200, 201), r.text
    run("spectra", "add", "DESI-GRP", coadd, "--private", "--reader-group", "astro", data_dir=d, env=env)
    return d, env


def sparcl_find(base, dr, auth=None):
    headers = {"Authorization": auth} if auth else {}
    return requests.post(f"{base}/sparcl/api/find/?limit=None",
                         json={"outfields": ["sparcl_id"], "search": [["data_release", dr]]},
                         headers=headers)


def test_a_group_made_again_under_a_shared_name_gets_nothing(svc):
    d, env = svc
    with Server(d, env=env) as s:
        base = s.url.removesuffix("/tap")
        erin, mallory = token(base, "erin"), token(base, "mallory")
        assert len(sparcl_find(base, "DESI-GRP", f"Bearer {erin}").json()) == 6
        r = sparcl_find(base, "DESI-GRP", f"Bearer {mallory}")
        assert r.status_code == 400 and r.json()["errorCode"] == "NODRACCESS"
        # erin dissolves the group; mallory makes one of the same name.
        assert requests.delete(f"{base}/api/groups/astro",
                               headers={"Authorization": f"Bearer {erin}"}).status_code in (200, 204)
        r = requests.post(f"{base}/api/groups", data={"name": "astro"},
                          headers={"Authorization": f"Bearer {mallory}"})
        assert r.status_code in (200, 201), r.text
        r = sparcl_find(base, "DESI-GRP", f"Bearer {mallory}")
        assert r.status_code == 400 and r.json()["errorCode"] == "NODRACCESS"
        ssa = requests.get(f"{base}/ssa", params={"POS": "217,3.27", "SIZE": 1, "COLLECTION": "DESI-GRP"},
                           headers={"Authorization": f"Bearer {mallory}"})
        assert ssa.status_code == 200 and "<TR>" not in ssa.text


def test_repeated_values_cost_nothing_and_select_nothing_more(svc):
    d, env = svc
    with Server(d, env=env) as s:
        base = s.url.removesuffix("/tap")
        t = time.time()
        r = requests.post(f"{base}/sparcl/api/find/?limit=None",
                          json={"outfields": ["sparcl_id"],
                                "search": [["data_release"] + ["DESI-EDR"] * 50_000]})
        assert time.time() - t < 5
        assert r.status_code == 200 and len(r.json()) == 1 + 20
        too_many = requests.post(f"{base}/sparcl/api/find/",
                                 json={"outfields": ["sparcl_id"], "search": [["specid"] + [1] * 100_001]})
        assert too_many.status_code == 400 and too_many.json()["errorCode"] == "BADCONST"
        empty = requests.post(f"{base}/sparcl/api/find/", json={"outfields": ["sparcl_id"],
                                                               "search": [["specid"]]})
        assert empty.status_code == 400 and empty.json()["errorCode"] == "BADCONST"
        not_object = requests.post(f"{base}/sparcl/api/find/", json=[])
        assert not_object.status_code == 400
        ids = [x["sparcl_id"] for x in r.json()[1:]]
        big_json = requests.post(f"{base}/sparcl/api/spectras/?format=json&include=flux",
                                 json=ids * 30)
        assert big_json.status_code == 400 and "format=pkl" in big_json.json()["errorMessage"]


def test_scopes_and_refresh_tokens(svc):
    d, env = svc
    narrow = run("user", "token", "erin", "--scopes", "storage:write", data_dir=d, env=env).stdout.strip()
    with Server(d, env=env) as s:
        base = s.url.removesuffix("/tap")
        r = sparcl_find(base, "DESI-EDR", f"Bearer {narrow}")
        assert r.status_code == 400 and r.json()["errorCode"] == "NODRACCESS", r.text
        assert requests.get(f"{base}/ssa", params={"POS": "217,3.27"},
                            headers={"Authorization": f"Bearer {narrow}"}).status_code == 403
        got = requests.post(f"{base}/sparcl/api/get_token/",
                            json={"email": "erin", "password": "erin-password"}).json()
        access_claims = json.loads(
            __import__("base64").urlsafe_b64decode(got["access"].split(".")[1] + "==").decode())
        # The access token is no refresh token; the refresh token reads nothing.
        r = requests.post(f"{base}/sparcl/api/renew_token/", json={"refresh_token": access_claims["mtk"]})
        assert r.status_code == 400 and r.json()["errorCode"] == "NODRACCESS"
        r = requests.post(f"{base}/sparcl/api/renew_token/", json={"refresh_token": got["refresh"]})
        assert r.status_code == 200 and r.json()["access"].count(".") == 2
        r = sparcl_find(base, "DESI-EDR", f"Bearer {got['refresh']}")
        assert r.status_code == 400
        assert requests.get(f"{s.url}/sync", params={"QUERY": "SELECT TOP 1 * FROM spectra.desi_edr"},
                            headers={"Authorization": f"Bearer {got['refresh']}"}).status_code == 403


def test_stacks_take_each_spectrum_once_and_write_small_numbers_briefly(svc):
    d, env = svc
    with Server(d, env=env) as s:
        base = s.url.removesuffix("/tap")
        r = requests.get(f"{base}/spectra/stack", params={
            "QUERY": "SELECT a.sparcl_id FROM spectra.desi_edr AS a, spectra.desi_edr AS b",
            "GRID": "3600:9800:2", "FORMAT": "votable"})
        assert r.status_code == 200, r.text
        assert 'name="NCombined"' in r.text and 'value="20"' in r.text
        tiny = requests.get(f"{base}/spectra/stack", params={
            "QUERY": "SELECT TOP 1 sparcl_id FROM spectra.desi_edr",
            "GRID": "1e-300:1e-299:1e-301", "FORMAT": "votable"})
        assert tiny.status_code == 200 and len(tiny.content) < 20_000, len(tiny.content)
        bad_type = requests.get(f"{base}/spectra/stack", params={
            "QUERY": "SELECT POINT('ICRS', ra, dec) AS sparcl_id FROM spectra.desi_edr"})
        assert bad_type.status_code == 400, bad_type.text
        # An identifier names its dataset: another dataset's name in it finds nothing.
        sid = requests.post(f"{base}/sparcl/api/find/", json={"outfields": ["sparcl_id"], "search": []}).json()[1]["sparcl_id"]
        assert requests.get(f"{base}/spectra/file", params={"ID": f"ivo://meridian/spectra/DESI-EDR?{sid}"}).status_code == 200
        assert requests.get(f"{base}/spectra/file", params={"ID": f"ivo://other/spectra/X?{sid}"}).status_code == 404
