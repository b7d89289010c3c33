//! The `differential` target: the streaming walk ([`crate::codec::walk`] driving
//! [`crate::observe::collect::Collector`]) against kafka-protocol, on the messages whose
//! facts the filter reports (topics, partitions, record counts, error codes, groups,
//! topic ids, access-log topics, the fetch-offset table).
//!
//! Input format:
//!
//! ```text
//! byte 0   case: bits 0-6 index into DIFF_CASES (modulo its length); bit 7 (ENCODE_MODE):
//!          encode mode
//! byte 1   version: the case's lowest version plus this, modulo the number of versions
//! byte 2   chunk: how the session pass cuts the frame (0 = whole)
//! rest     decode mode: the message body (after the header), at most MAX_INPUT bytes;
//!          encode mode: the bytes a generator turns into a kafka-protocol message
//! ```
//!
//! Properties:
//!
//! 1. (decode mode) when the walk accepts a body whole and kafka-protocol decodes it with no
//!    bytes left, both report the same facts, in the same order; kafka-protocol decodes only
//!    after the walk has bounded every count by the bytes present (it allocates by wire
//!    counts) and after the harness has bounded the one tagged array it decodes
//!    (KIP-951 `NodeEndpoints`);
//! 2. (encode mode) every message kafka-protocol encodes is accepted by the walk, which
//!    reports exactly the facts the message holds;
//! 3. (both) a session with metrics and the access log on and nothing that rewrites relays
//!    the framed message byte-identical, in the input's chunking, and reports the same facts
//!    as the one-shot walk, whenever the walk accepts the body; and relays only a prefix of
//!    the frame otherwise.
//!
//! Facts the filter deliberately does not report are not expected: Metadata partition
//! errors (only topic errors are counted), lag (no fetch offsets are known in a one-frame
//! run), and fields the walk skips.

use std::collections::HashSet;
use std::rc::Rc;

use bytes::Bytes as Buf;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use super::{capped, pending, request_frame, response_frame, Bytes, Fact, Recorder};
use crate::codec::api;
use crate::codec::reader::{DecodeError, DecodeResult, Reader};
use crate::codec::walk::{self, Event, Schema, Step, Walker};
use crate::config::Config;
use crate::observe::collect::{AccessTopics, Collector, FetchOffsets, TopicRef, ACCESS_TOPICS_MAX};
use crate::session::{Direction, Session, Verdict};
use crate::testkit::EnvoyBuf;

/// Bit 7 of byte 0: build the message from the input with kafka-protocol instead.
pub const ENCODE_MODE: u8 = 0x80;

/// The messages compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffCase {
    ProduceRequest,
    ProduceResponse,
    FetchRequest,
    FetchResponse,
    MetadataResponse,
    ListOffsetsResponse,
    DeleteTopicsResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    FindCoordinatorResponse,
    JoinGroupRequest,
    OffsetCommitRequest,
    HeartbeatRequest,
    JoinGroupResponse,
    HeartbeatResponse,
}

pub const DIFF_CASES: &[DiffCase] = &[
    DiffCase::ProduceRequest,
    DiffCase::ProduceResponse,
    DiffCase::FetchRequest,
    DiffCase::FetchResponse,
    DiffCase::MetadataResponse,
    DiffCase::ListOffsetsResponse,
    DiffCase::DeleteTopicsResponse,
    DiffCase::OffsetCommitResponse,
    DiffCase::OffsetFetchResponse,
    DiffCase::FindCoordinatorResponse,
    DiffCase::JoinGroupRequest,
    DiffCase::OffsetCommitRequest,
    DiffCase::HeartbeatRequest,
    DiffCase::JoinGroupResponse,
    DiffCase::HeartbeatResponse,
];

/// The fetch-offset table's cap in the one-shot walk (the config default).
const OFFSETS_CAP: usize = 2000;

impl DiffCase {
    pub fn api(self) -> i16 {
        match self {
            DiffCase::ProduceRequest | DiffCase::ProduceResponse => 0,
            DiffCase::FetchRequest | DiffCase::FetchResponse => 1,
            DiffCase::ListOffsetsResponse => 2,
            DiffCase::MetadataResponse => 3,
            DiffCase::OffsetCommitResponse | DiffCase::OffsetCommitRequest => 8,
            DiffCase::OffsetFetchResponse => 9,
            DiffCase::FindCoordinatorResponse => 10,
            DiffCase::JoinGroupRequest | DiffCase::JoinGroupResponse => 11,
            DiffCase::HeartbeatRequest | DiffCase::HeartbeatResponse => 12,
            DiffCase::DeleteTopicsResponse => 20,
        }
    }

    pub fn request(self) -> bool {
        matches!(
            self,
            DiffCase::ProduceRequest
                | DiffCase::FetchRequest
                | DiffCase::JoinGroupRequest
                | DiffCase::OffsetCommitRequest
                | DiffCase::HeartbeatRequest
        )
    }

    /// kafka-protocol's versions of the message.
    fn kp_versions(self) -> (i16, i16) {
        let r = match self {
            DiffCase::ProduceRequest => ProduceRequest::VERSIONS,
            DiffCase::ProduceResponse => ProduceResponse::VERSIONS,
            DiffCase::FetchRequest => FetchRequest::VERSIONS,
            DiffCase::FetchResponse => FetchResponse::VERSIONS,
            DiffCase::MetadataResponse => MetadataResponse::VERSIONS,
            DiffCase::ListOffsetsResponse => ListOffsetsResponse::VERSIONS,
            DiffCase::DeleteTopicsResponse => DeleteTopicsResponse::VERSIONS,
            DiffCase::OffsetCommitResponse => OffsetCommitResponse::VERSIONS,
            DiffCase::OffsetFetchResponse => OffsetFetchResponse::VERSIONS,
            DiffCase::FindCoordinatorResponse => FindCoordinatorResponse::VERSIONS,
            DiffCase::JoinGroupRequest => JoinGroupRequest::VERSIONS,
            DiffCase::OffsetCommitRequest => OffsetCommitRequest::VERSIONS,
            DiffCase::HeartbeatRequest => HeartbeatRequest::VERSIONS,
            DiffCase::JoinGroupResponse => JoinGroupResponse::VERSIONS,
            DiffCase::HeartbeatResponse => HeartbeatResponse::VERSIONS,
        };
        (r.min, r.max)
    }

