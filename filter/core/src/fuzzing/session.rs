//! The `session` target: one connection through a [`Session`], both directions interleaved
//! as the input says, under one of [`SESSION_CONFIGS`].
//!
//! Input format (all integers big-endian):
//!
//! ```text
//! byte 0      config: index into SESSION_CONFIGS (modulo its length)
//! byte 1      chunk: 0 = each segment is one data callback; n > 0 = each segment is further
//!             cut into callbacks of at most n bytes
//! then, until the input ends, segments:
//!   flags u8  bit 0: 0 = client to broker (request direction), 1 = broker to client;
//!             bit 1: end of stream on this direction after the segment; other bits ignored
//!   len   u16 length of the segment's bytes
//!   bytes     `len` bytes (fewer if the input ends first)
//! ```
//!
//! A capture of a real connection (a list of (direction, bytes) reads) converts one read per
//! segment (split reads over 65535 bytes into several segments); [`session_input`] does it.
//!
//! After the last segment both directions get an end-of-stream callback (a connection that
//! closes). Properties, checked on every run:
//!
//! 1. no panic (debug assertions and overflow checks are on under cargo-fuzz);
//! 2. `Pause` only while the host buffer holds at most 4096 bytes (the session's
//!    `PAUSE_MAX`: a pause never trips Envoy's read-disable watermark), and never on an
//!    end-of-stream callback;
//! 3. once a callback returns `Close`, every later callback returns `Close`;
//! 4. bytes out are bounded: requests by what came in plus 64 (a rewritten request is never
//!    longer; the ApiVersions probe that replaces a denied request is no longer than it);
//!    responses by `5 × response bytes + 4 × request bytes + 4096` (synthesized error
//!    entries are per denied topic or partition of a request; a rewritten address grows a
//!    broker entry of at least 10 bytes by at most a rendered template);
//! 5. under the observer-only configs (no policy, no rewrite, no ApiVersions clamp), what
//!    either direction forwards is a prefix of what it received: nothing is ever modified;
//! 6. under the observer-only `passthrough` config the connection is never closed;
//! 7. when the input asks for sub-chunking, a second run with every segment delivered whole
//!    gives the same outcome: closed in both or in neither, and if neither, the same bytes out
//!    in both directions, the same facts and the same number of access-log entries;
//! 8. a request the session rewrote (a policy removing what it denies) is well-formed
//!    whenever the client's was: it walks whole under the API's complete request schema, so
//!    the broker reads exactly what the policy decided (a rewrite that leaves the broker
//!    reading something else is a policy bypass).

use std::cell::OnceCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use super::{capped, Bytes, Recorder};
use crate::codec::api;
use crate::codec::reader::Reader;
use crate::codec::walk;
use crate::config::Config;
use crate::policy::Identity;
use crate::session::{Direction, Session, Verdict};
use crate::testkit::EnvoyBuf;

/// A config of the session target.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub name: &'static str,
    pub json: &'static str,
    /// No policy, no rewrite, no clamp: the session must only observe (property 5).
    pub observer_only: bool,
    /// `onMalformed: passthrough` and nothing that closes by policy (property 6).
    pub never_closes: bool,
    /// The connection's mTLS principal and source address.
    pub principal: Option<&'static str>,
    pub source: [u8; 4],
}

