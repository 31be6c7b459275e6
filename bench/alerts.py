#!/usr/bin/env python3
"""Alert ingest: a Rubin alert stream consumed from Kafka into the alert database (decode,
split into the DIA tables, append, dead letters, offsets committed), measured as alerts a
second and latency from the broker's timestamp to the batch's commit (p50, p99), with the
consumer's memory (RSS) sampled through the run.

The stream is --alerts synthetic Rubin alerts made from the real samples in
../shared/data/alerts (lsst.v10_0 with Fink's fields): each a copy of a sample with new ids
for its object, its source and its history, placed in one of --fields fields of a few
degrees (seeded), written one record per block. `meridian alerts replay` publishes them
at --rate alerts a second (0: as fast as the broker takes them) to a Kafka-protocol broker
(librdkafka's mock cluster, hosted by confluent-kafka in this process) while `meridian
alerts consume` reads them.

    python3 bench/alerts.py                        # 10,000 alerts, as fast as possible
    python3 bench/alerts.py --alerts 3000 --rate 1000 --history 30

User filters are not evaluated yet: this measures ingest alone. librdkafka's mock cluster
keeps only about the last 20 MB of a partition (about 100 of these alerts), so a run whose
consumer falls behind loses the rest and is refused; give a real broker with --kafka for
streams larger than that.
"""

import argparse
import copy
import json
import platform
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import fastavro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import ROOT, meridian_binary  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "alerts" / "rubin_fink_sample_7alerts.avro"