    /// The schema the session walks this message with (`body_len` picks tansu's bare
    /// OffsetFetch form, as the session does).
    fn schema(self, v: i16, body_len: usize) -> Option<&'static Schema> {
        if self.request() {
            walk::request_schema(self.api(), v)
        } else {
            walk::response_schema_sized(self.api(), v, body_len)
        }
    }

    /// A schema of the whole message, when the filter has one: a walk of it that ends
    /// without error bounds every count kafka-protocol will allocate by.
    fn full_schema(self, v: i16, body_len: usize) -> Option<&'static Schema> {
        match self {
            DiffCase::FetchRequest => Some(&walk::S_FETCH_REQ_FULL),
            DiffCase::ProduceResponse => Some(&walk::S_PRODUCE_RESP_FULL),
            DiffCase::FetchResponse => Some(&walk::S_FETCH_RESP_FULL),
            DiffCase::MetadataResponse => Some(&walk::S_METADATA_RESP_FULL),
            DiffCase::FindCoordinatorResponse => Some(&walk::S_FIND_COORDINATOR_RESP_FULL),
            DiffCase::ProduceRequest
            | DiffCase::ListOffsetsResponse
            | DiffCase::DeleteTopicsResponse
            | DiffCase::OffsetCommitResponse => self.schema(v, body_len),
            DiffCase::OffsetFetchResponse => {
                (!walk::offset_fetch_bare(v, body_len)).then_some(&walk::S_OFFSET_FETCH_RESP_FULL)
            }
            // Group messages are walked only to their first fields.
            DiffCase::JoinGroupRequest
            | DiffCase::OffsetCommitRequest
            | DiffCase::HeartbeatRequest
            | DiffCase::JoinGroupResponse
            | DiffCase::HeartbeatResponse => None,
        }
    }

    /// The versions compared: those the filter advertises, walks, and kafka-protocol knows.
    pub fn versions(self) -> (i16, i16) {
        let max = api::api_info(self.api()).map_or(0, |a| a.max_version);
        let (kmin, kmax) = self.kp_versions();
        let lo = (0..=max)
            .find(|v| *v >= kmin && self.schema(*v, 64).is_some())
            .unwrap_or(kmin);
        (lo, max.min(kmax))
    }
}

/// The differential target's input (see the module documentation).
pub fn differential_input(
    case: DiffCase,
    version: i16,
    chunk: u8,
    encode: bool,
    body: &[u8],
) -> Vec<u8> {
    let idx = DIFF_CASES.iter().position(|c| *c == case).unwrap_or(0);
    let (lo, _) = case.versions();
    let vb = u8::try_from(version.saturating_sub(lo).max(0)).unwrap_or(0);
    let mut out = vec![
        u8::try_from(idx).unwrap_or(0) | if encode { ENCODE_MODE } else { 0 },
        vb,
        chunk,
    ];
    out.extend_from_slice(body);
    out
}

/// The `differential` target.
pub fn differential(data: &[u8]) {
    let data = capped(data);
    let mut b = Bytes::new(data);
    let c0 = b.u8();
    let Some(case) = DIFF_CASES
        .get(usize::from(c0 & !ENCODE_MODE) % DIFF_CASES.len())
        .copied()
    else {
        return;
    };
    let (lo, hi) = case.versions();
    let span = usize::try_from(hi - lo + 1).unwrap_or(1);
    let v = lo + i16::try_from(usize::from(b.u8()) % span).unwrap_or(0);
    let chunk = usize::from(b.u8());
    if c0 & ENCODE_MODE != 0 {
        encode_mode(case, v, chunk, &mut b);
    } else {
        decode_mode(case, v, chunk, b.rest());
    }
}

fn decode_mode(case: DiffCase, v: i16, chunk: usize, body: &[u8]) {
    let walked = walk_body(case, v, body);
    session_pass(case, v, body, chunk, walked.as_ref().ok());
    let Ok(w) = walked else { return };
    let flexible = api::api_info(case.api()).is_some_and(|a| a.is_flexible(v));
    let Some(full) = case.full_schema(v, body.len()) else {
        return;
    };
    if walk::walk_all(full, v, flexible, body, &mut |_| {}).is_err() {
        return;
    }
    if pending::kp_tags_unsafe(case.api(), case.request(), v, body) {
        return; // kafka-protocol could decode it out of step (see pending::kp_tags_unsafe)
    }
    let Some(want) = expect_decoded(case, v, body) else {
        return; // kafka-protocol rejects what the walk accepts (it checks UTF-8, nulls, tags)
    };
    compare(case, v, &w, &want, "property 1");
}

