"""Real clients (confluent-kafka / librdkafka 2.x and kafka-python) talk to a real tansu broker
through the filter running in wasm-sidecar. Every record must come back byte-identical and in
partition order, whatever the chunking and the number of worker VMs."""
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

LAYOUTS = [
    pytest.param(dict(chunk=0, workers=1), 1.0, id="whole-reads"),
    pytest.param(dict(chunk=7, workers=1), 0.5, id="chunk-7"),
    pytest.param(dict(chunk=1, workers=1), 0.1, id="chunk-1"),
    pytest.param(dict(chunk=0, workers=3), 1.0, id="3-workers"),
]


def create_topics(bootstrap, names, partitions=3):
    # client id admin-*: the example policies let platform admins create topics
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "admin-setup"})
    for _, f in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).items():
        f.result(30)


def expected_records(topic, n, tag):
    out = []
    for i in range(n):
        key = f"{tag}-key-{i % 37}".encode()
        value = (f"{tag}-{topic}-{i}-".encode() + bytes(range(256)) * (1 + i % 4))
        headers = [("idx", str(i).encode()), ("bin", bytes([i % 256, 0, 255]))]
        out.append((key, value, headers))
    return out


def produce_confluent(bootstrap, topic, records, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **conf})
    errors = []

    def cb(err, msg):
        if err:
            errors.append(err)

    for key, value, headers in records:
        while True:
            try:
                p.produce(topic, key=key, value=value, headers=headers, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:3]
    # Keep the producer (and its connection) open: with acks=0, "delivered" means "written to
    # the socket", and tansu answers acks=0 produces that the client never reads; closing then
    # sends RST, and the kernel drops whatever the relay had not read yet. Real Kafka sends no
    # such answers.
    return p


def consume_confluent(bootstrap, topics, want, timeout=90):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": True})
    c.subscribe(topics)
    got = []
    end = time.time() + timeout
    try:
        while len(got) < want and time.time() < end:
            m = c.poll(1.0)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append((m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers() or []))
    finally:
        c.close()
    return got


def check_same(expected_by_topic, got):
    """Every produced record came back exactly once, byte-identical; offsets ascend per
    partition and, for each key (which pins a partition), records keep production order."""
    by_topic = {}
    for topic, partition, offset, key, value, headers in got:
        by_topic.setdefault(topic, []).append((partition, offset, key, value, headers))
    for topic, records in expected_by_topic.items():
        seen = by_topic.get(topic, [])
        assert len(seen) == len(records), f"{topic}: {len(seen)} of {len(records)}"
        want = sorted((k, v, tuple(h)) for k, v, h in records)
        have = sorted((k, v, tuple(h)) for _, _, k, v, h in seen)
        assert want == have, f"{topic}: records differ"
        per_partition = {}
        for partition, offset, key, value, _ in seen:
            per_partition.setdefault(partition, []).append((offset, key, value))
        for partition, rows in per_partition.items():
            offsets = [o for o, _, _ in rows]
            assert offsets == sorted(offsets), f"{topic}/{partition} out of order"
        order = {v: i for i, (_, v, _) in enumerate(records)}
        for partition, rows in per_partition.items():
            by_key = {}
            for _, key, value in sorted(rows):
                by_key.setdefault(key, []).append(order[value])
            for key, idx in by_key.items():
                assert idx == sorted(idx), f"{topic}/{partition} key {key} reordered"


@pytest.mark.parametrize("layout,scale", LAYOUTS)
def test_confluent_kafka_roundtrip(stack_factory, layout, scale):
    st = stack_factory(**layout)
    n = max(100, int(2000 * scale))
    variants = {
        "plain-acks-all": dict(acks="all"),
        "gzip-acks-1": dict(acks="1", **{"compression.type": "gzip"}),
        "lz4-acks-all": dict(acks="all", **{"compression.type": "lz4"}),
        "zstd-acks-0": dict(acks="0", **{"compression.type": "zstd"}),
    }
    topics = {f"e2e-{name}": conf for name, conf in variants.items()}
    create_topics(st.bootstrap, list(topics))
    expected = {}
    producers = []
    for topic, conf in topics.items():
        expected[topic] = expected_records(topic, n, "ck")
        producers.append(produce_confluent(st.bootstrap, topic, expected[topic], **conf))
    got = consume_confluent(st.bootstrap, list(topics), n * len(topics))
    del producers
    check_same(expected, got)
    stats = st.sidecar.stats()
    m = lambda fam, **kw: st.sidecar.metric(fam, stats, **kw)  # noqa: E731
    assert m("kafka_mesh_malformed_total") == 0
    assert m("kafka_mesh_produce_acks0_total") > 0
    assert m("kafka_mesh_requests_total") > len(topics)
    # every answered request was matched (acks=0 produces get none)
    assert m("kafka_mesh_responses_total") <= m("kafka_mesh_requests_total")
    # per-topic record counts are exact whatever the chunking, compression or acks
    for topic in topics:
        assert m("kafka_mesh_produce_records_total", topic=topic) == n, topic
        assert m("kafka_mesh_fetch_records_total", topic=topic) >= n, topic


@pytest.mark.parametrize("layout,scale", LAYOUTS[:2] + LAYOUTS[3:])
def test_kafka_python_roundtrip(stack_factory, layout, scale):
    from kafka import KafkaConsumer, KafkaProducer
    st = stack_factory(**layout)
    n = max(100, int(1000 * scale))
    topics = ["kp-plain", "kp-gzip"]
    create_topics(st.bootstrap, topics)
    expected = {}
    for topic, comp in zip(topics, [None, "gzip"]):
        p = KafkaProducer(bootstrap_servers=st.bootstrap, acks="all", compression_type=comp, linger_ms=5)
        expected[topic] = expected_records(topic, n, "kp")
        futures = [p.send(topic, key=k, value=v, headers=h) for k, v, h in expected[topic]]
        p.flush(60)
        for f in futures:
            f.get(30)
        p.close()
    c = KafkaConsumer(*topics, bootstrap_servers=st.bootstrap, group_id=f"kp-{uuid.uuid4()}",
                      auto_offset_reset="earliest", consumer_timeout_ms=90000)
    got = []
    for m in c:
        got.append((m.topic, m.partition, m.offset, m.key, m.value, list(m.headers)))
        if len(got) >= n * len(topics):
            break
    c.close()
    check_same(expected, got)
    assert st.sidecar.metric("kafka_mesh_malformed_total") == 0
    for topic in topics:
        assert st.sidecar.metric("kafka_mesh_produce_records_total", topic=topic) == n, topic
