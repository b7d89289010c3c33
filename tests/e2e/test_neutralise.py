"""Denied Produce parts are neutralised in place and nothing of them is written: checked on the
real tansu broker itself, not only in what the client is told.

Under a policy the filter streams Produce requests and cannot change their size, so a denied
topic's name becomes a same-length name of characters no topic name allows, a partition
refused by a produce constraint gets a negative index, and every batch of such a part gets a
producer id no broker issued (tansu 0.6 writes a Produce to any name or index, but refuses an
unknown producer id before storing anything). The Produce response is then put right: the
original names and indexes, the policy's error codes.

Every request here is built byte by byte (kafka_raw) and carries, in ONE request, allowed
partitions, two denied topics and constrained partitions that pass or fail. After it, the
broker is asked directly (its own port, not the sidecar's) with Fetch from offset 0 (v4 and
v12), ListOffsets and Metadata: the allowed records are there exactly, and nothing is under
the denied names, the neutral names, the negative indexes or the refused partitions. The
control tests show the same checks fail when the filter lets the parts through (config `{}`)
and when only the name or index is neutralised.
"""
import json
import socket
import threading

import pytest

import kafka_raw as kr
from conftest import Sidecar

POLICY = json.dumps({"policy": {"defaultAction": "allow", "rules": [
    {"name": "no-secret", "action": "deny", "operations": ["produce"], "topics": ["secret.*"]},
    {"name": "strict", "action": "allow", "topics": ["strict"],
     "produce": {"maxBatchBytes": 2000, "compression": ["none"]}},
]}})

# Created on the broker before the run. secret.bb is NOT created: a denied topic the broker
# does not have must not appear either.
TOPICS = [("good", 3), ("strict", 3), ("secret.a", 2)]

OK = kr.NONE
DENIED = kr.TOPIC_AUTHORIZATION_FAILED
TOO_LARGE = kr.RECORD_LIST_TOO_LARGE
COMPRESSION = kr.UNSUPPORTED_COMPRESSION_TYPE


class Part:
    """One partition of the request: its batches' values, compression, and what the policy
    makes of it (the code the client must get; written or not)."""

    def __init__(self, topic, partition, batches, code, compression=kr.COMPRESSION_NONE):
        self.topic, self.partition, self.batches = topic, partition, batches
        self.code, self.compression = code, compression

    @property
    def values(self):
        return [v for b in self.batches for v in b]


def parts_for(tag):
    """The request's partitions; `tag` keeps values distinct between requests and runs."""
    t = tag.encode()
    binary = bytes(range(256))
    return [
        Part("good", 0, [[b"good-0-%s-%d-" % (t, i) + binary for i in range(3)]], OK),
        # two batches in one partition, and a key-less empty value
        Part("good", 1, [[b"good-1-%s-a" % t], [b"good-1-%s-b" % t, b""]], OK),
        Part("good", 2, [[b"good-2-%s" % t]], OK),
        Part("secret.a", 0, [[b"SECRET-a0-%s-1" % t, b"SECRET-a0-%s-2" % t], [b"SECRET-a0-%s-3" % t]], DENIED),
        Part("secret.a", 1, [[b"SECRET-a1-%s" % t]], DENIED),
        # ~2.8 KB batch: over maxBatchBytes
        Part("strict", 0, [[b"STRICT-big-%s-%d-" % (t, i) + b"x" * 900 for i in range(3)]], TOO_LARGE),
        Part("strict", 1, [[b"strict-fine-%s" % t]], OK),
        # small but gzip: compression not allowed
        Part("strict", 2, [[b"STRICT-gzip-%s" % t]], COMPRESSION, kr.COMPRESSION_GZIP),
        Part("secret.bb", 0, [[b"SECRET-bb-%s" % t]], DENIED),
    ]


# Topic order in the request. The filter numbers the neutralised parts of a request in wire
# order (topics and partitions share one counter), so the two orders give different neutral
# names and indexes: A gives secret.a '!!!!!!!!' and strict -1000001/-1000002, B gives strict
# -1000000/-1000001 and secret.bb '!!!!!!!!$'.
ORDERS = {"A": ["good", "secret.a", "strict", "secret.bb"],
          "B": ["strict", "secret.bb", "good", "secret.a"]}