fn encode_mode(case: DiffCase, v: i16, chunk: usize, g: &mut Bytes<'_>) {
    let Some((body, want)) = generate(case, v, g) else {
        return; // kafka-protocol cannot encode this combination at this version
    };
    let w = walk_body(case, v, &body);
    assert!(
        w.is_ok(),
        "property 2: the walk rejects kafka-protocol's encoding of {case:?} v{v}: {:?}",
        w.as_ref().err()
    );
    let Ok(w) = w else { return };
    if let Some(full) = case.full_schema(v, body.len()) {
        let flexible = api::api_info(case.api()).is_some_and(|a| a.is_flexible(v));
        let all = walk::walk_all(full, v, flexible, &body, &mut |_| {});
        assert!(
            all.is_ok(),
            "property 2: the whole-message walk rejects kafka-protocol's encoding of {case:?} v{v}: {all:?}"
        );
    }
    compare(case, v, &w, &want, "property 2");
    session_pass(case, v, &body, chunk, Some(&w));
}

// ---- The one-shot walk ------------------------------------------------------------------

#[derive(Debug)]
struct Walked {
    facts: Vec<Fact>,
    access: Option<AccessTopics>,
    offsets: usize,
}

fn walk_body(case: DiffCase, v: i16, body: &[u8]) -> DecodeResult<Walked> {
    let schema = case.schema(v, body.len()).ok_or(DecodeError::Invalid {
        field: "case",
        reason: "no schema",
    })?;
    let flexible = api::api_info(case.api()).is_some_and(|a| a.is_flexible(v));
    let mut w = Walker::new(schema, v, flexible, false);
    let mut r = Reader::new(body);
    let mut collector = Collector::new(case.api(), case.request(), case.request());
    let mut offsets = FetchOffsets::default();
    let mut rec = Recorder::default();
    loop {
        let step = w.step(&mut r, &mut |ev: Event<'_>| {
            collector.on(ev, &mut offsets, OFFSETS_CAP, &mut rec)
        })?;
        match step {
            Step::Advanced => {}
            Step::Skip(n) => {
                let n = usize::try_from(n).map_err(|_| DecodeError::Invalid {
                    field: "field",
                    reason: "length does not fit",
                })?;
                r.skip(n, "field")?;
            }
            Step::Done => break,
        }
    }
    Ok(Walked {
        facts: rec.facts,
        access: collector.access.take(),
        offsets: offsets.len(),
    })
}

// ---- What a message holds, from kafka-protocol -------------------------------------------

#[derive(Debug, Default)]
struct Expect {
    facts: Vec<Fact>,
    /// Requests: the access-log topics.
    access: Option<AccessTopics>,
    /// Fetch requests: distinct (topic, partition) fetch offsets.
    offsets: Option<usize>,
}

fn compare(case: DiffCase, v: i16, w: &Walked, want: &Expect, what: &str) {
    let mut facts = want.facts.clone();
    if !pending::FIND_COORDINATOR_V4_ERRORS_FIXED
        && case == DiffCase::FindCoordinatorResponse
        && v >= 4
    {
        facts.clear(); // see pending::FIND_COORDINATOR_V4_ERRORS_FIXED
    }
    assert_eq!(
        w.facts, facts,
        "{what}: the walk and kafka-protocol disagree on the facts of {case:?} v{v}"
    );
    if let Some(a) = &want.access {
        assert_eq!(
            w.access.as_ref(),
            Some(a),
            "{what}: access-log topics of {case:?} v{v}"
        );
    }
    if let Some(n) = want.offsets {
        assert_eq!(w.offsets, n, "{what}: fetch offsets of {case:?} v{v}");
    }
}

fn name(n: &TopicName) -> TopicRef {
    TopicRef::Name(n.0.to_string())
}

fn id(u: &uuid::Uuid) -> TopicRef {
    TopicRef::Id(*u.as_bytes())
}

/// By name up to `names_until`, by id after.
fn named(v: i16, names_until: i16, n: &TopicName, u: &uuid::Uuid) -> TopicRef {
    if v <= names_until {
        name(n)
    } else {
        id(u)
    }
}

fn err(out: &mut Vec<Fact>, api: i16, topic: Option<&TopicRef>, code: i16) {
    if code != 0 {
        out.push(Fact::Error {
            api,
            topic: topic.cloned(),
            code,
        });
    }
}

fn access(topics: impl Iterator<Item = TopicRef>) -> AccessTopics {
    let mut a = AccessTopics::default();
    for t in topics {
        if a.topics.len() < ACCESS_TOPICS_MAX {
            a.topics.push(t);
        } else {
            a.more = a.more.saturating_add(1);
        }
    }
    a
}

/// Batches, complete-batch records and bytes of a records field, read the way KIP-98 lays a
/// v2 batch out; `None` for what is no batch sequence (a negative batch length).
fn batches(records: Option<&Buf>) -> Option<(u64, u64, u64)> {
    let Some(all) = records else {
        return Some((0, 0, 0));
    };
    let (mut n, mut recs) = (0u64, 0u64);
    let mut left: &[u8] = all;
    while !left.is_empty() {
        n += 1;
        if left.len() < 17 {
            break; // too short to be a batch: a partial trailing batch
        }
        let len = i32::from_be_bytes(left.get(8..12)?.try_into().ok()?);
        let total = usize::try_from(len).ok()?.saturating_add(12);
        let complete = total <= left.len();
        let bytes = total.min(left.len());
        let magic = left.get(16).copied();
        if magic == Some(2) && complete && bytes >= 61 {
            let c = i32::from_be_bytes(left.get(57..61)?.try_into().ok()?);
            recs += u64::try_from(c).unwrap_or(0);
        }
        left = left.get(bytes..).unwrap_or(&[]);
    }
    Some((n, recs, all.len() as u64))
}

fn decode<T: Decodable>(v: i16, body: &[u8]) -> Option<T> {
    let mut b = Buf::copy_from_slice(body);
    let m = T::decode(&mut b, v).ok()?;
    b.is_empty().then_some(m)
}

