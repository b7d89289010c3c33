"""Istio's `failStrategy` as Envoy applies it, with real clients and a real broker: the VM of
the sidecar's only worker fails (an injected trap, admin `/fault/trap`), and what the clients
get afterwards is what a user of each strategy sees (README "When the VM fails";
tests/src/worker.rs cites Envoy's `PluginConfig::createContext` and
`maybeReloadHandleIfNeeded`).

- FAIL_RELOAD: the producer's connection on the failed VM is closed, librdkafka reconnects,
  the next connection after the backoff gets a fresh VM; every record arrives, and the
  metrics go on from where they were, exactly for what is produced after the reload.
- FAIL_CLOSE: every new connection is closed; nothing more reaches the broker.
- FAIL_OPEN: new connections are relayed unfiltered: records arrive, no metrics move.
"""
import time

import kafka_raw as kr
from test_e2e import consume_confluent, create_topics, expected_records, produce_confluent


def api_versions_answered(port):
    """Whether a fresh connection through the sidecar gets an ApiVersions answer."""
    try:
        with kr.Conn("127.0.0.1", port, client_id="probe", timeout=3) as c:
            c.send(18, 0, b"")
            c.recv_frame(timeout=3)
            return True
    except (OSError, ConnectionError, EOFError, AssertionError):
        return False


def fail_the_vm(st):
    """Arm a trap, then make the next VM call happen (a new connection's first callback)."""
    st.sidecar.trap_next_vm_call()
    assert not api_versions_answered(st.sidecar_port), "the trapping connection is closed"


def records(st, topic):
    return st.sidecar.metric("kafka_mesh_produce_records_total", topic=topic)


def test_fail_reload_recovers_and_metrics_go_on(stack_factory):
    st = stack_factory(sidecar_args=["--failure-policy", "FAIL_RELOAD", "--reload-base-ms", "300"])
    create_topics(st.bootstrap, ["before", "after"], partitions=1)
    before = expected_records("before", 200, "b")
    p = produce_confluent(st.bootstrap, "before", before, **{"enable.idempotence": True})
    assert records(st, "before") == 200

    fail_the_vm(st)
    # The producer's connection is on the failed VM: its next request closes it; librdkafka
    # reconnects; connections in the backoff are closed, the first after it is filtered again.
    more = expected_records("before", 100, "m")
    for key, value, headers in more:
        p.produce("before", key=key, value=value, headers=headers)
    assert p.flush(60) == 0, "every record arrives after the reload"
    deadline = time.time() + 10
    while not api_versions_answered(st.sidecar_port) and time.time() < deadline:
        time.sleep(0.2)
    assert api_versions_answered(st.sidecar_port), "new connections are filtered again"

    # What is produced after the reload is counted exactly, by the new VM, under a new label.
    after = expected_records("after", 150, "a")
    produce_confluent(st.bootstrap, "after", after)
    assert records(st, "after") == 150
    # The counters of the old VM are still there (stats belong to the process).
    assert records(st, "before") >= 200

    got = consume_confluent(st.bootstrap, ["before", "after"], 450)
    by_value = {(t, v) for t, _, _, _, v, _ in got}
    assert {("before", v) for _, v, _ in before + more} <= by_value
    assert {("after", v) for _, v, _ in after} <= by_value


def test_fail_close_closes_every_new_connection(stack_factory):
    st = stack_factory(sidecar_args=["--failure-policy", "FAIL_CLOSE"])
    assert api_versions_answered(st.sidecar_port)
    fail_the_vm(st)
    for _ in range(5):
        assert not api_versions_answered(st.sidecar_port)
        time.sleep(0.5)


def test_fail_open_relays_new_connections_without_the_filter(stack_factory):
    st = stack_factory(sidecar_args=["--failure-policy", "FAIL_OPEN"])
    create_topics(st.bootstrap, ["open"], partitions=1)
    produce_confluent(st.bootstrap, "open", expected_records("open", 10, "o"))
    assert records(st, "open") == 10
    fail_the_vm(st)
    assert api_versions_answered(st.sidecar_port), "relayed unfiltered"
    produce_confluent(st.bootstrap, "open", expected_records("open", 40, "p"))
    assert records(st, "open") == 10, "no filter, no metrics"
    got = consume_confluent(st.bootstrap, ["open"], 50)
    assert len(got) == 50