class Sender:
    """Builds the record batches: plain (producer id -1) or idempotent, with each partition's
    sequence numbers counted from 0 as a real idempotent producer does."""

    def __init__(self, pid=-1, epoch=-1):
        self.pid, self.epoch = pid, epoch
        self.seq = {}

    def batch(self, topic, partition, values, compression):
        if self.pid < 0:
            return kr.record_batch(values, compression=compression)
        seq = self.seq.get((topic, partition), 0)
        self.seq[(topic, partition)] = seq + len(values)
        return kr.record_batch(values, producer_id=self.pid, producer_epoch=self.epoch,
                               base_sequence=seq, compression=compression)

    def request(self, parts, order):
        topics = []
        for name in order:
            ps = [p for p in parts if p.topic == name]
            topics.append((name.encode(), [
                (p.partition, b"".join(self.batch(p.topic, p.partition, vs, p.compression) for vs in p.batches))
                for p in ps]))
        return topics


def filter_neutral(parts, order):
    """What the filter turns the denied parts into, computed as it does (guard.rs): one counter
    k over the request's neutralised parts in wire order; a denied topic becomes
    neutral_name(k, len(name)), a refused partition -1000000 - k.
    Returns ({neutral name: original}, {(topic, neutral index): original index})."""
    names, indexes, k = {}, {}, 0
    for name in order:
        ps = [p for p in parts if p.topic == name]
        if any(p.code == DENIED for p in ps):
            names[kr.neutral_name(k, len(name))] = name
            k += 1
            continue
        for p in ps:
            if p.code not in (OK, DENIED):
                indexes[(name, kr.neutral_partition(k))] = p.partition
                k += 1
    return names, indexes


def suspects(parts, order):
    """Every place a neutralised part could have been written: the originals of everything
    refused, the neutral names and indexes the filter should have used, and a margin of other
    neutral names/indexes of the same lengths (a filter numbering them differently)."""
    names, indexes = filter_neutral(parts, order)
    n = len(names) + len(indexes) + 3
    out = {(p.topic, p.partition) for p in parts if p.code != OK}
    for length in {len(p.topic) for p in parts if p.code == DENIED}:
        for k in range(n):
            out |= {(kr.neutral_name(k, length).decode(), i) for i in range(3)}
    for k in range(n):
        out |= {(t, kr.neutral_partition(k)) for t in {p.topic for p in parts}}
    for name in names:
        assert name.decode() in {t for t, _ in out}
    for key in indexes:
        assert key in out
    return sorted(out)


def broker_problems(broker, written, empty, topics):
    """What is wrong on the broker. `written` {(topic, partition): [values]}: those exact
    records, in order, nothing else. `empty` [(topic, partition)]: no records, high watermark
    and latest offset 0. `topics`: exactly the topic names Metadata must list."""
    problems = []
    tps = list(written) + list(empty)
    views = {v: kr.fetch(broker, tps, 0, version=v) for v in (4, 12)}
    latest = kr.list_offsets(broker, tps, kr.LATEST)
    for (t, p), want in written.items():
        key = (t.encode(), p)
        err, batches = kr.fetch_all(broker, t, p)
        got = [r.value for b in batches for r in b.records]
        if err or got != want:
            problems.append(f"{t!r}[{p}]: error {err}, records {got!r}, expected {want!r}")
        for b in batches:
            if not b.crc_ok or b.producer_id == kr.NEUTRAL_PRODUCER_ID:
                problems.append(f"{t!r}[{p}]: stored batch at {b.base_offset} crc_ok={b.crc_ok} pid={b.producer_id:#x}")
        for v, view in views.items():
            if view[key].high_watermark != len(want):
                problems.append(f"{t!r}[{p}]: Fetch v{v} high watermark {view[key].high_watermark}, expected {len(want)}")
        # tansu 0.6's ListOffsets(latest) is the last batch's base offset + 1, not the high
        # watermark: only require it to show something was written
        if latest[key][0] or not 0 < latest[key][1] <= len(want):
            problems.append(f"{t!r}[{p}]: ListOffsets latest {latest[key]}")
    for t, p in empty:
        key = (t.encode(), p)
        for v, view in views.items():
            fp = view[key]
            if fp.records or fp.high_watermark > 0:
                got = [r.value for b in fp.batches for r in b.records]
                problems.append(f"{t!r}[{p}]: WRITTEN (Fetch v{v}: error {fp.error}, high watermark "
                                f"{fp.high_watermark}, records {got!r})")
        err, off = latest[key]
        if err == 0 and off not in (0, -1):
            problems.append(f"{t!r}[{p}]: WRITTEN (ListOffsets latest {off})")
    listed = kr.metadata(broker)
    illegal = [n for n in listed if not kr.legal_topic_name(n)]
    if illegal:
        problems.append(f"Metadata lists illegal topic names {illegal!r}")
    if set(listed) != {t.encode() for t in topics}:
        problems.append(f"Metadata lists {sorted(listed)}, expected {sorted(topics)}")
    return problems


