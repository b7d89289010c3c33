"""`make demo`: tansu + the filter in wasm-sidecar, real traffic through it, and what the
filter saw: per-topic produce/fetch totals, consumer lag, errors, latency; then the
produce/consume policy at work; then broker address rewriting."""
import gc
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Stack  # noqa: E402
from test_e2e import consume_confluent, create_topics, expected_records, produce_confluent  # noqa: E402


def main():
    tmp = Path(tempfile.mkdtemp(prefix="kmf-demo-"))
    # librdkafka logs to stderr (fd 2) from its own threads: connection retries, the
    # rewrite demo's unreachable address. Those lines would be mixed into what the demo
    # shows, so they go to a file; if the demo fails, its tail is shown with the error.
    client_log = tmp / "clients.log"
    saved = os.dup(2)
    with open(client_log, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        run(tmp)
    except BaseException:
        os.dup2(saved, 2)
        tail = client_log.read_text(errors="replace").splitlines()[-20:]
        print("\nclient log (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
        raise
    os.dup2(saved, 2)
    print(f"\nclient logs (librdkafka): {client_log}")


def drop_clients():
    """librdkafka clients keep reconnecting to a sidecar that has stopped until their handle
    is destroyed; destroy them (the last reference) before stopping the stack."""
    gc.collect()


def run(tmp):
    st = Stack(tmp, chunk=0, workers=2, config=json.dumps({"accessLog": {"enabled": True, "sampleRate": 1.0}}),
               log_level="info")
    try:
        print(f"tansu on 127.0.0.1:{st.broker_port}, filter (wasm-sidecar, 2 worker VMs) on {st.bootstrap}")
        print(f"admin: http://127.0.0.1:{st.sidecar.admin}/stats/prometheus   logs: {tmp}\n")
        topics = {"orders": dict(acks="all"), "clicks": dict(acks="0", **{"compression.type": "lz4"})}
        create_topics(st.bootstrap, list(topics))
        expected, producers = {}, []
        for topic, conf in topics.items():
            expected[topic] = expected_records(topic, 500, "demo")
            producers.append(produce_confluent(st.bootstrap, topic, expected[topic], **conf))
            print(f"produced 500 records to {topic:7} ({conf})")
        got = consume_confluent(st.bootstrap, list(topics), 1000)
        identical = sorted((m[3], m[4]) for m in got) == sorted(
            (k, v) for recs in expected.values() for k, v, _ in recs)
        print(f"consumed {len(got)} records through the filter; byte-identical: {identical}\n")

        # A real error: produce to a topic that does not exist, with auto-creation off.
        from confluent_kafka import Producer
        missing = Producer({"bootstrap.servers": st.bootstrap, "allow.auto.create.topics": False,
                            "message.timeout.ms": 1500})
        missing.produce("no-such-topic", value=b"x")
        missing.flush(3)

        # A malformed frame: a negative size. The default action closes the connection.
        with socket.create_connection(("127.0.0.1", st.sidecar.port)) as s:
            s.sendall(b"\xff\xff\xff\xf0garbage")
            s.settimeout(5)
            closed = s.recv(1) == b""
        print(f"malformed frame sent: connection closed by the filter: {closed}\n")
        time.sleep(0.2)

        stats = st.sidecar.stats()
        m = lambda fam, **kw: st.sidecar.metric(fam, stats, **kw)  # noqa: E731
        seen = sorted({k.split('topic="')[1].split('"')[0] for k in stats if 'topic="' in k})
        print("per topic, as the filter saw it (kafka_mesh_* series on /stats/prometheus):")
        print(f"  {'topic':16} {'prod reqs':>9} {'batches':>8} {'records':>8} {'bytes':>9} "
              f"{'fetch recs':>10} {'fetch bytes':>11} {'lag p0':>6} {'errors':>6}")
        for t in seen:
            print(f"  {t:16} {m('kafka_mesh_produce_requests_total', topic=t):>9.0f} "
                  f"{m('kafka_mesh_produce_batches_total', topic=t):>8.0f} "
                  f"{m('kafka_mesh_produce_records_total', topic=t):>8.0f} "
                  f"{m('kafka_mesh_produce_bytes_total', topic=t):>9.0f} "
                  f"{m('kafka_mesh_fetch_records_total', topic=t):>10.0f} "
                  f"{m('kafka_mesh_fetch_bytes_total', topic=t):>11.0f} "
                  f"{m('kafka_mesh_consumer_lag', topic=t, partition=0):>6.0f} "
                  f"{m('kafka_mesh_topic_errors_total', topic=t):>6.0f}")
        print("\nerrors by API and Kafka error code:")
        for k, v in sorted(stats.items()):
            if k.startswith("kafka_mesh_errors_total"):
                print(f"  {k:72} {v:>6.0f}")
        print("\nrequests and latency by API:")
        apis = sorted({k.split('api="')[1].split('"')[0] for k in stats if k.startswith("kafka_mesh_responses_total")})
        for a in apis:
            n = m("kafka_mesh_request_latency_ms_count", api=a)
            total = m("kafka_mesh_request_latency_ms_sum", api=a)
            print(f"  {a:18} requests {m('kafka_mesh_requests_total', api=a):>6.0f}   "
                  f"mean latency {total / n if n else 0:>6.1f} ms")
        print(f"\nconnections {m('kafka_mesh_connections_total'):.0f}, "
              f"malformed frames {m('kafka_mesh_malformed_total'):.0f}, "
              f"acks=0 produces {m('kafka_mesh_produce_acks0_total'):.0f}")
        logs = [line for line in st.sidecar.read_log().splitlines() if "kafka-mesh-filter access " in line]
        shown = [next((line for line in logs if f'"api":"{api}"' in line and '"topics":[]' not in line), None)
                 for api in ("produce", "fetch")]
        print(f"\n{len(logs)} access-log lines (accessLog.sampleRate 1.0), a Produce and a Fetch "
              "(Fetch v13+ names topics by id; the log shows the name learned from Metadata):")
        for line in filter(None, shown):
            print("  " + line.split("kafka-mesh-filter access ", 1)[1])
        del producers, missing
    finally:
        drop_clients()
        st.stop()
    policy_demo(tmp)
    rewrite_demo(tmp)


def policy_demo(tmp):
    from confluent_kafka import KafkaError
    from test_policy import POLICIES, produce_each
    cfg = (POLICIES / "orders-producers.json").read_text()
    st = Stack(tmp, workers=2, config=cfg, log_level="info")
    try:
        print(f"\n--- policy: {POLICIES / 'orders-producers.json'} ---")
        create_topics(st.bootstrap, ["orders.eu", "payments"], partitions=1)
        p, res = produce_each(st.bootstrap, "orders-app", {"orders.eu": 10, "payments": 10})
        for topic, errs in res.items():
            ok = sum(e is None for e in errs)
            denied = sum(e is not None and e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errs)
            print(f"client orders-app produced 10 to {topic:10}: {ok} delivered, {denied} TOPIC_AUTHORIZATION_FAILED")
        from confluent_kafka.admin import AdminClient
        admin = AdminClient({"bootstrap.servers": st.bootstrap})
        fut = admin.delete_topics(["orders.eu"])["orders.eu"]
        try:
            fut.result(20)
            print("delete topic orders.eu: deleted (unexpected)")
        except Exception as e:  # noqa: BLE001
            print(f"delete topic orders.eu: refused with {e.args[0].name()}; "
                  f"still listed: {'orders.eu' in admin.list_topics(timeout=10).topics}")
        time.sleep(0.3)
        print("policy decisions:")
        for k, v in sorted(st.sidecar.stats().items()):
            if k.startswith("kafka_mesh_policy_decisions_total"):
                print(f"  {k:90} {v:>4.0f}")
        lines = [line for line in st.sidecar.read_log().splitlines() if "kafka-mesh-filter policy" in line]
        if lines:
            print("a policy log line:\n  " + lines[0].split("] ", 1)[-1][:200])
        del p, admin
    finally:
        drop_clients()
        st.stop()



def rewrite_demo(tmp):
    from confluent_kafka.admin import AdminClient
    from test_rewrite import UNREACHABLE, roundtrip_confluent
    cfg = lambda port: json.dumps({"rewrite": {"nodeTemplate": f"127.0.0.1:{port}"}})  # noqa: E731
    st = Stack(tmp, config=cfg, advertise=UNREACHABLE)
    bare = Stack(tmp, config="{}", advertise=UNREACHABLE)
    try:
        print(f"\n--- address rewriting: tansu advertises {UNREACHABLE} ---")
        md = AdminClient({"bootstrap.servers": bare.bootstrap}).list_topics(timeout=10)
        print("without rewrite, clients are told:", [f"{b.host}:{b.port}" for b in md.brokers.values()])
        md = AdminClient({"bootstrap.servers": st.bootstrap}).list_topics(timeout=10)
        print("with rewrite.nodeTemplate, clients are told:", [f"{b.host}:{b.port}" for b in md.brokers.values()])
        create_topics(st.bootstrap, ["rewritten"], partitions=1)
        ok, why = roundtrip_confluent(st.bootstrap, "rewritten", n=20)
        print(f"produce + consume 20 records with the rewrite: {'ok' if ok else 'FAILED'} ({why})")
        ok, why = roundtrip_confluent(bare.bootstrap, "rewritten", n=2, timeout=5)
        print(f"the same without the rewrite: {'ok' if ok else 'fails'} ({why})")
    finally:
        drop_clients()
        st.stop()
        bare.stop()


if __name__ == "__main__":
    main()
