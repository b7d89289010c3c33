//! `make bench`: the cost of walking Produce frames in the session (per-topic metrics on) and
//! of header-only parsing (families off), per frame and per partition. The ratio that matters:
//! record bytes are never copied, so a 1 MiB batch costs about what a 1 KiB one does, apart
//! from the extra data callbacks a large frame arrives in.
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Instant;

use kafka_mesh_core::config::{Config, Family};
use kafka_mesh_core::session::{Direction, HostBuffer, NoopObserver, Session, Verdict};

/// A host buffer over borrowed bytes: like Envoy's, reading a range is the only copy, so the
/// harness itself copies nothing.
struct Buf<'a> {
    data: &'a [u8],
}

impl HostBuffer for Buf<'_> {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let end = start.saturating_add(len).min(self.data.len());
        self.data.get(start.min(end)..end).map(<[u8]>::to_vec)
    }
    fn replace_front(&mut self, _drain: usize, _data: &[u8]) -> bool {
        false // Produce requests are never rewritten
    }
}

fn uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A real Produce v9 frame (flexible, acks=0 so it is never queued): `partitions` partitions
/// of topic "bench", each holding one v2 record batch of `batch_bytes` bytes (61-byte header +
/// opaque record bytes the filter must never copy).
fn produce_frame(partitions: u32, batch_bytes: usize) -> Vec<u8> {
    let mut f = vec![0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 5];
    f.extend_from_slice(b"bench");
    f.push(0); // header tagged fields
    f.push(0); // transactional_id: null
    f.extend_from_slice(&0i16.to_be_bytes()); // acks
    f.extend_from_slice(&30_000i32.to_be_bytes());
    uvarint(&mut f, 2); // one topic
    uvarint(&mut f, 6);
    f.extend_from_slice(b"bench");
    uvarint(&mut f, partitions + 1);
    for p in 0..partitions {
        f.extend_from_slice(&(p as i32).to_be_bytes());
        uvarint(&mut f, batch_bytes as u32 + 1);
        let start = f.len();
        f.extend_from_slice(&0i64.to_be_bytes());
        f.extend_from_slice(&((batch_bytes - 12) as i32).to_be_bytes());
        f.extend_from_slice(&0i32.to_be_bytes());
        f.push(2);
        f.resize(start + 57, 0);
        f.extend_from_slice(&10i32.to_be_bytes());
        f.resize(start + batch_bytes, 0x42);
        f.push(0); // partition tagged fields
    }
    f.push(0); // topic tagged fields
    f.push(0); // request tagged fields
    let size = (f.len() - 4) as i32;
    f[..4].copy_from_slice(&size.to_be_bytes());
    f
}

/// Feed one frame the way Envoy does for a large request: the first read (up to 4 KiB), then
/// the rest in 64 KiB callbacks whose bytes the filter never reads.
fn feed(s: &mut Session, frame: &[u8]) {
    let mut buf = Buf {
        data: &frame[..frame.len().min(4096)],
    };
    let v = s.on_data(Direction::Request, &mut buf, false, 0, &mut NoopObserver);
    assert_eq!(v, Verdict::Continue);
    let mut at = frame.len().min(4096);
    while at < frame.len() {
        let n = (frame.len() - at).min(64 * 1024);
        let mut rest = Buf {
            data: &frame[at..at + n],
        };
        let v = s.on_data(Direction::Request, &mut rest, false, 0, &mut NoopObserver);
        assert_eq!(v, Verdict::Continue);
        at += n;
    }
}

fn cfg(walk: bool) -> Rc<Config> {
    let mut c = Config {
        max_inflight_requests: 1_000_000,
        ..Config::default()
    };
    if !walk {
        c.metrics.families = vec![Family::Api];
    }
    Rc::new(c)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("produce_request");
    for (name, walk) in [("walked", true), ("header_only", false)] {
        for batch in [1024usize, 64 * 1024, 1024 * 1024] {
            let frame = produce_frame(1, batch);
            g.throughput(Throughput::Bytes(frame.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, batch), &frame, |b, frame| {
                let mut s = Session::new(cfg(walk));
                b.iter(|| feed(&mut s, frame));
            });
        }
    }
    for parts in [1u32, 16, 256] {
        let frame = produce_frame(parts, 200);
        g.bench_with_input(BenchmarkId::new("partitions", parts), &frame, |b, frame| {
            let mut s = Session::new(cfg(true));
            b.iter(|| feed(&mut s, frame));
        });
    }
    g.finish();
    ratios();
}

/// Ratios measured in this one run (same machine, same moment): the whole point of the walk
/// is that a frame's cost does not grow with its record bytes.
fn ratios() {
    let time = |frame: &[u8], walk: bool| {
        let mut s = Session::new(cfg(walk));
        let iters = 20_000u32;
        let t = Instant::now();
        for _ in 0..iters {
            feed(&mut s, frame);
        }
        t.elapsed().as_nanos() as f64 / f64::from(iters)
    };
    let small = produce_frame(1, 1024);
    let big = produce_frame(1, 1024 * 1024);
    let (ws, wb) = (time(&small, true), time(&big, true));
    let (hs, hb) = (time(&small, false), time(&big, false));
    println!(
        "ratio walked 1 MiB / 1 KiB batch: {:.2} ({wb:.0} ns / {ws:.0} ns; 17 callbacks vs 1)",
        wb / ws
    );
    println!(
        "ratio walked / header-only, 1 KiB batch: {:.2} ({ws:.0} ns / {hs:.0} ns)",
        ws / hs
    );
    println!(
        "ratio walked / header-only, 1 MiB batch: {:.2} ({wb:.0} ns / {hb:.0} ns)",
        wb / hb
    );
    let p256 = time(&produce_frame(256, 200), true);
    let p1 = time(&produce_frame(1, 200), true);
    println!(
        "per extra partition: {:.1} ns ({p256:.0} ns for 256, {p1:.0} ns for 1)",
        (p256 - p1) / 255.0
    );
}