def expected_state(parts, order, policy=True):
    """(written, empty) for broker_problems after one request of `parts`."""
    if policy:
        written = {(p.topic, p.partition): p.values for p in parts if p.code == OK}
    else:
        written = {(p.topic, p.partition): p.values for p in parts}
    return written, [tp for tp in suspects(parts, order) if tp not in written]


def setup_broker(st):
    broker = kr.Conn("127.0.0.1", st.broker_port, client_id="checker")
    assert kr.create_topics(broker, TOPICS) == {t.encode(): 0 for t, _ in TOPICS}
    assert kr.metadata(broker) == {t.encode(): (0, list(range(n))) for t, n in TOPICS}
    return broker


def check_response(resp, parts, order):
    want = sorted((p.topic.encode(), p.partition, p.code) for p in parts)
    got = sorted((r.topic, r.partition, r.error) for r in resp)
    assert got == want, f"response {resp}"
    # tansu keeps the request's order and the filter restores in place
    assert [r.topic for r in resp] == [t.encode() for t in order for p in parts if p.topic == t]
    for r in resp:
        assert (r.base_offset >= 0) == (r.error == OK), r


def send_acks0(conn, version, topics):
    """An acks=0 Produce followed by a Metadata request on the same connection: the Metadata
    answer shows the Produce was handled (brokers answer a connection's requests in order).
    Returns the Produce response frame that came back anyway (tansu answers acks=0), or None."""
    produce_corr = kr.produce(conn, version, 0, topics)
    md_corr = conn.send(kr.METADATA, 1, kr.i32(1) + kr.string("good"))
    relayed = None
    while True:
        frame = conn.recv_frame(timeout=10)
        corr = int.from_bytes(frame[:4], "big", signed=True)
        if corr == md_corr:
            return relayed
        assert corr == produce_corr and relayed is None, f"unexpected frame, correlation id {corr}"
        relayed = frame


CASES = [
    pytest.param(9, -1, False, "A", 0, id="v9-acks-all"),
    pytest.param(9, 1, False, "B", 0, id="v9-acks-1"),
    pytest.param(9, 0, False, "A", 0, id="v9-acks-0"),
    pytest.param(3, -1, False, "B", 0, id="v3-acks-all"),
    pytest.param(3, 1, False, "A", 0, id="v3-acks-1"),
    pytest.param(3, 0, False, "B", 0, id="v3-acks-0"),
    pytest.param(9, -1, True, "B", 0, id="v9-acks-all-idempotent"),
    pytest.param(3, 1, True, "A", 0, id="v3-acks-1-idempotent"),
    pytest.param(9, 0, True, "A", 0, id="v9-acks-0-idempotent"),
    # the sidecar hands the filter 7 bytes at a time: names, indexes and batch headers span
    # callbacks, so the edits land in bytes already held back or still to come
    pytest.param(9, -1, False, "A", 7, id="v9-acks-all-chunk-7"),
    pytest.param(3, 1, True, "B", 7, id="v3-acks-1-idempotent-chunk-7"),
]


@pytest.mark.parametrize("version,acks,idempotent,order_name,chunk", CASES)
def test_denied_parts_are_never_written(stack_factory, version, acks, idempotent, order_name, chunk):
    st = stack_factory(config=POLICY, chunk=chunk)
    broker = setup_broker(st)
    order = ORDERS[order_name]
    client = kr.Conn("127.0.0.1", st.sidecar_port, client_id="raw-producer")
    sender = Sender()
    if idempotent:
        err, pid, epoch = kr.init_producer_id(client)
        assert err == 0 and pid >= 0 and epoch >= 0, (err, pid, epoch)
        sender = Sender(pid, epoch)
    parts = parts_for(f"{version}-{acks}-{order_name}")
    request = sender.request(parts, order)
    if acks == 0:
        relayed = send_acks0(client, version, request)
        if relayed is not None:
            # tansu answers acks=0 Produce requests (Kafka does not) and the filter relays
            # that answer as the broker wrote it, not restored: the neutral names and indexes
            # with UNKNOWN_PRODUCER_ID. Tolerated here; it must be that answer, whole.
            _, r = client.read_response(kr.PRODUCE, version, relayed)
            assert len(kr.parse_produce_response(version, r)) == len(parts)
    else:
        check_response(kr.produce(client, version, acks, request), parts, order)

    written, empty = expected_state(parts, order)
    assert broker_problems(broker, written, empty, [t for t, _ in TOPICS]) == []

    if idempotent:
        # The producer's own sequences are untouched by the refused parts: the allowed
        # partitions take the next sequence, and a partition refused by a constraint (its
        # batch went out under the neutral producer id) takes sequence 0 for a fine batch.
        more = [Part("good", 0, [[b"good-0-next"]], OK), Part("strict", 0, [[b"strict-0-small"]], OK),
                Part("secret.a", 0, [[b"SECRET-again"]], DENIED)]
        sender.seq[("strict", 0)] = 0  # the broker never saw this producer on strict[0]
        again = kr.produce(client, version, -1, sender.request(more, ["good", "strict", "secret.a"]))
        assert sorted((r.topic, r.partition, r.error) for r in again) == \
            [(b"good", 0, OK), (b"secret.a", 0, DENIED), (b"strict", 0, OK)], again
        written[("good", 0)] = written[("good", 0)] + [b"good-0-next"]
        written[("strict", 0)] = [b"strict-0-small"]
        empty.remove(("strict", 0))
        assert broker_problems(broker, written, empty, [t for t, _ in TOPICS]) == []

    # the connection was kept (a policy close would have dropped it)
    assert kr.api_versions(client)[0] == 0
    client.close()
    broker.close()


