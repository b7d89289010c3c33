"""Load through the filter: confluent-kafka (librdkafka 2.x) with its DEFAULT producer settings,
and once with 1 MB batches and acks=all, produces tens of thousands of ~1 KB keyed records to a
3-partition topic through wasm-sidecar in front of tansu, and a group consumer reads them back,
in every filter mode: no config, metrics, a policy that denies nothing in the traffic, a policy
that denies part of the same traffic, address rewriting (`capVersions` and `rewrite`), and all
of it together; the modes that hold or rewrite frames also run with `--buffer-limit 32768`
(Istio's gateway profile sets a 32 KiB per-connection buffer limit).

Strict on purpose: every allowed record is delivered exactly once with no error and consumed
exactly once, byte-identical, at the partition and offset its delivery report gave, in
production order per key; every denied record gets TOPIC_AUTHORIZATION_FAILED; the broker,
asked directly (not through the sidecar), holds exactly the delivered records and nothing of
the denied topic. librdkafka puts one partition in each Produce request, so the denial modes
also produce with kafka-python, whose Produce requests carry the batches of every partition of
the broker: allowed and denied topics inside the same (up to 1 MiB) request.

Every wait is bounded, so a stalled filter fails the test in bounded time."""
import hashlib
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from test_e2e import create_topics

ALLOWED = "load.t"
DENIED = "secret.x"
PARTITIONS = 3
UNREACHABLE = "tcp://kafka-0.broker.unreachable.invalid:9092"
VALUE_BYTES = 1000
DENY_EVERY = 4  # in the denial modes every 4th record goes to the denied topic

# Records per run, sized so that the whole file takes about 2 minutes on a 2-core machine.
N_RECORDS = {"default": 30000, "1MB-batches-acks-all": 20000}
N_KAFKA_PYTHON = 6000  # mixed allowed/denied records in the denial modes
# Generous bounds (a working filter needs a few seconds for a whole run), so that a stalled
# filter fails in bounded time.
PRODUCE_TIMEOUT = 30  # seconds for each producer to deliver (or fail) everything
CONSUME_TIMEOUT = 30  # seconds for the consumer to join its group and read everything

PROFILES = {
    "default": {},
    # Produce requests near 1 MB: librdkafka caps a batch at batch.size and message.max.bytes
    # (1000000 by default), and lingers long enough to fill it.
    "1MB-batches-acks-all": {"batch.size": 1000000, "linger.ms": 50, "acks": "all"},
}

ALL_FAMILIES = ["api", "produce", "fetch", "errors", "lag", "groups", "clients"]
METRICS = {"families": ALL_FAMILIES, "maxTopics": 100, "maxClientIds": 50, "maxGroups": 50}

# The policy from the bug report: allow by default, nobody produces to or consumes secret.*.
NO_SECRET = {"defaultAction": "allow", "rules": [
    {"name": "no-secret", "action": "deny", "operations": ["produce", "consume"],
     "topics": ["secret.*"]}]}

# Deny by default; this load's clients are allowed what they need. secret.x is denied to the
# producers by the default action (describe is allowed, so the records reach Produce).
LOCKED = {"defaultAction": "deny", "rules": [
    {"name": "setup", "action": "allow", "clientIds": ["admin-*"], "operations": ["create"]},
    {"name": "load-producers", "action": "allow", "clientIds": ["load-producer*"],
     "operations": ["produce"], "topics": ["load.*"]},
    {"name": "readers", "action": "allow", "operations": ["consume", "describe"]},
    {"name": "load-groups", "action": "allow", "groups": ["load-*"]}]}


def rewrite(port, endpoints):
    return {"nodeTemplate": f"127.0.0.1:{port}", "nodeEndpoints": endpoints}


# mode: (pluginConfig for the sidecar's port, denials in the traffic, tansu advertises an
# unreachable address that only the rewrite maps back to the sidecar)
MODES = {
    "no-config": (lambda port: {}, False, False),
    "metrics": (lambda port: {"metrics": METRICS}, False, False),
    "policy-no-denials": (lambda port: {"policy": NO_SECRET}, False, False),
    "policy-denials": (lambda port: {"policy": NO_SECRET}, True, False),
    "rewrite-capVersions": (lambda port: {"rewrite": rewrite(port, "capVersions")}, False, True),
    "rewrite-rewrite": (lambda port: {"rewrite": rewrite(port, "rewrite")}, False, True),
    "everything": (lambda port: {"metrics": METRICS,
                                 "accessLog": {"enabled": True, "sampleRate": 0.1},
                                 "policy": LOCKED, "rewrite": rewrite(port, "rewrite")},
                   True, True),
}

