//! Session tests in the style of Envoy's contrib/kafka codec tests: every input whole, byte
//! by byte and split at every boundary, with garbage after the frames, asserting exactly what
//! passed and what was seen.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::type_complexity
)]

use std::rc::Rc;

use bytes::BytesMut;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::{
    ApiVersionsRequest, FetchRequest, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::codec::api;
use crate::codec::apiversions::Clamp;
use crate::codec::header::RequestHeader as Hdr;
use crate::config::{Config, MalformedAction};
use crate::session::*;
use crate::testkit::*;

#[derive(Default, Debug)]
struct Rec {
    requests: Vec<(i16, i16, i32, Option<Vec<u8>>, u64)>,
    responses: Vec<(i16, i16, u64)>,
    unknown: usize,
    acks0: usize,
    clamped: Vec<Vec<Clamp>>,
    skipped: usize,
    malformed: Vec<(Direction, String)>,
    facts: Vec<String>,
    access: Vec<AccessLog>,
}

impl FactLines for Rec {
    fn lines(&mut self) -> &mut Vec<String> {
        &mut self.facts
    }
}

impl Observer for Rec {
    fn access_log(&mut self, e: &AccessLog) {
        self.access.push(e.clone());
    }
    fn request(&mut self, h: &Hdr<'_>, bytes: u64) {
        self.requests.push((
            h.api_key,
            h.api_version,
            h.correlation_id,
            h.client_id.map(<[u8]>::to_vec),
            bytes,
        ));
    }
    fn response(&mut self, k: i16, v: i16, bytes: u64, _lat: u64) {
        self.responses.push((k, v, bytes));
    }
    fn unknown_api(&mut self, _k: i16, _v: i16) {
        self.unknown += 1;
    }
    fn produce_acks0(&mut self) {
        self.acks0 += 1;
    }
    fn api_versions_clamped(&mut self, c: &[Clamp]) {
        self.clamped.push(c.to_vec());
    }
    fn rewrite_skipped(&mut self, _k: i16, _b: u64) {
        self.skipped += 1;
    }
    fn malformed(&mut self, d: Direction, m: &Malformed, _a: MalformedAction) {
        self.malformed.push((d, m.kind().to_string()));
    }
}

fn cfg() -> Rc<Config> {
    Rc::new(Config::default())
}

fn cfg_with(f: impl FnOnce(&mut Config)) -> Rc<Config> {
    let mut c = Config::default();
    f(&mut c);
    Rc::new(c)
}

fn hdr(key: i16, v: i16, corr: i32) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("test-client")))
}

/// A pipelined request stream: ApiVersions v3, Metadata v12, Produce v9 acks=1, Produce v7
/// acks=0, Fetch v12 and an unknown API key.
fn request_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(encode_request(
        &hdr(18, 3, 1),
        &ApiVersionsRequest::default(),
        3,
    ));
    s.extend(encode_request(
        &hdr(3, 12, 2),
        &MetadataRequest::default(),
        12,
    ));
    s.extend(encode_request(
        &hdr(0, 9, 3),
        &ProduceRequest::default().with_acks(1),
        9,
    ));
    s.extend(encode_request(
        &hdr(0, 7, 4),
        &ProduceRequest::default().with_acks(0),
        7,
    ));
    s.extend(encode_request(&hdr(1, 12, 5), &FetchRequest::default(), 12));
    // unknown API key 500 v0, header v1 layout, 3 body bytes
    let body = [0x01, 0xf4, 0, 0, 0, 0, 0, 6, 0xff, 0xff, 9, 9, 9];
    s.extend((body.len() as i32).to_be_bytes());
    s.extend(body);
    s
}