def test_control_without_policy_everything_lands(stack_factory):
    """The checks can fail: with no policy the same request is written whole, and
    broker_problems reports every denied part as written."""
    st = stack_factory(config="{}")
    broker = setup_broker(st)
    order = ORDERS["A"]
    parts = parts_for("control")
    with kr.Conn("127.0.0.1", st.sidecar_port) as client:
        resp = kr.produce(client, 9, -1, Sender().request(parts, order))
    assert sorted((r.topic, r.partition, r.error) for r in resp) == \
        sorted((p.topic.encode(), p.partition, OK) for p in parts)
    written, empty = expected_state(parts, order)  # what the policy would have allowed
    problems = broker_problems(broker, written, empty, [t for t, _ in TOPICS])
    for p in parts:
        if p.code != OK:
            assert any(x.startswith(f"{p.topic!r}[{p.partition}]: WRITTEN") for x in problems), (p.topic, problems)
    # ...and, as tansu stored it, everything is there exactly (secret.bb too, which the broker
    # does not even have as a topic: tansu writes to any name)
    written, empty = expected_state(parts, order, policy=False)
    assert broker_problems(broker, written, empty, [t for t, _ in TOPICS]) == []


def test_control_name_or_index_alone_is_written_by_tansu(stack_factory):
    """Why the filter also changes the producer id, and that the checks see neutral names and
    negative indexes: sent straight to tansu, a Produce to the neutral name or a negative
    index with an ordinary batch IS written; with the neutral producer id it is refused with
    UNKNOWN_PRODUCER_ID (59) and nothing is written."""
    st = stack_factory(config="{}")
    broker = setup_broker(st)
    neutral = kr.neutral_name(0, len("secret.a")).decode()
    neutral2 = kr.neutral_name(1, len("secret.bb")).decode()
    assert (neutral, neutral2) == ("!!!!!!!!", "!!!!!!!!#")
    plain = kr.record_batch([b"orphan"])
    trick = kr.patch(plain, kr.OFF_PRODUCER_ID, kr.i64(kr.NEUTRAL_PRODUCER_ID) + kr.i16(0) + kr.i32(0))
    assert len(trick) == len(plain)

    def send(batch):
        with kr.Conn("127.0.0.1", st.broker_port) as c:
            return kr.produce(c, 9, -1, [(neutral.encode(), [(0, batch)]), (neutral2.encode(), [(1, batch)]),
                                         (b"strict", [(kr.neutral_partition(0), batch)])])

    assert [r.error for r in send(trick)] == [kr.UNKNOWN_PRODUCER_ID] * 3
    empty = [(neutral, 0), (neutral2, 1), ("strict", kr.neutral_partition(0))]
    assert broker_problems(broker, {}, empty, [t for t, _ in TOPICS]) == []

    assert [r.error for r in send(plain)] == [OK] * 3
    problems = broker_problems(broker, {}, empty, [t for t, _ in TOPICS])
    for t, p in empty:
        assert any(x.startswith(f"{t!r}[{p}]: WRITTEN") for x in problems), (t, p, problems)
    written = {tp: [b"orphan"] for tp in empty}
    assert broker_problems(broker, written, [], [t for t, _ in TOPICS]) == [], \
        "tansu stores them, yet lists no such topic"


