"""CADC's `vos` command-line client (PyPI, in a venv of its own: VOS_PYTHON, set up by
scripts/test.sh) against Meridian's VOSpace 2.1 service. The client is pointed at the
service the way CADC's clients are configured for any VOSpace: a resource ID for a short
name in `~/.config/vos/vos-config`, and the registry's resource-capabilities entry for that
ID in its cache file. Then vls, vmkdir, vcp (both ways), vmv, vrm and vrmdir run unchanged,
with a token, and anonymous reads of a public file."""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import Server, add_users, personal_env, token_of


@pytest.fixture(scope="module")
def vos_bin():
    python = os.environ.get("VOS_PYTHON", str(Path.home() / ".cache/meridian/vos-venv/bin/python"))
    assert Path(python).exists(), f"the vos venv is missing at {python}: scripts/test.sh creates it"
    return Path(python).parent


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("vos-client")
    env = personal_env(d)
    add_users(store, env, "olga")
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        token = token_of(base, "olga")
        home = d / "home"
        (home / ".config/vos").mkdir(parents=True)
        (home / ".config/vos/vos-config").write_text(
            "[vos]\nresourceID = ivo://cadc.nrc.ca/vault vos\n    ivo://meridian/vospace mer\n")
        (home / ".config/cadc-registry").mkdir(parents=True)
        (home / ".config/cadc-registry/resource-caps").write_text(
            f"ivo://meridian/vospace = {base}/vospace/capabilities\n")
        yield base, token, home


def vos(vos_bin, home, *args, check=True):
    p = subprocess.run([str(vos_bin / args[0]), *args[1:]], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "HOME": str(home)})
    if check:
        assert p.returncode == 0, (args, p.stderr[-2000:])
    return p


def test_cadc_vos_client_works_unchanged(service, vos_bin, tmp_path):
    base, token, home = service
    t = ["--token", token]
    data = os.urandom(300_000)
    src = tmp_path / "frame.fits"
    src.write_bytes(data)
    vos(vos_bin, home, "vmkdir", *t, "mer:olga/work")
    vos(vos_bin, home, "vcp", *t, str(src), "mer:olga/work/frame.fits")
    listing = vos(vos_bin, home, "vls", "-l", *t, "mer:olga/work").stdout
    assert "frame.fits" in listing and "300000" in listing and "olga" in listing
    back = tmp_path / "back.fits"
    vos(vos_bin, home, "vcp", *t, "mer:olga/work/frame.fits", str(back))
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    vos(vos_bin, home, "vmv", *t, "mer:olga/work/frame.fits", "mer:olga/public/frame.fits")
    assert vos(vos_bin, home, "vls", *t, "mer:olga/public").stdout.split() == ["frame.fits"]
    # Public: read without a token, by the same client.
    anon = tmp_path / "anon.fits"
    vos(vos_bin, home, "vcp", "mer:olga/public/frame.fits", str(anon))
    assert anon.read_bytes() == data
    # The client's writes without a token are refused, and nothing changes.
    p = vos(vos_bin, home, "vrm", "mer:olga/public/frame.fits", check=False)
    assert p.returncode != 0
    vos(vos_bin, home, "vrm", *t, "mer:olga/public/frame.fits")
    vos(vos_bin, home, "vrmdir", *t, "mer:olga/work")
    assert vos(vos_bin, home, "vls", *t, "mer:olga").stdout.split() == ["public", "tmp"]
