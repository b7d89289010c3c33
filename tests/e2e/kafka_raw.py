"""A small raw Kafka protocol client for tests that must control every byte on the wire.

Real clients (librdkafka, kafka-python) never send what these tests need: several topics
and partitions of our choosing in ONE Produce request, a chosen producer id and sequence,
names no client would accept, negative partition indexes. So requests are built here with
`struct` and sockets, and responses are decoded just far enough to check them.

Covered (by api key):

- 0 Produce v3..v11 (`produce`, `produce_request`, `parse_produce_response`, and for
  captured traffic `parse_request_header`, `parse_produce_request`, `split_frames`)
- 1 Fetch v4..v12, by topic name (`fetch`, `fetch_all`)
- 2 ListOffsets v1..v7 (`list_offsets`)
- 3 Metadata v1..v12 (`metadata`)
- 18 ApiVersions v0 (`api_versions`)
- 19 CreateTopics v2..v4 (`create_topics`)
- 22 InitProducerId v2..v4 (`init_producer_id`)

Record batches are v2 (magic 2, KIP-98) with a real CRC32C (`record_batch`,
`decode_batches`); `gzip` is the one compression codec supported (stdlib only).

Wire format reference: the message JSON files of apache/kafka
`clients/src/main/resources/common/message/` (also shipped in tansu-sans-io's `message/`).
A version is "flexible" (compact strings/arrays, tagged fields, header v2 / v1) from the
version given in `FLEXIBLE` on; ApiVersions responses always use response header v0.
"""
import gzip
import socket
import struct
import time
from dataclasses import dataclass, field

# --------------------------------------------------------------------------- CRC32C

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as record batches v2 use it."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283

# --------------------------------------------------------------------------- api keys / errors

PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS, CREATE_TOPICS, INIT_PRODUCER_ID = 0, 1, 2, 3, 18, 19, 22

# First flexible version per api key (request header v2, response header v1).
FLEXIBLE = {PRODUCE: 9, FETCH: 12, LIST_OFFSETS: 6, METADATA: 9, API_VERSIONS: 3,
            CREATE_TOPICS: 5, INIT_PRODUCER_ID: 2}

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
RECORD_LIST_TOO_LARGE = 18
INVALID_REQUIRED_ACKS = 21
TOPIC_AUTHORIZATION_FAILED = 29
TOPIC_ALREADY_EXISTS = 36
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
UNKNOWN_PRODUCER_ID = 59
UNSUPPORTED_COMPRESSION_TYPE = 76


def is_flexible(api_key, version):
    return version >= FLEXIBLE.get(api_key, 1 << 15)


# --------------------------------------------------------------------------- encoding

def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)


def uvarint(v):
    """Unsigned LEB128 varint (compact lengths, tag counts)."""
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(v):
    """Zig-zag signed varint (fields inside records)."""
    return uvarint((v << 1) ^ (v >> 63))


def _b(s):
    return s if isinstance(s, bytes) else s.encode()


def string(s, flexible=False):
    """A nullable string: INT16 length (-1 null), or compact (UVARINT length+1, 0 null)."""
    if s is None:
        return uvarint(0) if flexible else i16(-1)
    b = _b(s)
    return (uvarint(len(b) + 1) if flexible else i16(len(b))) + b


def nbytes(b, flexible=False):
    """Nullable bytes: INT32 length (-1 null), or compact."""
    if b is None:
        return uvarint(0) if flexible else i32(-1)
    return (uvarint(len(b) + 1) if flexible else i32(len(b))) + b


def array_len(n, flexible=False):
    """The length prefix of an array of `n` items (None: a null array)."""
    if n is None:
        return uvarint(0) if flexible else i32(-1)
    return uvarint(n + 1) if flexible else i32(n)


def tags(flexible=True):
    """An empty tagged-field section (flexible versions only)."""
    return uvarint(0) if flexible else b""


