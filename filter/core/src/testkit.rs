//! Test support shared by the core's tests, the wasm host's tests and the benches (feature
//! `testkit`): real Kafka encodings from kafka-protocol, v2 record batches, an Envoy-faithful
//! host buffer and ways to feed it, and a fake broker that answers like Kafka and tells what
//! Kafka and tansu would have written.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::type_complexity
)]

use std::collections::HashMap;

use crate::codec::api;
use crate::observe::collect::{FactSink, TopicRef};
use crate::session::{Direction, HostBuffer, Observer, Session, Verdict};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

/// A config from its JSON (a test's `pluginConfig`), which must be valid.
pub fn config_json(json: &str) -> std::rc::Rc<crate::config::Config> {
    match crate::config::Config::from_json(json.as_bytes()) {
        Ok(c) => std::rc::Rc::new(c),
        Err(e) => panic!("test config: {e}"),
    }
}

/// A request header with a client id.
pub fn client_header(key: i16, v: i16, corr: i32, client: &'static str) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str(client)))
}

/// A topic name.
pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// A framed request (size prefix included), header version chosen by kafka-protocol.
pub fn encode_request<B: Encodable + HeaderVersion>(
    h: &RequestHeader,
    body: &B,
    v: i16,
) -> Vec<u8> {
    let mut buf = BytesMut::new();
    h.encode(&mut buf, B::header_version(v)).unwrap();
    body.encode(&mut buf, v).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

pub fn encode_response<B: Encodable + HeaderVersion>(corr: i32, body: &B, v: i16) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(corr)
        .encode(&mut buf, B::header_version(v))
        .unwrap();
    body.encode(&mut buf, v).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

/// Envoy's connection buffer as the filter sees it (`Buffer::copyFrom` / `copyTo` in
/// envoyproxy/envoy `source/extensions/common/wasm/context.cc`). Counts bytes copied out.
#[derive(Default)]
pub struct EnvoyBuf {
    pub data: Vec<u8>,
    pub copied: usize,
    /// Bytes written back into the host (`set_buffer_bytes`).
    pub written: usize,
}

impl HostBuffer for EnvoyBuf {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let start = start.min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        self.copied += end - start;
        Some(self.data[start..end].to_vec())
    }
    fn replace_front(&mut self, drain: usize, data: &[u8]) -> bool {
        self.written += data.len();
        let drain = drain.min(self.data.len());
        self.data.drain(..drain);
        self.data.splice(0..0, data.iter().copied());
        true
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pumped {
    pub out: Vec<u8>,
    pub closed: bool,
    pub pauses: usize,
    pub copied: usize,
}

/// Feed `chunks` into one direction as Envoy would: append, call, forward on Continue,
/// keep on Pause; finally an end-of-stream call with no new bytes if `eos`.
pub fn pump<'a>(
    s: &mut Session,
    dir: Direction,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    eos: bool,
    obs: &mut dyn Observer,
) -> Pumped {
    let mut buf = EnvoyBuf::default();
    let mut p = Pumped::default();
    let mut t = 0u64;
    for c in chunks {
        buf.data.extend_from_slice(c);
        t += 1000;
        match s.on_data(dir, &mut buf, false, t, obs) {
            Verdict::Continue => p.out.append(&mut buf.data),
            Verdict::Pause => p.pauses += 1,
            Verdict::Close => {
                p.closed = true;
                p.copied = buf.copied;
                return p;
            }
        }
    }
    if eos {
        match s.on_data(dir, &mut buf, true, t + 1, obs) {
            Verdict::Continue => p.out.append(&mut buf.data),
            Verdict::Pause => p.pauses += 1,
            Verdict::Close => p.closed = true,
        }
    }
    p.copied = buf.copied;
    p
}

/// Every way of cutting `bytes`: whole, byte by byte, fixed sizes, and each single split.
pub fn chunkings(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all: Vec<Vec<&[u8]>> = vec![
        vec![bytes],
        bytes.chunks(1).collect(),
        bytes.chunks(7).collect(),
    ];
    for at in 1..bytes.len() {
        all.push(vec![&bytes[..at], &bytes[at..]]);
    }
    all
}

/// A test observer that records every fact as one line, for exact assertions.
pub trait FactLines {
    fn lines(&mut self) -> &mut Vec<String>;
}

impl<T: FactLines> FactSink for T {
    fn produce_topic(&mut self, t: &TopicRef, batches: u64, records: u64, bytes: u64) {
        self.lines().push(format!(
            "produce {} b={batches} r={records} n={bytes}",
            t.label()
        ));
    }
    fn fetch_topic(&mut self, t: &TopicRef, records: u64, bytes: u64) {
        self.lines()
            .push(format!("fetch {} r={records} n={bytes}", t.label()));
    }
    fn error(&mut self, api: i16, t: Option<&TopicRef>, code: i16) {
        let t = t.map(TopicRef::label).unwrap_or_else(|| "-".into());
        self.lines().push(format!("error {api} {t} {code}"));
    }
    fn lag(&mut self, t: &TopicRef, p: i32, lag: i64) {
        self.lines().push(format!("lag {} {p} {lag}", t.label()));
    }
    fn group_request(&mut self, api: i16, g: &str) {
        self.lines().push(format!("group {api} {g}"));
    }
    fn topic_id(&mut self, id: [u8; 16], name: &str) {
        self.lines().push(format!(
            "topic_id {} {name}",
            crate::observe::collect::hex(&id)
        ));
    }
}

/// One callback of [`pump_traced`]: the verdict, the host buffer left behind (paused
/// bytes) and the bytes forwarded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub verdict: Verdict,
    pub buffered: usize,
    pub out: usize,
}

