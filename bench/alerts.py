#!/usr/bin/env python3
"""Alert stream: a replayed synthetic night consumed from a Kafka-protocol broker, stored
in the alert database and run through 100 users' filters (10 of them cross-matches with
the survey's Object catalog), every match published to the filter's Kafka topic.

    python3 bench/alerts.py                                   # 10^7-row catalog
    python3 bench/alerts.py --catalog-objects 1000000 --visits 40   # a quick run

`meridian generate --alerts` makes the survey (--catalog-objects objects, ingested as
catalog `object`) and a night of Rubin alerts (lsst.v9_0, from lsst-alert-packet's schema
tree) of its variables; `meridian alerts replay` publishes them to the broker (Tansu, the
Kafka-protocol broker the tests use, or --kafka for another) at --rate alerts a second
(0: as fast as the broker takes them) while `meridian alerts consume` reads them.

Measured: alerts a second over the stream (first message read to last batch committed);
latency from each alert's broker timestamp to its batch's commit (stored, filtered,
matches queued: the consumer's own figures) and to the filter's output message on Kafka
(its broker timestamp, read back by confluent-kafka), p50 and p99; the consumer's resident
memory sampled through the night (first, quartiles, last, max).
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import ROOT, meridian_binary  # noqa: E402


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid):
    """CPU seconds (user + system) of each thread of process `pid` so far, by (thread id,
    name); empty once the process is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[(tid, name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def by_name(threads):
    """CPU seconds of `threads` ({(tid, name): s}) summed by name, the threads of a pool
    (names differing in a trailing number) together, largest first."""
    out = {}
    for (_, name), sec in threads.items():
        name = re.sub(r"[-_ #]?\d+$", "", name)
        out[name] = out.get(name, 0.0) + sec
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def schema_dir():
    import lsst.alert.packet
    return os.path.join(os.path.dirname(lsst.alert.packet.__file__), "schema")


def tansu():
    exe = os.environ.get("MERIDIAN_TANSU") or shutil.which("tansu") \
        or str(Path.home() / ".cache/meridian/tools/bin/tansu")
    if not Path(exe).exists():
        sys.exit("no Kafka broker: run scripts/test.sh once (it installs Tansu) or give --kafka")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "broker", "--listener-url", f"tcp://{addr}",
                             "--advertised-listener-url", f"tcp://{addr}",
                             "--storage-engine", "memory://tansu/", "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, addr
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("Tansu did not start")


def filters(rng_seed):
    """100 filters: 90 over the alert alone, 10 cross-matches with the catalog."""
    import random
    rng = random.Random(rng_seed)
    out = []
    for i in range(30):
        out.append(f"SELECT a.alertId, a.psfFlux FROM alert.diasource AS a "
                   f"WHERE a.psfFlux > {rng.uniform(3e4, 3e5):.1f}")
    for i in range(30):
        out.append(f"SELECT a.alertId, a.snr FROM alert.diasource AS a "
                   f"WHERE a.band = '{'ugrizy'[i % 6]}' AND a.snr > {rng.uniform(20, 100):.1f}")
    for i in range(20):
        out.append(f"SELECT d.alertId, d.nDiaSources FROM alert.diaobject AS d "
                   f"WHERE d.nDiaSources >= {rng.randint(6, 15)}")
    for i in range(10):
        out.append(f"SELECT a.alertId FROM alert.diasource AS a "
                   f"WHERE a.psfFlux < 0 AND a.snr > {rng.uniform(5, 20):.1f}")
    for i in range(10):
        out.append("SELECT a.alertId, o.objectId, o.r_mag FROM alert.diasource AS a "
                   "JOIN object AS o ON 1 = CONTAINS(POINT('ICRS', a.ra, a.dec), "
                   f"CIRCLE('ICRS', o.ra, o.dec, {rng.uniform(0.5, 2.0):.2f}/3600.)) "
                   f"WHERE o.r_mag < {rng.uniform(20, 24):.2f}")
    return out


def read_topic(brokers, topic, timeout=30):
    """(key, broker timestamp ms, value) of every message of `topic`: until the end of the
    partition, or `timeout` seconds without a message."""
    import confluent_kafka as ck
    c = ck.Consumer({"bootstrap.servers": brokers, "group.id": f"bench-{time.time()}",
                     "auto.offset.reset": "earliest", "enable.partition.eof": True,
                     "log_level": 3})
    c.subscribe([topic])
    out, deadline = [], time.time() + timeout
    while time.time() < deadline:
        msgs = c.consume(5000, 1.0)
        if msgs:
            deadline = time.time() + timeout
        eof = False
        for m in msgs:
            if m.error():
                eof = eof or m.error().code() == ck.KafkaError._PARTITION_EOF
                continue
            out.append((m.key(), m.timestamp()[1], m.value()))
        if eof:
            break
    c.close()
    return out


def zigzag_long(data, at):
    shift, acc = 0, 0
    while True:
        b = data[at]
        at += 1
        acc |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return (acc >> 1) ^ -(acc & 1)


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog-objects", type=int, default=10_000_000)
    ap.add_argument("--visits", type=int, default=100)
    ap.add_argument("--fields", type=int, default=10)
    ap.add_argument("--field-radius-deg", type=float, default=1.75, help="a Rubin visit's field")
    ap.add_argument("--footprint", default="0,-30,20",
                    help="RA,DEC,RADIUS (degrees) of the cap holding the catalog's objects, so "
                    "that a field holds a deep survey's density ('' for the whole sky)")
    ap.add_argument("--variable-fraction", type=float, default=0.3)
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--rate", type=float, default=0.0, help="alerts a second (0: as fast as possible)")
    ap.add_argument("--batch-alerts", type=int, default=10_000)
    ap.add_argument("--visit-interval-s", type=float, default=0.0,
                    help="publish visit by visit, one every this many seconds (Rubin: about 39; "
                         "0: the whole night as fast as the broker takes it)")
    ap.add_argument("--producer-batch", type=int, default=1000,
                    help="messages per record batch of the replay (librdkafka: batch.num.messages)")
    ap.add_argument("--filters", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/meridian-bench-alerts"))
    ap.add_argument("--binary")
    ap.add_argument("--consumer-setting", action="append", default=None, metavar="KEY=VALUE",
                    help="a librdkafka setting of the consumer (default with Tansu: "
                    "fetch.wait.max.ms=5, as Tansu 0.6 answers a fetch with one record batch "
                    "and then waits out the fetch's maximum wait)")
    ap.add_argument("--kafka", help="a broker, host:port (default: Tansu, started here)")
    ap.add_argument("--reuse-survey", action="store_true",
                    help="use the survey and night generated in --work by an earlier run with the "
                    "same arguments")
    args = ap.parse_args()
    binary = meridian_binary(args.binary)
    data, survey = args.work / "data", args.work / "survey"
    generate = ["generate", "--out", survey, "--objects", args.catalog_objects, "--seed", args.seed,
                "--profile", "narrow", "--alerts", "--alert-schema-dir", schema_dir(),
                "--alert-schema", "9.0", "--alert-visits", args.visits, "--alert-fields", args.fields,
                "--alert-field-radius-deg", args.field_radius_deg,
                "--variable-fraction", args.variable_fraction, "--alert-history", args.history,
                *(["--footprint", args.footprint] if args.footprint else [])]
    # With --reuse-survey, the survey and night of an earlier run with the same arguments
    # are used again (so that builds are compared on the same alerts); the catalogs,
    # filters and broker are always new.
    made = survey / "generated-with.json"
    asked = {"args": [str(a) for a in generate[3:]]}
    earlier = json.loads(made.read_text()) if made.exists() else {}
    reuse = args.reuse_survey and {k: earlier.get(k) for k in asked} == asked
    if reuse:
        shutil.rmtree(data, ignore_errors=True)
    else:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)

    def m(*a, **kw):
        return subprocess.run([binary, "--quiet", "--data-dir", str(data), *map(str, a)],
                              check=True, capture_output=True, text=True, **kw)

    t = time.time()
    if reuse:
        n_alerts = earlier["alerts"]
    else:
        out = m(*generate).stderr
        n_alerts = int(re.search(r"alerts: (\d+) alerts", out).group(1))
        made.write_text(json.dumps({**asked, "alerts": n_alerts}))
    files = sorted(str(p) for p in (survey / "alerts").glob("visit-*.avro"))
    made_in = "made earlier" if reuse else f"{time.time() - t:.0f} s"
    print(f"survey and night: {n_alerts} alerts in {len(files)} visits ({made_in})")
    t = time.time()
    m("ingest", "object", *sorted(survey.glob("object-*.parquet")))
    print(f"catalog object: {args.catalog_objects} rows ingested ({time.time() - t:.0f} s)")

    broker_proc, brokers = (None, args.kafka) if args.kafka else tansu()
    if args.consumer_setting is None:
        args.consumer_setting = [] if args.kafka else ["fetch.wait.max.ms=5"]
    queries = filters(args.seed)[: args.filters]
    for i, q in enumerate(queries):
        m("alerts", "filter", "add", "--owner", "bench", "--name", f"f{i:03}", "--query", q,
          "--kafka-topic", f"bench.f{i:03}")
    print(f"{len(queries)} filters added")

    consumer = subprocess.Popen(
        [binary, "--quiet", "--data-dir", str(data), "alerts", "consume", "--kafka", brokers,
         "--topic", "night", "--schema-dir", schema_dir(), "--batch-alerts", str(args.batch_alerts),
         "--batch-ms", "500", "--stop-when-idle-s", "10",
         "--kafka-setting", "topic.metadata.refresh.interval.ms=500",
         *[x for kv in args.consumer_setting for x in ("--kafka-setting", kv)]],
        stdout=subprocess.PIPE, stderr=open(args.work / "consumer.log", "w"), text=True)
    lines, rss = [], []
    stop = threading.Event()

    def read_output():
        for line in consumer.stdout:
            lines.append((time.time(), line.rstrip()))
    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()

    # Each thread's CPU time at its last sample: threads that ended keep theirs.
    cpu = {"consumer": {}, "broker": {}}

    def sample():
        while not stop.is_set():
            v = rss_kib(consumer.pid)
            if v:
                rss.append((time.time(), v))
            cpu["consumer"].update(cpu_s(consumer.pid))
            if broker_proc:
                cpu["broker"].update(cpu_s(broker_proc.pid))
            time.sleep(0.5)
    threading.Thread(target=sample, daemon=True).start()
    time.sleep(3)  # the consumer joins its group
    t0 = time.time()
    # Record batches of up to --producer-batch messages. Tansu 0.6 answers a fetch from
    # inside a record batch with the next batch (losing the rest of that batch), which a
    # consumer meets only when it resumes at an offset inside one (a restart, a pause);
    # the run checks that every alert was consumed.
    replay = [binary, "--quiet", "alerts", "replay", "--kafka", brokers, "--topic", "night",
              "--schema-id", "900", "--kafka-setting", f"batch.num.messages={args.producer_batch}"]
    if args.rate > 0:
        replay += ["--rate", str(args.rate)]
    if args.visit_interval_s > 0:
        # Visit by visit, as Rubin sends them: each visit's alerts at once, the next visit
        # --visit-interval-s after the last one began.
        for k, f in enumerate(files):
            due = t0 + k * args.visit_interval_s
            time.sleep(max(0.0, due - time.time()))
            subprocess.run(replay + [f], check=True, capture_output=True)
    else:
        subprocess.run(replay + files, check=True, capture_output=True)
    published = time.time() - t0
    consumer.wait()
    reader.join()
    stop.set()
    batches = [(t, line) for t, line in lines if line.startswith("batch")]
    total = lines[-1][1] if lines else ""
    mt = re.search(r"consumed\t(\d+) messages\t(\d+) alerts stored.*p50 (\S+) ms p99 (\S+) ms", total)
    if consumer.returncode != 0 or not mt:
        sys.exit(f"the consumer failed: {[line for _, line in lines[-5:]]}")
    stored = int(mt.group(2))
    matches = sum(int(re.search(r"\t(\d+) matches", line).group(1)) for _, line in batches
                  if re.search(r"\t(\d+) matches", line))
    seconds = batches[-1][0] - t0 if batches else float("nan")
    stages = {}
    for _, line in batches:
        for name, value in re.findall(r"(read|decode|store|filter|queue|commit) (\S+) s", line):
            stages[name] = stages.get(name, 0.0) + float(value)

    # End to end: each output message's broker timestamp against its alert's.
    night_msgs = read_topic(brokers, "night")
    sent = {}
    for _, ts, value in night_msgs:
        sent[zigzag_long(value, 5)] = ts  # lsst.v9_0: the alert's first field, diaSourceId
    e2e = []
    for i in range(len(queries)):
        for key, ts, _ in read_topic(brokers, f"bench.f{i:03}", timeout=15):
            a = int(key)
            if a in sent:
                e2e.append(ts - sent[a])
    if broker_proc:
        broker_proc.kill()

    def rss_at(frac):
        if not rss:
            return None
        return round(rss[min(len(rss) - 1, int(frac * len(rss)))][1] / 1024)
    result = {
        "catalog_objects": args.catalog_objects,
        "footprint": args.footprint, "field_radius_deg": args.field_radius_deg, "visits": args.visits,
        "fields": args.fields,
        "alerts": n_alerts,
        "alerts_stored": stored,
        "filters": len(queries),
        "crossmatch_filters": sum("JOIN object" in q for q in queries),
        "matches": matches,
        "output_messages": len(e2e),
        "outputs_complete": len(e2e) == matches,
        "rate_asked": args.rate,
        "consumer_settings": args.consumer_setting,
        "publish_s": round(published, 2),
        "ingest_filter_s": round(seconds, 2),
        "alerts_per_s": round(stored / seconds, 1),
        "consumer_stage_s": {k: round(v, 2) for k, v in stages.items()},
        "commit_latency_ms_p50_p99": [mt.group(3), mt.group(4)],
        "output_latency_ms_p50_p99": [pct(e2e, 0.5), pct(e2e, 0.99)],
        "rss_mib_first_q1_median_q3_last_max": [rss_at(0), rss_at(0.25), rss_at(0.5), rss_at(0.75),
                                               rss_at(1.0), round(max(v for _, v in rss) / 1024) if rss else None],
        # Sampled every 0.5 s until the consumer exits (a thread's last 0.5 s may be
        # missed); threads of a pool summed.
        "cpu_s_consumer_by_thread": by_name(cpu["consumer"]),
        "cpu_s_broker": round(sum(cpu["broker"].values()), 1),
        "batch_alerts": args.batch_alerts,
        "producer_batch": args.producer_batch,
        "visit_interval_s": args.visit_interval_s,
        "broker": "Tansu 0.6.0 (memory)" if broker_proc else args.kafka,
    }
    print(json.dumps(result, indent=1))
    if stored != n_alerts:
        sys.exit(f"{stored} of {n_alerts} alerts were consumed")
    if len(e2e) != matches:
        print(f"warning: {len(e2e)} of the {matches} matches were read back from the filters' topics")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    outdir = ROOT / "bench" / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (outdir / f"alerts-{stamp}.json").write_text(json.dumps({"machine": machine, **result}, indent=1))
    print(f"written bench/results/alerts-{stamp}.json")


if __name__ == "__main__":
    main()