class Reader:
    """Sequential decoder over a response body; `flexible` picks compact strings/arrays."""

    def __init__(self, buf, flexible=False):
        self.b = buf
        self.p = 0
        self.flexible = flexible

    def take(self, n):
        v = self.b[self.p:self.p + n]
        if len(v) != n:
            raise ValueError(f"short read: wanted {n} at {self.p}, have {len(self.b) - self.p}")
        self.p += n
        return v

    def i8(self): return struct.unpack(">b", self.take(1))[0]
    def i16(self): return struct.unpack(">h", self.take(2))[0]
    def i32(self): return struct.unpack(">i", self.take(4))[0]
    def i64(self): return struct.unpack(">q", self.take(8))[0]

    def uvarint(self):
        shift = v = 0
        while True:
            b = self.take(1)[0]
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def varint(self):
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def string(self):
        """Nullable string, returned as raw bytes (names may not be UTF-8 text)."""
        n = self.uvarint() - 1 if self.flexible else self.i16()
        return None if n < 0 else self.take(n)

    def bytes(self):
        n = self.uvarint() - 1 if self.flexible else self.i32()
        return None if n < 0 else self.take(n)

    def array_len(self):
        """Item count of an array (0 for a null one)."""
        n = self.uvarint() - 1 if self.flexible else self.i32()
        return max(n, 0)

    def tags(self):
        """Skip a tagged-field section (no-op for non-flexible versions)."""
        if not self.flexible:
            return
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())

    def at_end(self):
        return self.p == len(self.b)


# --------------------------------------------------------------------------- record batches

# Byte offsets inside a v2 record batch header (61 bytes).
OFF_BASE_OFFSET, OFF_BATCH_LENGTH, OFF_LEADER_EPOCH, OFF_MAGIC, OFF_CRC, OFF_ATTRIBUTES = 0, 8, 12, 16, 17, 21
OFF_LAST_OFFSET_DELTA, OFF_BASE_TS, OFF_MAX_TS, OFF_PRODUCER_ID, OFF_PRODUCER_EPOCH = 23, 27, 35, 43, 51
OFF_BASE_SEQUENCE, OFF_RECORDS_COUNT, BATCH_HEADER_BYTES = 53, 57, 61

COMPRESSION_NONE, COMPRESSION_GZIP = 0, 1


def encode_record(offset_delta, key, value, headers=(), ts_delta=0):
    body = (i8(0) + varint(ts_delta) + varint(offset_delta)
            + (varint(-1) if key is None else varint(len(key)) + key)
            + (varint(-1) if value is None else varint(len(value)) + value)
            # the header count is a zig-zag varint like every record field (Kafka's
            # DefaultRecord.writeTo: ByteUtils.writeVarint(headers.length, out))
            + varint(len(headers)))
    for hk, hv in headers:
        hk = _b(hk)
        body += varint(len(hk)) + hk + (varint(-1) if hv is None else varint(len(hv)) + hv)
    return varint(len(body)) + body


def record_batch(values, keys=None, producer_id=-1, producer_epoch=-1, base_sequence=-1,
                 compression=COMPRESSION_NONE, transactional=False, base_offset=0,
                 leader_epoch=-1, ts=None):
    """One v2 record batch holding `values` (bytes), with a correct CRC32C.

    An idempotent batch has producer_id >= 0, its epoch and the partition's next sequence;
    a plain one keeps -1 in all three."""
    ts = int(time.time() * 1000) if ts is None else ts
    keys = keys or [None] * len(values)
    recs = b"".join(encode_record(i, k, v) for i, (k, v) in enumerate(zip(keys, values)))
    if compression == COMPRESSION_GZIP:
        recs = gzip.compress(recs)
    elif compression != COMPRESSION_NONE:
        raise ValueError(f"unsupported compression {compression}")
    attributes = compression | (0x10 if transactional else 0)
    after_crc = (i16(attributes) + i32(len(values) - 1) + i64(ts) + i64(ts) + i64(producer_id)
                 + i16(producer_epoch) + i32(base_sequence) + i32(len(values)) + recs)
    batch_length = 4 + 1 + 4 + len(after_crc)  # partitionLeaderEpoch + magic + crc + the rest
    return (i64(base_offset) + i32(batch_length) + i32(leader_epoch) + i8(2)
            + struct.pack(">I", crc32c(after_crc)) + after_crc)


def patch(data, offset, raw):
    """`data` with `raw` written at `offset` (same length)."""
    out = bytearray(data)
    out[offset:offset + len(raw)] = raw
    return bytes(out)


@dataclass
class Record:
    offset: int
    key: bytes
    value: bytes
    headers: list