CASES = (
    [pytest.param(mode, profile, None, id=f"{mode}-{profile}")
     for profile in PROFILES for mode in MODES]
    + [pytest.param(mode, "default", 32768, id=f"{mode}-default-buffer-limit-32k")
       for mode in ["policy-denials", "rewrite-capVersions", "rewrite-rewrite", "everything"]]
)

# Lines the sidecar must never log under load.
BAD_LOG = re.compile(r"malformed|policy_close|stalled|trapped|panicked|exceeds maxBufferedFrameBytes",
                     re.IGNORECASE)


def record(client, topic, seq):
    """A keyed ~1 KB record, unique per (client, topic, seq); the key pins a partition."""
    head = f"{client}|{topic}|{seq:08d}|".encode()
    digest = hashlib.sha256(head).digest()
    value = head + (digest * (VALUE_BYTES // len(digest) + 1))[:VALUE_BYTES - len(head)]
    return f"{client}-key-{seq % 97:02d}".encode(), value


def record_id(value):
    client, topic, seq, _ = value.split(b"|", 3)
    return client.decode(), topic.decode(), int(seq)


class Broker:
    """A plain Kafka connection straight to tansu, bypassing the sidecar and the filter."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.corr = 0

    @staticmethod
    def _str(s):
        b = s.encode()
        return struct.pack(">h", len(b)) + b

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "broker closed the connection"
            buf += chunk
        return buf

    def call(self, api_key, version, body):
        self.corr += 1
        msg = struct.pack(">hhi", api_key, version, self.corr) + self._str("load-check") + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        (size,) = struct.unpack(">i", self._read(4))
        resp = self._read(size)
        assert struct.unpack(">i", resp[:4])[0] == self.corr
        return resp[4:]

    def fetch(self, topic, partition, offset):
        """Fetch v4, no wait: the partition's error code and record bytes from `offset`."""
        body = struct.pack(">iiiib", -1, 0, 1, 64 << 20, 0) + struct.pack(">i", 1) + self._str(topic)
        body += struct.pack(">iiqi", 1, partition, offset, 16 << 20)
        r = self.call(1, 4, body)
        pos = 4  # throttle_time_ms
        (ntopics,) = struct.unpack_from(">i", r, pos)
        pos += 4
        assert ntopics == 1
        (nlen,) = struct.unpack_from(">h", r, pos)
        pos += 2 + nlen
        (nparts,) = struct.unpack_from(">i", r, pos)
        pos += 4
        assert nparts == 1
        p, err, _hw, _lso, naborted = struct.unpack_from(">ihqqi", r, pos)
        pos += 26 + 16 * max(naborted, 0)
        (size,) = struct.unpack_from(">i", r, pos)
        pos += 4
        assert p == partition
        return err, r[pos:pos + max(size, 0)]

    def log_offsets(self, topic, partition):
        """The offsets of every record in the partition's log, read from the record batch
        headers (v2: baseOffset at 0, batchLength at 8, magic at 16, lastOffsetDelta at 23,
        recordsCount at 57). tansu's ListOffsets answers the last batch's base offset + 1,
        not the log end, so the log is read to its end instead."""
        offsets, at = [], 0
        while True:
            err, data = self.fetch(topic, partition, at)
            assert err == 0, f"Fetch {topic}/{partition} at {at}: error {err}"
            i, progressed = 0, False
            while i + 61 <= len(data):
                base, length = struct.unpack_from(">qi", data, i)
                if i + 12 + length > len(data):
                    break  # a truncated trailing batch
                assert data[i + 16] == 2, "not a v2 record batch"
                (last_delta,) = struct.unpack_from(">i", data, i + 23)
                (count,) = struct.unpack_from(">i", data, i + 57)
                assert count == last_delta + 1, (topic, partition, base, count, last_delta)
                if base + last_delta >= at:
                    offsets.extend(range(max(base, at), base + count))
                    at, progressed = base + count, True
                i += 12 + length
            if not progressed:
                return offsets

    def close(self):
        self.sock.close()


def close_within(fn, seconds=30):
    """Run a client's close in a thread so a wedged connection cannot hang the test."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)


def produce_librdkafka(bootstrap, profile, plan):
    """Produce `plan` [(topic, seq)] with default settings (plus the profile); returns the
    producer (kept open: see test_e2e.produce_confluent), {seq: [(err, partition, offset)]},
    the number of records still undelivered after the timeout, and the seconds it took.
    Once a topic has failed authorization librdkafka may refuse further records for it in
    produce() itself: that error counts as the record's report."""
    p = Producer({"bootstrap.servers": bootstrap, "client.id": "load-producer", **PROFILES[profile]})
    reports = defaultdict(list)

    def report(seq):
        return lambda err, msg: reports[seq].append((err, msg.partition(), msg.offset()))

    start = time.monotonic()
    deadline = start + PRODUCE_TIMEOUT
    for topic, seq in plan:
        key, value = record("rd", topic, seq)
        while True:
            try:
                p.produce(topic, key=key, value=value, on_delivery=report(seq))
                break
            except KafkaException as e:
                reports[seq].append((e.args[0], None, None))
                break
            except BufferError:
                assert time.monotonic() < deadline, "librdkafka's queue stayed full"
                p.poll(0.1)
        p.poll(0)
    left = p.flush(max(1.0, deadline - time.monotonic()))
    return p, reports, left, time.monotonic() - start


def produce_kafka_python(bootstrap, plan):
    """Produce `plan` with kafka-python, whose Produce requests hold the batches of every
    partition the broker leads: the allowed and the denied topic share requests.
    Returns the producer, {seq: (exception or None, partition, offset)}, the seconds, and
    per Produce request its topics and record bytes (read from kafka-python's sender)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError
    # Not idempotent: a denied partition's error is then just that partition's, as with
    # librdkafka's defaults; the point here is the shape of the requests.
    kp = KafkaProducer(bootstrap_servers=bootstrap, client_id="load-producer-kp", acks="all",
                       linger_ms=50, batch_size=256 * 1024, max_request_size=1048576,
                       enable_idempotence=False, max_block_ms=PRODUCE_TIMEOUT * 1000,
                       request_timeout_ms=PRODUCE_TIMEOUT * 500,
                       delivery_timeout_ms=PRODUCE_TIMEOUT * 1000)
    shapes = []
    make_request = getattr(kp._sender, "_produce_request", None)
    if make_request is not None:
        def recording(node_id, acks, timeout, batches):
            request = make_request(node_id, acks, timeout, batches)
            shapes.append(({b.topic_partition.topic for b in batches},
                           sum(len(p.records) for t in request.topic_data for p in t.partition_data)))
            return request
        kp._sender._produce_request = recording
    start = time.monotonic()
    futures = {}
    for topic, seq in plan:
        key, value = record("kp", topic, seq)
        futures[seq] = kp.send(topic, key=key, value=value)
    try:
        kp.flush(timeout=PRODUCE_TIMEOUT)
    except KafkaTimeoutError:
        pass  # the undelivered records are reported below
    out = {}
    for seq, f in futures.items():
        if not f.is_done:
            out[seq] = ("undelivered", None, None)
        elif f.succeeded():
            md = f.value
            out[seq] = (None, md.partition, md.offset)
        else:
            out[seq] = (f.exception, None, None)
    return kp, out, time.monotonic() - start, shapes


def drain(consumer, expected, timeout):
    """Consume until every expected record id has been seen or the timeout; then a little
    longer, so duplicates show. Returns {id: [(partition, offset, key, value)]}, the order
    seen per partition, unexpected records and errors."""
    got = defaultdict(list)
    order = defaultdict(list)
    unexpected, errors = [], []
    deadline = time.monotonic() + timeout
    linger_until = None
    while time.monotonic() < (linger_until or deadline):
        for m in consumer.consume(num_messages=1000, timeout=0.5):
            if m.error():
                errors.append(m.error())
                continue
            rid = record_id(m.value())
            if rid not in expected:
                unexpected.append((m.topic(), m.partition(), m.offset(), m.value()[:40]))
                continue
            got[rid].append((m.partition(), m.offset(), m.key(), m.value()))
            order[m.partition()].append((m.offset(), rid))
        if linger_until is None and len(got) == len(expected):
            linger_until = time.monotonic() + 1.0
    return got, order, unexpected, errors


@pytest.mark.parametrize("mode,profile,buffer_limit", CASES)
def test_load(request, stack_factory, mode, profile, buffer_limit):
    config, denials, rewrites = MODES[mode]
    started = time.monotonic()
    st = stack_factory(config=lambda port: json.dumps(config(port)), buffer_limit=buffer_limit,
                       advertise=UNREACHABLE if rewrites else None,
                       log_level="info" if mode == "everything" else "warn")
    create_topics(st.bootstrap, [ALLOWED] + ([DENIED] if denials else []), partitions=PARTITIONS)

    n = N_RECORDS[profile]
    topic_of = lambda seq: DENIED if denials and seq % DENY_EVERY == DENY_EVERY - 1 else ALLOWED  # noqa: E731
    plan = [(topic_of(seq), seq) for seq in range(n)]
    producer, rd_reports, left, rd_secs = produce_librdkafka(st.bootstrap, profile, plan)
    kp_plan = [(topic_of(seq), seq) for seq in range(N_KAFKA_PYTHON)] if denials else []
    kp, kp_reports, kp_secs, kp_shapes = (produce_kafka_python(st.bootstrap, kp_plan) if kp_plan
                                          else (None, {}, 0.0, []))

    # What must be in the broker: every allowed record, once, where its report put it.
    expected = {}
    for client, sent in (("rd", plan), ("kp", kp_plan)):
        for topic, seq in sent:
            if topic == ALLOWED:
                expected[(client, topic, seq)] = record(client, topic, seq)
    # Consume once production is over, so the consumer reads a backlog: Fetch responses of
    # several MB (librdkafka's defaults allow 1 MiB per partition, 50 MiB per response).
    consume_start = time.monotonic()
    consumer = Consumer({"bootstrap.servers": st.bootstrap, "group.id": f"load-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "client.id": "load-consumer"})
    consumer.subscribe([ALLOWED])
    undelivered = left or any(r[0] == "undelivered" for r in kp_reports.values())
    got, order, unexpected, errors = drain(consumer, expected, 10 if undelivered else CONSUME_TIMEOUT)
    consume_secs = time.monotonic() - consume_start
    close_within(consumer.close)

    broker = Broker(st.broker_port)
    in_log = {(t, p): broker.log_offsets(t, p) for p in range(PARTITIONS)
              for t in [ALLOWED] + ([DENIED] if denials else [])}
    broker.close()
    stats = st.sidecar.stats()
    log = st.sidecar.read_log()
    producer.purge()  # nothing is left when the test passes; after a failure, drop the rest
    del producer
    if kp is not None:
        close_within(lambda: kp.close(timeout=5))

    mb = len(expected) * VALUE_BYTES / 1e6
    both = [size for topics, size in kp_shapes if len(topics) == 2]
    shape = (f" ({len(kp_shapes)} requests, {len(both)} with both topics, largest "
             f"{max(both) // 1024} KiB)" if both else "")
    total = time.monotonic() - started
    summary = (f"[load {request.node.callspec.id}] {n} librdkafka + {len(kp_plan)} kafka-python "
               f"records, {len(expected)} allowed ({mb:.1f} MB), {len(got)} consumed; produce "
               f"{rd_secs:.1f}s ({n * VALUE_BYTES / 1e6 / rd_secs:.1f} MB/s)"
               f"{f' + kafka-python {kp_secs:.1f}s' if kp_plan else ''}{shape}, consume "
               f"{consume_secs:.1f}s ({mb / consume_secs:.1f} MB/s with the group join), "
               f"{total:.1f}s in all")
    request.node.user_properties.append(("summary", summary))

    # What the sidecar said, shown with every failure below.
    bad_lines = [line for line in log.splitlines() if BAD_LOG.search(line)]
    distinct = list(dict.fromkeys(re.sub(r"\d+", "N", line) for line in bad_lines))
    why = f"\nsidecar log: {len(bad_lines)} bad lines, e.g. {distinct[:3]}" if bad_lines else ""

    # 1. Delivery reports, librdkafka: exactly one per record; allowed ones succeed, denied
    #    ones fail with TOPIC_AUTHORIZATION_FAILED.
    assert left == 0, f"{left} of {n} records undelivered after {PRODUCE_TIMEOUT}s{why}"
    bad = []
    for topic, seq in plan:
        reps = rd_reports.get(seq, [])
        if len(reps) != 1:
            bad.append((topic, seq, f"{len(reps)} delivery reports"))
            continue
        err = reps[0][0]
        if topic == ALLOWED and err is not None:
            bad.append((topic, seq, err))
        if topic == DENIED and (err is None or err.code() != KafkaError.TOPIC_AUTHORIZATION_FAILED):
            bad.append((topic, seq, err))
    assert not bad, f"{len(bad)} librdkafka delivery reports wrong, e.g. {bad[:3]}{why}"

    # ... and kafka-python, with allowed and denied topics in the same Produce requests.
    if kp_plan:
        from kafka.errors import TopicAuthorizationFailedError
        bad = []
        for topic, seq in kp_plan:
            err = kp_reports[seq][0]
            if (topic == ALLOWED and err is not None) or \
                    (topic == DENIED and not isinstance(err, TopicAuthorizationFailedError)):
                bad.append((topic, seq, err))
        assert not bad, f"{len(bad)} kafka-python results wrong, e.g. {bad[:3]}{why}"
        # (the point of it: some requests carried both topics, and large ones)
        mixed = [size for topics, size in kp_shapes if topics == {ALLOWED, DENIED}]
        if kp_shapes:
            assert mixed and max(mixed) > 512 * 1024, f"no large mixed Produce request: {kp_shapes[:5]}"

    # 2. The consumer, through the sidecar: every allowed record exactly once, byte-identical,
    #    where its delivery report put it, nothing else, no errors.
    assert not errors, f"consumer errors: {errors[:3]}{why}"
    assert not unexpected, f"{len(unexpected)} records nobody expected, e.g. {unexpected[:3]}{why}"
    missing = [rid for rid in expected if rid not in got]
    assert not missing, \
        f"{len(missing)} of {len(expected)} allowed records never consumed, e.g. {missing[:3]}{why}"
    dups = {rid: len(v) for rid, v in got.items() if len(v) != 1}
    assert not dups, f"{len(dups)} records consumed more than once, e.g. {list(dups.items())[:3]}{why}"
    reports = {("rd", ALLOWED, s): r[0][1:] for s, r in rd_reports.items()}
    reports.update({("kp", ALLOWED, s): r[1:] for s, r in kp_reports.items()})
    for rid, [(partition, offset, key, value)] in got.items():
        assert (key, value) == expected[rid], f"{rid} differs"
        assert (partition, offset) == reports[rid], f"{rid} at {partition}/{offset}, reported {reports[rid]}"

    # Per partition: offsets ascend as consumed; per key, production order.
    for partition, rows in order.items():
        offsets = [o for o, _ in rows]
        assert offsets == sorted(offsets), f"partition {partition} consumed out of order"
        by_key = defaultdict(list)
        for _, (client, _, seq) in rows:
            by_key[(client, expected[(client, ALLOWED, seq)][0])].append(seq)
        for key, seqs in by_key.items():
            assert seqs == sorted(seqs), f"partition {partition} key {key} reordered"

    # 3. The broker itself, read directly, not through the filter: the allowed topic holds
    #    exactly the consumed records, the denied topic nothing at all.
    for partition in range(PARTITIONS):
        log_offsets = in_log[(ALLOWED, partition)]
        consumed = sorted(o for o, _ in order.get(partition, []))
        assert log_offsets == consumed, \
            f"{ALLOWED}/{partition}: the broker holds {len(log_offsets)} records, {len(consumed)} consumed"
        if denials:
            assert not in_log[(DENIED, partition)], \
                f"{len(in_log[(DENIED, partition)])} denied records in the broker's {DENIED}/{partition}"

    # 4. The sidecar: nothing malformed, no policy closes, no stalls; exact produce counts.
    assert not bad_lines, why
    m = lambda fam, **kw: st.sidecar.metric(fam, stats, **kw)  # noqa: E731
    assert m("kafka_mesh_malformed_total") == 0
    assert m("kafka_mesh_rewrite_skipped_total") == 0
    # records the clients sent to the allowed topic, counted from the batch headers: exactly
    # once each, so also no retried Produce request
    assert m("kafka_mesh_produce_records_total", topic=ALLOWED) == len(expected)
    assert m("kafka_mesh_fetch_records_total", topic=ALLOWED) >= len(expected)
    if denials:
        assert m("kafka_mesh_policy_decisions_total", decision="deny") >= 1
    if mode == "everything":
        assert f"policy deny: produce {DENIED}" in log
        assert "kafka-mesh-filter access " in log