#[test]
fn requests_pass_unchanged_under_every_chunking() {
    let stream = request_stream();
    for chunks in chunkings(&stream) {
        let mut s = Session::new(cfg());
        let mut rec = Rec::default();
        let p = pump(
            &mut s,
            Direction::Request,
            chunks.iter().copied(),
            false,
            &mut rec,
        );
        assert_eq!(p.out, stream);
        assert!(!p.closed);
        let corrs: Vec<i32> = rec.requests.iter().map(|r| r.2).collect();
        assert_eq!(corrs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(rec.requests[0].3.as_deref(), Some(&b"test-client"[..]));
        assert_eq!(rec.acks0, 1);
        assert_eq!(rec.unknown, 1);
        // acks=0 is not queued: 5 of 6 requests await a response
        assert_eq!(s.inflight(), 5);
        assert!(rec.malformed.is_empty());
    }
}

#[test]
fn paused_buffer_is_never_rescanned() {
    let stream = request_stream();
    let mut s = Session::new(cfg());
    let p = pump(
        &mut s,
        Direction::Request,
        stream.chunks(1),
        false,
        &mut NoopObserver,
    );
    assert_eq!(p.out, stream);
    // Byte by byte, each byte is copied out at most once.
    assert!(
        p.copied <= stream.len(),
        "copied {} of {}",
        p.copied,
        stream.len()
    );
}

fn api_versions_response_frame(corr: i32, v: i16) -> Vec<u8> {
    let resp = ApiVersionsResponse::default().with_api_keys(vec![
        ApiVersion::default()
            .with_api_key(0)
            .with_min_version(0)
            .with_max_version(99),
        ApiVersion::default()
            .with_api_key(1)
            .with_min_version(0)
            .with_max_version(12),
        ApiVersion::default()
            .with_api_key(3)
            .with_min_version(0)
            .with_max_version(77),
    ]);
    encode_response(corr, &resp, v)
}

fn response_stream() -> (Vec<u8>, Vec<u8>) {
    // responses to request_stream(): ApiVersions(1), Metadata(2), Produce(3), Fetch(5), unknown(6)
    let av = api_versions_response_frame(1, 3);
    let mut clamped_av = av.clone();
    // expected: produce max 99 -> 13 and metadata max 77 -> 13; locate via kafka-protocol
    {
        let mut b = bytes::Bytes::copy_from_slice(&av[8..]);
        let mut r = ApiVersionsResponse::decode(&mut b, 3).unwrap();
        r.api_keys[0].max_version = api::api_info(0).unwrap().max_version;
        r.api_keys[2].max_version = api::api_info(3).unwrap().max_version;
        clamped_av = {
            let expect = encode_response(1, &r, 3);
            assert_eq!(expect.len(), clamped_av.len());
            expect
        };
    }
    let mut rest = Vec::new();
    rest.extend(encode_response(2, &MetadataResponse::default(), 12));
    rest.extend(encode_response(3, &ProduceResponse::default(), 9));
    let mut fetch = encode_response(5, &kafka_protocol::messages::FetchResponse::default(), 12);
    // a "record-heavy" fetch response: pad its size with 10 KiB the filter must not copy
    let pad = vec![0xabu8; 10 * 1024];
    let size = i32::from_be_bytes(fetch[..4].try_into().unwrap()) + pad.len() as i32;
    fetch[..4].copy_from_slice(&size.to_be_bytes());
    fetch.extend(&pad);
    rest.extend(fetch);
    rest.extend([0, 0, 0, 6, 0, 0, 0, 6, 1, 2]);
    let mut input = av;
    input.extend(&rest);
    let mut expect = clamped_av;
    expect.extend(rest);
    (input, expect)
}

#[test]
fn responses_match_requests_and_apiversions_is_clamped_under_every_chunking() {
    let reqs = request_stream();
    let (input, expect) = response_stream();
    let mut all = chunkings(&input);
    all.truncate(3 + 600); // whole, 1, 7 and the first 600 split points (the head region)
    all.extend((input.len() - 64..input.len()).map(|at| vec![&input[..at], &input[at..]]));
    for chunks in all {
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).take(3).collect();
        let mut s = Session::new(cfg());
        let mut rec = Rec::default();
        pump(&mut s, Direction::Request, [&reqs[..]], false, &mut rec);
        let p = pump(
            &mut s,
            Direction::Response,
            chunks.iter().copied(),
            false,
            &mut rec,
        );
        assert!(rec.malformed.is_empty(), "{:?}", rec.malformed);
        assert_eq!(p.out.len(), expect.len());
        assert!(p.out == expect, "bytes differ");
        let keys: Vec<i16> = rec.responses.iter().map(|r| r.0).collect();
        assert_eq!(keys, vec![18, 3, 0, 1, 500]);
        assert_eq!(rec.clamped.len(), 1);
        assert_eq!(s.inflight(), 0);
        // the 10 KiB of fetch padding is streamed through, never copied into the filter
        // (the walk's read window may copy up to 128 bytes past the fields it needs) -
        // except when a callback ends inside the last frame's size prefix: those bytes are
        // kept back until the size is known sane, and cutting them off a buffer over
        // PAUSE_MAX copies what is in front of them (bounded by the callback).
        let in_last_size =
            sizes.len() == 2 && sizes[0] > input.len() - 10 && sizes[0] < input.len() - 6;
        let budget = if in_last_size {
            2 * input.len()
        } else {
            input.len() - 10 * 1024 + 128
        };
        assert!(p.copied <= budget, "copied {} {sizes:?}", p.copied);
    }
}

