"""Rubin's published alert schemas: the fake alert `lsst-alert-packet` ships for every
schema version, serialized by fastavro with that version's schema and framed with Rubin's
registry id (v7_4 is 704), is read by `meridian alerts consume` with the package's schema
tree (`--schema-dir`) or from a Confluent schema registry (`--schema-registry`), and the
stored DiaSource equals fastavro's record; forced sources before v7.1 (which carry no
position) are placed at their diaObject. Versions before 6.1 (no cutouts, `decl` for
`dec`) become dead letters with the reason, never stopping the stream."""

import glob
import http.server
import io
import json
import os
import re
import threading

import fastavro
import pyvo
import pytest

from conftest import Server, run
from test_alerts import check_served, mock_kafka, tap_rows, unique

SUPPORTED = 601


def schema_root():
    lap = pytest.importorskip("lsst.alert.packet")
    return os.path.join(os.path.dirname(lap.__file__), "schema")


def samples():
    """(registry id, parsed schema, the fake alert with ids made distinct per version)."""
    out = []
    for path in sorted(glob.glob(f"{schema_root()}/*/*/sample_data/fakeAlert.avro")):
        major, minor = path.split(os.sep)[-4:-2]
        sid = int(major) * 100 + int(minor)
        with open(path, "rb") as f:
            r = fastavro.reader(f)
            schema, alerts = r.writer_schema, list(r)
        a = alerts[0]
        new = 10_000 + sid
        a["diaSource"]["diaSourceId"] = new
        for k in ("alertId", "diaSourceId"):
            if k in a:
                a[k] = new
        if sid == 700:
            # The sample has no forced photometry: one measurement, as v7.0 writes it.
            a["prvDiaForcedSources"] = [{
                "diaForcedSourceId": 77, "diaObjectId": a["diaObject"]["diaObjectId"],
                "visit": 1, "detector": 2, "psfFlux": 3.5, "psfFluxErr": 0.25, "x": None,
                "y": None, "midpointMjdTai": 60000.5, "band": "r"}]
        out.append((sid, schema, a))
    assert {704, 1101} <= {s for s, _, _ in out}
    return out


def publish(brokers, topic, items, extra=()):
    import confluent_kafka as ck
    p = ck.Producer({"bootstrap.servers": brokers})
    for sid, schema, a in items:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), a)
        p.produce(topic, b"\0" + sid.to_bytes(4, "big") + buf.getvalue(), partition=0)
    for value in extra:
        p.produce(topic, value, partition=0)
    p.flush()


class Registry:
    """A Confluent schema registry's read API (`GET /schemas/ids/{id}`), serving the
    schemas fastavro parsed (full names, as registries hold them)."""

    def __init__(self, schemas):
        self.asked = []
        reg = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                m = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
                sid = int(m.group(1)) if m else None
                reg.asked.append(sid)
                if sid not in schemas:
                    self.send_response(404)
                    self.end_headers()
                    self.wfile.write(b'{"error_code":40403,"message":"Schema not found"}')
                    return
                body = json.dumps({"schema": json.dumps(schemas[sid])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def check_sources(data, items):
    import datetime

    def served(v):
        # A timestamp travels over TAP as ISO 8601 text in UTC.
        if isinstance(v, datetime.datetime):
            return v.astimezone(datetime.timezone.utc).replace(tzinfo=None).isoformat()
        return v
    want = unique([{k: served(v) for k, v in a["diaSource"].items()} for _, _, a in items],
                  "diaSourceId")
    with Server(data) as s:
        rows = tap_rows(pyvo.dal.TAPService(s.url), "dia_source")
        forced = tap_rows(pyvo.dal.TAPService(s.url), "dia_forced_source")
    new = [r for r in rows if r["diaSourceId"] in want]
    check_served(new, want, "diaSourceId")
    v7 = next(a for sid, _, a in items if sid == 700)
    f = v7["prvDiaForcedSources"][0]
    got = [r for r in forced if r["diaForcedSourceId"] == 77]
    assert len(got) == 1, forced
    assert (got[0]["ra"], got[0]["dec"]) == (v7["diaObject"]["ra"], v7["diaObject"]["dec"])
    assert got[0]["psfFlux"] == f["psfFlux"] and got[0]["midpointMjdTai"] == f["midpointMjdTai"]


@pytest.mark.parametrize("source", ["tree", "registry"])
def test_every_published_schema_version_is_read(source, tmp_path):
    items = samples()
    good = [i for i in items if i[0] >= SUPPORTED]
    old = [i for i in items if i[0] < SUPPORTED]
    keep, brokers = mock_kafka()
    publish(brokers, "rubin", items, extra=[b"\0\0\0\x27\x0f\x02"])
    data = tmp_path / "data"
    args = ["alerts", "consume", "--kafka", brokers, "--topic", "rubin", "--stop-when-idle-s", 3]
    if source == "tree":
        args += ["--schema-dir", schema_root()]
    else:
        reg = Registry({sid: schema for sid, schema, _ in items})
        args += ["--schema-registry", reg.url]
    p = run(*args, data_dir=data)
    out = p.stdout
    n = len(items) + 1
    assert (f"consumed\t{n} messages\t{len(good)} alerts stored\t{len(old) + 1} dead letters"
            in out), out
    if source == "registry":
        # Each id asked once (the unknown one too, not again within the minute).
        assert sorted(reg.asked) == sorted([s for s, _, _ in items] + [9999]), reg.asked
    # Each dead letter is logged with its offset and reason.
    assert "unknown schema id 9999" in p.stderr, p.stderr
    for reason in ("no 'cutoutScience' field", "'diaSource' has no 'dec'"):
        assert reason in p.stderr, p.stderr
    check_sources(data, good)
    del keep