/// An owned host buffer for frames the session may hold and rewrite.
struct VecBuf {
    data: Vec<u8>,
}

impl HostBuffer for VecBuf {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let end = start.saturating_add(len).min(self.data.len());
        self.data.get(start.min(end)..end).map(<[u8]>::to_vec)
    }
    fn replace_front(&mut self, drain: usize, data: &[u8]) -> bool {
        self.data.drain(..drain.min(self.data.len()));
        self.data.splice(0..0, data.iter().copied());
        true
    }
}

fn frame_of(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut f = ((header.len() + body.len()) as i32).to_be_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(body);
    f
}

/// A Fetch request and its response (`records` bytes of record data) at `version`; v16+
/// carries three NodeEndpoints.
fn fetch_pair(version: i16, records: usize) -> (Vec<u8>, Vec<u8>) {
    use kafka_protocol::messages::{fetch_response, FetchRequest, FetchResponse};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut req_hdr = Vec::new();
    req_hdr.extend_from_slice(&1i16.to_be_bytes());
    req_hdr.extend_from_slice(&version.to_be_bytes());
    req_hdr.extend_from_slice(&7i32.to_be_bytes());
    req_hdr.extend_from_slice(&(-1i16).to_be_bytes());
    req_hdr.push(0);
    let mut body = bytes::BytesMut::new();
    FetchRequest::default().encode(&mut body, version).unwrap();
    let req = frame_of(&req_hdr, &body);
    let mut resp = FetchResponse::default().with_responses(vec![
        fetch_response::FetchableTopicResponse::default()
            .with_topic_id(uuid_of(1))
            .with_partitions(vec![fetch_response::PartitionData::default()
                .with_records(Some(bytes::Bytes::from(vec![0u8; records])))]),
    ]);
    if version >= 16 {
        resp = resp.with_node_endpoints(
            (0..3)
                .map(|i| {
                    fetch_response::NodeEndpoint::default()
                        .with_node_id(i.into())
                        .with_host(StrBytes::from_string(format!("broker-{i}.internal")))
                        .with_port(9092)
                })
                .collect(),
        );
    }
    let mut body = bytes::BytesMut::new();
    resp.encode(&mut body, version).unwrap();
    let mut resp_hdr = 7i32.to_be_bytes().to_vec();
    resp_hdr.push(0);
    (req, frame_of(&resp_hdr, &body))
}

fn uuid_of(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

/// One Fetch round trip through a fresh session: request, then the whole response in one
/// callback (streamed in both modes; in rewrite mode the NodeEndpoints tag is renamed in
/// place, one byte near the end of the frame). Returns the bytes the client gets.
fn fetch_roundtrip(cfg: &Rc<Config>, req: &[u8], resp: &[u8]) -> Vec<u8> {
    let mut s = Session::new(cfg.clone());
    let mut b = VecBuf { data: req.to_vec() };
    s.on_data(Direction::Request, &mut b, false, 0, &mut NoopObserver);
    let mut r = VecBuf {
        data: resp.to_vec(),
    };
    let v = s.on_data(Direction::Response, &mut r, false, 0, &mut NoopObserver);
    assert_eq!(v, Verdict::Continue);
    r.data
}

fn rewrite_cost(c: &mut Criterion) {
    let rewrite = Rc::new(
        Config::from_json(
            br#"{"rewrite": {"nodeTemplate": "gw:{19092+nodeId}", "nodeEndpoints": "rewrite"}}"#,
        )
        .unwrap(),
    );
    let cap = Rc::new(
        Config::from_json(br#"{"rewrite": {"nodeTemplate": "gw:{19092+nodeId}"}}"#).unwrap(),
    );
    let mut g = c.benchmark_group("fetch_node_endpoints");
    for records in [16 * 1024usize, 256 * 1024] {
        let (req16, resp16) = fetch_pair(16, records);
        let (req15, resp15) = fetch_pair(15, records);
        let out = fetch_roundtrip(&rewrite, &req16, &resp16);
        assert_eq!(out.len(), resp16.len());
        assert_eq!(
            out.iter().zip(&resp16).filter(|(a, b)| a != b).count(),
            1,
            "only the NodeEndpoints tag changes"
        );
        g.throughput(Throughput::Bytes(resp16.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("rewrite_v16", records),
            &records,
            |b, _| {
                b.iter(|| fetch_roundtrip(&rewrite, &req16, &resp16));
            },
        );
        g.bench_with_input(
            BenchmarkId::new("cap_versions_v15", records),
            &records,
            |b, _| {
                b.iter(|| fetch_roundtrip(&cap, &req15, &resp15));
            },
        );
        let t = |cfg: &Rc<Config>, req: &[u8], resp: &[u8]| {
            let iters = 2000u32;
            let start = Instant::now();
            for _ in 0..iters {
                fetch_roundtrip(cfg, req, resp);
            }
            start.elapsed().as_nanos() as f64 / f64::from(iters)
        };
        let (a, b) = (t(&rewrite, &req16, &resp16), t(&cap, &req15, &resp15));
        println!(
            "ratio nodeEndpoints rewrite (v16, streamed, tag hidden in place) / capVersions (v15, streamed), {records} record bytes: {:.2} ({a:.0} ns / {b:.0} ns; both include the harness copying the frame once)",
            a / b
        );
    }
    g.finish();
}

criterion_group!(benches, bench, rewrite_cost);
criterion_main!(benches);