fn expect_decoded(case: DiffCase, v: i16, body: &[u8]) -> Option<Expect> {
    match case {
        DiffCase::ProduceRequest => expect_produce_request(&decode(v, body)?, v),
        DiffCase::ProduceResponse => Some(expect_produce_response(&decode(v, body)?, v)),
        DiffCase::FetchRequest => Some(expect_fetch_request(&decode(v, body)?, v)),
        DiffCase::FetchResponse => expect_fetch_response(&decode(v, body)?, v),
        DiffCase::MetadataResponse => Some(expect_metadata(&decode(v, body)?, v)),
        DiffCase::ListOffsetsResponse => Some(expect_list_offsets(&decode(v, body)?)),
        DiffCase::DeleteTopicsResponse => Some(expect_delete_topics(&decode(v, body)?, v)),
        DiffCase::OffsetCommitResponse => Some(expect_offset_commit(&decode(v, body)?, v)),
        DiffCase::OffsetFetchResponse => Some(expect_offset_fetch(&decode(v, body)?, v)),
        DiffCase::FindCoordinatorResponse => Some(expect_find_coordinator(&decode(v, body)?, v)),
        DiffCase::JoinGroupRequest => {
            let m: JoinGroupRequest = decode(v, body)?;
            Some(group(11, &m.group_id))
        }
        DiffCase::OffsetCommitRequest => {
            let m: OffsetCommitRequest = decode(v, body)?;
            Some(group(8, &m.group_id))
        }
        DiffCase::HeartbeatRequest => {
            let m: HeartbeatRequest = decode(v, body)?;
            Some(group(12, &m.group_id))
        }
        DiffCase::JoinGroupResponse => {
            let m: JoinGroupResponse = decode(v, body)?;
            Some(top_error(11, m.error_code))
        }
        DiffCase::HeartbeatResponse => {
            let m: HeartbeatResponse = decode(v, body)?;
            Some(top_error(12, m.error_code))
        }
    }
}

fn group(api: i16, g: &GroupId) -> Expect {
    Expect {
        facts: vec![Fact::Group {
            api,
            group: g.0.to_string(),
        }],
        ..Expect::default()
    }
}

fn top_error(api: i16, code: i16) -> Expect {
    let mut facts = Vec::new();
    err(&mut facts, api, None, code);
    Expect {
        facts,
        ..Expect::default()
    }
}

fn expect_produce_request(m: &ProduceRequest, v: i16) -> Option<Expect> {
    let mut facts = Vec::new();
    for t in &m.topic_data {
        let topic = named(v, 12, &t.name, &t.topic_id);
        let (mut b, mut r, mut n) = (0, 0, 0);
        for p in &t.partition_data {
            let (pb, pr, pn) = batches(p.records.as_ref())?;
            b += pb;
            r += pr;
            n += pn;
        }
        facts.push(Fact::Produce {
            topic,
            batches: b,
            records: r,
            bytes: n,
        });
    }
    Some(Expect {
        facts,
        access: Some(access(
            m.topic_data
                .iter()
                .map(|t| named(v, 12, &t.name, &t.topic_id)),
        )),
        offsets: None,
    })
}

fn expect_produce_response(m: &ProduceResponse, v: i16) -> Expect {
    let mut facts = Vec::new();
    for t in &m.responses {
        let topic = named(v, 12, &t.name, &t.topic_id);
        for p in &t.partition_responses {
            err(&mut facts, 0, Some(&topic), p.error_code);
        }
    }
    Expect {
        facts,
        ..Expect::default()
    }
}

fn expect_fetch_request(m: &FetchRequest, v: i16) -> Expect {
    let mut keys = HashSet::new();
    for t in &m.topics {
        for p in &t.partitions {
            if keys.len() < OFFSETS_CAP {
                keys.insert((named(v, 12, &t.topic, &t.topic_id), p.partition));
            }
        }
    }
    Expect {
        facts: Vec::new(),
        access: Some(access(
            m.topics.iter().map(|t| named(v, 12, &t.topic, &t.topic_id)),
        )),
        offsets: Some(keys.len()),
    }
}

fn expect_fetch_response(m: &FetchResponse, v: i16) -> Option<Expect> {
    let mut facts = Vec::new();
    if v >= 7 {
        err(&mut facts, 1, None, m.error_code);
    }
    for t in &m.responses {
        let topic = named(v, 12, &t.topic, &t.topic_id);
        let (mut r, mut n) = (0, 0);
        for p in &t.partitions {
            err(&mut facts, 1, Some(&topic), p.error_code);
            let (_, pr, pn) = batches(p.records.as_ref())?;
            r += pr;
            n += pn;
        }
        facts.push(Fact::Fetch {
            topic,
            records: r,
            bytes: n,
        });
    }
    Some(Expect {
        facts,
        ..Expect::default()
    })
}

fn expect_metadata(m: &MetadataResponse, v: i16) -> Expect {
    let mut facts = Vec::new();
    for t in &m.topics {
        let topic = match (&t.name, v >= 10) {
            (Some(n), _) => Some(name(n)),
            (None, true) => Some(id(&t.topic_id)),
            (None, false) => None,
        };
        err(&mut facts, 3, topic.as_ref(), t.error_code);
        if let (Some(n), true) = (&t.name, v >= 10) {
            if !t.topic_id.is_nil() {
                facts.push(Fact::TopicId {
                    id: *t.topic_id.as_bytes(),
                    name: n.0.to_string(),
                });
            }
        }
    }
    if v >= 13 {
        err(&mut facts, 3, None, m.error_code);
    }
    Expect {
        facts,
        ..Expect::default()
    }
}

fn expect_list_offsets(m: &ListOffsetsResponse) -> Expect {
    let mut facts = Vec::new();
    for t in &m.topics {
        let topic = name(&t.name);
        for p in &t.partitions {
            err(&mut facts, 2, Some(&topic), p.error_code);
        }
    }
    Expect {
        facts,
        ..Expect::default()
    }
}