@dataclass
class Batch:
    base_offset: int
    magic: int
    crc_ok: bool
    attributes: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int
    raw: bytes
    records: list = field(default_factory=list)


def _decode_records(data, base_offset, count, exact=False):
    """`exact`: no byte may be left after the last record (a misread record shows there)."""
    r = Reader(data)
    out = []
    for _ in range(count):
        r.varint()  # record length
        r.i8()  # attributes
        r.varint()  # timestamp delta
        off = base_offset + r.varint()
        kl = r.varint()
        key = None if kl < 0 else r.take(kl)
        vl = r.varint()
        value = None if vl < 0 else r.take(vl)
        headers = []
        for _ in range(r.varint()):  # zig-zag, as encode_record says
            hk = r.take(r.varint())
            hl = r.varint()
            headers.append((hk, None if hl < 0 else r.take(hl)))
        out.append(Record(off, key, value, headers))
    if exact and not r.at_end():
        raise ValueError(f"bytes after the {count} records of the batch at {base_offset}")
    return out


def decode_batches(data):
    """Every complete batch in a Records field (Fetch may end with a truncated one: dropped).
    Records are decoded for magic 2 batches that are uncompressed or gzip."""
    out = []
    p = 0
    data = data or b""
    while p + OFF_MAGIC + 1 <= len(data):
        base_offset, length = struct.unpack(">qi", data[p:p + 12])
        end = p + 12 + length
        if end > len(data):
            break
        raw = data[p:end]
        magic = raw[OFF_MAGIC]
        if magic == 2 and len(raw) >= BATCH_HEADER_BYTES:
            (crc,) = struct.unpack(">I", raw[OFF_CRC:OFF_CRC + 4])
            attributes, = struct.unpack(">h", raw[OFF_ATTRIBUTES:OFF_ATTRIBUTES + 2])
            pid, epoch, seq, count = struct.unpack(">qhii", raw[OFF_PRODUCER_ID:BATCH_HEADER_BYTES])
            b = Batch(base_offset, magic, crc32c(raw[OFF_ATTRIBUTES:]) == crc, attributes, pid, epoch,
                      seq, count, raw)
            body = raw[BATCH_HEADER_BYTES:]
            codec = attributes & 7
            if codec == COMPRESSION_GZIP:
                body = gzip.decompress(body)
            if codec in (COMPRESSION_NONE, COMPRESSION_GZIP):
                b.records = _decode_records(body, base_offset, count)
        else:
            b = Batch(base_offset, magic, False, 0, -1, -1, -1, 0, raw)
        out.append(b)
        p = end
    return out


# --------------------------------------------------------------------------- connection

class Conn:
    """One TCP connection; requests carry increasing correlation ids."""

    def __init__(self, host, port, client_id="kafka-raw", timeout=10):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.client_id = client_id
        self.corr = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, api_key, version, body):
        """Frame and send a request; returns its correlation id."""
        self.corr += 1
        hdr = i16(api_key) + i16(version) + i32(self.corr) + string(self.client_id)
        if is_flexible(api_key, version):
            hdr += tags()
        msg = hdr + body
        self.s.sendall(i32(len(msg)) + msg)
        return self.corr

    def recv_frame(self, timeout=10):
        """One response frame (without its size prefix); socket.timeout if none comes."""
        self.s.settimeout(timeout)
        (n,) = struct.unpack(">i", self._exact(4))
        return self._exact(n)

    def _exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise ConnectionError("connection closed by peer")
            out += chunk
        return out

    def read_response(self, api_key, version, frame):
        """(correlation id, Reader positioned at the response body) for a response frame."""
        flexible = is_flexible(api_key, version)
        r = Reader(frame, flexible)
        corr = r.i32()
        if flexible and api_key != API_VERSIONS:
            r.tags()
        return corr, r

    def request(self, api_key, version, body, timeout=10):
        corr = self.send(api_key, version, body)
        got, r = self.read_response(api_key, version, self.recv_frame(timeout))
        if got != corr:
            raise AssertionError(f"correlation id {got}, expected {corr}")
        return r

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- Produce

@dataclass
class PartitionResponse:
    topic: bytes
    partition: int
    error: int
    base_offset: int
    error_message: bytes = None


