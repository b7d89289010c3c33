"""Broker address rewriting end to end: tansu advertises a name no client can resolve; clients
bootstrap through the sidecar and work only because the filter rewrites the advertised
address to the sidecar's. Without the rewrite config the same clients fail."""
import json
import time
import uuid

from confluent_kafka import Consumer, Producer

from test_e2e import create_topics

UNREACHABLE = "tcp://kafka-0.broker.unreachable.invalid:9092"


def roundtrip_confluent(bootstrap, topic, n=50, timeout=30):
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": int(timeout * 1000),
                  "acks": "all", "linger.ms": 5})
    errors = []
    for i in range(n):
        p.produce(topic, key=b"%d" % i, value=b"v-%d" % i, on_delivery=lambda e, m: e and errors.append(e))
    left = p.flush(timeout + 5)
    if left or errors:
        return False, f"{left} undelivered, errors {errors[:2]}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"rw-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = []
    end = time.time() + timeout
    while time.time() < end and len(got) < n:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    return sorted(got) == sorted(b"v-%d" % i for i in range(n)), f"{len(got)} consumed"


def test_confluent_works_only_with_the_rewrite(stack_factory):
    cfg = lambda port: json.dumps({"rewrite": {"nodeTemplate": f"127.0.0.1:{port}"}})  # noqa: E731
    st = stack_factory(config=cfg, advertise=UNREACHABLE)
    create_topics(st.bootstrap, ["rw-a"], partitions=2)
    ok, why = roundtrip_confluent(st.bootstrap, "rw-a")
    assert ok, why
    m = st.sidecar.metric
    assert m("kafka_mesh_requests_total", api="metadata") >= 1
    assert m("kafka_mesh_requests_total", api="find_coordinator") >= 1

    bare = stack_factory(config="{}", advertise=UNREACHABLE)
    ok, why = roundtrip_confluent(bare.bootstrap, "rw-a", n=5, timeout=8)
    assert not ok, "without the rewrite the unreachable advertised address must break the client"


def test_kafka_python_with_a_host_map(stack_factory):
    from kafka import KafkaConsumer, KafkaProducer
    host = "kafka-0.broker.unreachable.invalid"
    cfg = lambda port: json.dumps({"rewrite": {"hosts": {host: f"127.0.0.1:{port}"}}})  # noqa: E731
    st = stack_factory(config=cfg, advertise=UNREACHABLE)
    create_topics(st.bootstrap, ["rw-kp"], partitions=1)
    p = KafkaProducer(bootstrap_servers=st.bootstrap, acks="all")
    for i in range(20):
        p.send("rw-kp", key=b"%d" % i, value=b"kp-%d" % i).get(30)
    p.close()
    c = KafkaConsumer("rw-kp", bootstrap_servers=st.bootstrap, group_id=f"kp-{uuid.uuid4()}",
                      auto_offset_reset="earliest", consumer_timeout_ms=30000)
    got = []
    for msg in c:
        got.append(msg.value)
        if len(got) >= 20:
            break
    c.close()
    assert sorted(got) == sorted(b"kp-%d" % i for i in range(20))

    bare = stack_factory(config="{}", advertise=UNREACHABLE)
    failed = False
    try:
        p = KafkaProducer(bootstrap_servers=bare.bootstrap, acks="all", max_block_ms=8000,
                          request_timeout_ms=5000)
        p.send("rw-kp", value=b"x").get(10)
    except Exception:  # noqa: BLE001 - any failure to deliver is the expected outcome
        failed = True
    assert failed, "without the rewrite kafka-python must fail to reach the advertised broker"