def test_neutral_names_match_the_filter():
    assert kr.neutral_name(0, 8) == b"!!!!!!!!"
    assert kr.neutral_name(1, 9) == b"!!!!!!!!#"
    assert kr.neutral_name(26, 3) == b"!#!"
    assert kr.neutral_name(25, 1) == b"~"
    with pytest.raises(ValueError):
        kr.neutral_name(26, 1)
    assert not any(kr.legal_topic_name(kr.neutral_name(k, 4)) for k in range(1000))
    # order A: secret.a first; order B: strict's two refused partitions first
    names, idx = filter_neutral(parts_for("x"), ORDERS["A"])
    assert names == {b"!!!!!!!!": "secret.a", b"!!!!!!!!%": "secret.bb"}
    assert idx == {("strict", -1000001): 0, ("strict", -1000002): 2}
    names, idx = filter_neutral(parts_for("x"), ORDERS["B"])
    assert names == {b"!!!!!!!!$": "secret.bb", b"!!!!!!!%": "secret.a"}
    assert idx == {("strict", -1000000): 0, ("strict", -1000001): 2}


class Relay:
    """A TCP relay in front of the broker that keeps a copy of every byte sent to it."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.lock = threading.Lock()
        self.to_broker = bytearray()
        self.socks = [self.srv]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.srv.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.socks += [down, up]
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, src, dst, record):
        try:
            while data := src.recv(65536):
                if record:
                    with self.lock:
                        self.to_broker += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def produce_frames(self):
        with self.lock:
            frames = kr.split_frames(bytes(self.to_broker))
        return [f for f in frames if kr.parse_request_header(f)[0] == kr.PRODUCE]

    def close(self):
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def expected_on_the_wire(request, parts, order):
    """The request as the filter should forward it: denied names and refused indexes
    replaced by the neutral ones, and in every batch of those parts the producer id, epoch
    and base sequence replaced by (NEUTRAL_PRODUCER_ID, 0, 0); nothing else changed."""
    names, indexes = filter_neutral(parts, order)
    name_of = {v: k for k, v in names.items()}
    index_of = {(t, orig): n for (t, n), orig in indexes.items()}
    trick = kr.i64(kr.NEUTRAL_PRODUCER_ID) + kr.i16(0) + kr.i32(0)
    out = []
    for name, ps in request:
        t = name.decode()
        new_ps = []
        for idx, recs in ps:
            neutral = t in name_of or (t, idx) in index_of
            if neutral:
                recs = b"".join(kr.patch(b.raw, kr.OFF_PRODUCER_ID, trick) for b in kr.decode_batches(recs))
            new_ps.append((index_of.get((t, idx), idx), recs))
        out.append((name_of.get(t, name), new_ps))
    return out


@pytest.mark.parametrize("version,idempotent,order_name", [
    pytest.param(9, True, "A", id="v9-idempotent"),
    pytest.param(3, False, "B", id="v3"),
])
def test_what_the_broker_receives(stack_factory, tmp_path, version, idempotent, order_name):
    """The bytes the broker gets, captured by a relay between the sidecar and tansu: the same
    frame size, exactly the expected neutral names/indexes and producer-id edits, every other
    byte (allowed batches included) as the client sent it."""
    st = stack_factory(config="{}")  # only its tansu is used
    broker = setup_broker(st)
    relay = Relay(st.broker_port)
    sidecar = Sidecar(tmp_path, f"127.0.0.1:{relay.port}", config=POLICY)
    try:
        order = ORDERS[order_name]
        parts = parts_for(f"wire-{version}")
        with kr.Conn("127.0.0.1", sidecar.port, client_id="raw-producer") as client:
            sender = Sender()
            if idempotent:
                err, pid, epoch = kr.init_producer_id(client)
                assert err == 0
                sender = Sender(pid, epoch)
            request = sender.request(parts, order)
            check_response(kr.produce(client, version, -1, request), parts, order)
            sent = kr.produce_request(version, -1, request)
        (frame,) = relay.produce_frames()
        api_key, v, corr, client_id, r = kr.parse_request_header(frame)
        body = frame[r.p:]
        assert (api_key, v, client_id) == (kr.PRODUCE, version, b"raw-producer")
        assert len(body) == len(sent)
        want = kr.produce_request(version, -1, expected_on_the_wire(request, parts, order))
        if body != want:
            got = kr.parse_produce_request(version, kr.Reader(body, kr.is_flexible(kr.PRODUCE, version)))
            raise AssertionError(f"forwarded {got}\nexpected {want!r}")
        written, empty = expected_state(parts, order)
        assert broker_problems(broker, written, empty, [t for t, _ in TOPICS]) == []
    finally:
        sidecar.stop()
        relay.close()
        broker.close()