def synthetic_alerts(n, fields, history, seed):
    """`n` alerts from the samples, each a new object in one of `fields` fields, with at
    most `history` earlier sources and forced sources (None: as many as the sample)."""
    with open(SAMPLE, "rb") as f:
        reader = fastavro.reader(f)
        schema, samples = reader.writer_schema, list(reader)
    rng = random.Random(seed)
    centres = [(rng.uniform(0, 360), rng.uniform(-60, 20)) for _ in range(fields)]

    def alerts():
        for i in range(n):
            a = copy.deepcopy(samples[i % len(samples)])
            ra0, dec0 = centres[i % fields]
            ra, dec = (ra0 + rng.uniform(-1.5, 1.5)) % 360, dec0 + rng.uniform(-1.5, 1.5)
            obj = 10**15 + i
            ids = iter(range(10**17 + i * 10_000, 10**17 + (i + 1) * 10_000))
            prv = (a["prvDiaSources"] or [])[:history] if history is not None else a["prvDiaSources"] or []
            frc = (a["prvDiaForcedSources"] or [])[:history] if history is not None else a["prvDiaForcedSources"] or []
            for s in [a["diaSource"], *prv]:
                s["diaSourceId"], s["diaObjectId"] = next(ids), obj
                s["ra"], s["dec"] = ra + rng.gauss(0, 1e-5), dec + rng.gauss(0, 1e-5)
            for s in frc:
                s["diaForcedSourceId"], s["diaObjectId"] = next(ids), obj
                s["ra"], s["dec"] = ra, dec
            a["prvDiaSources"], a["prvDiaForcedSources"] = prv, frc
            if a["diaObject"] is not None:
                a["diaObject"]["diaObjectId"], a["diaObject"]["ra"], a["diaObject"]["dec"] = obj, ra, dec
            a["diaSourceId"] = a["diaSource"]["diaSourceId"]
            yield a
    return schema, alerts()


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=0.0, help="alerts a second (0: as fast as possible)")
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--history", type=int, default=None, help="earlier sources kept per alert")
    ap.add_argument("--batch-alerts", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench-alerts"))
    ap.add_argument("--binary")
    ap.add_argument("--kafka", help="a real broker, host:port (default: librdkafka's mock cluster)")
    args = ap.parse_args()
    import shutil

    import confluent_kafka as ck
    binary = meridian_binary(args.binary)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    stream = args.work / "stream.avro"
    schema, alerts = synthetic_alerts(args.alerts, args.fields, args.history, args.seed)
    t = time.time()
    with open(stream, "wb") as f:
        # A block per record: each alert is taken out as one message.
        fastavro.writer(f, fastavro.parse_schema(schema), alerts, sync_interval=1)
    print(f"{args.alerts} alerts written ({stream.stat().st_size / 1e6:.0f} MB, {time.time() - t:.0f} s)")
    schema_file = args.work / "schema.avsc"
    schema_file.write_text(json.dumps(schema))

    if args.kafka:
        broker_host, brokers = None, args.kafka
    else:
        broker_host = ck.Producer({"test.mock.num.brokers": 1, "log_level": 3})
        b = next(iter(broker_host.list_topics(timeout=10).brokers.values()))
        brokers = f"{b.host}:{b.port}"
    data = args.work / "data"
    consumer = subprocess.Popen(
        [binary, "--quiet", "--data-dir", str(data), "alerts", "consume", "--kafka", brokers,
         "--topic", "alerts", "--schema", f"1={schema_file}", "--batch-alerts", str(args.batch_alerts),
         "--stop-when-idle-s", "5",
         # The topic appears with the first alert: seen within half a second.
         "--kafka-setting", "topic.metadata.refresh.interval.ms=500"],
        stdout=subprocess.PIPE, text=True)
    rss, lines = [], []
    stop = threading.Event()

    def read_output():
        for line in consumer.stdout:
            lines.append((time.time(), line.rstrip()))
    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()

    def sample():
        while not stop.is_set():
            v = rss_kib(consumer.pid)
            if v:
                rss.append(v)
            time.sleep(0.5)
    threading.Thread(target=sample, daemon=True).start()
    time.sleep(4)  # the consumer joins its group
    t0 = time.time()
    replay = [binary, "--quiet", "alerts", "replay", str(stream), "--kafka", brokers, "--topic", "alerts",
              "--schema-id", "1"]
    if args.rate > 0:
        replay += ["--rate", str(args.rate)]
    subprocess.run(replay, check=True, capture_output=True)
    published = time.time() - t0
    consumer.wait()
    reader.join()
    stop.set()
    batches = [t for t, line in lines if line.startswith("batch")]
    total = lines[-1][1] if lines else ""
    last_batch = batches[-1] if batches else time.time()
    m = re.search(r"consumed\t(\d+) messages\t(\d+) alerts stored.*p50 (\S+) ms p99 (\S+) ms", total)
    if consumer.returncode != 0 or not m:
        sys.exit(f"the consumer failed: {[line for _, line in lines[-5:]]}")
    stored = int(m.group(2))
    if stored != args.alerts:
        sys.exit(f"{stored} of {args.alerts} alerts were consumed: the broker did not keep the "
                 "others (librdkafka's mock cluster keeps about 20 MB a partition); use --kafka")
    seconds = last_batch - t0
    result = {
        "alerts": args.alerts,
        "alerts_stored": stored,
        "rate_asked": args.rate,
        "publish_s": round(published, 2),
        "ingest_s": round(seconds, 2),
        "alerts_per_s": round(stored / seconds, 1),
        "latency_p50_ms": m.group(3),
        "latency_p99_ms": m.group(4),
        "rss_mib_first_last_max": [round(rss[0] / 1024) if rss else None, round(rss[-1] / 1024) if rss else None,
                                   round(max(rss) / 1024) if rss else None],
        "bytes_per_alert": round(stream.stat().st_size / args.alerts),
        "history": args.history,
    }
    print(json.dumps(result, indent=1))
    machine = {"cpus": __import__("os").cpu_count(), "platform": platform.platform()}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"alerts-{stamp}.json").write_text(json.dumps({"machine": machine, **result}, indent=1))
    print(f"written bench/results/alerts-{stamp}.json")
    del broker_host


if __name__ == "__main__":
    main()