fn expect_delete_topics(m: &DeleteTopicsResponse, v: i16) -> Expect {
    let mut facts = Vec::new();
    for t in &m.responses {
        let topic = match (&t.name, v >= 6) {
            (Some(n), _) => Some(name(n)),
            (None, true) => Some(id(&t.topic_id)),
            (None, false) => None,
        };
        err(&mut facts, 20, topic.as_ref(), t.error_code);
    }
    Expect {
        facts,
        ..Expect::default()
    }
}

fn expect_offset_commit(m: &OffsetCommitResponse, v: i16) -> Expect {
    let mut facts = Vec::new();
    for t in &m.topics {
        let topic = named(v, 9, &t.name, &t.topic_id);
        for p in &t.partitions {
            err(&mut facts, 8, Some(&topic), p.error_code);
        }
    }
    Expect {
        facts,
        ..Expect::default()
    }
}

fn expect_offset_fetch(m: &OffsetFetchResponse, v: i16) -> Expect {
    let mut facts = Vec::new();
    if v <= 7 {
        for t in &m.topics {
            let topic = name(&t.name);
            for p in &t.partitions {
                err(&mut facts, 9, Some(&topic), p.error_code);
            }
        }
        if v >= 2 {
            err(&mut facts, 9, None, m.error_code);
        }
    } else {
        for g in &m.groups {
            for t in &g.topics {
                let topic = named(v, 9, &t.name, &t.topic_id);
                for p in &t.partitions {
                    err(&mut facts, 9, Some(&topic), p.error_code);
                }
            }
            err(&mut facts, 9, None, g.error_code);
        }
    }
    Expect {
        facts,
        ..Expect::default()
    }
}

fn expect_find_coordinator(m: &FindCoordinatorResponse, v: i16) -> Expect {
    let mut facts = Vec::new();
    if v <= 3 {
        err(&mut facts, 10, None, m.error_code);
    } else {
        for c in &m.coordinators {
            err(&mut facts, 10, None, c.error_code);
        }
    }
    Expect {
        facts,
        ..Expect::default()
    }
}

// ---- Messages from the input, for encode mode -------------------------------------------

const NAMES: &[&str] = &[
    "orders",
    "orders.eu",
    "payments",
    "secret-1",
    "public",
    "",
    "ünïcödé",
    "a.b_c-d",
];

fn gen_str(g: &mut Bytes<'_>) -> String {
    if g.u8() & 3 == 0 {
        let n = g.below(40);
        return String::from_utf8_lossy(g.take(n)).into_owned();
    }
    NAMES
        .get(g.below(NAMES.len()))
        .copied()
        .unwrap_or("")
        .to_string()
}

fn gen_name(g: &mut Bytes<'_>) -> TopicName {
    TopicName(StrBytes::from_string(gen_str(g)))
}

fn gen_uuid(g: &mut Bytes<'_>) -> uuid::Uuid {
    match g.below(4) {
        0 => uuid::Uuid::nil(),
        1 => uuid::Uuid::from_bytes([g.u8(); 16]),
        _ => {
            let mut b = [0u8; 16];
            for x in &mut b {
                *x = g.u8();
            }
            uuid::Uuid::from_bytes(b)
        }
    }
}

fn gen_err(g: &mut Bytes<'_>) -> i16 {
    match g.below(6) {
        0..=2 => 0,
        3 => i16::from(g.u8() % 120),
        4 => -1,
        _ => i16::from_be_bytes([g.u8(), g.u8()]),
    }
}

/// An element count: usually 0 to 3, sometimes past the access log's topic limit.
fn gen_count(g: &mut Bytes<'_>) -> usize {
    if g.below(8) == 0 {
        ACCESS_TOPICS_MAX + 1 + g.below(4)
    } else {
        g.below(4)
    }
}

/// A records field: null, empty, or v2 batches (some compressed, some legacy magic), the
/// last one possibly cut short, or a short trailing fragment.
fn gen_records(g: &mut Bytes<'_>) -> Option<Buf> {
    match g.below(5) {
        0 => return None,
        1 => return Some(Buf::new()),
        _ => {}
    }
    let mut out = Vec::new();
    for i in 0..1 + g.below(3) {
        let count = i32::from(g.u8() % 9) - 1;
        let payload = g.below(48);
        let mut b = crate::testkit::record_batch(
            i64::try_from(i).unwrap_or(0),
            count.max(1),
            payload,
            i16::from(g.u8() % 5),
        );
        if g.below(6) == 0 {
            if let Some(m) = b.get_mut(16) {
                *m = g.u8() % 3; // legacy magic 0/1, or 2
            }
        }
        if g.below(8) == 0 {
            if let Some(c) = b.get_mut(57..61) {
                c.copy_from_slice(&count.to_be_bytes()); // a count of -1 or 0
            }
        }
        out.extend_from_slice(&b);
    }
    match g.below(4) {
        0 => {
            let cut = g.below(out.len());
            out.truncate(out.len() - cut);
        }
        1 => {
            let n = g.below(17);
            out.extend_from_slice(g.take(n));
        }
        _ => {}
    }
    Some(Buf::from(out))
}

/// The body encode mode builds from `pattern` (for seeds: the same message as a
/// decode-mode input).
pub(crate) fn generate_body(case: DiffCase, v: i16, pattern: &[u8]) -> Option<Vec<u8>> {
    generate(case, v, &mut Bytes::new(pattern)).map(|(b, _)| b)
}

fn enc<T: Encodable>(m: &T, v: i16) -> Option<Vec<u8>> {
    crate::codec::kp::encode(m, v).ok()
}

