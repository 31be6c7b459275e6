"""A bounded run of hostile inputs against one running service, as an anonymous stranger
would send them: every payload of the security findings and variants of each. Afterwards
the service still answers, its peak RSS stayed within its memory budget, no response
carried the contents of a file outside its data directory, and no file appeared outside it.

The run is short (a few minutes); each payload is sent once or a few times."""

import gzip
import io
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
import requests

from conftest import Server

BUDGET_MIB = 512
OVERHEAD_MIB = 600
SECRET = "canary-3f9c1e7a-not-for-anyone"


def fits_header_bomb():
    """A FITS binary table whose header declares 64 GB of rows, in 8.6 KB."""
    def card(k, v):
        return f"{k:<8}= {v:>20}".ljust(80).encode()
    primary = b"".join([card("SIMPLE", "T"), card("BITPIX", "8"), card("NAXIS", "0"),
                        b"END".ljust(80)]).ljust(2880, b" ")
    ext = b"".join([card("XTENSION", "'BINTABLE'"), card("BITPIX", "8"), card("NAXIS", "2"),
                    card("NAXIS1", "1000000"), card("NAXIS2", "65536"), card("PCOUNT", "0"),
                    card("GCOUNT", "1"), card("TFIELDS", "1"), card("TTYPE1", "'s'"),
                    card("TFORM1", "'1000000A'"), b"END".ljust(80)]).ljust(2880, b" ")
    return primary + ext + b"\0" * 2880


def gzip_bomb(expanded_mib=600):
    """A .csv.gz of a few hundred KB holding one field of `expanded_mib` MiB."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as g:
        g.write(b"name\n")
        chunk = b"x" * (1 << 20)
        for _ in range(expanded_mib):
            g.write(chunk)
        g.write(b"\n")
    return out.getvalue()


def votable_bomb():
    """A VOTable BINARY2 stream whose one row declares a 2 GB variable-length string."""
    import base64
    row = b"\x00" + struct.pack(">i", 2_000_000_000) + b"x" * 64
    return f"""<?xml version="1.0"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE><TABLE>
<FIELD name="s" datatype="char" arraysize="*"/>
<DATA><BINARY2><STREAM encoding="base64">{base64.b64encode(row).decode()}</STREAM></BINARY2></DATA>
</TABLE></RESOURCE></VOTABLE>""".encode()


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A directory outside the service's data directory, with a secret file in several
    formats that no request may read, and a place no request may write."""
    d = tmp_path_factory.mktemp("outside")
    (d / "secret.csv").write_text(f"a,b\n{SECRET},1\n")
    (d / "secret.txt").write_text(f"{SECRET}:x:0:0\n")
    return d


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    env = {"MERIDIAN_QUERY__MEMORY_LIMIT_MIB": str(BUDGET_MIB),
           "MERIDIAN_AUTH__DB": str(d / "accounts.sqlite"),
           "MERIDIAN_STORAGE__DB": str(d / "storage.sqlite"),
           "MERIDIAN_STORAGE__DIR": str(d / "bytes"),
           "MERIDIAN_MYDB__DIR": str(d / "mydb")}
    with Server(store, env=env) as s:
        yield s