pub const SESSION_CONFIGS: &[SessionConfig] = &[
    SessionConfig {
        name: "observer",
        json: r#"{"clampApiVersions": false, "accessLog": {"enabled": true}}"#,
        observer_only: true,
        never_closes: false,
        principal: None,
        source: [10, 0, 0, 1],
    },
    SessionConfig {
        name: "observer-passthrough",
        json: r#"{"clampApiVersions": false, "onMalformed": "passthrough",
            "maxFrameBytes": 65536, "maxBufferedFrameBytes": 4096, "maxInflightRequests": 16,
            "accessLog": {"enabled": true, "sampleRate": 0.5},
            "metrics": {"maxTopics": 8, "maxClientIds": 4, "maxGroups": 4,
                        "maxLagPartitions": 8, "maxTopicIds": 8}}"#,
        observer_only: true,
        never_closes: true,
        principal: None,
        source: [10, 0, 0, 1],
    },
    SessionConfig {
        name: "enforce",
        json: r#"{"accessLog": {"enabled": true},
            "rewrite": {"nodeTemplate": "gw-{nodeId}.mesh.example.com:{19092+nodeId}",
                        "nodeEndpoints": "rewrite"},
            "policy": {"defaultAction": "deny", "rules": [
              {"name": "orders", "action": "allow", "clientIds": ["orders-*"],
               "operations": ["produce", "consume", "describe"], "topics": ["orders.*"],
               "produce": {"maxBatchBytes": 100, "compression": ["none", "zstd"],
                           "acks": ["all", 1]}},
              {"name": "no-delete", "action": "deny", "apiKeys": ["DeleteTopics", 21]},
              {"name": "admin-groups", "action": "deny", "groups": ["admin-*"]},
              {"name": "groups", "action": "allow", "groups": ["*"]},
              {"name": "txn", "action": "allow", "transactionalIds": ["tx-*"]},
              {"name": "public", "action": "allow", "topics": ["public*"]},
              {"name": "ops", "action": "allow", "principals": ["spiffe://cluster.local/ns/ops/*"]}
            ]}}"#,
        observer_only: false,
        never_closes: false,
        principal: Some("spiffe://cluster.local/ns/shop/sa/orders"),
        source: [10, 1, 2, 3],
    },
    SessionConfig {
        name: "audit-passthrough",
        json: r#"{"onMalformed": "passthrough", "maxFrameBytes": 8192,
            "maxBufferedFrameBytes": 1024, "maxInflightRequests": 2,
            "accessLog": {"enabled": true, "sampleRate": 0.25},
            "rewrite": {"hosts": {"broker-0.internal": "b0.mesh:9094",
                                  "broker-1.internal:9092": "b1.mesh:{port}"},
                        "hostPatterns": [{"match": "^broker-([0-9]+)\\.internal$",
                                          "target": "kafka-$1.mesh:{port}"}]},
            "policy": {"mode": "audit", "rules": [
              {"name": "secret", "action": "deny", "topics": ["secret*"]},
              {"name": "groups", "action": "deny", "groups": ["*"]}]}}"#,
        observer_only: false,
        never_closes: false,
        principal: None,
        source: [10, 0, 0, 1],
    },
    SessionConfig {
        name: "enforce-close",
        json: r#"{"metrics": {"families": ["api", "errors", "fetch", "lag"]},
            "rewrite": {"nodes": {"0": "kafka-0.mesh:9092", "1": "kafka-1.mesh:{port}"},
                        "nodeEndpoints": "rewrite"},
            "policy": {"onDeny": "close", "unknownTopicIds": "allow",
                       "hideUnauthorizedTopics": false, "rules": [
              {"name": "secret", "action": "deny", "topics": ["secret*"]},
              {"name": "admin-groups", "action": "deny", "groups": ["admin-*"],
               "clientIds": ["*-fuzz"]},
              {"name": "tx", "action": "deny", "transactionalIds": ["forbidden-*"]},
              {"name": "cidr", "action": "deny", "sourceCidrs": ["192.168.0.0/16"],
               "operations": ["delete", "alter", "create"]}]}}"#,
        observer_only: false,
        never_closes: false,
        principal: Some("spiffe://cluster.local/ns/ops/sa/admin"),
        source: [192, 168, 1, 7],
    },
];

thread_local! {
    static CONFIGS: OnceCell<Vec<Option<Rc<Config>>>> = const { OnceCell::new() };
}

/// The compiled config of `SESSION_CONFIGS[i]` (compiled once per thread).
pub fn config_of(i: usize) -> Option<Rc<Config>> {
    CONFIGS.with(|c| {
        c.get_or_init(|| {
            SESSION_CONFIGS
                .iter()
                .map(|sc| Config::from_json(sc.json.as_bytes()).ok().map(Rc::new))
                .collect()
        })
        .get(i)
        .cloned()
        .flatten()
    })
}

/// The session's `PAUSE_MAX`: the most it leaves in Envoy's buffer by pausing.
const PAUSE_MAX: usize = 4096;

/// One read of a capture: its direction, whether the direction ends after it, its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub dir: Direction,
    pub eos: bool,
    pub bytes: &'a [u8],
}