#[test]
fn clamp_works_when_apiversions_is_not_first_in_the_buffer() {
    // Metadata response then ApiVersions response in one read: the prefix is written back.
    let mut s = Session::new(cfg());
    let mut reqs = encode_request(&hdr(3, 12, 10), &MetadataRequest::default(), 12);
    reqs.extend(encode_request(
        &hdr(18, 0, 11),
        &ApiVersionsRequest::default(),
        0,
    ));
    pump(
        &mut s,
        Direction::Request,
        [&reqs[..]],
        false,
        &mut NoopObserver,
    );
    let md = encode_response(10, &MetadataResponse::default(), 12);
    let av = api_versions_response_frame(11, 0);
    let mut input = md.clone();
    input.extend(&av);
    let mut rec = Rec::default();
    let p = pump(&mut s, Direction::Response, [&input[..]], false, &mut rec);
    assert_eq!(&p.out[..md.len()], &md[..]);
    let mut b = bytes::Bytes::copy_from_slice(&p.out[md.len() + 8..]);
    let r = ApiVersionsResponse::decode(&mut b, 0).unwrap();
    assert_eq!(r.api_keys[0].max_version, 13);
    assert_eq!(r.api_keys[1].max_version, 12);
    assert_eq!(rec.clamped.len(), 1);
}

#[test]
fn oversized_apiversions_is_passed_and_counted() {
    let mut s = Session::new(cfg_with(|c| c.max_buffered_frame_bytes = 1024));
    let reqs = encode_request(&hdr(18, 3, 1), &ApiVersionsRequest::default(), 3);
    pump(
        &mut s,
        Direction::Request,
        [&reqs[..]],
        false,
        &mut NoopObserver,
    );
    let many: Vec<ApiVersion> = (0..300)
        .map(|k| ApiVersion::default().with_api_key(k).with_max_version(99))
        .collect();
    let frame = encode_response(1, &ApiVersionsResponse::default().with_api_keys(many), 3);
    let mut rec = Rec::default();
    let p = pump(&mut s, Direction::Response, [&frame[..]], false, &mut rec);
    assert_eq!(p.out, frame);
    assert_eq!(rec.skipped, 1);
    assert!(rec.clamped.is_empty());
}

#[test]
fn a_50_mib_frame_streams_through_without_being_copied() {
    let mut s = Session::new(cfg());
    let mut frame = encode_request(&hdr(0, 9, 1), &ProduceRequest::default().with_acks(-1), 9);
    let extra = 50 * 1024 * 1024;
    let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) + extra as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    frame.resize(frame.len() + extra, 0x5a);
    frame.extend(encode_request(
        &hdr(3, 12, 2),
        &MetadataRequest::default(),
        12,
    ));
    let mut rec = Rec::default();
    let p = pump(
        &mut s,
        Direction::Request,
        frame.chunks(64 * 1024),
        false,
        &mut rec,
    );
    assert_eq!(p.out.len(), frame.len());
    assert!(p.out == frame);
    assert_eq!(rec.requests.len(), 2);
    assert!(p.copied < 1024, "copied {} bytes", p.copied);
    assert_eq!(p.pauses, 0);
}

#[test]
fn frame_size_limits() {
    for (size, ok) in [
        (-1i32, false),
        (i32::MIN, false),
        (104_857_601, false),
        (104_857_600, true),
    ] {
        let mut s = Session::new(cfg());
        let mut rec = Rec::default();
        let mut input = size.to_be_bytes().to_vec();
        input.extend(&hdr_bytes());
        let p = pump(&mut s, Direction::Request, [&input[..]], false, &mut rec);
        assert_eq!(p.closed, !ok, "size {size}");
        if !ok {
            assert_eq!(
                rec.malformed,
                vec![(Direction::Request, "frame_size".to_string())]
            );
            assert!(
                p.out.is_empty(),
                "nothing of a malformed frame is forwarded on close"
            );
        }
    }
}

fn hdr_bytes() -> Vec<u8> {
    // Metadata v0 header + empty body
    vec![0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0, 0, 0, 0]
}

