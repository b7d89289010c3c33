"""Half-close through wasm-sidecar, as Envoy's tcp_proxy relays it.

tcp_proxy enables half-close on the downstream and the upstream connection
(envoyproxy/envoy `source/common/tcp_proxy/tcp_proxy.cc`, `Filter::initialize` and
`onPoolReady`: `enableHalfClose(true)`), and passes each side's end of stream on as a write
with end_stream (`Filter::onData`, `Filter::onUpstreamData`). A connection ends only when it
has both read its peer's FIN and written its own (`ConnectionImpl::bothSidesHalfClosed`,
`source/common/network/connection_impl.cc`), or on an error or a close.

So a client may send its requests, shut down its write side and still read every answer; and a
broker's FIN reaches the client while the client can still send. Both are checked here against
a real tansu and against a scripted broker that answers only after it has seen the client's
FIN (so the answers prove the FIN was passed on, not that the broker was quick)."""
import queue
import socket
import struct
import time

import kafka_raw as kr
from conftest import Sidecar, wait_for
from fake_broker import FakeBroker, api_versions_v0_response, correlation_id, read_frame


def frame(api_key, version, corr, body, client_id="half-close"):
    hdr = kr.i16(api_key) + kr.i16(version) + kr.i32(corr) + kr.string(client_id)
    if kr.is_flexible(api_key, version):
        hdr += kr.tags()
    msg = hdr + body
    return kr.i32(len(msg)) + msg


def recv_frame(sock):
    f = read_frame(sock)
    assert f is not None, "the connection ended before the answer"
    return f


def answer_corr(f):
    """A response frame's correlation id (response headers start with it)."""
    return struct.unpack(">i", f[:4])[0]


def recv_eof(sock, timeout=10):
    """The peer's FIN: recv returns b'' (within `timeout`, no bytes before it)."""
    sock.settimeout(timeout)
    assert sock.recv(1) == b"", "expected the end of the stream"


class Answered:
    """Hands kafka_raw's decoders answers already received: their requests went out before the
    FIN, so `Conn.request` cannot be used to send them."""

    def __init__(self, frames):
        self.frames = list(frames)

    def request(self, api_key, version, body, timeout=10):
        _, r = kr.Conn.read_response(self, api_key, version, self.frames.pop(0))
        return r


def wait_closed(sidecar):
    wait_for(lambda: sidecar.metric("kafka_mesh_connections_active") == 0
             and sidecar.metric("kafka_mesh_connections_total") >= 1,
             "kafka_mesh_connections_active back to 0", timeout=15)


def test_requests_sent_before_the_clients_fin_get_complete_answers_from_tansu(stack_factory):
    st = stack_factory()
    with socket.create_connection(("127.0.0.1", st.sidecar.port), timeout=10) as s:
        s.sendall(frame(kr.API_VERSIONS, 0, 1, b"")
                  + frame(kr.METADATA, 1, 2, kr.array_len(None)))
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        answers = [recv_frame(s), recv_frame(s)]
        assert [answer_corr(a) for a in answers] == [1, 2]
        err, apis = kr.api_versions(Answered(answers[:1]))
        assert err == kr.NONE
        assert kr.API_VERSIONS in apis and kr.METADATA in apis and kr.PRODUCE in apis
        assert kr.metadata(Answered(answers[1:]), None, version=1) == {}
        # tansu ends its side once it has read our FIN and answered: the relay passes that on
        # and the connection is over.
        recv_eof(s)
    wait_closed(st.sidecar)
    stats = st.sidecar.stats()
    assert st.sidecar.metric("kafka_mesh_requests_total", stats, api="api_versions") == 1
    assert st.sidecar.metric("kafka_mesh_responses_total", stats, api="api_versions") == 1
    assert st.sidecar.metric("kafka_mesh_responses_total", stats, api="metadata") == 1
    assert st.sidecar.metric("kafka_mesh_response_bytes_total", stats, api="metadata") \
        == 4 + len(answers[1])
    assert st.sidecar.metric("kafka_mesh_malformed_total", stats) == 0


def test_the_clients_fin_reaches_the_broker_and_answers_still_come_back(tmp_session):
    """The broker reads until the client's FIN and only then answers everything it got, then
    sends its own FIN."""
    got = queue.Queue()

    def after_fin(sock):
        frames = []
        while (f := read_frame(sock)) is not None:
            frames.append(f)
        if not frames:
            return  # the sidecar's readiness probe (conftest.wait_port)
        got.put([correlation_id(f) for f in frames])
        for f in frames:
            sock.sendall(api_versions_v0_response(correlation_id(f)))
        sock.shutdown(socket.SHUT_WR)

    broker = FakeBroker(after_fin)
    sc = Sidecar(tmp_session, broker.addr)
    try:
        with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as s:
            s.sendall(b"".join(frame(kr.API_VERSIONS, 0, c, b"") for c in (7, 8, 9)))
            s.shutdown(socket.SHUT_WR)
            assert got.get(timeout=10) == [7, 8, 9]
            s.settimeout(10)
            assert [answer_corr(recv_frame(s)) for _ in range(3)] == [7, 8, 9]
            recv_eof(s)
        wait_closed(sc)
        assert sc.metric("kafka_mesh_responses_total", api="api_versions") == 3
        assert not broker.errors, broker.errors
    finally:
        sc.stop()
        broker.close()


def test_the_brokers_fin_reaches_the_client_which_can_still_send(tmp_session):
    """The broker answers one request and sends its FIN; the client reads the answer and the
    FIN, then sends another request, which must still reach the broker, and then its own FIN,
    which ends the connection."""
    got = queue.Queue()

    def fin_first(sock):
        f = read_frame(sock)
        if f is None:
            return  # the sidecar's readiness probe (conftest.wait_port)
        sock.sendall(api_versions_v0_response(correlation_id(f)))
        sock.shutdown(socket.SHUT_WR)
        rest = []
        while (f := read_frame(sock)) is not None:
            rest.append(f)
        got.put(rest)

    broker = FakeBroker(fin_first)
    sc = Sidecar(tmp_session, broker.addr)
    try:
        with socket.create_connection(("127.0.0.1", sc.port), timeout=10) as s:
            s.sendall(frame(kr.API_VERSIONS, 0, 1, b""))
            s.settimeout(10)
            assert answer_corr(recv_frame(s)) == 1
            recv_eof(s)
            later = frame(kr.METADATA, 1, 2, kr.array_len(None))
            s.sendall(later)
            s.shutdown(socket.SHUT_WR)
            assert got.get(timeout=10) == [later[4:]]
        wait_closed(sc)
        assert sc.metric("kafka_mesh_requests_total", api="metadata") == 1
        assert sc.metric("kafka_mesh_responses_total", api="api_versions") == 1
        assert not broker.errors, broker.errors
    finally:
        sc.stop()
        broker.close()
