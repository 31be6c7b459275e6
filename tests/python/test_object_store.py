"""Catalogs in an S3 bucket: a real S3 server on loopback (moto's, speaking the S3 REST
protocol), the Gaia sample uploaded there with boto3 and registered by URL. `meridian info`,
`meridian cone`, TAP through pyvo, and a cluster whose executors read the bucket all give
the same answers as the same catalog on local disk; a bad URL fails clearly and registers
nothing."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pyvo

from conftest import Server, run
from test_cluster_tap import QUERIES, Cluster, tables_equal

BUCKET = "meridian-test"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback; yields the environment that reaches it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "meridian", "AWS_SECRET_ACCESS_KEY": "meridian-secret",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
           "AWS_ALLOW_HTTP": "true"}
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "the S3 server did not start"
            assert time.time() < deadline, "the S3 server did not start"
            time.sleep(0.2)
    yield env
    proc.kill()
    proc.wait()


def client(env):
    import boto3
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def s3_store(s3, store, tmp_path_factory):
    """A data directory whose `gaia` is the local Gaia catalog uploaded to the bucket and
    registered by URL, and whose `tycho2` is the local one (registered in place)."""
    c = client(s3)
    c.create_bucket(Bucket=BUCKET)
    src = (Path(store) / "catalogs" / "gaia").resolve()
    n = 0
    for path in src.rglob("*"):
        if path.is_file():
            c.upload_file(str(path), BUCKET, f"hats/gaia/{path.relative_to(src)}")
            n += 1
    assert n > 4
    d = tmp_path_factory.mktemp("meridian-s3")
    out = run("register", "gaia", f"s3://{BUCKET}/hats/gaia", data_dir=d, env=s3).stdout
    assert "registered 'gaia' -> s3://meridian-test/hats/gaia" in out, out
    run("register", "tycho2", (Path(store) / "catalogs" / "tycho2").resolve(), data_dir=d)
    return d


def test_info_catalogs_and_cone_read_the_bucket(s3, store, s3_store):
    info = run("info", "gaia", data_dir=s3_store, env=s3).stdout
    assert "catalog gaia at s3://meridian-test/hats/gaia/gaia" in info, info
    assert "margin cache: s3://meridian-test/hats/gaia/" in info, info
    local = run("catalogs", data_dir=store).stdout.splitlines()
    remote = run("catalogs", data_dir=s3_store, env=s3).stdout.splitlines()
    assert [l for l in remote if l.startswith("gaia\t")] == [l for l in local if l.startswith("gaia\t")]
    cone = ["cone", "gaia", "--ra", "56.75", "--dec", "24.12", "--radius-arcsec", "7200"]
    want = run(*cone, data_dir=store).stdout
    got = run(*cone, data_dir=s3_store, env=s3).stdout
    assert len(want.splitlines()) > 50
    assert sorted(got.splitlines()) == sorted(want.splitlines())


def test_tap_over_the_bucket_equals_local(s3, store, s3_store):
    with Server(store) as local, Server(s3_store, env=s3) as remote:
        here = pyvo.dal.TAPService(local.url)
        there = pyvo.dal.TAPService(remote.url)
        for q in QUERIES:
            want = here.run_sync(q, maxrec=1_000_000).to_table()
            assert len(want) > 0, q
            tables_equal(there.run_sync(q, maxrec=1_000_000).to_table(), want, "ORDER BY" in q)


def test_cluster_executors_read_the_bucket(s3, store, s3_store):
    """The client names the catalog by its URL; the scheduler and the executors reach the
    bucket with their own environment (the executors' physical plans name `s3://` objects:
    they have no other way to the rows)."""
    c = Cluster(s3_store, env=s3)
    try:
        with Server(store) as local, Server(s3_store, env={**s3, "MERIDIAN_CLUSTER__SCHEDULER": c.url,
                                                           "MERIDIAN_CLUSTER__REQUIRED": "true"}) as remote:
            here = pyvo.dal.TAPService(local.url)
            there = pyvo.dal.TAPService(remote.url)
            for q in QUERIES:
                want = here.run_sync(q, maxrec=1_000_000).to_table()
                tables_equal(there.run_sync(q, maxrec=1_000_000).to_table(), want, "ORDER BY" in q)
                tables_equal(there.run_async(q, maxrec=1_000_000).to_table(), want, "ORDER BY" in q)
    finally:
        c.close()


def test_a_bad_url_fails_clearly_and_registers_nothing(s3, s3_store):
    p = run("register", "nothing", f"s3://{BUCKET}/no/such/catalog", data_dir=s3_store, env=s3, check=False)
    assert p.returncode != 0
    assert "s3://meridian-test/no/such/catalog" in p.stderr and "not a HATS catalog" in p.stderr, p.stderr
    p = run("register", "nobucket", "s3://no-such-bucket/x", data_dir=s3_store, env=s3, check=False)
    assert p.returncode != 0 and "s3://no-such-bucket/x" in p.stderr, p.stderr
    names = [l.split("\t")[0] for l in run("catalogs", data_dir=s3_store, env=s3).stdout.splitlines()]
    assert names == ["gaia", "tycho2"]