#[test]
fn garbage_after_a_frame_is_caught_and_the_frame_before_it_passes() {
    let good = encode_request(&hdr(3, 12, 1), &MetadataRequest::default(), 12);
    let mut input = good.clone();
    input.extend([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
    for chunks in chunkings(&input) {
        // passthrough: everything arrives untouched, parsing stops
        let mut s = Session::new(cfg_with(|c| c.on_malformed = MalformedAction::Passthrough));
        let mut rec = Rec::default();
        let p = pump(
            &mut s,
            Direction::Request,
            chunks.iter().copied(),
            true,
            &mut rec,
        );
        assert_eq!(p.out, input);
        assert_eq!(rec.requests.len(), 1);
        assert_eq!(rec.malformed.len(), 1);
        assert!(s.bypassed());
        // close: the good frame may have been forwarded already, the garbage size never is
        let mut s = Session::new(cfg());
        let p = pump(
            &mut s,
            Direction::Request,
            chunks.iter().copied(),
            true,
            &mut Rec::default(),
        );
        assert!(p.closed);
        assert!(p.out.len() <= good.len() && good.starts_with(&p.out));
    }
}

#[test]
fn truncated_header_inside_a_complete_frame_is_malformed() {
    // size 7 then seven bytes: api_key, version, and 3 of the correlation id's 4 bytes
    let input = [0, 0, 0, 7, 0, 3, 0, 12, 0, 0, 0];
    let mut s = Session::new(cfg());
    let mut rec = Rec::default();
    let p = pump(&mut s, Direction::Request, [&input[..]], false, &mut rec);
    assert!(p.closed);
    assert_eq!(rec.malformed[0].1, "decode");
}

#[test]
fn correlation_mismatch_and_unexpected_response() {
    let mut s = Session::new(cfg());
    let req = encode_request(&hdr(3, 12, 7), &MetadataRequest::default(), 12);
    pump(
        &mut s,
        Direction::Request,
        [&req[..]],
        false,
        &mut NoopObserver,
    );
    let resp = encode_response(8, &MetadataResponse::default(), 12);
    let mut rec = Rec::default();
    let p = pump(&mut s, Direction::Response, [&resp[..]], false, &mut rec);
    assert!(p.closed);
    assert_eq!(rec.malformed[0].1, "correlation_mismatch");

    let mut s = Session::new(cfg_with(|c| c.on_malformed = MalformedAction::Passthrough));
    let mut rec = Rec::default();
    let p = pump(&mut s, Direction::Response, [&resp[..]], false, &mut rec);
    assert_eq!(p.out, resp);
    assert_eq!(rec.malformed[0].1, "unexpected_response");
}

#[test]
fn inflight_queue_is_capped() {
    let mut s = Session::new(cfg_with(|c| c.max_inflight_requests = 3));
    let mut input = Vec::new();
    for corr in 0..4 {
        input.extend(encode_request(
            &hdr(3, 12, corr),
            &MetadataRequest::default(),
            12,
        ));
    }
    let mut rec = Rec::default();
    let p = pump(&mut s, Direction::Request, [&input[..]], false, &mut rec);
    assert!(p.closed);
    assert_eq!(rec.malformed[0].1, "inflight_overflow");
}

#[test]
fn long_client_id_grows_the_head_window() {
    let long = "c".repeat(5000);
    let h = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(9)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_string(long.clone())));
    let frame = encode_request(&h, &ProduceRequest::default().with_acks(0), 9);
    for chunks in [vec![&frame[..]], frame.chunks(100).collect()] {
        let mut s = Session::new(cfg());
        let mut rec = Rec::default();
        let p = pump(&mut s, Direction::Request, chunks, false, &mut rec);
        assert_eq!(p.out, frame);
        assert_eq!(rec.requests[0].3.as_deref(), Some(long.as_bytes()));
        assert_eq!(rec.acks0, 1);
    }
}

#[test]
fn end_of_stream_flushes_a_partial_head() {
    let frame = encode_request(&hdr(3, 12, 1), &MetadataRequest::default(), 12);
    let part = &frame[..6];
    let mut s = Session::new(cfg());
    let p = pump(&mut s, Direction::Request, [part], true, &mut NoopObserver);
    assert_eq!(p.out, part);
}

