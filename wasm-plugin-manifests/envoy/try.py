#!/usr/bin/env python3
"""Try the filter: produce records through it, consume them back, check they match, and show
what the filter counted.

    .venv/bin/python wasm-plugin-manifests/envoy/try.py                 # compose.yaml's Envoy
    .venv/bin/python wasm-plugin-manifests/envoy/try.py --bootstrap 127.0.0.1:PORT \\
        --admin 127.0.0.1:ADMIN                                        # the test host

With compose.yaml up (`make envoy-up`) the defaults point at its Envoy: the listener on
127.0.0.1:19092 and the admin on 127.0.0.1:9901. The test host (target/sidecar/wasm-sidecar
--admin ADDR) serves the same /stats/prometheus, so the same script runs against it
(tests/e2e/test_try_script.py does, with a real tansu broker).

Stats are read from the admin's /stats/prometheus (Envoy: source/server/admin/
prometheus_stats.cc; Wasm metrics appear there without the `wasmcustom` namespace and without
an envoy_ prefix, their labels cut out of the name by envoy.yaml's stats_tags; README
"Metrics"). Exit status 0 when every record came back byte-identical, in order per partition,
and the filter counted them (kafka_mesh_produce_records_total and
kafka_mesh_fetch_records_total for the topic reach N); 1 otherwise.
"""
import argparse
import re
import sys
import time
import urllib.request
import uuid

try:
    from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:  # pragma: no cover
    sys.exit("confluent-kafka is missing: `make setup` (or pip install -r tests/e2e/requirements.txt)")


def records(topic, n):
    """N distinct records: keys, values with every byte value, headers."""
    out = []
    for i in range(n):
        key = f"key-{i % 17}".encode()
        value = f"{topic}-{i}-".encode() + bytes(range(256))
        headers = [("idx", str(i).encode())]
        out.append((key, value, headers))
    return out


def create_topic(bootstrap, topic, partitions, timeout):
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "try-admin"})
    for _, fut in admin.create_topics([NewTopic(topic, partitions, 1)]).items():
        try:
            fut.result(timeout)
        except Exception as e:  # an existing topic is fine: --topic may name one
            err = e.args[0] if e.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise


def produce(bootstrap, topic, recs, timeout):
    """Send the records; returns where each landed, [(partition, offset)] in send order."""
    p = Producer({"bootstrap.servers": bootstrap, "client.id": "try-producer", "linger.ms": 5})
    placed = [None] * len(recs)
    errors = []

    def on_delivery(i):
        def cb(err, msg):
            if err:
                errors.append(err)
            else:
                placed[i] = (msg.partition(), msg.offset())
        return cb

    for i, (key, value, headers) in enumerate(recs):
        while True:
            try:
                p.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery(i))
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    left = p.flush(timeout)
    if left or errors or None in placed:
        raise SystemExit(f"produce failed: {left} undelivered, errors {errors[:3]}")
    return placed