/// The session target's input for `segments` under config `config` (an index into
/// [`SESSION_CONFIGS`]) with sub-chunking `chunk` (0: one callback per segment). Segments
/// longer than 65535 bytes are split.
pub fn session_input(config: u8, chunk: u8, segments: &[Segment<'_>]) -> Vec<u8> {
    let mut out = vec![config, chunk];
    for s in segments {
        let dir = match s.dir {
            Direction::Request => 0u8,
            Direction::Response => 1,
        };
        let pieces: Vec<&[u8]> = if s.bytes.is_empty() {
            vec![&[]]
        } else {
            s.bytes.chunks(usize::from(u16::MAX)).collect()
        };
        let last = pieces.len().saturating_sub(1);
        for (i, p) in pieces.iter().enumerate() {
            let eos = s.eos && i == last;
            out.push(dir | if eos { 2 } else { 0 });
            let n = u16::try_from(p.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(p);
        }
    }
    out
}

fn parse(data: &[u8]) -> (usize, usize, Vec<Segment<'_>>) {
    let mut b = Bytes::new(data);
    let config = usize::from(b.u8()) % SESSION_CONFIGS.len();
    let chunk = usize::from(b.u8());
    let mut segs = Vec::new();
    while !b.is_done() {
        let flags = b.u8();
        let n = usize::from(b.u16());
        segs.push(Segment {
            dir: if flags & 1 == 0 {
                Direction::Request
            } else {
                Direction::Response
            },
            eos: flags & 2 != 0,
            bytes: b.take(n),
        });
    }
    (config, chunk, segs)
}

#[derive(Default)]
struct Side {
    buf: EnvoyBuf,
    input: Vec<u8>,
    out: Vec<u8>,
    ended: bool,
}

struct Run {
    closed: bool,
    req: Side,
    resp: Side,
    obs: Recorder,
}

impl Run {
    fn side(&mut self, dir: Direction) -> &mut Side {
        match dir {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.resp,
        }
    }
}

fn new_session(sc: &SessionConfig, cfg: &Rc<Config>) -> Session {
    let mut s = Session::new(cfg.clone());
    let [a, b, c, d] = sc.source;
    s.set_identity(Identity {
        principal: sc.principal.map(str::to_string),
        sasl_user: None,
        source: Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
        client_id: None,
    });
    s
}

/// One callback, with properties 2 and 3 checked.
fn call(s: &mut Session, run: &mut Run, dir: Direction, bytes: &[u8], eos: bool, now: u64) {
    if run.closed {
        return;
    }
    let mut obs = std::mem::take(&mut run.obs);
    let side = run.side(dir);
    side.buf.data.extend_from_slice(bytes);
    side.input.extend_from_slice(bytes);
    let v = s.on_data(dir, &mut side.buf, eos, now, &mut obs);
    match v {
        Verdict::Continue => side.out.append(&mut side.buf.data),
        Verdict::Pause => {
            assert!(!eos, "property 2: Pause on an end-of-stream callback");
            assert!(
                side.buf.data.len() <= PAUSE_MAX,
                "property 2: Pause with {} bytes left in the host buffer",
                side.buf.data.len()
            );
        }
        Verdict::Close => {}
    }
    if eos {
        side.ended = true;
    }
    if v == Verdict::Close {
        run.closed = true;
        for d in [Direction::Request, Direction::Response] {
            let mut more = EnvoyBuf::default();
            more.data.extend_from_slice(b"\0\0\0\x08more");
            let again = s.on_data(d, &mut more, false, now + 1, &mut obs);
            assert_eq!(
                again,
                Verdict::Close,
                "property 3: a callback after Close did not return Close"
            );
        }
    }
    run.obs = obs;
}

fn drive(sc: &SessionConfig, cfg: &Rc<Config>, segs: &[Segment<'_>], chunk: usize) -> Run {
    let mut s = new_session(sc, cfg);
    let mut run = Run {
        closed: false,
        req: Side::default(),
        resp: Side::default(),
        obs: Recorder::default(),
    };
    let mut now = 0u64;
    for seg in segs {
        if run.closed {
            break;
        }
        if run.side(seg.dir).ended {
            continue; // nothing arrives after the end of a stream
        }
        let pieces: Vec<&[u8]> = if chunk == 0 || seg.bytes.is_empty() {
            vec![seg.bytes]
        } else {
            seg.bytes.chunks(chunk).collect()
        };
        for p in pieces {
            now += 1_000_000;
            call(&mut s, &mut run, seg.dir, p, false, now);
        }
        if seg.eos {
            now += 1_000;
            call(&mut s, &mut run, seg.dir, &[], true, now);
        }
    }
    for d in [Direction::Request, Direction::Response] {
        if !run.side(d).ended {
            now += 1_000;
            call(&mut s, &mut run, d, &[], true, now);
        }
    }
    run
}

/// The `session` target (see the module documentation for the input and the properties).
pub fn session(data: &[u8]) {
    let data = capped(data);
    let (ci, chunk, segs) = parse(data);
    let Some(sc) = SESSION_CONFIGS.get(ci) else {
        return;
    };
    let Some(cfg) = config_of(ci) else {
        // The configs are fixed; the replay test checks every one of them parses.
        return;
    };
    if !super::pending::KNOWN_TAGS_BOUNDED_FIXED
        && (cfg.compiled_policy.is_some() || cfg.compiled_rewrite.is_some())
    {
        let stream = |d: Direction| -> Vec<u8> {
            segs.iter()
                .filter(|s| s.dir == d)
                .flat_map(|s| s.bytes.iter().copied())
                .collect()
        };
        if super::pending::session_may_reach(
            &stream(Direction::Request),
            &stream(Direction::Response),
        ) {
            return; // see pending::KNOWN_TAGS_BOUNDED_FIXED
        }
    }
    let a = drive(sc, &cfg, &segs, chunk);
    check_run(sc, &a);
    if chunk != 0 {
        let b = drive(sc, &cfg, &segs, 0);
        check_run(sc, &b);
        assert_eq!(
            a.closed, b.closed,
            "property 7: closed under one chunking and not under another"
        );
        if !a.closed {
            assert!(
                a.req.out == b.req.out,
                "property 7: request bytes differ between chunkings"
            );
            assert!(
                a.resp.out == b.resp.out,
                "property 7: response bytes differ between chunkings"
            );
            assert_eq!(
                a.obs.facts, b.obs.facts,
                "property 7: facts differ between chunkings"
            );
            assert_eq!(
                a.obs.access, b.obs.access,
                "property 7: access-log entries differ between chunkings"
            );
        }
    }
}

/// The complete frames of a stream (size prefix included), in order.
fn frames_of(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(size) = stream.get(at..at + 4) {
        let n = i32::from_be_bytes([
            size.first().copied().unwrap_or(0),
            size.get(1).copied().unwrap_or(0),
            size.get(2).copied().unwrap_or(0),
            size.get(3).copied().unwrap_or(0),
        ]);
        let Ok(n) = usize::try_from(n) else { break };
        let Some(f) = stream.get(at..at + 4 + n) else {
            break;
        };
        out.push(f);
        at += 4 + n;
    }
    out
}

/// A request frame's API key, version and body.
fn split_request(frame: &[u8]) -> Option<(i16, i16, &[u8])> {
    let mut r = Reader::new(frame.get(4..)?);
    let key = r.i16("key").ok()?;
    let v = r.i16("version").ok()?;
    r.i32("corr").ok()?;
    let hv = api::api_info(key)?.request_header_version(v);
    if hv >= 1 {
        r.nullable_string("client_id").ok()?;
    }
    if hv >= 2 {
        r.skip_tagged_fields("header").ok()?;
    }
    Some((key, v, r.rest()))
}

/// The complete request schema of (api, version), where the filter has one.
fn full_request_schema(key: i16, v: i16) -> Option<&'static walk::Schema> {
    let s = match key {
        api::PRODUCE => return walk::request_schema(key, v),
        api::FETCH => &walk::S_FETCH_REQ_FULL,
        2 => &walk::S_LIST_OFFSETS_REQ,
        api::METADATA => &walk::S_METADATA_REQ,
        8 => &walk::S_OFFSET_COMMIT_REQ_FULL,
        9 => &walk::S_OFFSET_FETCH_REQ,
        19 => &walk::S_CREATE_TOPICS_REQ,
        20 => &walk::S_DELETE_TOPICS_REQ,
        21 => &walk::S_DELETE_RECORDS_REQ,
        33 => &walk::S_ALTER_CONFIGS_REQ,
        37 => &walk::S_CREATE_PARTITIONS_REQ,
        44 => &walk::S_INC_ALTER_CONFIGS_REQ,
        _ => return None,
    };
    let max = api::api_info(key)?.max_version;
    (v >= s.min_version && v <= max).then_some(s)
}

/// Whether `bytes` hold a 5-byte varint of 2^31 or more (a tag kafka-protocol mishandles,
/// see pending::TAGS_OVER_I32_FIXED); conservative: anywhere, not only where a tag is.
fn has_tag_over_i32(bytes: &[u8]) -> bool {
    bytes.windows(5).any(
        |w| matches!(w, [a, b, c, d, e] if a & b & c & d & 0x80 != 0 && (0x08..0x10).contains(e)),
    )
}

/// Property 8.
fn check_rewritten_requests(input: &[u8], out: &[u8]) {
    for (i, o) in frames_of(input).into_iter().zip(frames_of(out)) {
        if i == o {
            continue;
        }
        let Some((key, v, body)) = split_request(i) else {
            continue;
        };
        let Some(schema) = full_request_schema(key, v) else {
            continue;
        };
        let flexible = api::api_info(key).is_some_and(|a| a.is_flexible(v));
        if walk::walk_all(schema, v, flexible, body, &mut |_| {}).is_err() {
            continue; // the client's request is not well-formed to begin with
        }
        if !super::pending::TAGS_OVER_I32_FIXED && has_tag_over_i32(i) {
            continue; // see pending::TAGS_OVER_I32_FIXED
        }
        let Some((ok, ov, ob)) = split_request(o) else {
            assert!(
                o.is_empty(),
                "property 8: a rewritten {} v{v} request has no header",
                api::api_name(key)
            );
            continue;
        };
        if ok == api::API_VERSIONS && ov == 0 {
            continue; // the probe that replaces a refused request
        }
        assert!(
            (ok, ov) == (key, v),
            "property 8: a {} v{v} request went out as api {ok} v{ov}",
            api::api_name(key)
        );
        let res = walk::walk_all(schema, v, flexible, ob, &mut |_| {});
        assert!(
            res.is_ok(),
            "property 8: the rewritten {} v{v} request is malformed: {res:?}",
            api::api_name(key)
        );
    }
}

fn check_run(sc: &SessionConfig, r: &Run) {
    if !sc.observer_only {
        check_rewritten_requests(&r.req.input, &r.req.out);
    }
    let (ri, ro) = (r.req.input.len(), r.req.out.len());
    let (si, so) = (r.resp.input.len(), r.resp.out.len());
    assert!(
        ro <= ri + 64,
        "property 4: {ro} request bytes out for {ri} in"
    );
    assert!(
        so <= 5 * si + 4 * ri + 4096,
        "property 4: {so} response bytes out for {si} in ({ri} request bytes)"
    );
    if sc.observer_only {
        assert!(
            r.req.input.starts_with(&r.req.out),
            "property 5: an observer-only session changed request bytes ({})",
            sc.name
        );
        assert!(
            r.resp.input.starts_with(&r.resp.out),
            "property 5: an observer-only session changed response bytes ({})",
            sc.name
        );
    }
    if sc.never_closes {
        assert!(
            !r.closed,
            "property 6: the passthrough observer closed: {:?}",
            r.obs.malformed
        );
    }
}

/// The config target's check: `cfg` carries [`super::seeds::conversation`] (both
/// directions, interleaved) with properties 2 to 4.
pub(crate) fn converse(cfg: &Rc<Config>) {
    thread_local! {
        static CONVERSATION: Vec<super::seeds::Exchange> = super::seeds::conversation();
    }
    let sc = SessionConfig {
        name: "config",
        json: "",
        observer_only: false,
        never_closes: false,
        principal: Some("spiffe://cluster.local/ns/shop/sa/orders"),
        source: [10, 0, 0, 1],
    };
    CONVERSATION.with(|ex| {
        let segs = super::seeds::conversation_segments(ex);
        let run = drive(&sc, cfg, &segs, 0);
        check_run(&sc, &run);
    });
}
