"""Per-topic metrics, checked exactly against real traffic: confluent-kafka (librdkafka 2.x)
produces a known number of records and bytes to several topics through the filter in front of
tansu, consumes them with a group, and the sidecar's /stats/prometheus (rendered as Envoy
renders it with the stats_tags we ship) must show exactly those numbers."""
import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from test_e2e import consume_confluent, create_topics


def zigzag_len(n):
    z = (n << 1) ^ (n >> 63)
    size = 1
    while z >= 0x80:
        z >>= 7
        size += 1
    return size


def single_record_batch_bytes(key, value, headers=()):
    """Bytes of a v2 record batch holding one uncompressed record (KIP-98 layout): the 61-byte
    batch header plus the record, whose timestamp and offset deltas are 0."""
    body = 1 + 1 + 1  # attributes, timestampDelta, offsetDelta
    body += zigzag_len(len(key)) + len(key)
    body += zigzag_len(len(value)) + len(value)
    body += zigzag_len(len(headers))
    for hk, hv in headers:
        body += zigzag_len(len(hk)) + len(hk) + zigzag_len(len(hv)) + len(hv)
    return 61 + zigzag_len(body) + body


def produce_one_batch_each(bootstrap, topic, records, partition=None):
    """One record per batch and per Produce request (linger 0, batch of 1, flushed each time),
    so requests, batches and bytes are all known exactly."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1,
                  "acks": "all", "enable.idempotence": False, "compression.type": "none",
                  "client.id": "metrics-producer"})
    errors = []
    extra = {} if partition is None else {"partition": partition}
    for key, value, headers in records:
        p.produce(topic, key=key, value=value, headers=list(headers),
                  on_delivery=lambda err, _m: err and errors.append(err), **extra)
        assert p.flush(30) == 0
    assert not errors, errors
    return p


def test_exact_per_topic_metrics_errors_latency_and_lag(stack_factory):
    config = {"accessLog": {"enabled": True, "sampleRate": 0.5},
              "metrics": {"maxTopics": 50, "maxClientIds": 10}}
    st = stack_factory(workers=2, config=json.dumps(config), log_level="info")
    plan = {"m-orders": 37, "m-audit": 12, "m-lag": 10}
    create_topics(st.bootstrap, list(plan), partitions=2)
    expected_bytes = {}
    producers = []
    for topic, n in plan.items():
        records = [(f"k{i}".encode(), (f"{topic}-{i}-".encode() * (1 + i % 5)),
                    [("h", str(i).encode())] if i % 2 else []) for i in range(n)]
        expected_bytes[topic] = sum(single_record_batch_bytes(k, v, h) for k, v, h in records)
        # m-lag's planned records go to partition 1, so partition 0 holds only the lag check's
        producers.append(produce_one_batch_each(st.bootstrap, topic, records,
                                                partition=1 if topic == "m-lag" else None))

    # A group consumer reads m-orders and m-audit completely, once.
    got = consume_confluent(st.bootstrap, ["m-orders", "m-audit"], plan["m-orders"] + plan["m-audit"])
    assert len(got) == plan["m-orders"] + plan["m-audit"]

    # Lag: a consumer assigned m-lag/0 at offset 3 that fetches once (queued.min.messages=1
    # stops librdkafka from prefetching more). Partition 0 holds exactly these 8 records.
    lag_records = [(b"x%d" % i, b"y" * 50, []) for i in range(8)]
    p = Producer({"bootstrap.servers": st.bootstrap, "linger.ms": 0, "batch.num.messages": 1,
                  "acks": "all", "enable.idempotence": False})
    for k, v, _ in lag_records:
        p.produce("m-lag", key=k, value=v, partition=0)
        assert p.flush(30) == 0
    producers.append(p)
    c = Consumer({"bootstrap.servers": st.bootstrap, "group.id": f"lag-{uuid.uuid4()}",
                  "queued.min.messages": 1, "enable.auto.commit": False})
    c.assign([TopicPartition("m-lag", 0, 3)])
    first = c.poll(15)
    assert first is not None and first.error() is None and first.offset() == 3
    time.sleep(1)

    # A real error: produce to a topic that does not exist, with auto-creation off.
    missing = Producer({"bootstrap.servers": st.bootstrap, "allow.auto.create.topics": False,
                        "message.timeout.ms": 2000})
    failed = []
    missing.produce("m-missing", value=b"x", on_delivery=lambda err, _m: failed.append(err))
    missing.flush(5)
    assert failed and failed[0] is not None

    stats = st.sidecar.stats()
    m = lambda fam, **kw: st.sidecar.metric(fam, stats, **kw)  # noqa: E731

    # Produce, per topic, exact. m-lag got the planned records plus the 8 for the lag check.
    lag_extra_bytes = sum(single_record_batch_bytes(k, v) for k, v, _ in lag_records)
    for topic, n in plan.items():
        extra = 8 if topic == "m-lag" else 0
        assert m("kafka_mesh_produce_records_total", topic=topic) == n + extra, topic
        assert m("kafka_mesh_produce_batches_total", topic=topic) == n + extra, topic
        assert m("kafka_mesh_produce_requests_total", topic=topic) == n + extra, topic
        want_bytes = expected_bytes[topic] + (lag_extra_bytes if topic == "m-lag" else 0)
        assert m("kafka_mesh_produce_bytes_total", topic=topic) == want_bytes, topic

    # Fetch, per topic: the group read every record once, and tansu returns the batches as
    # they were produced, so records and bytes match the produce side exactly.
    for topic in ["m-orders", "m-audit"]:
        assert m("kafka_mesh_fetch_records_total", topic=topic) == plan[topic], topic
        assert m("kafka_mesh_fetch_bytes_total", topic=topic) == expected_bytes[topic], topic

    # Lag: m-lag partition 0 holds 8 records (high watermark 8), fetched once from offset 3.
    assert m("kafka_mesh_consumer_lag", topic="m-lag", partition="0") == 8 - 3
    assert m("kafka_mesh_fetch_records_total", topic="m-lag") == 8 - 3
    # librdkafka 2.x fetches by topic id (Fetch v13+): the labels above are names only
    # because the filter learned the ids from Metadata and shared them across worker VMs.
    fetch_versions = [int(k.split('version="')[1].split('"')[0]) for k in stats
                      if k.startswith('kafka_mesh_requests_total{api="fetch"')]
    assert fetch_versions and min(fetch_versions) >= 13, fetch_versions
    assert not any(len(k) > 30 and 'topic="' in k and all(c in "0123456789abcdef" for c in
                   k.split('topic="')[1].split('"')[0]) and len(k.split('topic="')[1].split('"')[0]) == 32
                   for k in stats), "a topic id was left unresolved"

    # Errors: the missing topic shows up with its name and Kafka's error name.
    e = m("kafka_mesh_topic_errors_total", api="metadata", topic="m-missing",
          error="UNKNOWN_TOPIC_OR_PARTITION")
    assert e >= 1
    assert m("kafka_mesh_errors_total", api="metadata", error="UNKNOWN_TOPIC_OR_PARTITION") == e

    # Latency: one histogram sample per answered request of the API.
    total_produce = sum(plan.values()) + 8
    assert m("kafka_mesh_request_latency_ms_count", api="produce") == total_produce
    assert m("kafka_mesh_responses_total", api="produce") == total_produce
    assert m("kafka_mesh_request_latency_ms_bucket", api="produce", le="+Inf") == total_produce

    # Groups and clients.
    assert m("kafka_mesh_group_requests_total", api="join_group") >= 1
    assert m("kafka_mesh_group_requests_total", api="offset_commit") >= 1
    assert m("kafka_mesh_client_requests_total", client_id="metrics-producer") >= plan["m-orders"]
    assert m("kafka_mesh_malformed_total") == 0

    # The Prometheus text itself, as Envoy's admin shows it with our stats_tags.
    text = st.sidecar.prometheus()
    assert "# TYPE kafka_mesh_produce_records_total counter\n" in text
    assert f'kafka_mesh_produce_records_total{{topic="m-orders"}} {plan["m-orders"]}\n' in text

    # Access log: sampled JSON lines with client id, API, topics, latency and error.
    lines = [json.loads(line.split("kafka-mesh-filter access ", 1)[1])
             for line in st.sidecar.read_log().splitlines() if "kafka-mesh-filter access " in line]
    produce_lines = [x for x in lines if x["api"] == "produce" and x["topics"] == ["m-orders"]]
    assert produce_lines, lines[:5]
    assert produce_lines[0]["client_id"] == "metrics-producer"
    assert produce_lines[0]["error"] == "NONE" and produce_lines[0]["latency_ms"] is not None
    # sampleRate 0.5: about half of all requests, per connection, deterministically
    assert 0.3 * m("kafka_mesh_requests_total") <= len(lines) <= 0.7 * m("kafka_mesh_requests_total") + 5

    c.close()
    del producers