def consume(bootstrap, topic, placed, timeout):
    """Read back, as a group member (so the group APIs go through the filter too), from the
    first offset this run wrote in each partition until every written offset was seen; an
    existing topic's older records are not read. Returns {(partition, offset): record}."""
    start, want = {}, set(placed)
    for part, offset in placed:
        start[part] = min(offset, start.get(part, offset))

    def on_assign(consumer, parts):
        for tp in parts:
            tp.offset = start.get(tp.partition, OFFSET_END)
        consumer.assign(parts)

    c = Consumer({"bootstrap.servers": bootstrap, "client.id": "try-consumer",
                  "group.id": f"try-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    c.subscribe([topic], on_assign=on_assign)
    got = {}
    end = time.time() + timeout
    try:
        while not want <= got.keys() and time.time() < end:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                raise SystemExit(f"consume failed: {m.error()}")
            got[(m.partition(), m.offset())] = (m.key(), m.value(), m.headers() or [])
    finally:
        c.close()
    return got


def compare(sent, placed, got):
    """Problems, empty when every record came back from where it was written,
    byte-identical, and each partition holds this run's records in the order they were sent
    (one producer, so per-partition order is send order)."""
    problems = []
    last = {}
    for i, ((key, value, headers), (part, offset)) in enumerate(zip(sent, placed)):
        back = got.get((part, offset))
        if back is None:
            problems.append(f"record {i} (partition {part} offset {offset}) did not come back")
        elif back != (key, value, list(headers)):
            problems.append(f"record {i} (partition {part} offset {offset}) came back different")
        if offset <= last.get(part, -1):
            problems.append(f"record {i}: partition {part} offset {offset} is out of send order")
        last[part] = offset
    return problems


def prometheus(admin):
    url = f"http://{admin}/stats/prometheus"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def samples(text):
    """{series: value} of the kafka_mesh_ samples in Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith("kafka_mesh_"):
            series, _, value = line.rpartition(" ")
            try:
                out[series] = float(value)
            except ValueError:
                pass
    return out


def metric(stats, family, **labels):
    total = 0.0
    for series, value in stats.items():
        name, _, rest = series.partition("{")
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if name == family and all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap, through the filter")
    ap.add_argument("--admin", default="127.0.0.1:9901", help="Envoy (or test host) admin host:port")
    ap.add_argument("--records", type=int, default=100, help="how many records (default 100)")
    ap.add_argument("--topic", help="topic to use (default: a new try-XXXXXXXX)")
    ap.add_argument("--partitions", type=int, default=1, help="partitions of a new topic")
    ap.add_argument("--timeout", type=float, default=60, help="seconds for each step")
    ap.add_argument("--stats-wait", type=float, default=15,
                    help="seconds to wait for the filter's counts to reach the records (default 15)")
    ap.add_argument("--buckets", action="store_true", help="also print histogram buckets")
    ap.add_argument("--no-stats-check", action="store_true",
                    help="print the stats but do not require the counts (other filter configs)")
    a = ap.parse_args(argv)
    topic = a.topic or f"try-{uuid.uuid4().hex[:8]}"

    create_topic(a.bootstrap, topic, a.partitions, a.timeout)
    sent = records(topic, a.records)
    placed = produce(a.bootstrap, topic, sent, a.timeout)
    print(f"produced {len(sent)} records to {topic} through {a.bootstrap}")
    got = consume(a.bootstrap, topic, placed, a.timeout)
    problems = compare(sent, placed, got)
    back = sum(1 for key in placed if key in got)
    print(f"consumed {back} of them back" + ("" if problems else ": all match"))
    for p in problems[:10]:
        print("  " + p)

    # Counters are live in Envoy's admin; poll a little anyway (the last Fetch response may
    # still be on its way through the filter when the consumer has its records).
    end = time.time() + (0 if a.no_stats_check else a.stats_wait)
    while True:
        stats = samples(prometheus(a.admin))
        produced = metric(stats, "kafka_mesh_produce_records_total", topic=topic)
        fetched = metric(stats, "kafka_mesh_fetch_records_total", topic=topic)
        if (produced >= len(sent) and fetched >= len(sent)) or time.time() > end:
            break
        time.sleep(0.5)
    print(f"\nkafka_mesh_ stats from http://{a.admin}/stats/prometheus:")
    for series in sorted(stats):
        if a.buckets or "_bucket{" not in series:
            print(f"  {series} {stats[series]:g}")
    print(f"\nthe filter counted {produced:g} records produced and {fetched:g} fetched on {topic}")
    if not a.no_stats_check and (produced < len(sent) or fetched < len(sent)):
        problems.append(f"expected at least {len(sent)} produced and fetched records in the "
                        "filter's metrics (kafka_mesh_produce_records_total, "
                        "kafka_mesh_fetch_records_total with topic label)")
        print(problems[-1])
    print("OK" if not problems else "FAILED")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
