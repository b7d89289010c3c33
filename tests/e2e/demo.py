"""`make demo`: tansu + the filter in wasm-sidecar, real traffic through it, and what the
filter saw. Policy (issue 4) and address rewriting (issue 5) are not built yet."""
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
    st = Stack(tmp, chunk=0, workers=2)
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

        # A malformed frame: a negative size. The default action closes the connection.
        with socket.create_connection(("127.0.0.1", st.sidecar.port)) as s:
            s.sendall(b"\xff\xff\xff\xf0garbage")
            s.settimeout(5)
            closed = s.recv(1) == b""
        print(f"malformed frame sent: connection closed by the filter: {closed}\n")
        time.sleep(0.2)

        print("what the filter counted (Prometheus, as Envoy's admin would show it):")
        for name, value in sorted(st.sidecar.stats().items()):
            if "_bucket" not in name:
                print(f"  {name:48} {value:>12.0f}")
        print("\nnot yet: per-topic metrics (issue 3), policies (issue 4), address rewriting (issue 5)")
    finally:
        st.stop()


if __name__ == "__main__":
    main()