def produce_request(version, acks, topics, transactional_id=None, timeout_ms=5000):
    """Produce body. `topics`: [(name, [(partition, records bytes), ...]), ...], in wire order."""
    if not 3 <= version <= 11:
        raise ValueError("Produce v3..v11 only")
    flex = is_flexible(PRODUCE, version)
    b = string(transactional_id, flex) + i16(acks) + i32(timeout_ms) + array_len(len(topics), flex)
    for name, parts in topics:
        b += string(name, flex) + array_len(len(parts), flex)
        for idx, recs in parts:
            b += i32(idx) + nbytes(recs, flex) + tags(flex)
        b += tags(flex)
    return b + tags(flex)


def parse_request_header(frame):
    """(api key, version, correlation id, client id, Reader at the body) of a request frame
    (without its size prefix), e.g. one captured between a proxy and the broker."""
    r = Reader(frame)
    api_key, version, corr = r.i16(), r.i16(), r.i32()
    client_id = r.string()
    r.flexible = is_flexible(api_key, version)
    r.tags()
    return api_key, version, corr, client_id, r


def parse_produce_request(version, r):
    """(transactional id, acks, [(name, [(partition, records bytes)])]): the inverse of
    `produce_request`."""
    tx, acks = r.string(), r.i16()
    r.i32()  # timeout
    topics = []
    for _ in range(r.array_len()):
        name = r.string()
        parts = []
        for _ in range(r.array_len()):
            idx = r.i32()
            parts.append((idx, r.bytes()))
            r.tags()
        r.tags()
        topics.append((name, parts))
    r.tags()
    return tx, acks, topics


def split_frames(stream):
    """The size-prefixed frames of a captured byte stream (a trailing partial one dropped)."""
    out, p = [], 0
    while p + 4 <= len(stream):
        (n,) = struct.unpack(">i", stream[p:p + 4])
        if p + 4 + n > len(stream):
            break
        out.append(stream[p + 4:p + 4 + n])
        p += 4 + n
    return out


def parse_produce_response(version, r):
    out = []
    for _ in range(r.array_len()):
        name = r.string()
        for _ in range(r.array_len()):
            idx, err, base = r.i32(), r.i16(), r.i64()
            r.i64()  # log_append_time_ms (v2+)
            if version >= 5:
                r.i64()  # log_start_offset
            msg = None
            if version >= 8:
                for _ in range(r.array_len()):  # record_errors
                    r.i32()
                    r.string()
                    r.tags()
                msg = r.string()
            r.tags()
            out.append(PartitionResponse(name, idx, err, base, msg))
        r.tags()
    r.i32()  # throttle_time_ms
    r.tags()
    return out


def produce(conn, version, acks, topics, transactional_id=None, timeout_ms=5000):
    """Send a Produce; returns [PartitionResponse] for acks != 0, the correlation id for acks=0
    (Kafka sends no response then; read one with `conn.recv_frame` if the broker does)."""
    corr = conn.send(PRODUCE, version, produce_request(version, acks, topics, transactional_id, timeout_ms))
    if acks == 0:
        return corr
    got, r = conn.read_response(PRODUCE, version, conn.recv_frame())
    if got != corr:
        raise AssertionError(f"correlation id {got}, expected {corr}")
    return parse_produce_response(version, r)


# --------------------------------------------------------------------------- Fetch

@dataclass
class FetchPartition:
    error: int
    high_watermark: int
    log_start_offset: int
    records: bytes

    @property
    def batches(self):
        return decode_batches(self.records)


def _by_topic(tps):
    out = {}
    for t, p in tps:
        out.setdefault(_b(t), []).append(p)
    return out