#[test]
fn requests_with_every_known_version_parse() {
    // Every (api, version) kafka-protocol can encode a default request for: the session must
    // find the header and queue it, with nothing malformed.
    use kafka_protocol::messages::ApiKey;
    let mut input = Vec::new();
    let mut expected = 0;
    for a in api::APIS {
        let Ok(k) = ApiKey::try_from(a.key) else {
            continue;
        };
        let r = k.valid_versions();
        for v in r.min..=r.max {
            let h = hdr(a.key, v, expected);
            let mut buf = BytesMut::new();
            if kafka_protocol::protocol::Encodable::encode(
                &h,
                &mut buf,
                k.request_header_version(v),
            )
            .is_err()
            {
                continue;
            }
            // body: a few opaque bytes; the session must not need to understand them
            // (Produce needs a real body for acks)
            if a.key == 0 {
                kafka_protocol::protocol::Encodable::encode(
                    &ProduceRequest::default().with_acks(1),
                    &mut buf,
                    v,
                )
                .unwrap();
            } else {
                buf.extend_from_slice(&[0, 0, 0, 0]);
            }
            input.extend((buf.len() as i32).to_be_bytes());
            input.extend(&buf);
            expected += 1;
        }
    }
    // Headers only: with bodies walked, these opaque bodies would be malformed.
    let mut s = Session::new(cfg_with(|c| {
        c.max_inflight_requests = 100_000;
        c.metrics.families = vec![crate::config::Family::Api];
    }));
    let mut rec = Rec::default();
    let p = pump(&mut s, Direction::Request, input.chunks(3), false, &mut rec);
    assert!(rec.malformed.is_empty(), "{:?}", rec.malformed);
    assert_eq!(rec.requests.len(), expected as usize);
    assert_eq!(rec.unknown, 0);
    assert_eq!(p.out, input);
}

#[test]
fn a_broker_that_answers_acks0_is_tolerated_without_queueing() {
    // Produce acks=0 (corr 1), Metadata (corr 2); the broker answers both in order.
    let mut s = Session::new(cfg());
    let mut reqs = encode_request(&hdr(0, 9, 1), &ProduceRequest::default().with_acks(0), 9);
    reqs.extend(encode_request(
        &hdr(3, 12, 2),
        &MetadataRequest::default(),
        12,
    ));
    pump(
        &mut s,
        Direction::Request,
        [&reqs[..]],
        false,
        &mut NoopObserver,
    );
    assert_eq!(s.inflight(), 1, "acks=0 is not queued");
    let mut resps = encode_response(1, &ProduceResponse::default(), 9);
    resps.extend(encode_response(2, &MetadataResponse::default(), 12));
    for chunks in chunkings(&resps) {
        let mut s2 = Session::new(cfg());
        pump(
            &mut s2,
            Direction::Request,
            [&reqs[..]],
            false,
            &mut NoopObserver,
        );
        let mut rec = Rec::default();
        let p = pump(
            &mut s2,
            Direction::Response,
            chunks.iter().copied(),
            false,
            &mut rec,
        );
        assert!(rec.malformed.is_empty(), "{:?}", rec.malformed);
        assert_eq!(p.out, resps);
        assert_eq!(rec.responses.len(), 1);
        assert_eq!(s2.inflight(), 0);
    }
    // a response id that was never an acks=0 request is still a mismatch
    let mut rec = Rec::default();
    pump(
        &mut s,
        Direction::Response,
        [&encode_response(9, &ProduceResponse::default(), 9)[..]],
        false,
        &mut rec,
    );
    assert_eq!(rec.malformed[0].1, "correlation_mismatch");
}

#[test]
fn acks0_memory_is_bounded() {
    let mut s = Session::new(cfg());
    let mut reqs = Vec::new();
    for corr in 0..1000 {
        reqs.extend(encode_request(
            &hdr(0, 9, corr),
            &ProduceRequest::default().with_acks(0),
            9,
        ));
    }
    pump(
        &mut s,
        Direction::Request,
        [&reqs[..]],
        false,
        &mut NoopObserver,
    );
    assert_eq!(s.inflight(), 0);
    // only the last 64 are remembered: an answer to the first is a mismatch
    let mut rec = Rec::default();
    pump(
        &mut s,
        Direction::Response,
        [&encode_response(0, &ProduceResponse::default(), 9)[..]],
        false,
        &mut rec,
    );
    assert_eq!(rec.malformed[0].1, "unexpected_response");
}

#[test]
fn frame_sizes_below_a_correlation_id_are_malformed_not_a_hang() {
    for size in 0i32..4 {
        for dir in [Direction::Request, Direction::Response] {
            let mut frame = size.to_be_bytes().to_vec();
            frame.extend(vec![0u8; size as usize]);
            let mut s = Session::new(cfg());
            let mut rec = Rec::default();
            let p = pump(&mut s, dir, [&frame[..]], false, &mut rec);
            assert!(p.closed, "size {size} {dir:?}");
            assert_eq!(rec.malformed, vec![(dir, "frame_size".to_string())]);
        }
    }
}