def peak_rss_mib(proc):
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_bounded_run_of_hostile_inputs(service, outside):
    tap = service.url
    base = tap.rsplit("/tap", 1)[0]
    before = sorted(p.name for p in outside.iterdir())
    answers = []

    def send(method, url, expect_fail=True, **kw):
        kw.setdefault("timeout", 120)
        try:
            r = requests.request(method, url, **kw)
        except requests.ConnectionError as e:
            # A refused upload may close the connection before the body is sent.
            answers.append(str(e))
            assert service.proc.poll() is None, "the server died"
            return None
        answers.append(r.text)
        assert r.status_code < 500 or r.status_code in (503,), (url, r.status_code, r.text[:300])
        if expect_fail:
            assert r.status_code >= 400, (url, r.text[:300])
        assert service.proc.poll() is None, "the server died"
        return r

    def sql(q, lang="SQL"):
        return send("POST", f"{tap}/sync", data={"REQUEST": "doQuery", "LANG": lang, "QUERY": q, "FORMAT": "csv"})

    secret_csv, secret_txt = outside / "secret.csv", outside / "secret.txt"
    # 1. Statements that are not queries, and files named in SQL.
    for q in [f"COPY (SELECT 1 AS x) TO '{outside}/w.csv' STORED AS CSV",
              f"COPY (SELECT 1 AS x) TO '{outside}/w.parquet'",
              f"CREATE EXTERNAL TABLE pw (a VARCHAR, b VARCHAR, c VARCHAR, d VARCHAR) STORED AS CSV "
              f"LOCATION '{secret_txt}' OPTIONS ('format.delimiter' ':', 'format.has_header' 'false')",
              f"CREATE EXTERNAL TABLE s2 STORED AS CSV LOCATION '{outside}/'",
              f"SELECT * FROM '{secret_csv}'",
              f"SELECT * FROM read_csv('{secret_csv}')",
              "DROP TABLE gaia", "DROP TABLE IF EXISTS tycho2", "CREATE VIEW gaia2 AS SELECT * FROM gaia",
              "SET datafusion.execution.batch_size = 1", "SET datafusion.runtime.memory_limit = '100G'",
              "CREATE SCHEMA evil", "DROP SCHEMA public CASCADE", "DELETE FROM gaia",
              "INSERT INTO gaia SELECT * FROM gaia", "PREPARE p AS SELECT 1",
              "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/meridian-hostile.csv'"]:
        sql(q)
    # 2. Uploads that name server files.
    for ref in [f"stored:{secret_csv}", "stored:../../mydb/alice/t.parquet", "stored:/etc/passwd",
                f"file://{secret_csv}", f"file:{secret_csv}", "http://127.0.0.1:1/x.csv",
                "http://[::1]/x", "http://169.254.169.254/latest/meta-data/"]:
        send("POST", f"{tap}/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT * FROM TAP_UPLOAD.t",
                                          "UPLOAD": f"t,{ref}"})
        send("POST", f"{tap}/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT * FROM TAP_UPLOAD.t",
                                          "UPLOAD": "t,param:t", "t": ref})
    # 3. Deep nesting and long chains.
    sql("SELECT source_id FROM gaia WHERE " + "(" * 1000 + "ra > 0" + ")" * 1000, lang="ADQL")
    sql("SELECT " + "(" * 100000 + "1" + ")" * 100000)
    sql("SELECT 1 WHERE " + " OR ".join(f"hip = {i}" for i in range(5000)) + " AND " + "NOT " * 5000 + "TRUE")
    sql("SELECT " + " || ".join(["'x'"] * 20000))
    sql("SELECT " + "-" * 100000 + "1", lang="ADQL")
    sql("SELECT " + "abs(" * 3000 + "1" + ")" * 3000)
    sql("SELECT a FROM " + "(SELECT 1 AS a FROM " * 800 + "gaia" + ") AS s" * 800, lang="ADQL")
    sql("SELECT 1 WHERE 1 = CONTAINS(POINT('ICRS', 1, 1), POLYGON('ICRS', "
        + ", ".join(["1, 1"] * 200000) + "))", lang="ADQL")
    # 4. Files whose headers or compression promise far more than they hold.
    for name, body, ctype in [("t.fits", fits_header_bomb(), "application/fits"),
                              ("t.csv.gz", gzip_bomb(), "text/csv"),
                              ("t.vot", votable_bomb(), "application/x-votable+xml"),
                              ("t.csv", b"a\n" + b"1" * (64 << 20) + b"\n", "text/csv"),
                              ("t.csv", (",".join(f"c{i}" for i in range(200000)) + "\n").encode(), "text/csv")]:
        send("POST", f"{tap}/sync", data={"REQUEST": "doQuery", "LANG": "ADQL",
                                          "QUERY": "SELECT COUNT(*) FROM TAP_UPLOAD.t", "UPLOAD": "t,param:t"},
             files={"t": (name, body, ctype)})
    # 5. SQL that would allocate far outside the memory pool.
    for q in ["SELECT SUM(LENGTH(s)) FROM (SELECT repeat('x',200000000) AS s FROM generate_series(1,10))",
              "SELECT SUM(LENGTH(lpad('x', 500000000))) FROM generate_series(1,4)",
              "SELECT SUM(cardinality(array_repeat(value, 500000000))) FROM generate_series(1,4)",
              "SELECT SUM(cardinality(range(0, 4000000000))) FROM generate_series(1,4)",
              "SELECT SUM(LENGTH(replace(repeat('x', 10000000), 'x', repeat('y', 100)))) FROM generate_series(1,4)",
              "SELECT cardinality(array_agg(value)) FROM generate_series(1, 400000000)",
              "SELECT string_agg(repeat('x', 10000), '') FROM generate_series(1, 1000000)",
              # Chains of `||` over bounded values, from constants and from columns.
              "SELECT length(" + " || ".join(f"repeat('{chr(97 + i % 26)}', 16000000)" for i in range(60)) + ")",
              "SELECT length(" + " || ".join(["repeat(CAST(value AS VARCHAR), 8000000)"] * 60)
              + ") FROM generate_series(1, 2)",
              "SELECT cardinality(" + " || ".join(["array_repeat(value, 1000000)"] * 60) + ") FROM generate_series(1, 2)"]:
        sql(q)
    # An EXPLAIN is a query like any other.
    r = send("POST", f"{tap}/sync", expect_fail=False,
             data={"REQUEST": "doQuery", "LANG": "SQL", "QUERY": "EXPLAIN SELECT COUNT(*) FROM gaia", "FORMAT": "csv"})
    assert r.status_code == 200 and "physical_plan" in r.text, r.text[:300]
    # 6. Many anonymous jobs with uploads.
    created = 0
    for i in range(120):
        r = send("POST", f"{tap}/async", expect_fail=False, allow_redirects=False,
                 data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT * FROM TAP_UPLOAD.t",
                       "UPLOAD": "t,param:t"},
                 files={"t": ("t.csv", b"a,b\n1,2\n" * 1000, "text/csv")})
        if r is not None and r.status_code in (200, 201, 303):
            created += 1
    assert created < 120, "every anonymous job was accepted"
    # 7. Requests that claim to come from elsewhere.
    r = send("GET", f"{tap}/async", expect_fail=False, headers={"Host": "evil.example"})
    assert r.status_code == 200 and "evil.example" not in r.text, r.text[:500]
    # The service still answers, within its budget, and gave nothing away.
    r = requests.post(f"{tap}/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": "SELECT COUNT(*) FROM gaia",
                                           "FORMAT": "csv"}, timeout=60)
    assert r.status_code == 200 and r.text.split()[1] == "482106", r.text
    assert not any(SECRET in a for a in answers), "a response carried the secret"
    assert not any("root:x:0:0" in a for a in answers), "a response carried /etc/passwd"
    assert sorted(p.name for p in outside.iterdir()) == before, "a file was written outside"
    assert not Path("/tmp/meridian-hostile.csv").exists()
    peak = peak_rss_mib(service.proc)
    print(f"hostile run: {len(answers)} requests, {created} of 120 anonymous jobs accepted, "
          f"peak RSS {peak:.0f} MiB (budget {BUDGET_MIB} + {OVERHEAD_MIB} MiB)")
    assert peak < BUDGET_MIB + OVERHEAD_MIB, f"peak RSS {peak:.0f} MiB"