def fetch(conn, tps, offset=0, version=12, max_wait_ms=0, partition_max_bytes=1 << 20):
    """Fetch by topic name (v4..v12) from `offset` for every (topic, partition) in `tps`.
    Returns {(topic bytes, partition): FetchPartition}."""
    if not 4 <= version <= 12:
        raise ValueError("Fetch v4..v12 only (v13+ names topics by id)")
    flex = is_flexible(FETCH, version)
    by_topic = _by_topic(tps)
    b = i32(-1) + i32(max_wait_ms) + i32(0) + i32(64 << 20) + i8(0)  # replica, wait, min/max bytes, isolation
    if version >= 7:
        b += i32(0) + i32(-1)  # session id, epoch: a full fetch, no session
    b += array_len(len(by_topic), flex)
    for t, ps in by_topic.items():
        b += string(t, flex) + array_len(len(ps), flex)
        for p in ps:
            b += i32(p)
            if version >= 9:
                b += i32(-1)  # current leader epoch
            b += i64(offset)
            if version >= 12:
                b += i32(-1)  # last fetched epoch
            if version >= 5:
                b += i64(-1)  # log start offset (followers only)
            b += i32(partition_max_bytes) + tags(flex)
        b += tags(flex)
    if version >= 7:
        b += array_len(0, flex)  # forgotten topics
    if version >= 11:
        b += string("", flex)  # rack id
    b += tags(flex)
    r = conn.request(FETCH, version, b)
    r.i32()  # throttle
    if version >= 7:
        err = r.i16()
        r.i32()  # session id
        if err:
            raise AssertionError(f"Fetch error {err}")
    out = {}
    for _ in range(r.array_len()):
        t = r.string()
        for _ in range(r.array_len()):
            p, err, hw = r.i32(), r.i16(), r.i64()
            r.i64()  # last stable offset
            lso = r.i64() if version >= 5 else -1
            for _ in range(r.array_len()):  # aborted transactions
                r.i64()
                r.i64()
                r.tags()
            if version >= 11:
                r.i32()  # preferred read replica
            recs = r.bytes()
            r.tags()
            out[(t, p)] = FetchPartition(err, hw, lso, recs or b"")
        r.tags()
    r.tags()
    return out


def fetch_all(conn, topic, partition, version=12, limit=100):
    """(error, [Batch]) of everything in a partition from offset 0: fetches again from after
    the last batch until a fetch brings nothing new (at most `limit` rounds)."""
    batches, offset, err = [], 0, None
    for _ in range(limit):
        fp = fetch(conn, [(topic, partition)], offset, version)[(_b(topic), partition)]
        err = fp.error
        got = fp.batches
        if not got:
            break
        batches += got
        last = got[-1]
        nxt = last.base_offset + max(last.records_count, 1)
        if nxt <= offset:
            break
        offset = nxt
    return err, batches


# --------------------------------------------------------------------------- ListOffsets

LATEST, EARLIEST = -1, -2


def list_offsets(conn, tps, timestamp=LATEST, version=1):
    """ListOffsets v1..v7. Returns {(topic bytes, partition): (error, offset)}."""
    if not 1 <= version <= 7:
        raise ValueError("ListOffsets v1..v7 only")
    flex = is_flexible(LIST_OFFSETS, version)
    by_topic = _by_topic(tps)
    b = i32(-1)
    if version >= 2:
        b += i8(0)  # isolation level
    b += array_len(len(by_topic), flex)
    for t, ps in by_topic.items():
        b += string(t, flex) + array_len(len(ps), flex)
        for p in ps:
            b += i32(p)
            if version >= 4:
                b += i32(-1)  # current leader epoch
            b += i64(timestamp) + tags(flex)
        b += tags(flex)
    b += tags(flex)
    r = conn.request(LIST_OFFSETS, version, b)
    if version >= 2:
        r.i32()  # throttle
    out = {}
    for _ in range(r.array_len()):
        t = r.string()
        for _ in range(r.array_len()):
            p, err = r.i32(), r.i16()
            r.i64()  # timestamp
            off = r.i64()
            if version >= 4:
                r.i32()  # leader epoch
            r.tags()
            out[(t, p)] = (err, off)
        r.tags()
    r.tags()
    return out


# --------------------------------------------------------------------------- Metadata