/// [`pump`], recording every callback, for "nothing is held hostage" assertions.
pub fn pump_traced<'a>(
    s: &mut Session,
    dir: Direction,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    obs: &mut dyn Observer,
) -> (Pumped, Vec<Step>) {
    let mut buf = EnvoyBuf::default();
    let mut p = Pumped::default();
    let mut steps = Vec::new();
    let mut t = 0u64;
    for c in chunks {
        buf.data.extend_from_slice(c);
        t += 1000;
        let v = s.on_data(dir, &mut buf, false, t, obs);
        match v {
            Verdict::Continue => p.out.append(&mut buf.data),
            Verdict::Pause => p.pauses += 1,
            Verdict::Close => p.closed = true,
        }
        steps.push(Step {
            verdict: v,
            buffered: buf.data.len(),
            out: p.out.len(),
        });
        if p.closed {
            break;
        }
    }
    p.copied = buf.copied;
    (p, steps)
}

/// `frames` back to back, cut so that every callback but the last ends `lead` bytes into
/// the next frame (a pipelining client: the buffer never ends on a frame boundary).
pub fn pipelined_cuts(frames: &[Vec<u8>], lead: usize) -> Vec<Vec<u8>> {
    let stream: Vec<u8> = frames.concat();
    let mut cuts = Vec::new();
    let mut end = 0;
    for f in frames.iter().take(frames.len().saturating_sub(1)) {
        end += f.len();
        cuts.push(end + lead);
    }
    cuts.push(stream.len());
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in cuts {
        let c = c.min(stream.len());
        chunks.push(stream[at..c].to_vec());
        at = c;
    }
    chunks
}

/// A v2 record batch (KIP-98): a real 61-byte header (CRC not computed: nothing here checks
/// it) with the producer fields of a non-idempotent producer, then `payload` bytes standing
/// in for the records.
pub fn record_batch(base_offset: i64, count: i32, payload: usize, codec: i16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(base_offset.to_be_bytes());
    let batch_len = (61 - 12 + payload) as i32;
    b.extend(batch_len.to_be_bytes());
    b.extend(0i32.to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend(0u32.to_be_bytes()); // crc
    b.extend(codec.to_be_bytes()); // attributes
    b.extend((count - 1).to_be_bytes()); // last offset delta
    b.extend(0i64.to_be_bytes()); // base timestamp
    b.extend(0i64.to_be_bytes()); // max timestamp
    b.extend((-1i64).to_be_bytes()); // producer id
    b.extend((-1i16).to_be_bytes()); // producer epoch
    b.extend((-1i32).to_be_bytes()); // base sequence
    b.extend(count.to_be_bytes());
    assert_eq!(b.len(), 61);
    b.extend(std::iter::repeat_n(0x5a, payload));
    b
}

// ---- A fake broker ----------------------------------------------------------------------

pub fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= stream.len() {
        let n = i32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        out.push(&stream[at + 4..at + 4 + n]);
        at += 4 + n;
    }
    assert_eq!(at, stream.len(), "stream ends mid-frame");
    out
}

