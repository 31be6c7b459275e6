"""Survey file collections: a read-only tree published by the administrator (here the shared
images) listed, inspected and fetched through the storage calls as `<collection>://path`,
copied into a user's space, and never written or escaped."""

import hashlib

import pytest
import requests

from conftest import Server, add_users, personal_env, token_of


@pytest.fixture(scope="module")
def service(store, shared, tmp_path_factory):
    d = tmp_path_factory.mktemp("collections")
    config = d / "meridian.toml"
    config.write_text(f'[storage.collections]\nimages = "{shared / "images"}"\n')
    env = personal_env(d, MERIDIAN_CONFIG=str(config))
    add_users(store, env, "jude")
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        sess = requests.Session()
        sess.headers["X-DL-AuthToken"] = token_of(base, "jude")
        yield base, sess


def test_a_collection_is_listed_and_fetched_read_only(service, shared):
    base, jude = service
    files = sorted(p.name for p in (shared / "images").iterdir())
    # Anyone lists it.
    assert requests.get(f"{base}/storage/ls", params={"name": "images://"}).text == ",".join(files)
    long = requests.get(f"{base}/storage/ls", params={"name": "images://", "format": "long"}).text
    sample = next(p for p in sorted((shared / "images").iterdir()) if p.is_file())
    assert f"  {sample.stat().st_size}  " in long and sample.name in long
    st = requests.get(f"{base}/storage/stat", params={"name": f"images://{sample.name}"}).json()
    assert st["type"] == "data" and st["size"] == sample.stat().st_size
    # Fetched byte for byte.
    url = requests.get(f"{base}/storage/get", params={"name": f"images://{sample.name}"}).text
    got = requests.get(url)
    assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(sample.read_bytes()).hexdigest()
    # Copied into the user's space.
    r = jude.get(f"{base}/storage/cp", params={"from": f"images://{sample.name}", "to": "vos://tmp"})
    assert "COMPLETED" in r.text, r.text
    url = jude.get(f"{base}/storage/get", params={"name": f"vos://tmp/{sample.name}"}).text
    assert requests.get(url).content == sample.read_bytes()
    # Never written, never escaped.
    assert jude.get(f"{base}/storage/put", params={"name": "images://new.fits"}).status_code == 403
    assert jude.get(f"{base}/storage/rm", params={"file": f"images://{sample.name}"}).status_code == 403
    assert jude.get(f"{base}/storage/mv", params={"from": f"images://{sample.name}",
                                                   "to": "vos://"}).status_code == 403
    for bad in ["images://../catalogs/README.md", "images://a/../../etc/passwd"]:
        r = requests.get(f"{base}/storage/get", params={"name": bad})
        assert r.status_code == 400 and "not allowed" in r.text, (bad, r.text)
    assert requests.get(f"{base}/storage/stat", params={"name": "images://missing.fits"}).status_code == 404