def metadata(conn, topics=None, version=1):
    """Metadata v1..v12; `topics` None asks for all topics.
    Returns {topic name bytes: (error, [partition indexes])}."""
    if not 1 <= version <= 12:
        raise ValueError("Metadata v1..v12 only")
    flex = is_flexible(METADATA, version)
    if topics is None:
        b = array_len(None, flex)
    else:
        b = array_len(len(topics), flex)
        for t in topics:
            if version >= 10:
                b += bytes(16)  # topic id: none
            b += string(t, flex) + tags(flex)
    if version >= 4:
        b += i8(0)  # allow auto topic creation: no
    if 8 <= version <= 10:
        b += i8(0)  # include cluster authorized operations
    if version >= 8:
        b += i8(0)  # include topic authorized operations
    b += tags(flex)
    r = conn.request(METADATA, version, b)
    if version >= 3:
        r.i32()  # throttle
    for _ in range(r.array_len()):  # brokers
        r.i32()
        r.string()
        r.i32()
        r.string()  # rack
        r.tags()
    if version >= 2:
        r.string()  # cluster id
    r.i32()  # controller id
    out = {}
    for _ in range(r.array_len()):
        err = r.i16()
        name = r.string()
        if version >= 10:
            r.take(16)
        r.i8()  # is internal
        parts = []
        for _ in range(r.array_len()):
            r.i16()
            parts.append(r.i32())
            r.i32()  # leader
            if version >= 7:
                r.i32()  # leader epoch
            for _ in range(r.array_len()):
                r.i32()  # replicas
            for _ in range(r.array_len()):
                r.i32()  # isr
            if version >= 5:
                for _ in range(r.array_len()):
                    r.i32()  # offline replicas
            r.tags()
        if version >= 8:
            r.i32()  # topic authorized operations
        r.tags()
        out[name] = (err, sorted(parts))
    if 8 <= version <= 10:
        r.i32()
    r.tags()
    return out


# --------------------------------------------------------------------------- admin / producer ids

def api_versions(conn):
    """ApiVersions v0: (error, {api key: (min, max)})."""
    r = conn.request(API_VERSIONS, 0, b"")
    err = r.i16()
    out = {}
    for _ in range(r.i32()):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        out[k] = (lo, hi)
    return err, out


def create_topics(conn, topics, version=2, timeout_ms=5000):
    """CreateTopics v2..v4: `topics` [(name, partitions)], replication factor 1.
    Returns {name bytes: error}."""
    if not 2 <= version <= 4:
        raise ValueError("CreateTopics v2..v4 only")
    b = i32(len(topics))
    for name, n in topics:
        b += string(name) + i32(n) + i16(1) + i32(0) + i32(0)  # no assignments, no configs
    b += i32(timeout_ms) + i8(0)  # validate only: no
    r = conn.request(CREATE_TOPICS, version, b)
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        err = r.i16()
        r.string()  # error message
        out[name] = err
    return out


def init_producer_id(conn, transactional_id=None, version=4, timeout_ms=60000):
    """InitProducerId v2..v4 (tansu 0.6 answers UNKNOWN_SERVER_ERROR to v1 and v2, so v4 by
    default): (error, producer id, epoch)."""
    if not 2 <= version <= 4:
        raise ValueError("InitProducerId v2..v4 only")
    b = string(transactional_id, True) + i32(timeout_ms)
    if version >= 3:
        b += i64(-1) + i16(-1)  # no existing producer id / epoch
    r = conn.request(INIT_PRODUCER_ID, version, b + tags())
    r.i32()  # throttle
    return r.i16(), r.i64(), r.i16()


# --------------------------------------------------------------------------- the filter's neutral names

NEUTRAL_ALPHABET = b"!#$%&()*+,/:;<=>?@[]^`{|}~"
NEUTRAL_PARTITION_BASE = -1_000_000
NEUTRAL_PRODUCER_ID = 0x7FFFFFFF00000001


def neutral_name(k, length):
    """The filter's k-th neutral topic name of `length` bytes (filter/core/src/policy/guard.rs
    `neutral_name`): k in base 26 over NEUTRAL_ALPHABET, left-padded with '!'."""
    base = len(NEUTRAL_ALPHABET)
    out = bytearray(NEUTRAL_ALPHABET[:1] * length)
    i = length - 1
    while True:
        out[i] = NEUTRAL_ALPHABET[k % base]
        k //= base
        if k == 0:
            return bytes(out)
        i -= 1
        if i < 0:
            raise ValueError("too many neutral names of this length")


def neutral_partition(k):
    return NEUTRAL_PARTITION_BASE - k


LEGAL_TOPIC_CHARS = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def legal_topic_name(name):
    """Kafka's rule (org.apache.kafka.common.internals.Topic): 1..249 of [a-zA-Z0-9._-], not . or .."""
    return 0 < len(name) <= 249 and set(name) <= LEGAL_TOPIC_CHARS and name not in (b".", b"..")