/// A broker that answers every forwarded request: Produce/Fetch/DeleteTopics entries with no
/// error for what it was sent, ApiVersions v0 for probes, JoinGroup with generation 1.
pub fn broker(forwarded: &[u8]) -> (Vec<u8>, Vec<(i16, i16, RequestHeader, Bytes)>) {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for f in frames(forwarded) {
        let mut b = Bytes::copy_from_slice(f);
        let key = i16::from_be_bytes([f[0], f[1]]);
        let v = i16::from_be_bytes([f[2], f[3]]);
        let h = RequestHeader::decode(
            &mut b,
            api::api_info(key).unwrap().request_header_version(v),
        )
        .unwrap();
        seen.push((key, v, h.clone(), b.clone()));
        let corr = h.correlation_id;
        match key {
            0 => {
                let r = ProduceRequest::decode(&mut b, v).unwrap();
                if r.acks == 0 {
                    continue;
                }
                let resp = ProduceResponse::default().with_responses(
                    r.topic_data
                        .iter()
                        .map(|t| {
                            produce_response::TopicProduceResponse::default()
                                .with_name(t.name.clone())
                                .with_topic_id(t.topic_id)
                                .with_partition_responses(
                                    t.partition_data
                                        .iter()
                                        .map(|p| {
                                            let r = produce_response::PartitionProduceResponse::default()
                                                .with_index(p.index);
                                            match kafka_refuses(v, t, p.index) {
                                                Some(code) => r
                                                    .with_error_code(code)
                                                    .with_base_offset(-1)
                                                    .with_error_message(Some(
                                                        StrBytes::from_static_str(
                                                            "This server does not host this topic-partition.",
                                                        ),
                                                    )),
                                                None => r.with_base_offset(100),
                                            }
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            1 => {
                let r = FetchRequest::decode(&mut b, v).unwrap();
                let resp = FetchResponse::default().with_responses(
                    r.topics
                        .iter()
                        .map(|t| {
                            fetch_response::FetchableTopicResponse::default()
                                .with_topic(t.topic.clone())
                                .with_topic_id(t.topic_id)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            fetch_response::PartitionData::default()
                                                .with_partition_index(p.partition)
                                                .with_high_watermark(10)
                                                .with_records(Some(Bytes::from_static(b"")))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            18 => out.extend(encode_response(corr, &ApiVersionsResponse::default(), v)),
            20 => {
                let r = DeleteTopicsRequest::decode(&mut b, v).unwrap();
                let names: Vec<_> = if v >= 6 {
                    r.topics.iter().map(|t| t.name.clone()).collect()
                } else {
                    r.topic_names.iter().map(|n| Some(n.clone())).collect()
                };
                let resp = DeleteTopicsResponse::default().with_responses(
                    names
                        .into_iter()
                        .map(|n| {
                            delete_topics_response::DeletableTopicResult::default().with_name(n)
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            11 => out.extend(encode_response(
                corr,
                &JoinGroupResponse::default().with_generation_id(1),
                v,
            )),
            3 => {
                let r = MetadataRequest::decode(&mut b, v).unwrap();
                let names: Vec<String> = match &r.topics {
                    None => vec!["orders.eu".into(), "payments".into(), "public".into()],
                    Some(t) => t
                        .iter()
                        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                        .collect(),
                };
                // two brokers advertising internal names, as behind a mesh
                let brokers = (0..2)
                    .map(|i| {
                        metadata_response::MetadataResponseBroker::default()
                            .with_node_id(i.into())
                            .with_host(StrBytes::from_string(format!("broker-{i}.internal")))
                            .with_port(9092)
                    })
                    .collect();
                let resp = MetadataResponse::default()
                    .with_brokers(brokers)
                    .with_topics(
                        names
                            .into_iter()
                            .map(|n| {
                                metadata_response::MetadataResponseTopic::default()
                                    .with_name(Some(TopicName(StrBytes::from_string(n))))
                                    .with_partitions(vec![
                                        metadata_response::MetadataResponsePartition::default(),
                                    ])
                            })
                            .collect(),
                    );
                out.extend(encode_response(corr, &resp, v));
            }
            17 => out.extend(encode_response(corr, &SaslHandshakeResponse::default(), v)),
            19 => {
                let r = CreateTopicsRequest::decode(&mut b, v).unwrap();
                let resp = CreateTopicsResponse::default().with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            create_topics_response::CreatableTopicResult::default()
                                .with_name(t.name.clone())
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            37 => {
                let r = CreatePartitionsRequest::decode(&mut b, v).unwrap();
                let resp = CreatePartitionsResponse::default().with_results(
                    r.topics
                        .iter()
                        .map(|t| {
                            create_partitions_response::CreatePartitionsTopicResult::default()
                                .with_name(t.name.clone())
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            21 => {
                let r = DeleteRecordsRequest::decode(&mut b, v).unwrap();
                let resp = DeleteRecordsResponse::default().with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            delete_records_response::DeleteRecordsTopicResult::default()
                                .with_name(t.name.clone())
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            33 => {
                let r = AlterConfigsRequest::decode(&mut b, v).unwrap();
                let resp = AlterConfigsResponse::default().with_responses(
                    r.resources
                        .iter()
                        .map(|x| {
                            alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_resource_type(x.resource_type)
                                .with_resource_name(x.resource_name.clone())
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            44 => {
                let r = IncrementalAlterConfigsRequest::decode(&mut b, v).unwrap();
                let resp = IncrementalAlterConfigsResponse::default().with_responses(
                    r.resources
                        .iter()
                        .map(|x| {
                            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_resource_type(x.resource_type)
                                .with_resource_name(x.resource_name.clone())
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            2 => {
                let r = ListOffsetsRequest::decode(&mut b, v).unwrap();
                let resp = ListOffsetsResponse::default().with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            list_offsets_response::ListOffsetsTopicResponse::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            list_offsets_response::ListOffsetsPartitionResponse::default()
                                                .with_partition_index(p.partition_index)
                                                .with_offset(5)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            8 => {
                let r = OffsetCommitRequest::decode(&mut b, v).unwrap();
                let resp = OffsetCommitResponse::default().with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            offset_commit_response::OffsetCommitResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_commit_response::OffsetCommitResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            9 => {
                let r = OffsetFetchRequest::decode(&mut b, v).unwrap();
                let resp = OffsetFetchResponse::default().with_topics(
                    r.topics
                        .unwrap_or_default()
                        .iter()
                        .map(|t| {
                            offset_fetch_response::OffsetFetchResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|p| {
                                            offset_fetch_response::OffsetFetchResponsePartition::default()
                                                .with_partition_index(*p)
                                                .with_committed_offset(7)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                out.extend(encode_response(corr, &resp, v));
            }
            36 => {
                let r = SaslAuthenticateRequest::decode(&mut b, v).unwrap();
                let bad = r.auth_bytes.windows(5).any(|w| w == b"wrong");
                out.extend(encode_response(
                    corr,
                    &SaslAuthenticateResponse::default().with_error_code(if bad { 58 } else { 0 }),
                    v,
                ));
            }
            other => panic!("fake broker got api {other}"),
        }
    }
    (out, seen)
}

/// What Kafka answers a Produce partition the filter neutralised: a name with characters no
/// topic name has, an id no topic has, a negative partition (see `crate::policy::guard`); `None`
/// for a partition it accepts and writes.
pub fn kafka_refuses(v: i16, t: &produce_request::TopicProduceData, index: i32) -> Option<i16> {
    if v >= 13 {
        if t.topic_id.as_bytes().starts_with(b"kmf-deny") {
            return Some(100); // UNKNOWN_TOPIC_ID
        }
    } else if !t
        .name
        .0
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
        || t.name.0.is_empty()
    {
        return Some(3); // UNKNOWN_TOPIC_OR_PARTITION
    }
    (index < 0).then_some(3)
}

/// What tansu 0.6 refuses (it writes any name, index, CRC or magic): a batch whose producer
/// id it never issued and whose base sequence is not -1 (UNKNOWN_PRODUCER_ID).
pub fn tansu_refuses(p: &produce_request::PartitionProduceData) -> bool {
    let Some(r) = p.records.as_ref() else {
        return false;
    };
    if r.len() < 61 || r[16] != 2 {
        return false;
    }
    let pid = i64::from_be_bytes(r[43..51].try_into().unwrap());
    let seq = i32::from_be_bytes(r[53..57].try_into().unwrap());
    pid == 0x7fff_ffff_0000_0001 && seq != -1
}

/// (topic, partition) of every partition with records that tansu would write.
pub fn tansu_written(seen: &[(i16, i16, RequestHeader, Bytes)]) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for (key, v, _, body) in seen {
        if *key != 0 {
            continue;
        }
        let r = ProduceRequest::decode(&mut body.clone(), *v).unwrap();
        for t in &r.topic_data {
            for p in &t.partition_data {
                if !tansu_refuses(p) && p.records.as_ref().is_some_and(|r| !r.is_empty()) {
                    out.push((t.name.0.to_string(), p.index));
                }
            }
        }
    }
    out.sort();
    out
}

/// (topic name or id, partition) of every partition the fake broker wrote.
pub fn written(
    seen: &[(i16, i16, RequestHeader, Bytes)],
    names: &HashMap<[u8; 16], String>,
) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for (key, v, _, body) in seen {
        if *key != 0 {
            continue;
        }
        let r = ProduceRequest::decode(&mut body.clone(), *v).unwrap();
        for t in &r.topic_data {
            for p in &t.partition_data {
                if kafka_refuses(*v, t, p.index).is_none() {
                    let n = if *v >= 13 {
                        names
                            .get(t.topic_id.as_bytes())
                            .cloned()
                            .unwrap_or_default()
                    } else {
                        t.name.0.to_string()
                    };
                    out.push((n, p.index));
                }
            }
        }
    }
    out.sort();
    out
}

pub fn decode_resp<T: Decodable + HeaderVersion>(frame: &[u8], v: i16) -> (i32, T) {
    let mut b = Bytes::copy_from_slice(frame);
    let h = ResponseHeader::decode(&mut b, T::header_version(v)).unwrap();
    let body = T::decode(&mut b, v).unwrap();
    assert!(b.is_empty(), "bytes left after the response");
    (h.correlation_id, body)
}