fn generate(case: DiffCase, v: i16, g: &mut Bytes<'_>) -> Option<(Vec<u8>, Expect)> {
    match case {
        DiffCase::ProduceRequest => {
            let topics = (0..gen_count(g))
                .map(|_| {
                    produce_request::TopicProduceData::default()
                        .with_name(gen_name(g))
                        .with_topic_id(gen_uuid(g))
                        .with_partition_data(
                            (0..g.below(4))
                                .map(|i| {
                                    produce_request::PartitionProduceData::default()
                                        .with_index(i32::try_from(i).unwrap_or(0))
                                        .with_records(gen_records(g))
                                })
                                .collect(),
                        )
                })
                .collect();
            let tx = g.bool().then(|| StrBytes::from_string(gen_str(g)).into());
            let m = ProduceRequest::default()
                .with_transactional_id(tx)
                .with_acks(match g.below(3) {
                    0 => -1,
                    1 => 0,
                    _ => 1,
                })
                .with_timeout_ms(30_000)
                .with_topic_data(topics);
            Some((enc(&m, v)?, expect_produce_request(&m, v)?))
        }
        DiffCase::ProduceResponse => {
            let topics = (0..gen_count(g))
                .map(|_| {
                    produce_response::TopicProduceResponse::default()
                        .with_name(gen_name(g))
                        .with_topic_id(gen_uuid(g))
                        .with_partition_responses(
                            (0..g.below(4))
                                .map(|i| {
                                    let p = produce_response::PartitionProduceResponse::default()
                                        .with_index(i32::try_from(i).unwrap_or(0))
                                        .with_error_code(gen_err(g));
                                    if v >= 10 && g.below(3) == 0 {
                                        // the partition's known tagged field (v10+)
                                        p.with_current_leader(
                                            produce_response::LeaderIdAndEpoch::default()
                                                .with_leader_id(2.into())
                                                .with_leader_epoch(5),
                                        )
                                    } else {
                                        p
                                    }
                                })
                                .collect(),
                        )
                })
                .collect();
            let mut m = ProduceResponse::default().with_responses(topics);
            if v >= 10 && g.bool() {
                m = m.with_node_endpoints(node_endpoints(g));
            }
            Some((enc(&m, v)?, expect_produce_response(&m, v)))
        }
        DiffCase::FetchRequest => {
            let topics = (0..gen_count(g))
                .map(|_| {
                    fetch_request::FetchTopic::default()
                        .with_topic(gen_name(g))
                        .with_topic_id(gen_uuid(g))
                        .with_partitions(
                            (0..g.below(4))
                                .map(|_| {
                                    fetch_request::FetchPartition::default()
                                        .with_partition(i32::from(g.u8() % 4))
                                        .with_fetch_offset(i64::from(g.u16()))
                                })
                                .collect(),
                        )
                })
                .collect();
            let mut m = FetchRequest::default().with_topics(topics);
            if v >= 12 && g.bool() {
                m = m.with_cluster_id(Some(StrBytes::from_string(gen_str(g))));
            }
            if v >= 15 && g.bool() {
                m = m.with_replica_state(
                    fetch_request::ReplicaState::default()
                        .with_replica_id(1.into())
                        .with_replica_epoch(7),
                );
            }
            Some((enc(&m, v)?, expect_fetch_request(&m, v)))
        }
        DiffCase::FetchResponse => {
            let topics = (0..gen_count(g))
                .map(|_| {
                    fetch_response::FetchableTopicResponse::default()
                        .with_topic(gen_name(g))
                        .with_topic_id(gen_uuid(g))
                        .with_partitions(
                            (0..g.below(4))
                                .map(|i| {
                                    let p = fetch_response::PartitionData::default()
                                        .with_partition_index(i32::try_from(i).unwrap_or(0))
                                        .with_error_code(gen_err(g))
                                        .with_high_watermark(i64::from(g.u16()))
                                        .with_records(gen_records(g));
                                    // the partition's known tagged fields (v12+)
                                    match g.below(if v >= 12 { 6 } else { 1 }) {
                                        1 => p.with_diverging_epoch(
                                            fetch_response::EpochEndOffset::default()
                                                .with_epoch(3)
                                                .with_end_offset(i64::from(g.u16())),
                                        ),
                                        2 => p.with_current_leader(
                                            fetch_response::LeaderIdAndEpoch::default()
                                                .with_leader_id(1.into())
                                                .with_leader_epoch(4),
                                        ),
                                        3 => p.with_snapshot_id(
                                            fetch_response::SnapshotId::default()
                                                .with_end_offset(9)
                                                .with_epoch(2),
                                        ),
                                        _ => p,
                                    }
                                })
                                .collect(),
                        )
                })
                .collect();
            let mut m = FetchResponse::default()
                .with_error_code(gen_err(g))
                .with_responses(topics);
            if v >= 16 && g.bool() {
                let n = node_endpoints(g)
                    .into_iter()
                    .map(|e| {
                        fetch_response::NodeEndpoint::default()
                            .with_node_id(e.node_id)
                            .with_host(e.host)
                            .with_port(e.port)
                    })
                    .collect();
                m = m.with_node_endpoints(n);
            }
            if v < 7 {
                m = m.with_error_code(0);
            }
            Some((enc(&m, v)?, expect_fetch_response(&m, v)?))
        }
        DiffCase::MetadataResponse => {
            let topics = (0..gen_count(g))
                .map(|_| {
                    let n = if v >= 12 && g.below(4) == 0 {
                        None
                    } else {
                        Some(gen_name(g))
                    };
                    metadata_response::MetadataResponseTopic::default()
                        .with_error_code(gen_err(g))
                        .with_name(n)
                        .with_topic_id(if v >= 10 {
                            gen_uuid(g)
                        } else {
                            uuid::Uuid::nil()
                        })
                        .with_partitions(
                            (0..g.below(3))
                                .map(|i| {
                                    metadata_response::MetadataResponsePartition::default()
                                        .with_partition_index(i32::try_from(i).unwrap_or(0))
                                        .with_error_code(gen_err(g))
                                })
                                .collect(),
                        )
                })
                .collect();
            let brokers = (0..g.below(3))
                .map(|i| {
                    metadata_response::MetadataResponseBroker::default()
                        .with_node_id(i32::try_from(i).unwrap_or(0).into())
                        .with_host(StrBytes::from_string(gen_str(g)))
                        .with_port(9092)
                })
                .collect();
            let mut m = MetadataResponse::default()
                .with_brokers(brokers)
                .with_topics(topics);
            if v >= 13 {
                m = m.with_error_code(gen_err(g));
            }
            Some((enc(&m, v)?, expect_metadata(&m, v)))
        }
        DiffCase::ListOffsetsResponse => {
            let topics = (0..gen_count(g))
                .map(|_| {
                    list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(gen_name(g))
                        .with_partitions(
                            (0..g.below(4))
                                .map(|i| {
                                    list_offsets_response::ListOffsetsPartitionResponse::default()
                                        .with_partition_index(i32::try_from(i).unwrap_or(0))
                                        .with_error_code(gen_err(g))
                                })
                                .collect(),
                        )
                })
                .collect();
            let m = ListOffsetsResponse::default().with_topics(topics);
            Some((enc(&m, v)?, expect_list_offsets(&m)))
        }
        DiffCase::DeleteTopicsResponse => {
            let items = (0..gen_count(g))
                .map(|_| {
                    let n = if v >= 6 && g.below(4) == 0 {
                        None
                    } else {
                        Some(gen_name(g))
                    };
                    delete_topics_response::DeletableTopicResult::default()
                        .with_name(n)
                        .with_topic_id(if v >= 6 {
                            gen_uuid(g)
                        } else {
                            uuid::Uuid::nil()
                        })
                        .with_error_code(gen_err(g))
                })
                .collect();
            let m = DeleteTopicsResponse::default().with_responses(items);
            Some((enc(&m, v)?, expect_delete_topics(&m, v)))
        }
        DiffCase::OffsetCommitResponse => {
            let topics = (0..gen_count(g))
                .map(|_| {
                    offset_commit_response::OffsetCommitResponseTopic::default()
                        .with_name(gen_name(g))
                        .with_topic_id(gen_uuid(g))
                        .with_partitions(
                            (0..g.below(4))
                                .map(|i| {
                                    offset_commit_response::OffsetCommitResponsePartition::default()
                                        .with_partition_index(i32::try_from(i).unwrap_or(0))
                                        .with_error_code(gen_err(g))
                                })
                                .collect(),
                        )
                })
                .collect();
            let m = OffsetCommitResponse::default().with_topics(topics);
            Some((enc(&m, v)?, expect_offset_commit(&m, v)))
        }
        DiffCase::OffsetFetchResponse => {
            let mut m = OffsetFetchResponse::default();
            if v <= 7 {
                let topics = (0..gen_count(g))
                    .map(|_| {
                        offset_fetch_response::OffsetFetchResponseTopic::default()
                            .with_name(gen_name(g))
                            .with_partitions(
                                (0..g.below(4))
                                    .map(|i| {
                                        offset_fetch_response::OffsetFetchResponsePartition::default()
                                            .with_partition_index(i32::try_from(i).unwrap_or(0))
                                            .with_error_code(gen_err(g))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                m = m.with_topics(topics);
                if v >= 2 {
                    m = m.with_error_code(gen_err(g));
                }
            } else {
                let groups = (0..g.below(3))
                    .map(|_| {
                        offset_fetch_response::OffsetFetchResponseGroup::default()
                            .with_group_id(StrBytes::from_string(gen_str(g)).into())
                            .with_error_code(gen_err(g))
                            .with_topics(
                                (0..gen_count(g))
                                    .map(|_| {
                                        offset_fetch_response::OffsetFetchResponseTopics::default()
                                            .with_name(gen_name(g))
                                            .with_topic_id(gen_uuid(g))
                                            .with_partitions(
                                                (0..g.below(3))
                                                    .map(|i| {
                                                        offset_fetch_response::OffsetFetchResponsePartitions::default()
                                                            .with_partition_index(i32::try_from(i).unwrap_or(0))
                                                            .with_error_code(gen_err(g))
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                m = m.with_groups(groups);
            }
            let body = enc(&m, v)?;
            if walk::offset_fetch_bare(v, body.len()) {
                return None; // indistinguishable from tansu's bare form by design
            }
            Some((body, expect_offset_fetch(&m, v)))
        }
        DiffCase::FindCoordinatorResponse => {
            let mut m = FindCoordinatorResponse::default();
            if v <= 3 {
                m = m
                    .with_error_code(gen_err(g))
                    .with_node_id(i32::from(g.u8() % 4).into())
                    .with_host(StrBytes::from_string(gen_str(g)))
                    .with_port(9092);
            } else {
                let cs = (0..gen_count(g))
                    .map(|i| {
                        find_coordinator_response::Coordinator::default()
                            .with_key(StrBytes::from_string(gen_str(g)))
                            .with_node_id(i32::try_from(i).unwrap_or(0).into())
                            .with_host(StrBytes::from_string(gen_str(g)))
                            .with_port(9092)
                            .with_error_code(gen_err(g))
                    })
                    .collect();
                m = m.with_coordinators(cs);
            }
            Some((enc(&m, v)?, expect_find_coordinator(&m, v)))
        }
        DiffCase::JoinGroupRequest => {
            let gid: GroupId = StrBytes::from_string(gen_str(g)).into();
            let m = JoinGroupRequest::default()
                .with_group_id(gid.clone())
                .with_member_id(StrBytes::from_string(gen_str(g)))
                .with_protocol_type(StrBytes::from_static_str("consumer"));
            Some((enc(&m, v)?, group(11, &gid)))
        }
        DiffCase::OffsetCommitRequest => {
            let gid: GroupId = StrBytes::from_string(gen_str(g)).into();
            let m = OffsetCommitRequest::default().with_group_id(gid.clone());
            Some((enc(&m, v)?, group(8, &gid)))
        }
        DiffCase::HeartbeatRequest => {
            let gid: GroupId = StrBytes::from_string(gen_str(g)).into();
            let m = HeartbeatRequest::default()
                .with_group_id(gid.clone())
                .with_generation_id(i32::from(g.u8()));
            Some((enc(&m, v)?, group(12, &gid)))
        }
        DiffCase::JoinGroupResponse => {
            let m = JoinGroupResponse::default()
                .with_error_code(gen_err(g))
                .with_generation_id(i32::from(g.u8()));
            Some((enc(&m, v)?, top_error(11, m.error_code)))
        }
        DiffCase::HeartbeatResponse => {
            let m = HeartbeatResponse::default().with_error_code(gen_err(g));
            Some((enc(&m, v)?, top_error(12, m.error_code)))
        }
    }
}

fn node_endpoints(g: &mut Bytes<'_>) -> Vec<produce_response::NodeEndpoint> {
    (0..g.below(3))
        .map(|i| {
            produce_response::NodeEndpoint::default()
                .with_node_id(i32::try_from(i).unwrap_or(0).into())
                .with_host(StrBytes::from_string(gen_str(g)))
                .with_port(9092)
        })
        .collect()
}

// ---- Through a session ------------------------------------------------------------------

/// Metrics (all families) and the access log on; nothing that edits bytes.
const OBSERVER: &str = r#"{"clampApiVersions": false, "accessLog": {"enabled": true}}"#;

/// A request of the response's API and version, for the session to match the response to.
pub(crate) fn request_body(api_key: i16, v: i16) -> Option<Vec<u8>> {
    match api_key {
        0 => enc(&ProduceRequest::default().with_acks(-1), v),
        1 => enc(&FetchRequest::default(), v),
        2 => enc(&ListOffsetsRequest::default(), v),
        3 => enc(&MetadataRequest::default().with_topics(Some(Vec::new())), v),
        // kafka-protocol 0.18 encodes OffsetCommit requests up to v9; the session reads only
        // the group id of one, laid out alike in v9 and v10.
        8 => enc(&OffsetCommitRequest::default(), v.min(9)),
        // (and OffsetFetch up to v9; the session does not read the body of one)
        9 => enc(&OffsetFetchRequest::default(), v.min(9)),
        10 => enc(&FindCoordinatorRequest::default(), v),
        11 => enc(&JoinGroupRequest::default(), v),
        12 => enc(&HeartbeatRequest::default(), v),
        20 => enc(&DeleteTopicsRequest::default(), v),
        _ => None,
    }
}

fn pieces(frame: &[u8], chunk: usize) -> Vec<&[u8]> {
    if chunk == 0 {
        vec![frame]
    } else {
        frame.chunks(chunk).collect()
    }
}

/// Feed `chunks` to one direction; the bytes forwarded and whether it closed.
fn feed(s: &mut Session, dir: Direction, chunks: &[&[u8]], obs: &mut Recorder) -> (Vec<u8>, bool) {
    let mut buf = EnvoyBuf::default();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        buf.data.extend_from_slice(c);
        let now = (u64::try_from(i).unwrap_or(0) + 1) * 1000;
        match s.on_data(dir, &mut buf, false, now, obs) {
            Verdict::Continue => out.append(&mut buf.data),
            Verdict::Pause => {}
            Verdict::Close => return (out, true),
        }
    }
    (out, false)
}

fn session_pass(case: DiffCase, v: i16, body: &[u8], chunk: usize, walked: Option<&Walked>) {
    let Ok(cfg) = Config::from_json(OBSERVER.as_bytes()) else {
        return;
    };
    let mut s = Session::new(Rc::new(cfg));
    let mut obs = Recorder::default();
    let api_key = case.api();
    let corr = 7;
    let (frame, dir) = if case.request() {
        (
            request_frame(api_key, v, corr, "fuzz-client", body),
            Direction::Request,
        )
    } else {
        let Some(req) = request_body(api_key, v) else {
            return;
        };
        let rf = request_frame(api_key, v, corr, "fuzz-client", &req);
        let (out, closed) = feed(&mut s, Direction::Request, &[&rf], &mut obs);
        if closed || out != rf || s.inflight() != 1 {
            return; // kafka-protocol's default request is not one the session queues
        }
        obs = Recorder {
            names: std::mem::take(&mut obs.names),
            ..Recorder::default()
        };
        (response_frame(api_key, v, corr, body), Direction::Response)
    };
    let (out, closed) = feed(&mut s, dir, &pieces(&frame, chunk), &mut obs);
    assert!(
        frame.starts_with(&out),
        "property 3: the session changed the bytes of {case:?} v{v}"
    );
    let Some(w) = walked else { return };
    assert!(
        !closed && obs.malformed.is_empty(),
        "property 3: the session refuses {case:?} v{v} the walk accepts: {:?}",
        obs.malformed
    );
    assert!(
        out.len() == frame.len(),
        "property 3: the session holds back {} bytes of {case:?} v{v}",
        frame.len() - out.len()
    );
    assert_eq!(
        obs.facts, w.facts,
        "property 3: the session's facts of {case:?} v{v} differ from the one-shot walk"
    );
}
