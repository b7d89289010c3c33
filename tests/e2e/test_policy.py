"""Policies enforced by the filter between real clients (confluent-kafka / librdkafka 2.x) and
a real tansu broker, with the README's example configs (wasm-plugin-manifests/policies/)."""
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from test_e2e import create_topics

POLICIES = Path(__file__).resolve().parents[2] / "wasm-plugin-manifests/policies"


def produce_each(bootstrap, client_id, plan, **conf):
    """Produce `plan` {topic: n}; return {topic: [error or None per record]}."""
    p = Producer({"bootstrap.servers": bootstrap, "client.id": client_id, "linger.ms": 5,
                  "acks": "all", "message.timeout.ms": 15000, **conf})
    results = {t: [] for t in plan}
    for topic, n in plan.items():
        for i in range(n):
            p.produce(topic, key=b"k%d" % i, value=f"{topic}-{i}".encode(),
                      on_delivery=lambda err, m, t=topic: results[t].append(err))
    assert p.flush(30) == 0
    return p, results


def consume(bootstrap, topics, want, group, timeout=30):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "client.id": "reader"})
    c.subscribe(topics)
    got, errors = [], []
    end = time.time() + timeout
    while time.time() < end and len(got) < want:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            errors.append(m.error())
            continue
        got.append((m.topic(), m.value()))
    # keep polling briefly so errors for other topics surface
    end = time.time() + 3
    while time.time() < end:
        m = c.poll(0.2)
        if m is not None and m.error():
            errors.append(m.error())
    c.close()
    return got, errors


def test_producer_allowed_on_orders_denied_on_payments(stack_factory):
    st = stack_factory(config=(POLICIES / "orders-producers.json").read_text(), log_level="info")
    create_topics(st.bootstrap, ["orders.eu", "orders.us", "payments"], partitions=2)
    p, res = produce_each(st.bootstrap, "orders-app", {"orders.eu": 20, "orders.us": 10, "payments": 15})
    assert res["orders.eu"] == [None] * 20 and res["orders.us"] == [None] * 10
    assert len(res["payments"]) == 15
    assert all(e is not None and e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in res["payments"]), \
        res["payments"][:3]
    # the orders records landed; payments stayed empty
    got, _ = consume(st.bootstrap, ["orders.eu", "orders.us"], 30, f"app-{uuid.uuid4()}")
    assert sorted(v for _, v in got) == sorted([f"orders.eu-{i}".encode() for i in range(20)] +
                                                [f"orders.us-{i}".encode() for i in range(10)])
    seeder, res = produce_each(st.bootstrap, "seeder", {"payments": 1})
    assert res["payments"] == [None]
    got, _ = consume(st.bootstrap, ["payments"], 1, f"app-{uuid.uuid4()}")
    assert got == [("payments", b"payments-0")], "only the seeder's record is in payments"
    m = st.sidecar.metric
    assert m("kafka_mesh_policy_decisions_total", rule="default", decision="deny") >= 1
    assert m("kafka_mesh_policy_decisions_total", rule="orders-producers", decision="allow") >= 1
    assert "kafka-mesh-filter policy deny: produce payments" in st.sidecar.read_log()
    del p, seeder


def test_consumer_denied_a_topic_keeps_consuming_the_others(stack_factory):
    st = stack_factory(config=(POLICIES / "orders-producers.json").read_text())
    create_topics(st.bootstrap, ["open", "restricted.hr"], partitions=1)
    p, res = produce_each(st.bootstrap, "seeder", {"open": 25, "restricted.hr": 5})
    assert all(e is None for r in res.values() for e in r)
    got, errors = consume(st.bootstrap, ["open", "restricted.hr"], 25, f"app-{uuid.uuid4()}")
    assert sorted(v for _, v in got) == sorted(f"open-{i}".encode() for i in range(25))
    assert all(t == "open" for t, _ in got)
    assert any(e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errors), errors
    # the client met the denial where librdkafka first asks about the topic's data
    # (OffsetFetch, ListOffsets or Fetch: all three are checked)
    assert st.sidecar.metric("kafka_mesh_topic_errors_total", topic="restricted.hr",
                             error="TOPIC_AUTHORIZATION_FAILED") >= 1
    # a group outside app-* cannot join
    c = Consumer({"bootstrap.servers": st.bootstrap, "group.id": "rogue-group",
                  "auto.offset.reset": "earliest"})
    c.subscribe(["open"])
    errs = []
    end = time.time() + 15
    while time.time() < end and not errs:
        msg = c.poll(0.5)
        if msg is not None and msg.error():
            errs.append(msg.error())
        elif msg is not None:
            raise AssertionError("a denied group consumed a record")
    c.close()
    assert any(e.code() == KafkaError.GROUP_AUTHORIZATION_FAILED for e in errs), errs
    del p


def test_denied_topic_deletion_fails_and_the_topic_survives(stack_factory):
    st = stack_factory(config=(POLICIES / "orders-producers.json").read_text())
    create_topics(st.bootstrap, ["orders.keep"], partitions=1)
    admin = AdminClient({"bootstrap.servers": st.bootstrap})
    fut = admin.delete_topics(["orders.keep"], operation_timeout=10)["orders.keep"]
    try:
        fut.result(20)
        raise AssertionError("delete succeeded")
    except KafkaException as e:
        assert e.args[0].code() in (KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                                    KafkaError.TOPIC_AUTHORIZATION_FAILED), e
    time.sleep(1)
    assert "orders.keep" in admin.list_topics(timeout=10).topics
    assert st.sidecar.metric("kafka_mesh_policy_decisions_total", rule="no-topic-deletion",
                             decision="deny") >= 1


def test_audit_mode_lets_everything_through_and_counts_it(stack_factory):
    st = stack_factory(config=(POLICIES / "audit.json").read_text())
    create_topics(st.bootstrap, ["payments"], partitions=1)
    p, res = produce_each(st.bootstrap, "orders-app", {"payments": 10})
    assert res["payments"] == [None] * 10
    got, _ = consume(st.bootstrap, ["payments"], 10, "rogue-but-audited")
    assert len(got) == 10
    m = st.sidecar.metric
    assert m("kafka_mesh_policy_decisions_total", decision="would_deny") >= 2  # produce + group
    assert m("kafka_mesh_policy_decisions_total", decision="deny") == 0
    del p


def test_identity_from_the_mtls_principal(stack_factory):
    cfg = (POLICIES / "mesh-principals.json").read_text()
    allowed = stack_factory(config=cfg, properties={
        "connection.uri_san_peer_certificate": "spiffe://cluster.local/ns/shop/sa/orders"})
    create_topics(allowed.bootstrap, ["orders.eu"], partitions=1)
    p, res = produce_each(allowed.bootstrap, "anything", {"orders.eu": 5})
    assert res["orders.eu"] == [None] * 5
    other = stack_factory(config=cfg, properties={
        "connection.uri_san_peer_certificate": "spiffe://cluster.local/ns/shop/sa/intruder"})
    create_topics(other.bootstrap, ["orders.eu"], partitions=1)
    q, res = produce_each(other.bootstrap, "anything", {"orders.eu": 3})
    assert all(e is not None and e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in res["orders.eu"])
    del p, q
