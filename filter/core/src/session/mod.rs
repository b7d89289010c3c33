//! The per-connection state machine, both directions.
//!
//! The session never owns the connection's bytes: they stay in the host's buffer (Envoy's
//! connection buffer) and the session reads only the ranges it needs through [`HostBuffer`].
//! On each data callback it walks frame boundaries from where it stopped last time (`scan`),
//! reads each frame's head and decides the frame's fate once, as a `Plan`:
//!
//! | plan | what happens to the frame's bytes | used for |
//! |---|---|---|
//! | stream | pass through unread | everything nothing needs |
//! | walk | pass through; record-batch headers and the needed fields are read | metrics, access log |
//! | walk + guard | pass through; fields are overwritten in place, same length | Produce under a policy (crate::policy::guard), Produce responses put right, NodeEndpoints hidden, big all-topics Metadata under a policy |
//! | hold and replace | collected whole (in the VM once it spans callbacks), replaced | ApiVersions clamp, small request rewrites and probes (crate::policy::enforce), address rewrites |
//! | replace head | the head is replaced, the rest streams | response splices, big Metadata brokers |
//! | malformed | counted and logged, then close or pass everything through | |
//!
//! Envoy semantics it relies on (envoyproxy/envoy `source/extensions/common/wasm/context.cc`,
//! `Context::onData`/`onWrite` and `Buffer::copyFrom`): returning `Continue` hands the whole
//! buffer on and it is drained; returning `Pause` (StopIteration) leaves it in place and the
//! next callback sees it again with the new bytes appended; `set_buffer_bytes(0, n, data)`
//! drains `n` bytes from the front and prepends `data`; nothing can be spliced mid-buffer, and
//! nothing can be cut from the end. How the session still never holds a finished frame behind
//! an incomplete one, and never leaves more than a few KiB in Envoy's buffer, is in
//! `Session::settle`. A frame the session replaced is read again from its start with what
//! was decided about it kept in one `Redo` record per direction.
//!
//! Requests and responses are matched by an in-order queue (responses carry no API key; Kafka
//! answers requests on a connection in order). Produce with `acks=0` gets no response and is
//! not queued (Kroxylicious #1436 and grepplabs/kafka-proxy had that leak).

use std::collections::VecDeque;
use std::rc::Rc;

use crate::codec::api::{self, API_VERSIONS, PRODUCE};
use crate::codec::apiversions::{self, Clamp};
use crate::codec::header::{self, RequestHeader};
use crate::codec::reader::{DecodeError, Reader};
use crate::codec::walk::{self, Event, Schema, Step, Walker, F};
use crate::config::{Config, Family, MalformedAction};
use crate::observe::collect::{AccessTopics, Collector, FactSink, FetchOffsets, TopicRef};
use crate::policy::enforce::{self, Enforced, Note, Splice, TopicNames};
use crate::policy::guard::{
    MarkOp, MetadataGuard, ProduceGuard, Restore, RestoreGuard, Seen, Target,
};
use crate::policy::{Identity, Operation, Question};

/// The host's view of one direction's connection buffer. In the filter this is
/// `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`; in native tests an Envoy-faithful Vec.
pub trait HostBuffer {
    /// Bytes in the buffer now (everything accumulated while paused).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `[start, start + len)` out of the host. `None` is a host error.
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Envoy's `set_buffer_bytes(start = 0, size = drain, data)`: drain `drain` bytes from the
    /// front, then prepend `data`. `false` is a host error.
    fn replace_front(&mut self, drain: usize, data: &[u8]) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to broker (Envoy downstream data).
    Request,
    /// Broker to client (Envoy upstream data, the write path of the downstream connection).
    Response,
}

impl Direction {
    fn other(self) -> Direction {
        match self {
            Direction::Request => Direction::Response,
            Direction::Response => Direction::Request,
        }
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the whole buffer on.
    Continue,
    /// Keep the buffer; call again when more bytes arrive.
    Pause,
    /// Close the connection; nothing more is handed on.
    Close,
}

/// Why a connection was given up on. All of these are counted and logged by the observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    FrameSize {
        size: i32,
    },
    Decode {
        api_key: Option<i16>,
        error: DecodeError,
    },
    UnexpectedResponse {
        correlation_id: i32,
    },
    CorrelationMismatch {
        expected: i32,
        got: i32,
    },
    InflightOverflow {
        limit: u32,
    },
    HostError {
        what: &'static str,
    },
    /// The policy closes the connection (`onDeny: close`, or a request it cannot inspect or
    /// answer). Always closes, whatever `onMalformed` says.
    PolicyClose {
        reason: String,
    },
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::FrameSize { size } => {
                write!(f, "frame size {size} is below 4 (no room for a correlation id), negative, or over maxFrameBytes")
            }
            Malformed::Decode {
                api_key: Some(k),
                error,
            } => {
                write!(f, "{} ({k}): {error}", api::api_name(*k))
            }
            Malformed::Decode {
                api_key: None,
                error,
            } => write!(f, "{error}"),
            Malformed::UnexpectedResponse { correlation_id } => {
                write!(f, "response {correlation_id} with no request in flight")
            }
            Malformed::CorrelationMismatch { expected, got } => {
                write!(f, "response correlation id {got}, expected {expected}")
            }
            Malformed::InflightOverflow { limit } => {
                write!(
                    f,
                    "more than maxInflightRequests={limit} requests in flight"
                )
            }
            Malformed::HostError { what } => write!(f, "host error in {what}"),
            Malformed::PolicyClose { reason } => write!(f, "policy: {reason}"),
        }
    }
}

impl Malformed {
    /// Short fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Malformed::FrameSize { .. } => "frame_size",
            Malformed::Decode { .. } => "decode",
            Malformed::UnexpectedResponse { .. } => "unexpected_response",
            Malformed::CorrelationMismatch { .. } => "correlation_mismatch",
            Malformed::InflightOverflow { .. } => "inflight_overflow",
            Malformed::HostError { .. } => "host_error",
            Malformed::PolicyClose { .. } => "policy_close",
        }
    }
}

/// One access-log record: a request and (when it has one) its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub client_id: String,
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub topics: AccessTopics,
    pub request_bytes: u64,
    pub response_bytes: Option<u64>,
    pub latency_ns: Option<u64>,
    /// First non-zero error code of the response; `Some(0)` when the response was walked and
    /// had none; `None` when the response is not inspected or there is none (`acks=0`).
    pub error_code: Option<i16>,
}

/// Longest client id copied into an access-log record.
const ACCESS_CLIENT_ID_MAX: usize = 256;

impl AccessLog {
    /// The line as JSON. `names` resolves topic ids (Fetch v13+, Produce v13+) to the names
    /// learned from Metadata, as the metric labels do; an id it does not know is shown as
    /// 32 hex digits, again as in the labels.
    pub fn to_json(&self, names: &mut dyn FnMut(&[u8; 16]) -> Option<String>) -> String {
        let mut topics: Vec<serde_json::Value> = self
            .topics
            .topics
            .iter()
            .map(|t| match t {
                TopicRef::Name(n) => serde_json::Value::from(n.as_str()),
                TopicRef::Id(id) => serde_json::Value::from(names(id).unwrap_or_else(|| t.label())),
            })
            .collect();
        if self.topics.more > 0 {
            topics.push(serde_json::Value::from(format!(
                "+{} more",
                self.topics.more
            )));
        }
        serde_json::json!({
            "client_id": self.client_id,
            "api": api::api_name(self.api_key),
            "api_key": self.api_key,
            "api_version": self.api_version,
            "correlation_id": self.correlation_id,
            "topics": topics,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "latency_ms": self.latency_ns.map(|n| n as f64 / 1e6),
            "error_code": self.error_code,
            "error": self.error_code.map(crate::codec::errors::error_name),
        })
        .to_string()
    }
}

/// What the session saw. The glue turns these into metrics and log lines. The per-topic
/// facts from walked bodies arrive through the [`FactSink`] supertrait.
pub trait Observer: FactSink {
    fn request(&mut self, _header: &RequestHeader<'_>, _frame_bytes: u64) {}
    fn response(&mut self, _api_key: i16, _api_version: i16, _frame_bytes: u64, _latency_ns: u64) {}
    fn unknown_api(&mut self, _api_key: i16, _api_version: i16) {}
    fn produce_acks0(&mut self) {}
    /// The broker answered an `acks=0` Produce (Kafka never does; tansu does).
    fn produce_acks0_answered(&mut self) {}
    fn api_versions_clamped(&mut self, _clamps: &[Clamp]) {}
    fn rewrite_skipped(&mut self, _api_key: i16, _frame_bytes: u64) {}
    /// KIP-951 NodeEndpoints hidden from a response that streamed (see crate::policy::guard).
    fn node_endpoints_hidden(&mut self, _api_key: i16, _count: u32) {}
    fn malformed(&mut self, _dir: Direction, _what: &Malformed, _action: MalformedAction) {}
    fn access_log(&mut self, _entry: &AccessLog) {}
    /// A policy decision (allow, deny or would-deny), for per-rule counters and the log.
    fn policy_note(&mut self, _note: &Note) {}
    /// The name of a topic id, if the process has learned it (for policy decisions).
    fn topic_name(&mut self, _id: &[u8; 16]) -> Option<String> {
        None
    }
}

/// Lets the policy ask the observer (the glue's shared topic-id map) for names.
struct ObsNames<'a>(&'a mut dyn Observer);
impl TopicNames for ObsNames<'_> {
    fn name_of(&mut self, id: &[u8; 16]) -> Option<String> {
        self.0.topic_name(id)
    }
}

/// An observer that ignores everything (tests, benchmarks).
pub struct NoopObserver;
impl FactSink for NoopObserver {}
impl Observer for NoopObserver {}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    correlation_id: i32,
    api_key: i16,
    api_version: i16,
    sent_ns: u64,
    access: Option<Box<AccessLog>>,
    /// How the policy changes this request's response.
    splice: Option<Box<Splice>>,
    /// What the Produce guard neutralised, to put right in the response.
    restore: Option<Box<Restore>>,
}

/// A frame the session replaced in the host buffer and now reads again from its start, as
/// if it had arrived so: what was already decided about it, so it is not decided twice.
#[derive(Debug)]
struct Redo {
    correlation_id: i32,
    /// Requests: how the policy changes this request's response (queued with it).
    splice: Option<Splice>,
    /// Probes: the API and version the client actually sent.
    original: Option<(i16, i16)>,
}

impl Redo {
    fn of(correlation_id: i32) -> Self {
        Redo {
            correlation_id,
            splice: None,
            original: None,
        }
    }
}

/// The streaming walk of one frame's body (see [`crate::codec::walk`]).
#[derive(Debug)]
struct WalkState {
    walker: Walker,
    collector: Collector,
    /// Bytes copied out of the host and not yet consumed by the walker.
    carry: Vec<u8>,
    /// Bytes the walker asked to skip, not yet passed.
    skip: u64,
    /// Frame bytes not yet copied or skipped.
    remaining: u64,
    /// The access-log record finished when this frame's walk ends.
    access: Option<Box<AccessLog>>,
    /// Request side: whether a response is expected (the record then goes to the queue).
    expects_response: bool,
    correlation_id: i32,
    /// Decides or restores parts of this frame as it goes by (Produce under a policy).
    guard: Option<WalkGuard>,
    /// Host offset from which a guard may still edit bytes already walked (a partition
    /// index, until its batch header is decided).
    mark: Option<usize>,
}

#[derive(Debug)]
enum WalkGuard {
    Produce(Box<ProduceGuard>),
    Restore(Box<RestoreGuard>),
    Metadata(Box<MetadataGuard>),
}

impl WalkState {
    /// Under a guard, the bytes of the field being read (the carry) and those from the mark
    /// on must stay editable: they are not forwarded yet.
    fn keep_from(&self, scan: usize) -> Option<usize> {
        let editable = match self.guard.as_ref()? {
            WalkGuard::Produce(g) => g.editable(),
            WalkGuard::Restore(_) | WalkGuard::Metadata(_) => true,
        };
        let carry =
            (editable && !self.carry.is_empty()).then(|| scan.saturating_sub(self.carry.len()));
        match (self.mark, carry) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        }
    }
}

struct WalkPlan {
    schema: &'static Schema,
    api_key: i16,
    version: i16,
    header_tags: bool,
    /// Offset in the head where the body starts.
    body_at: usize,
    access: Option<Box<AccessLog>>,
    expects_response: bool,
    correlation_id: i32,
    guard: Option<WalkGuard>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldAction {
    ClampApiVersions {
        version: i16,
    },
    /// A request the policy must see whole.
    Enforce,
    /// A probe's answer, to be replaced by the synthesized response.
    ReplaceResponse,
    /// A response carrying broker addresses to rewrite.
    RewriteAddresses,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between frames (head empty) or collecting the head of the frame that starts at
    /// buffer offset `start`.
    Head { start: usize },
    /// Streaming past the rest of a frame that needs nothing more.
    Skip { remaining: u64 },
    /// Collecting the whole frame (total bytes incl. size prefix) to rewrite it. Its first
    /// `taken` bytes were moved out of the host buffer into [`DirState::held`] by earlier
    /// callbacks; the rest starts at host offset `start`.
    Hold {
        start: usize,
        total: usize,
        action: HoldAction,
        taken: usize,
    },
    /// Walking the body of the current frame ([`DirState::walk`]); bytes stream through.
    Walk,
    /// Given up on parsing: relay untouched.
    Bypass,
}

/// Head bytes asked for first; grows ×4 up to [`HEAD_MAX`] when a header is longer (a long
/// client_id or transactional_id).
const HEAD_INITIAL: usize = 64;
/// The most of a frame's head ever collected: a 32 KiB client_id plus a 32 KiB
/// transactional_id fit. Anything longer is malformed.
pub const HEAD_MAX: usize = 4 + 8 + 2 + 32_767 + 6 + 32_767 + 2 + 64;
const RESPONSE_HEAD: usize = 8;
/// The fewest bytes a walk read asks for (the walker says how many its next step needs).
const WALK_MIN_READ: usize = 16;
/// The largest buffer the session leaves in Envoy by pausing when it ends in an incomplete
/// piece. Far below Istio's smallest connection buffer limit (32 KiB on gateways), so a pause
/// never trips the read-disable watermark, and it bounds how long finished frames in front of
/// the piece wait; past it the piece moves into the VM and the rest is forwarded.
const PAUSE_MAX: usize = 4096;
/// Recent `acks=0` correlation ids remembered, in case the broker answers them anyway.
const ACKS0_RING: usize = 64;

#[derive(Debug)]
struct DirState {
    phase: Phase,
    /// Offset in the host buffer up to which bytes have been walked.
    scan: usize,
    /// The head of the current frame (size prefix included), reused between frames.
    head: Vec<u8>,
    window: usize,
    walk: Option<WalkState>,
    /// Bytes cut from the end of the host buffer by the last callback (an incomplete head or
    /// a field a guard may still edit, after bytes that were forwarded): they go back in
    /// front of the buffer first thing in the next callback. See [`Session::settle`].
    stash: Vec<u8>,
    /// [`Phase::Hold`]: copies of the held frame's first bytes.
    held: Vec<u8>,
    /// [`Phase::Head`]: how many of the head's bytes were already forwarded (a head that no
    /// rewrite can touch is read as it goes by, not held back).
    head_gone: usize,
    /// The frame at the head was replaced and is being read again (see [`Redo`]).
    redo: Option<Redo>,
    /// Same-length edits a guard made, not yet written into the host buffer: all the edits
    /// of one callback go in with one drain-and-prepend (see [`flush_edits`]).
    edits: Edits,
}

/// Pending in-place edits: (host offset, new bytes).
type Edits = Vec<(usize, Vec<u8>)>;

impl DirState {
    fn new(dir: Direction) -> Self {
        let mut st = DirState {
            phase: Phase::Head { start: 0 },
            scan: 0,
            head: Vec::new(),
            window: 0,
            walk: None,
            stash: Vec::new(),
            held: Vec::new(),
            head_gone: 0,
            redo: None,
            edits: Vec::new(),
        };
        st.window = st.initial_window(dir);
        st
    }

    /// Requests need api key, version, correlation id, client id and (Produce) acks; responses
    /// need only the correlation id, so only 8 bytes of a response are ever read up front.
    fn initial_window(&self, dir: Direction) -> usize {
        match dir {
            Direction::Request => HEAD_INITIAL,
            Direction::Response => RESPONSE_HEAD,
        }
    }

    fn next_frame(&mut self, dir: Direction, at: usize) {
        self.phase = Phase::Head { start: at };
        self.head.clear();
        self.held.clear();
        self.head_gone = 0;
        self.window = self.initial_window(dir);
        self.walk = None;
    }

    /// The host offset of the first byte that must not be forwarded at the end of this
    /// callback: the start of an incomplete head or held frame, or of the bytes a guard may
    /// still edit. `None`: everything may go.
    fn keep_from(&self) -> Option<usize> {
        match self.phase {
            Phase::Head { start } => (!self.head.is_empty()).then_some(start),
            Phase::Hold { start, .. } => Some(start),
            Phase::Walk => self.walk.as_ref().and_then(|ws| ws.keep_from(self.scan)),
            Phase::Skip { .. } | Phase::Bypass => None,
        }
    }
}

/// A frame's fate, decided once from its head ([`Session::on_request_head`],
/// [`Session::on_response_head`]); the walk loop only carries it out.
enum Plan {
    /// The head is too short to decide: read more of it.
    NeedMore,
    /// Stream the rest of the frame through unread.
    Stream,
    /// Walk the body as it streams (facts for metrics and the access log); with a guard, edit
    /// fields in place, same length (Produce under a policy, Produce responses to put right,
    /// NodeEndpoints to hide, a Metadata answer too large to hold).
    Walk(Box<WalkPlan>),
    /// Hold the whole frame (in the VM once it spans callbacks), then replace it.
    Hold(HoldAction),
    /// Replace the first `old_len` bytes of the frame with `new_head` (a response head
    /// splice, a Metadata brokers array), then read the frame again from its start.
    ReplaceHead {
        old_len: usize,
        new_head: Vec<u8>,
    },
    Malformed(Malformed),
}

pub struct Session {
    cfg: Rc<Config>,
    req: DirState,
    resp: DirState,
    inflight: VecDeque<InFlight>,
    /// Correlation ids of the last `acks=0` Produce requests. Kafka sends no response to them
    /// (so they are never queued: a queue entry would leak), but some brokers do answer
    /// (tansu 0.6 does). A fixed-size ring lets such an answer be recognised and relayed
    /// instead of being taken for a correlation mismatch, without unbounded state.
    acks0_recent: VecDeque<i32>,
    /// Last fetch offset per (topic, partition), for the lag gauge.
    fetch_offsets: FetchOffsets,
    /// Access-log sampling accumulator.
    sample_acc: f64,
    /// Whether any request / response bodies are walked at all under this config.
    walk_requests: bool,
    walk_responses: bool,
    /// Who is on the other end (principal, source address; SASL user when learned).
    identity: Identity,
    /// SASL mechanism from SaslHandshake, and a PLAIN username awaiting the broker's verdict.
    sasl_mechanism: Option<String>,
    sasl_pending: Option<(i32, String)>,
    closed: bool,
}

impl Session {
    pub fn new(cfg: Rc<Config>) -> Self {
        let walks = cfg_walks(&cfg);
        Session {
            cfg,
            req: DirState::new(Direction::Request),
            resp: DirState::new(Direction::Response),
            inflight: VecDeque::new(),
            acks0_recent: VecDeque::with_capacity(ACKS0_RING),
            fetch_offsets: FetchOffsets::default(),
            sample_acc: 0.0,
            walk_requests: false,
            walk_responses: false,
            identity: Identity::default(),
            sasl_mechanism: None,
            sasl_pending: None,
            closed: false,
        }
        .with_walks(walks)
    }

    fn with_walks(mut self, (req, resp): (bool, bool)) -> Self {
        self.walk_requests = req;
        self.walk_responses = resp;
        self
    }

    /// The connection's identity for policy decisions (set by the glue from Envoy properties).
    pub fn set_identity(&mut self, id: Identity) {
        self.identity = id;
    }

    /// The mTLS principal, once the host has it (after the TLS handshake, which Envoy
    /// completes after the filter's `onNewConnection`).
    pub fn set_principal(&mut self, principal: Option<String>) {
        self.identity.principal = principal;
    }

    /// Entries in the fetch-offset table (bounded by `metrics.maxLagPartitions`).
    pub fn fetch_offsets(&self) -> usize {
        self.fetch_offsets.len()
    }

    /// Requests awaiting their response.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether the session stopped parsing (malformed input with `passthrough`).
    pub fn bypassed(&self) -> bool {
        self.req.phase == Phase::Bypass
    }

    /// One data callback for `dir`: `buf` holds everything the host has buffered.
    pub fn on_data(
        &mut self,
        dir: Direction,
        buf: &mut dyn HostBuffer,
        end_of_stream: bool,
        now_ns: u64,
        obs: &mut dyn Observer,
    ) -> Verdict {
        if self.closed {
            return Verdict::Close;
        }
        // What the last callback kept back goes in front of the new bytes: the buffer now
        // looks exactly as if that callback had paused with only those bytes left.
        let stash = std::mem::take(&mut self.dir_mut(dir).stash);
        if !stash.is_empty() && !buf.replace_front(0, &stash) {
            let m = Malformed::HostError {
                what: "set_buffer_bytes",
            };
            return self.give_up(dir, buf, &m, obs);
        }
        let mut len = buf.len();
        let outcome = self.walk(dir, buf, &mut len, now_ns, obs);
        if let Err(m) = outcome {
            return self.give_up(dir, buf, &m, obs);
        }
        match self.settle(dir, buf, len, end_of_stream) {
            Ok(v) => v,
            Err(m) => self.give_up(dir, buf, &m, obs),
        }
    }

    /// Whether the frame whose head is being collected in `dir` may have its head rewritten
    /// or be held whole, so its head bytes must not be forwarded before it is decided.
    /// Requests: only under a policy. Responses: only the answer at the front of the queue can
    /// arrive next, so its request tells (an ApiVersions clamp, a policy splice, an address
    /// rewrite); anything else is read as it goes by.
    fn head_may_edit(&self, dir: Direction) -> bool {
        match dir {
            Direction::Request => self.cfg.compiled_policy.is_some(),
            Direction::Response => self.inflight.front().is_some_and(|f| {
                (f.api_key == API_VERSIONS && self.cfg.clamp_api_versions)
                    || f.splice.is_some()
                    || self
                        .cfg
                        .compiled_rewrite
                        .as_ref()
                        .is_some_and(|rw| rw.applies(f.api_key, f.api_version))
            }),
        }
    }

    /// End of a callback: decide what the host may forward now.
    ///
    /// Envoy forwards the whole buffer on `Continue` and keeps all of it on `Pause`; it can
    /// drain and prepend at the front but cannot cut the end (`Buffer::copyFrom` in
    /// envoyproxy/envoy `source/extensions/common/wasm/context.cc`). Pausing with finished
    /// frames in front of an incomplete one would hold those frames hostage to the next
    /// one's arrival, and a pipelining client (librdkafka) may never leave a frame boundary
    /// at the end of a buffer; past Envoy's buffer limit the read side is disabled and the
    /// connection stalls for good. So the session pauses only while the whole buffer is
    /// small ([`PAUSE_MAX`]). Otherwise the incomplete piece is moved into the VM (cut from
    /// the end: the part before it is drained and written back) and everything before it is
    /// forwarded; a held frame accumulates in the VM ([`DirState::held`]) until it is whole,
    /// any other piece ([`DirState::stash`]) goes back in front at the next callback.
    fn settle(
        &mut self,
        dir: Direction,
        buf: &mut dyn HostBuffer,
        len: usize,
        end_of_stream: bool,
    ) -> Result<Verdict, Malformed> {
        let may_edit = self.head_may_edit(dir);
        let st = self.dir_mut(dir);
        let keep = match st.phase {
            _ if end_of_stream => None,
            // A head no rewrite can touch is read as it goes by, once its size prefix is
            // known to be sane (so a garbage size never reaches the other side).
            Phase::Head { .. } if !may_edit && st.head.len() >= 4 => None,
            _ => st.keep_from(),
        };
        // A held frame stays held even when the host buffer is empty (all of it so far is in
        // the VM, and a callback may bring no new bytes).
        let holding = matches!(st.phase, Phase::Hold { .. });
        let Some(p) = keep.filter(|p| *p < len || holding) else {
            flush_edits(buf, &mut st.edits)?;
            // Everything goes. A held frame cut short by the end of the stream goes out as it
            // came: its bytes already moved into the VM are put back in front.
            if let Phase::Hold { taken, .. } = st.phase {
                if taken > 0 {
                    let back = st.held.get(..taken).unwrap_or(&[]).to_vec();
                    if !buf.replace_front(0, &back) {
                        return Err(Malformed::HostError {
                            what: "set_buffer_bytes",
                        });
                    }
                }
            }
            // Continue: the host drains the buffer, so the next callback starts at offset 0.
            st.scan = 0;
            match st.phase {
                // A head no rewrite can touch goes on; its bytes so far stay in `head`.
                Phase::Head { .. } if !end_of_stream && !st.head.is_empty() => {
                    st.head_gone = st.head.len();
                    st.phase = Phase::Head { start: 0 };
                }
                Phase::Head { .. } | Phase::Hold { .. } => st.next_frame(dir, 0),
                Phase::Walk => {
                    if let Some(ws) = st.walk.as_mut() {
                        ws.mark = None;
                    }
                }
                Phase::Skip { .. } | Phase::Bypass => {}
            }
            return Ok(Verdict::Continue);
        };
        if len <= PAUSE_MAX {
            // Small enough to leave in Envoy's buffer: pausing copies nothing, and the
            // bytes in front wait at most until the piece is complete or the buffer grows
            // past this bound.
            flush_edits(buf, &mut st.edits)?;
            return Ok(Verdict::Pause);
        }
        // Edits are always in front of the kept piece; should one not be, it goes in first.
        if st.edits.iter().any(|(at, d)| at + d.len() > p) {
            flush_edits(buf, &mut st.edits)?;
        }
        if let Phase::Hold {
            start,
            total,
            action,
            taken,
        } = st.phase
        {
            // Copy whatever of the frame is not in the VM yet, then take it out of the host.
            let copied = st.held.len().saturating_sub(taken);
            let in_host = len.saturating_sub(start);
            if in_host > copied {
                let more = read_exact(buf, start + copied, in_host - copied)?;
                st.held.extend_from_slice(&more);
            }
            cut_tail(buf, start, len, &mut st.edits)?;
            let st = self.dir_mut(dir);
            st.phase = Phase::Hold {
                start: 0,
                total,
                action,
                taken: taken + in_host,
            };
            st.scan = 0;
            return Ok(Verdict::Continue);
        }
        let tail = len - p;
        st.stash = read_exact(buf, p, tail)?;
        cut_tail(buf, p, len, &mut st.edits)?;
        let st = self.dir_mut(dir);
        st.scan -= p.min(st.scan);
        match &mut st.phase {
            Phase::Head { start } => *start -= p.min(*start),
            Phase::Walk => {
                if let Some(ws) = st.walk.as_mut() {
                    ws.mark = ws.mark.map(|m| m.saturating_sub(p));
                }
            }
            _ => {}
        }
        Ok(Verdict::Continue)
    }

    fn dir_mut(&mut self, dir: Direction) -> &mut DirState {
        match dir {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.resp,
        }
    }

    fn give_up(
        &mut self,
        dir: Direction,
        buf: &mut dyn HostBuffer,
        m: &Malformed,
        obs: &mut dyn Observer,
    ) -> Verdict {
        let action = self.cfg.on_malformed;
        let action = if matches!(m, Malformed::PolicyClose { .. }) {
            MalformedAction::Close
        } else {
            action
        };
        obs.malformed(dir, m, action);
        if action == MalformedAction::Passthrough {
            // What the policy neutralised stays neutralised, even when parsing stops.
            let st = self.dir_mut(dir);
            if flush_edits(buf, &mut st.edits).is_err() {
                self.closed = true;
                return Verdict::Close;
            }
            // A held frame whose first bytes were moved into the VM (a frame over PAUSE_MAX
            // arriving across callbacks) goes on as it came: in this direction its head goes
            // back in front of the host's bytes now (they start at 0: `settle` moved all that
            // preceded them); in the other direction, whose buffer is not ours to write in
            // this callback, it goes back in front at its next callback, as a stash does.
            if let Phase::Hold { taken, .. } = st.phase {
                if taken > 0 {
                    let back = st.held.get(..taken).unwrap_or(&[]).to_vec();
                    if !buf.replace_front(0, &back) {
                        self.closed = true;
                        return Verdict::Close;
                    }
                }
            }
            let other = self.dir_mut(dir.other());
            if let Phase::Hold { taken, .. } = other.phase {
                if taken > 0 {
                    let mut back = other.held.get(..taken).unwrap_or(&[]).to_vec();
                    back.extend_from_slice(&other.stash);
                    other.stash = back;
                }
            }
        }
        self.req.edits.clear();
        self.resp.edits.clear();
        self.inflight.clear();
        self.req.phase = Phase::Bypass;
        self.resp.phase = Phase::Bypass;
        self.req.walk = None;
        self.resp.walk = None;
        match action {
            MalformedAction::Close => {
                self.closed = true;
                Verdict::Close
            }
            MalformedAction::Passthrough => Verdict::Continue,
        }
    }

    /// Walk frames from the saved scan offset to the end of the buffer.
    fn walk(
        &mut self,
        dir: Direction,
        buf: &mut dyn HostBuffer,
        len: &mut usize,
        now_ns: u64,
        obs: &mut dyn Observer,
    ) -> Result<(), Malformed> {
        let max_frame = self.cfg.max_frame_bytes as usize;
        loop {
            let phase = self.dir_mut(dir).phase;
            match phase {
                Phase::Bypass => return Ok(()),
                Phase::Walk => {
                    if !self.drive_walk(dir, buf, *len, obs)? {
                        return Ok(()); // the walk needs bytes that have not arrived yet
                    }
                }
                Phase::Skip { remaining } => {
                    let st = self.dir_mut(dir);
                    let avail = len.saturating_sub(st.scan) as u64;
                    if remaining <= avail {
                        st.scan += remaining as usize;
                        let at = st.scan;
                        st.next_frame(dir, at);
                    } else {
                        st.phase = Phase::Skip {
                            remaining: remaining - avail,
                        };
                        st.scan = *len;
                        return Ok(());
                    }
                }
                Phase::Head { start } => {
                    // Collect up to `want` head bytes, reading only what is new.
                    let want = {
                        let st = self.dir_mut(dir);
                        if st.head.len() < 4 {
                            4
                        } else {
                            frame_total(&st.head).min(st.window)
                        }
                    };
                    let st = self.dir_mut(dir);
                    // The first `head_gone` head bytes were forwarded by earlier callbacks.
                    let gone = st.head_gone;
                    let have_end = (start + st.head.len()).saturating_sub(gone);
                    let avail_end = (*len).min((start + want).saturating_sub(gone));
                    if avail_end > have_end {
                        let bytes = read_exact(buf, have_end, avail_end - have_end)?;
                        st.head.extend_from_slice(&bytes);
                        st.scan = avail_end;
                    }
                    if st.head.len() < want {
                        return Ok(()); // wait for more bytes (or at a clean boundary)
                    }
                    if want == 4 {
                        let size = i32::from_be_bytes(size_bytes(&st.head));
                        // Every frame holds at least a correlation id; a size of 0..3 would
                        // also leave `want` at 4 forever (found by fuzz_tests).
                        if !(4..=max_frame as i64).contains(&i64::from(size)) {
                            return Err(Malformed::FrameSize { size });
                        }
                        continue; // now ask for the head proper
                    }
                    let total = frame_total(&st.head);
                    let head = std::mem::take(&mut st.head);
                    let outcome = match dir {
                        Direction::Request => self.on_request_head(&head, total, now_ns, obs),
                        Direction::Response => self.on_response_head(&head, total, now_ns, obs),
                    };
                    let st = self.dir_mut(dir);
                    st.head = head;
                    if st.head_gone > 0
                        && matches!(outcome, Plan::Hold(_) | Plan::ReplaceHead { .. })
                    {
                        // Cannot happen: heads that may be edited are never let go early.
                        return Err(Malformed::HostError {
                            what: "head edit after its bytes were forwarded",
                        });
                    }
                    if !matches!(outcome, Plan::NeedMore) {
                        st.head_gone = 0;
                    }
                    match outcome {
                        Plan::NeedMore => {
                            if want < total && st.window < HEAD_MAX {
                                st.window = st.window.saturating_mul(4).min(HEAD_MAX);
                                continue;
                            }
                            // The whole frame (or HEAD_MAX) is here and still too short.
                            return Err(Malformed::Decode {
                                api_key: None,
                                error: DecodeError::Invalid {
                                    field: "frame",
                                    reason: "header longer than the frame or than the head limit",
                                },
                            });
                        }
                        Plan::Stream => {
                            st.phase = Phase::Skip {
                                remaining: (total - st.head.len()) as u64,
                            };
                            st.head.clear();
                            st.window = st.initial_window(dir);
                        }
                        Plan::Walk(plan) => {
                            let carry = st.head.get(plan.body_at..).unwrap_or(&[]).to_vec();
                            let remaining = (total - st.head.len()) as u64;
                            let info = api::api_info(plan.api_key);
                            let flexible = info.is_some_and(|a| a.is_flexible(plan.version));
                            let request = dir == Direction::Request;
                            st.walk = Some(WalkState {
                                walker: Walker::new(
                                    plan.schema,
                                    plan.version,
                                    flexible,
                                    plan.header_tags,
                                ),
                                collector: Collector::new(
                                    plan.api_key,
                                    request,
                                    request && plan.access.is_some(),
                                ),
                                carry,
                                skip: 0,
                                remaining,
                                access: plan.access,
                                expects_response: plan.expects_response,
                                correlation_id: plan.correlation_id,
                                guard: plan.guard,
                                mark: None,
                            });
                            st.head.clear();
                            st.window = st.initial_window(dir);
                            st.phase = Phase::Walk;
                        }
                        Plan::ReplaceHead { old_len, new_head } => {
                            let mut out = prefix_for_replace(buf, start, &mut st.edits)?;
                            out.extend_from_slice(&new_head);
                            if !buf.replace_front(start + old_len, &out) {
                                return Err(Malformed::HostError {
                                    what: "set_buffer_bytes",
                                });
                            }
                            *len = *len - old_len + new_head.len();
                            let st = self.dir_mut(dir);
                            st.scan = start;
                            st.next_frame(dir, start);
                        }
                        Plan::Hold(action) => {
                            st.held = std::mem::take(&mut st.head);
                            st.phase = Phase::Hold {
                                start,
                                total,
                                action,
                                taken: 0,
                            };
                        }
                        Plan::Malformed(m) => return Err(m),
                    }
                }
                Phase::Hold {
                    start,
                    total,
                    action,
                    taken,
                } => {
                    // The frame's bytes from `taken` on are in the host from `start`.
                    let span = total - taken;
                    if *len < start + span {
                        return Ok(());
                    }
                    let (new_len, again) =
                        self.rewrite(dir, buf, start, total, taken, action, obs)?;
                    *len = *len - span + new_len;
                    let st = self.dir_mut(dir);
                    if again {
                        // Process the rewritten frame from its start, as if it had arrived so.
                        st.scan = start;
                        st.next_frame(dir, start);
                    } else {
                        st.scan = start + new_len;
                        st.next_frame(dir, start + new_len);
                    }
                }
            }
        }
    }

    fn on_request_head(
        &mut self,
        head: &[u8],
        total: usize,
        now_ns: u64,
        obs: &mut dyn Observer,
    ) -> Plan {
        let body = head.get(4..).unwrap_or(&[]);
        let complete = head.len() == total;
        let decode_err = |api_key, error: DecodeError| {
            if error.is_truncated() && !complete {
                Plan::NeedMore
            } else {
                Plan::Malformed(Malformed::Decode { api_key, error })
            }
        };
        let (hdr, rest) = match header::parse_request_header(body) {
            Ok(x) => x,
            Err(e) => return decode_err(None, e),
        };
        let body_at = 4 + body.len().saturating_sub(rest.remaining());
        let redo = self
            .req
            .redo
            .as_ref()
            .filter(|r| r.correlation_id == hdr.correlation_id);
        let original = redo.and_then(|r| r.original);
        if self.cfg.compiled_policy.is_some() && redo.is_none() {
            if let Some(out) = self.policy_gate(&hdr, total) {
                return out;
            }
        }
        let shown = match original {
            Some((k, v)) => RequestHeader {
                api_key: k,
                api_version: v,
                api: api::api_info(k),
                version_known: true,
                ..hdr.clone()
            },
            None => hdr.clone(),
        };
        let hdr = shown;
        if self.cfg.compiled_policy.is_some() && hdr.version_known {
            // SASL/PLAIN on a listener that is not SASL-encrypted: learn the username the
            // broker is about to authenticate (KIP-152: SaslHandshake v1 then SaslAuthenticate).
            let mut r = rest.clone();
            match hdr.api_key {
                SASL_HANDSHAKE => match r.string("mechanism") {
                    Ok(m) => {
                        let m = String::from_utf8_lossy(m.get(..64).unwrap_or(m)).into_owned();
                        self.sasl_mechanism = Some(m);
                    }
                    Err(e) => return decode_err(Some(hdr.api_key), e),
                },
                SASL_AUTHENTICATE if self.sasl_mechanism.as_deref() == Some("PLAIN") => {
                    let bytes = if hdr.is_flexible() {
                        r.uvarint("auth_bytes")
                            .and_then(|n| r.take(n.saturating_sub(1) as usize, "auth_bytes"))
                    } else {
                        r.i32("auth_bytes")
                            .and_then(|n| r.take(usize::try_from(n).unwrap_or(0), "auth_bytes"))
                    };
                    match bytes {
                        // PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd
                        Ok(b) => {
                            let user = b.split(|c| *c == 0).nth(1).unwrap_or(&[]);
                            let user = String::from_utf8_lossy(user.get(..256).unwrap_or(user));
                            self.sasl_pending = Some((hdr.correlation_id, user.into_owned()));
                        }
                        Err(e) => return decode_err(Some(hdr.api_key), e),
                    }
                }
                _ => {}
            }
        }
        let mut expects_response = true;
        if hdr.api_key == PRODUCE && hdr.version_known {
            match header::produce_acks(&hdr, rest) {
                Ok(0) => expects_response = false,
                Ok(_) => {}
                Err(e) => return decode_err(Some(hdr.api_key), e),
            }
        }
        if !hdr.version_known {
            obs.unknown_api(hdr.api_key, hdr.api_version);
        }
        // From here on the head is complete: whatever was decided about it goes with it.
        let pending = match self.req.redo.take() {
            Some(r) if r.correlation_id == hdr.correlation_id => r.splice,
            _ => None,
        };
        obs.request(&hdr, total as u64);
        if !expects_response {
            obs.produce_acks0();
            if self.acks0_recent.len() >= ACKS0_RING {
                self.acks0_recent.pop_front();
            }
            self.acks0_recent.push_back(hdr.correlation_id);
        } else if self.inflight.len() >= self.cfg.max_inflight_requests as usize {
            return Plan::Malformed(Malformed::InflightOverflow {
                limit: self.cfg.max_inflight_requests,
            });
        }
        let access = self.sample().then(|| {
            let mut client_id = String::from_utf8_lossy(hdr.client_id.unwrap_or(b"")).into_owned();
            if client_id.len() > ACCESS_CLIENT_ID_MAX {
                let mut cut = ACCESS_CLIENT_ID_MAX;
                while !client_id.is_char_boundary(cut) {
                    cut -= 1;
                }
                client_id.truncate(cut);
            }
            Box::new(AccessLog {
                client_id,
                api_key: hdr.api_key,
                api_version: hdr.api_version,
                correlation_id: hdr.correlation_id,
                topics: AccessTopics::default(),
                request_bytes: total as u64,
                response_bytes: None,
                latency_ns: None,
                error_code: None,
            })
        });
        let schema = if self.walk_requests && hdr.version_known && original.is_none() {
            walk::request_schema(hdr.api_key, hdr.api_version)
        } else {
            None
        };
        let (queued_access, walk_access) = match schema {
            Some(_) => (None, access),
            None => (access, None),
        };
        if expects_response {
            self.inflight.push_back(InFlight {
                correlation_id: hdr.correlation_id,
                api_key: hdr.api_key,
                api_version: hdr.api_version,
                sent_ns: now_ns,
                access: queued_access,
                splice: pending.map(Box::new),
                restore: None,
            });
        } else if let Some(a) = queued_access {
            obs.access_log(&a); // acks=0 and not walked: nothing more will be learned
        }
        // Produce under a policy is decided as it streams (crate::policy::guard).
        let guard = match (schema, hdr.api_key) {
            (Some(_), PRODUCE) if self.cfg.compiled_policy.is_some() => {
                let id = self.identity_with(
                    hdr.client_id
                        .map(|c| String::from_utf8_lossy(c).into_owned()),
                );
                self.cfg.compiled_policy.clone().and_then(|p| {
                    ProduceGuard::new(p, id, hdr.api_version)
                        .map(|g| WalkGuard::Produce(Box::new(g)))
                })
            }
            _ => None,
        };
        match schema {
            Some(schema) => Plan::Walk(Box::new(WalkPlan {
                schema,
                api_key: hdr.api_key,
                version: hdr.api_version,
                header_tags: false,
                body_at,
                access: walk_access,
                expects_response,
                correlation_id: hdr.correlation_id,
                guard,
            })),
            None => Plan::Stream,
        }
    }

    /// The connection's identity with one request's client id.
    fn identity_with(&self, client_id: Option<String>) -> Identity {
        Identity {
            client_id,
            ..self.identity.clone()
        }
    }

    /// Whether a request must be held for the policy (or cannot be let through at all).
    fn policy_gate(&mut self, hdr: &RequestHeader<'_>, total: usize) -> Option<Plan> {
        let cfg = self.cfg.clone();
        let policy = cfg.compiled_policy.as_ref()?;
        let id = self.identity_with(
            hdr.client_id
                .map(|c| String::from_utf8_lossy(c).into_owned()),
        );
        let audit = policy.mode == crate::policy::Mode::Audit;
        let api_denied = !policy.decide(&id, Question::Api(hdr.api_key)).allow;
        let (need, min_version) = match hdr.api_key {
            api::PRODUCE => (
                api_denied
                    || policy.may_deny_topics(&id, Operation::Produce)
                    || policy.rules.iter().any(|r| r.has_transactional_ids()),
                3,
            ),
            api::FETCH => (
                api_denied || policy.may_deny_topics(&id, Operation::Consume),
                4,
            ),
            20 => (
                api_denied || policy.may_deny_topics(&id, Operation::Delete),
                1,
            ),
            2 => (
                api_denied || policy.may_deny_topics(&id, Operation::Consume),
                1,
            ),
            api::METADATA => (
                api_denied || policy.may_deny_topics(&id, Operation::Describe),
                1,
            ),
            19 => (
                api_denied || policy.may_deny_topics(&id, Operation::Create),
                2,
            ),
            21 | 37 => (
                api_denied || policy.may_deny_topics(&id, Operation::Alter),
                0,
            ),
            // (Incremental)AlterConfigs also name groups and cluster resources: always checked.
            33 | 44 => (true, 0),
            22 => (
                api_denied || policy.rules.iter().any(|r| r.has_transactional_ids()),
                0,
            ),
            // OffsetCommit/OffsetFetch carry a group: always checked.
            8 => (true, 2),
            9 => (true, 1),
            11..=14 => (true, 0),
            // Groups, transactions and the KIP-848 consumer protocol (issue 11): always
            // checked. AddPartitionsToTxn v4+ (for brokers) is refused unless allowed.
            15 | 16 | 25 | 26 | 28 | 42 | 47 | 68 | 69 => (true, 0),
            // Topic-naming admin and consumer APIs (issue 11, point 4), from the versions
            // kafka-protocol reads. DescribeConfigs also names groups and cluster resources:
            // always checked.
            23 => (
                api_denied || policy.may_deny_topics(&id, Operation::Describe),
                2,
            ),
            32 => (true, 1),
            61 => (
                api_denied || policy.may_deny_topics(&id, Operation::Consume),
                0,
            ),
            75 => (
                api_denied || policy.may_deny_topics(&id, Operation::Describe),
                0,
            ),
            // Share groups (KIP-932): the group always, from v1 (what kafka-protocol reads).
            76..=79 => (true, 1),
            90..=92 => (true, 0),
            24 => (
                hdr.api_version > 3
                    || api_denied
                    || policy.may_deny_topics(&id, Operation::Produce)
                    || policy.rules.iter().any(|r| r.has_transactional_ids()),
                0,
            ),
            k => match enforce::class(k) {
                enforce::Class::NoResource | enforce::Class::Checked => (api_denied, 0),
                // Fail closed: an API whose resources the filter does not check goes on only
                // when a rule allows it explicitly; otherwise it is held and refused.
                enforce::Class::Unchecked => (!policy.decide_unchecked_api(&id, k).allow, 0),
            },
        };
        if !need {
            return None;
        }
        let close = |reason: String| Some(Plan::Malformed(Malformed::PolicyClose { reason }));
        if !hdr.version_known || hdr.api_version < min_version {
            if audit {
                return None;
            }
            return close(format!(
                "{} v{} cannot be inspected by the policy",
                api::api_name(hdr.api_key),
                hdr.api_version
            ));
        }
        if hdr.api_key == api::PRODUCE {
            return None; // decided while it streams: see crate::policy::guard
        }
        if total > cfg.max_buffered_frame_bytes as usize {
            if audit {
                return None;
            }
            return close(format!(
                "{} request of {total} bytes exceeds maxBufferedFrameBytes and cannot be inspected",
                api::api_name(hdr.api_key)
            ));
        }
        Some(Plan::Hold(HoldAction::Enforce))
    }

    /// Deterministic access-log sampling: with rate r, one request in every 1/r.
    fn sample(&mut self) -> bool {
        let cfg = &self.cfg.access_log;
        if !cfg.enabled {
            return false;
        }
        self.sample_acc += cfg.sample_rate;
        if self.sample_acc >= 1.0 - 1e-9 {
            self.sample_acc -= 1.0;
            true
        } else {
            false
        }
    }

    fn on_response_head(
        &mut self,
        head: &[u8],
        total: usize,
        now_ns: u64,
        obs: &mut dyn Observer,
    ) -> Plan {
        if head.len() < RESPONSE_HEAD.min(total) {
            return Plan::NeedMore;
        }
        let correlation_id = match header::response_correlation_id(head.get(4..).unwrap_or(&[])) {
            Ok(c) => c,
            Err(error) => {
                return Plan::Malformed(Malformed::Decode {
                    api_key: None,
                    error,
                })
            }
        };
        let head_matches = self.inflight.front().map(|r| r.correlation_id) == Some(correlation_id);
        if !head_matches {
            if let Some(pos) = self.acks0_recent.iter().position(|&c| c == correlation_id) {
                // An answer to an acks=0 Produce: everything older in the ring was skipped.
                self.acks0_recent.drain(..=pos);
                obs.produce_acks0_answered();
                return Plan::Stream;
            }
        }
        if let Some(front) = self.inflight.front_mut() {
            if front.correlation_id == correlation_id {
                match front.splice.as_deref() {
                    Some(Splice::Replace { .. }) => {
                        return Plan::Hold(HoldAction::ReplaceResponse);
                    }
                    Some(Splice::Rewrite(_)) => {
                        if total <= self.cfg.max_buffered_frame_bytes as usize {
                            return Plan::Hold(HoldAction::ReplaceResponse);
                        }
                        // Relaying it unchanged would show what the policy withheld.
                        return Plan::Malformed(Malformed::PolicyClose {
                            reason: format!(
                                "{} response of {total} bytes exceeds maxBufferedFrameBytes: the policy cannot rewrite it",
                                api::api_name(front.api_key)
                            ),
                        });
                    }
                    Some(Splice::Metadata {
                        all_topics, denied, ..
                    }) => {
                        if total <= self.cfg.max_buffered_frame_bytes as usize {
                            return Plan::Hold(HoldAction::ReplaceResponse);
                        }
                        if !*all_topics {
                            // Too large to hold: the denied topics' error entries go in front
                            // of the broker's topics, in the head; the rest streams.
                            let entries =
                                match enforce::metadata_failed_entries(front.api_version, denied) {
                                    Ok(e) => e,
                                    Err(error) => {
                                        return Plan::Malformed(Malformed::Decode {
                                            api_key: Some(api::METADATA),
                                            error,
                                        })
                                    }
                                };
                            let count = u32::try_from(denied.len()).unwrap_or(u32::MAX);
                            let version = front.api_version;
                            let plan =
                                prepend_plan(api::METADATA, version, head, total, count, &entries);
                            if matches!(plan, Plan::ReplaceHead { .. }) {
                                front.splice = None;
                            }
                            return plan;
                        }
                        // An all-topics answer too large to hold streams; the topics the
                        // client may not describe are answered in place (MetadataGuard).
                    }
                    Some(Splice::Prepend { count, entries }) => {
                        let plan = prepend_plan(
                            front.api_key,
                            front.api_version,
                            head,
                            total,
                            *count,
                            entries,
                        );
                        if matches!(plan, Plan::ReplaceHead { .. }) {
                            front.splice = None;
                        }
                        return plan;
                    }
                    None => {}
                }
            }
        }
        // KIP-951 NodeEndpoints come last, after every record of a Fetch response: such a
        // response streams and its NodeEndpoints tag is hidden (crate::policy::guard), never held.
        let mut hide_endpoints = false;
        if let (Some(front), Some(rw)) = (self.inflight.front(), self.cfg.compiled_rewrite.as_ref())
        {
            if front.correlation_id == correlation_id
                && self
                    .resp
                    .redo
                    .as_ref()
                    .is_none_or(|r| r.correlation_id != correlation_id)
                && rw.applies(front.api_key, front.api_version)
            {
                let big = total > self.cfg.max_buffered_frame_bytes as usize;
                match front.api_key {
                    api::FETCH => hide_endpoints = true,
                    PRODUCE if big => hide_endpoints = true,
                    api::METADATA if big => {
                        match metadata_head(rw, front.api_version, head, total) {
                            Ok(Some((old_len, new_head))) => {
                                self.resp.redo = Some(Redo::of(correlation_id));
                                return Plan::ReplaceHead { old_len, new_head };
                            }
                            Ok(None) => return Plan::NeedMore,
                            Err(error) => {
                                return Plan::Malformed(Malformed::Decode {
                                    api_key: Some(api::METADATA),
                                    error,
                                })
                            }
                        }
                    }
                    _ if big => {
                        return Plan::Malformed(Malformed::PolicyClose {
                            reason: format!(
                                "{} response of {total} bytes exceeds maxBufferedFrameBytes: its broker addresses cannot be rewritten",
                                api::api_name(front.api_key)
                            ),
                        });
                    }
                    _ => return Plan::Hold(HoldAction::RewriteAddresses),
                }
            }
        }
        self.resp.redo = None;
        let Some(req) = self.inflight.pop_front() else {
            return Plan::Malformed(Malformed::UnexpectedResponse { correlation_id });
        };
        if req.correlation_id != correlation_id {
            return Plan::Malformed(Malformed::CorrelationMismatch {
                expected: req.correlation_id,
                got: correlation_id,
            });
        }
        let latency_ns = now_ns.saturating_sub(req.sent_ns);
        obs.response(req.api_key, req.api_version, total as u64, latency_ns);
        let mut access = req.access;
        if let Some(a) = access.as_mut() {
            a.response_bytes = Some(total as u64);
            a.latency_ns = Some(latency_ns);
        }
        let schema = if self.walk_responses
            || hide_endpoints
            || req.restore.is_some()
            || req.splice.is_some()
        {
            // The body's length after the response header (whose tagged fields are one empty
            // byte from the brokers that write the short forms it tells apart).
            let header = RESPONSE_HEAD
                + usize::from(
                    api::api_info(req.api_key)
                        .is_some_and(|a| a.response_header_version(req.api_version) >= 1),
                );
            walk::response_schema_sized(req.api_key, req.api_version, total.saturating_sub(header))
        } else {
            None
        };
        if let Some(schema) = schema {
            let header_tags = api::api_info(req.api_key)
                .is_some_and(|a| a.response_header_version(req.api_version) >= 1);
            return Plan::Walk(Box::new(WalkPlan {
                schema,
                api_key: req.api_key,
                version: req.api_version,
                header_tags,
                body_at: RESPONSE_HEAD,
                access,
                expects_response: false,
                correlation_id,
                guard: match (req.restore, hide_endpoints) {
                    _ if matches!(req.splice.as_deref(), Some(Splice::Metadata { .. })) => {
                        let client_id = match req.splice.as_deref() {
                            Some(Splice::Metadata { client_id, .. }) => client_id.clone(),
                            _ => None,
                        };
                        self.cfg.compiled_policy.clone().map(|p| {
                            WalkGuard::Metadata(Box::new(MetadataGuard::new(
                                p,
                                self.identity_with(client_id),
                            )))
                        })
                    }
                    (Some(r), false) => Some(WalkGuard::Restore(Box::new(RestoreGuard::new(*r)))),
                    (r, true) => Some(WalkGuard::Restore(Box::new(
                        RestoreGuard::new(r.map(|r| *r).unwrap_or_default()).hiding_endpoints(),
                    ))),
                    (None, false) => None,
                },
            }));
        }
        if let Some(a) = access {
            obs.access_log(&a);
        }
        if req.api_key == API_VERSIONS && self.cfg.clamp_api_versions {
            if total > self.cfg.max_buffered_frame_bytes as usize {
                obs.rewrite_skipped(req.api_key, total as u64);
                return Plan::Stream;
            }
            return Plan::Hold(HoldAction::ClampApiVersions {
                version: req.api_version,
            });
        }
        Plan::Stream
    }

    /// Advance the current frame's walk over the bytes available. `Ok(true)` when the frame
    /// is finished with (the phase has moved on), `Ok(false)` when more bytes are needed.
    fn drive_walk(
        &mut self,
        dir: Direction,
        buf: &mut dyn HostBuffer,
        len: usize,
        obs: &mut dyn Observer,
    ) -> Result<bool, Malformed> {
        let lag_cap = if self.cfg.metrics.on(Family::Lag) {
            self.cfg.metrics.max_lag_partitions as usize
        } else {
            0
        };
        let (st, offsets) = match dir {
            Direction::Request => (&mut self.req, &mut self.fetch_offsets),
            Direction::Response => (&mut self.resp, &mut self.fetch_offsets),
        };
        let Some(ws) = st.walk.as_mut() else {
            st.phase = Phase::Skip { remaining: 0 };
            return Ok(true);
        };
        let api_key = ws.collector_api();
        let body_err = |error: DecodeError| Malformed::Decode {
            api_key: Some(api_key),
            error,
        };
        loop {
            if ws.skip > 0 {
                let from_carry = ws.skip.min(ws.carry.len() as u64) as usize;
                ws.carry.drain(..from_carry);
                ws.skip -= from_carry as u64;
                if ws.skip > ws.remaining {
                    return Err(body_err(DecodeError::Invalid {
                        field: "field length",
                        reason: "runs past the end of the frame",
                    }));
                }
                let avail = len.saturating_sub(st.scan) as u64;
                let n = ws.skip.min(avail);
                st.scan += n as usize;
                ws.remaining -= n;
                ws.skip -= n;
                if ws.skip > 0 {
                    return Ok(false);
                }
            }
            if ws.walker.is_done() {
                break;
            }
            let carry_start = st.scan.saturating_sub(ws.carry.len());
            let mut r = Reader::new(&ws.carry);
            let collector = &mut ws.collector;
            let guard = &mut ws.guard;
            let res = ws.walker.step(&mut r, &mut |ev| {
                let seen = match guard.as_mut() {
                    Some(WalkGuard::Produce(g)) => g.on_event(&ev, &mut |id| obs.topic_name(id)),
                    Some(WalkGuard::Restore(g)) => g.on_event(&ev),
                    Some(WalkGuard::Metadata(g)) => g.on_event(&ev),
                    None => Seen::Same,
                };
                match seen {
                    Seen::Same => collector.on(ev, offsets, lag_cap, obs),
                    Seen::Hidden => {}
                    Seen::Code(c) => {
                        collector.on(Event::Int(F::ErrorCode, c.into()), offsets, lag_cap, obs)
                    }
                    Seen::Topic(i) => {
                        if let Some(WalkGuard::Restore(g)) = guard.as_ref() {
                            let ev = Event::Str(F::Topic, Some(g.original(i)));
                            collector.on(ev, offsets, lag_cap, obs);
                        }
                    }
                }
            });
            match res {
                Ok(step) => {
                    let used = r.position();
                    ws.carry.drain(..used);
                    if let Some(g) = ws.guard.as_mut() {
                        apply_guard(g, &mut ws.mark, carry_start + used, buf, &mut st.edits, obs)?;
                    }
                    match step {
                        Step::Advanced => {}
                        Step::Skip(n) => ws.skip = n,
                        Step::Done => {}
                    }
                }
                Err(e) if e.is_truncated() => {
                    if ws.remaining == 0 {
                        return Err(body_err(e));
                    }
                    // Read what the next step needs (at least WALK_MIN_READ, so that runs of
                    // small fields take one host call), never a fixed window past it.
                    let target = ws
                        .walker
                        .need(&ws.carry)
                        .max(ws.carry.len() + 1)
                        .max(WALK_MIN_READ);
                    if target > HEAD_MAX {
                        return Err(body_err(DecodeError::Invalid {
                            field: "field",
                            reason: "longer than the walk limit",
                        }));
                    }
                    let avail = len.saturating_sub(st.scan) as u64;
                    let want = (target - ws.carry.len()) as u64;
                    let n = want.min(ws.remaining).min(avail) as usize;
                    if n == 0 {
                        return Ok(false);
                    }
                    let bytes = read_exact(buf, st.scan, n)?;
                    ws.carry.extend_from_slice(&bytes);
                    st.scan += n;
                    ws.remaining -= n as u64;
                }
                Err(e) => return Err(body_err(e)),
            }
        }
        // The walk is over: whatever of the frame is left streams through unread.
        let remaining = ws.remaining;
        let finished = st.walk.take();
        st.phase = Phase::Skip { remaining };
        if let Some(ws) = finished {
            self.finish_walk(ws, obs);
        }
        Ok(true)
    }

    fn finish_walk(&mut self, mut ws: WalkState, obs: &mut dyn Observer) {
        if let Some(WalkGuard::Restore(g)) = ws.guard.as_ref() {
            if g.hidden() > 0 {
                obs.node_endpoints_hidden(ws.collector.api_key(), g.hidden());
            }
        }
        if let Some(WalkGuard::Produce(g)) = ws.guard.take() {
            let restore = g.into_restore();
            if !restore.is_empty() && ws.expects_response {
                if let Some(q) = self
                    .inflight
                    .iter_mut()
                    .rev()
                    .find(|q| q.correlation_id == ws.correlation_id)
                {
                    q.restore = Some(Box::new(restore));
                }
            }
        }
        if ws.collector.api_key() == SASL_AUTHENTICATE && !ws.expects_response {
            if let Some((corr, user)) = self.sasl_pending.take() {
                if corr == ws.correlation_id && ws.collector.first_error == 0 && ws.walker.is_done()
                {
                    self.identity.sasl_user = Some(user);
                }
            }
        }
        let Some(mut access) = ws.access else { return };
        if let Some(topics) = ws.collector.access {
            // Request side: the topics go with the queued request to its response.
            access.topics = topics;
            if ws.expects_response {
                if let Some(q) = self
                    .inflight
                    .iter_mut()
                    .rev()
                    .find(|q| q.correlation_id == ws.correlation_id)
                {
                    q.access = Some(access);
                }
                return;
            }
        } else {
            access.error_code = Some(ws.collector.first_error);
        }
        obs.access_log(&access);
    }

    /// The held frame is whole: rewrite it. Its first `taken` bytes are in the VM only, the
    /// rest is in the host at `[start, start + total - taken)`. Returns the frame's length now
    /// and whether the (new) frame must be processed again from its start.
    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        &mut self,
        dir: Direction,
        buf: &mut dyn HostBuffer,
        start: usize,
        total: usize,
        taken: usize,
        action: HoldAction,
        obs: &mut dyn Observer,
    ) -> Result<(usize, bool), Malformed> {
        let st = self.dir_mut(dir);
        let have = st.held.len().min(total).max(taken);
        let rest = read_exact(buf, start + (have - taken), total - have)?;
        let mut frame = std::mem::take(&mut self.dir_mut(dir).held);
        frame.truncate(have);
        frame.extend_from_slice(&rest);
        let span = total - taken;
        let done = match action {
            HoldAction::ClampApiVersions { version } => {
                self.clamp(&frame, version, obs).map(|n| (n, false))
            }
            HoldAction::Enforce => self.enforce(&frame, obs).map(|n| (n, true)),
            HoldAction::ReplaceResponse => self.replace_response(&frame, obs).map(|n| (n, true)),
            HoldAction::RewriteAddresses => self.rewrite_addresses(&frame).map(|n| (n, true)),
        };
        let (new, again) = match done {
            Ok(d) => d,
            Err(m) => {
                // Found malformed: the bytes already moved into the VM must not be lost, since
                // under `passthrough` give_up puts them back in front (found by
                // tests/tests/hostile.rs: a held frame that spanned callbacks lost its head).
                self.dir_mut(dir).held = frame;
                return Err(m);
            }
        };
        let new = match new {
            Some(f) => f,
            // Unchanged, and all of it is in the host: leave the buffer untouched.
            None if taken == 0 => return Ok((total, again)),
            // Unchanged: the bytes moved into the VM go back.
            None => {
                return self
                    .replace_frame(dir, buf, start, span, Some(frame))
                    .map(|n| (n, again))
            }
        };
        self.replace_frame(dir, buf, start, span, Some(new))
            .map(|n| (n, again))
    }

    /// Clamp the ApiVersions response `frame` in place; `None` when nothing changes.
    fn clamp(
        &mut self,
        frame: &[u8],
        version: i16,
        obs: &mut dyn Observer,
    ) -> Result<Option<Vec<u8>>, Malformed> {
        let mut frame = frame.to_vec();
        // ApiVersions responses always use response header v0: the body starts after the
        // size and the correlation id.
        let body = frame.get_mut(8..).unwrap_or(&mut []);
        let cfg = self.cfg.clone();
        let max = |info: &api::ApiInfo| {
            let m = apiversions::effective_max(info, cfg.compiled_policy.is_some());
            match cfg
                .compiled_rewrite
                .as_ref()
                .and_then(|r| r.version_cap(info.key))
            {
                Some(cap) => m.min(cap),
                None => m,
            }
        };
        let clamps = apiversions::plan_clamps_with(version, body, &max).map_err(|error| {
            Malformed::Decode {
                api_key: Some(API_VERSIONS),
                error,
            }
        })?;
        if clamps.is_empty() {
            return Ok(None);
        }
        apiversions::apply_clamps(body, &clamps);
        obs.api_versions_clamped(&clamps);
        Ok(Some(frame))
    }

    /// Put `new` (a whole frame) in place of the host's `[start, start + span)`; `None`
    /// leaves the buffer untouched. Returns the frame's length now.
    fn replace_frame(
        &mut self,
        dir: Direction,
        buf: &mut dyn HostBuffer,
        start: usize,
        span: usize,
        new: Option<Vec<u8>>,
    ) -> Result<usize, Malformed> {
        let Some(frame) = new else {
            return Ok(span);
        };
        // Envoy can only drain-and-prepend at the front, so whatever precedes the frame in
        // this buffer (at most what arrived with it) is copied and written back with it.
        let mut out = prefix_for_replace(buf, start, &mut self.dir_mut(dir).edits)?;
        out.extend_from_slice(&frame);
        if !buf.replace_front(start + span, &out) {
            return Err(Malformed::HostError {
                what: "set_buffer_bytes",
            });
        }
        Ok(frame.len())
    }

    /// Apply the policy to a complete request frame; the new frame, if it changes.
    fn enforce(
        &mut self,
        frame: &[u8],
        obs: &mut dyn Observer,
    ) -> Result<Option<Vec<u8>>, Malformed> {
        let cfg = self.cfg.clone();
        let Some(policy) = cfg.compiled_policy.as_ref() else {
            return Ok(None);
        };
        let body = frame.get(4..).unwrap_or(&[]);
        let (hdr, rest) =
            header::parse_request_header(body).map_err(|error| Malformed::Decode {
                api_key: None,
                error,
            })?;
        let body_at = 4 + body.len().saturating_sub(rest.remaining());
        let id = self.identity_with(
            hdr.client_id
                .map(|c| String::from_utf8_lossy(c).into_owned()),
        );
        let req_body = frame.get(body_at..).unwrap_or(&[]);
        let (out, notes) = enforce::enforce_request(
            policy,
            &id,
            &mut ObsNames(obs),
            hdr.api_key,
            hdr.api_version,
            req_body,
        )
        .map_err(|error| Malformed::Decode {
            api_key: Some(hdr.api_key),
            error,
        })?;
        for n in &notes {
            obs.policy_note(n);
        }
        let corr = hdr.correlation_id;
        self.req.redo = Some(Redo {
            correlation_id: corr,
            splice: None,
            original: None,
        });
        match out {
            Enforced::Forward => Ok(None),
            Enforced::Close { reason } => Err(Malformed::PolicyClose { reason }),
            Enforced::Rewrite { body, splice } => {
                let mut f = Vec::with_capacity(body_at + body.len());
                f.extend_from_slice(frame.get(..body_at).unwrap_or(&[]));
                f.extend_from_slice(&body);
                set_size(&mut f);
                if let Some(r) = self.req.redo.as_mut() {
                    r.splice = splice;
                }
                Ok(Some(f))
            }
            Enforced::Probe { body } => {
                // ApiVersions v0 with request header v1: api key, version, correlation id,
                // client id; no body. Every broker answers it and nothing changes.
                let mut f = vec![0, 0, 0, 0];
                f.extend_from_slice(&API_VERSIONS.to_be_bytes());
                f.extend_from_slice(&enforce::PROBE_API_VERSION.to_be_bytes());
                f.extend_from_slice(&corr.to_be_bytes());
                match hdr.client_id {
                    Some(c) => {
                        let n = i16::try_from(c.len()).unwrap_or(0);
                        f.extend_from_slice(&n.to_be_bytes());
                        f.extend_from_slice(c.get(..n as usize).unwrap_or(&[]));
                    }
                    None => f.extend_from_slice(&(-1i16).to_be_bytes()),
                }
                set_size(&mut f);
                self.req.redo = Some(Redo {
                    correlation_id: corr,
                    splice: Some(Splice::Replace { body }),
                    original: Some((hdr.api_key, hdr.api_version)),
                });
                Ok(Some(f))
            }
        }
    }

    /// A response with broker addresses has arrived whole: rewrite them (or leave the frame
    /// byte-identical when no rule applies).
    fn rewrite_addresses(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, Malformed> {
        let cfg = self.cfg.clone();
        let (Some(rw), Some(front)) = (cfg.compiled_rewrite.as_ref(), self.inflight.front()) else {
            return Ok(None);
        };
        let (api_key, version) = (front.api_key, front.api_version);
        self.resp.redo = Some(Redo::of(front.correlation_id));
        let header_v1 =
            api::api_info(api_key).is_some_and(|a| a.response_header_version(version) >= 1);
        let mut r = Reader::new(frame.get(8..).unwrap_or(&[]));
        let err = |error| Malformed::Decode {
            api_key: Some(api_key),
            error,
        };
        if header_v1 {
            r.skip_tagged_fields("response_header.tagged_fields")
                .map_err(err)?;
        }
        let head_len = 8 + r.position();
        let Some(body) =
            crate::rewrite::rewrite_response(rw, api_key, version, r.rest()).map_err(err)?
        else {
            return Ok(None);
        };
        let mut f = Vec::with_capacity(head_len + body.len());
        f.extend_from_slice(frame.get(..head_len).unwrap_or(&[]));
        f.extend_from_slice(&body);
        set_size(&mut f);
        Ok(Some(f))
    }

    /// The probe's answer has arrived whole: the client gets the synthesized response of the
    /// API it sent instead.
    fn replace_response(
        &mut self,
        frame: &[u8],
        obs: &mut dyn Observer,
    ) -> Result<Option<Vec<u8>>, Malformed> {
        let Some(front) = self.inflight.front_mut() else {
            return Ok(None);
        };
        let Some(splice) = front.splice.take() else {
            return Ok(None);
        };
        let header_v1 = api::api_info(front.api_key)
            .is_some_and(|a| a.response_header_version(front.api_version) >= 1);
        let body = match *splice {
            Splice::Replace { body } => body,
            Splice::Metadata {
                all_topics,
                denied,
                client_id,
            } => {
                let cfg = self.cfg.clone();
                let Some(policy) = cfg.compiled_policy.as_ref() else {
                    return Ok(None);
                };
                // `front` borrows the queue mutably: build the identity from the field.
                let id = Identity {
                    client_id,
                    ..self.identity.clone()
                };
                let mut r = Reader::new(frame.get(8..).unwrap_or(&[]));
                if header_v1 {
                    r.skip_tagged_fields("response_header.tagged_fields")
                        .map_err(|error| Malformed::Decode {
                            api_key: Some(api::METADATA),
                            error,
                        })?;
                }
                let mut notes = Vec::new();
                let body = enforce::rewrite_metadata_response(
                    policy,
                    &id,
                    front.api_version,
                    r.rest(),
                    all_topics,
                    &denied,
                    policy.hide_unauthorized_topics,
                    &mut notes,
                )
                .map_err(|error| Malformed::Decode {
                    api_key: Some(api::METADATA),
                    error,
                })?;
                for n in &notes {
                    obs.policy_note(n);
                }
                body
            }
            Splice::Rewrite(rw) => {
                let cfg = self.cfg.clone();
                let Some(policy) = cfg.compiled_policy.as_ref() else {
                    return Ok(None);
                };
                let (api_key, version) = (front.api_key, front.api_version);
                let id = Identity {
                    client_id: rw.client_id.clone(),
                    ..self.identity.clone()
                };
                let err = |error| Malformed::Decode {
                    api_key: Some(api_key),
                    error,
                };
                let mut r = Reader::new(frame.get(8..).unwrap_or(&[]));
                if header_v1 {
                    r.skip_tagged_fields("response_header.tagged_fields")
                        .map_err(err)?;
                }
                let mut notes = Vec::new();
                let body = enforce::rewrite_response(
                    policy,
                    &id,
                    api_key,
                    version,
                    r.rest(),
                    &rw.edit,
                    &mut notes,
                )
                .map_err(err)?;
                for n in &notes {
                    obs.policy_note(n);
                }
                body
            }
            Splice::Prepend { .. } => return Ok(None),
        };
        let mut f = vec![0, 0, 0, 0];
        f.extend_from_slice(frame.get(4..8).unwrap_or(&[0, 0, 0, 0]));
        if header_v1 {
            f.push(0); // response header v1: no tagged fields
        }
        f.extend_from_slice(&body);
        set_size(&mut f);
        Ok(Some(f))
    }
}

impl WalkState {
    fn collector_api(&self) -> i16 {
        self.collector.api_key()
    }
}

/// Write the size prefix of a frame built in memory.
fn set_size(f: &mut [u8]) {
    let size = i32::try_from(f.len().saturating_sub(4)).unwrap_or(i32::MAX);
    if let Some(p) = f.get_mut(..4) {
        p.copy_from_slice(&size.to_be_bytes());
    }
}

/// A Metadata response too large to hold: from its head (size, correlation id, header tags,
/// body), the bytes through the brokers array and their rewritten replacement (size fixed).
/// `Ok(None)`: the head does not reach the end of the brokers array yet.
fn metadata_head(
    rw: &crate::rewrite::Rewriter,
    version: i16,
    head: &[u8],
    total: usize,
) -> Result<Option<(usize, Vec<u8>)>, DecodeError> {
    let header_v1 =
        api::api_info(api::METADATA).is_some_and(|a| a.response_header_version(version) >= 1);
    let mut r = Reader::new(head.get(8..).unwrap_or(&[]));
    if header_v1 {
        match r.skip_tagged_fields("response_header.tagged_fields") {
            Ok(()) => {}
            Err(e) if e.is_truncated() && head.len() < total => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let at = 8 + r.position();
    let body = head.get(at..).unwrap_or(&[]);
    let Some((old, new)) = crate::rewrite::rewrite_metadata_head(rw, version, body)? else {
        if head.len() < total {
            return Ok(None);
        }
        return Err(DecodeError::Truncated {
            field: "metadata brokers",
        });
    };
    let mut out = Vec::with_capacity(at + new.len());
    out.extend_from_slice(head.get(..at).unwrap_or(&[]));
    out.extend_from_slice(&new);
    let old_size = i64::from(i32::from_be_bytes(size_bytes(head)));
    let size = old_size + new.len() as i64 - old as i64;
    let size = i32::try_from(size).map_err(|_| DecodeError::Invalid {
        field: "frame",
        reason: "rewritten frame too large",
    })?;
    if let Some(p) = out.get_mut(..4) {
        p.copy_from_slice(&size.to_be_bytes());
    }
    Ok(Some((at + old, out)))
}

/// The plan for a response whose top-level topics array gets `count` encoded `entries` in
/// front ([`prepend_head`]): the new head, more head bytes, or malformed.
fn prepend_plan(
    api_key: i16,
    version: i16,
    head: &[u8],
    total: usize,
    count: u32,
    entries: &[u8],
) -> Plan {
    let malformed = |error| {
        Plan::Malformed(Malformed::Decode {
            api_key: Some(api_key),
            error,
        })
    };
    match prepend_head(api_key, version, head, count, entries) {
        Ok(Some((old_len, new_head))) => Plan::ReplaceHead { old_len, new_head },
        Ok(None) if head.len() < total => Plan::NeedMore,
        Ok(None) => malformed(DecodeError::Truncated {
            field: "response topics array",
        }),
        Err(error) => malformed(error),
    }
}

/// For [`Splice::Prepend`]: from a response head, the bytes through the top-level topics array
/// count and the new head (size fixed, count raised, `entries` after it). `Ok(None)` when the
/// head does not reach the count yet.
fn prepend_head(
    api_key: i16,
    version: i16,
    head: &[u8],
    count: u32,
    entries: &[u8],
) -> Result<Option<(usize, Vec<u8>)>, DecodeError> {
    if api_key == api::METADATA {
        // The topics array follows the variable-length brokers array and cluster id.
        return prepend_head_at(api_key, version, head, count, entries, &mut |r| {
            enforce::skip_to_metadata_topics(r, version)
        });
    }
    if enforce::prepends_after_error_message(api_key) {
        // The array follows a variable-length error message.
        return prepend_head_at(api_key, version, head, count, entries, &mut |r| {
            enforce::skip_to_share_group_offsets_responses(r)
        });
    }
    let Some(prefix) = enforce::prepend_prefix_len(api_key, version) else {
        return Err(DecodeError::Invalid {
            field: "splice",
            reason: "no topics array to prepend to",
        });
    };
    prepend_head_at(api_key, version, head, count, entries, &mut |r| {
        r.skip(prefix, "response prefix")
    })
}

/// [`prepend_head`] with `to_array` moving a reader at the body's start to the array count.
fn prepend_head_at(
    api_key: i16,
    version: i16,
    head: &[u8],
    count: u32,
    entries: &[u8],
    to_array: &mut dyn FnMut(&mut Reader<'_>) -> Result<(), DecodeError>,
) -> Result<Option<(usize, Vec<u8>)>, DecodeError> {
    let info = api::api_info(api_key);
    let flexible = info.is_some_and(|a| a.is_flexible(version));
    let header_v1 = info.is_some_and(|a| a.response_header_version(version) >= 1);
    let body = head.get(8..).unwrap_or(&[]);
    let mut r = Reader::new(body);
    let parsed = (|| -> Result<(usize, u32, usize), DecodeError> {
        if header_v1 {
            r.skip_tagged_fields("response_header.tagged_fields")?;
        }
        to_array(&mut r)?;
        let at = r.position();
        let old = if flexible {
            r.uvarint("topics")?.saturating_sub(1)
        } else {
            u32::try_from(r.i32("topics")?.max(0)).unwrap_or(0)
        };
        Ok((at, old, r.position()))
    })();
    let (at, old, end) = match parsed {
        Ok(x) => x,
        Err(e) if e.is_truncated() => return Ok(None),
        Err(e) => return Err(e),
    };
    let new = old.saturating_add(count);
    let mut out = Vec::with_capacity(8 + end + 5 + entries.len());
    out.extend_from_slice(head.get(..8 + at).unwrap_or(&[]));
    if flexible {
        crate::codec::reader::put_uvarint(&mut out, new.saturating_add(1));
    } else {
        out.extend_from_slice(&i32::try_from(new).unwrap_or(i32::MAX).to_be_bytes());
    }
    out.extend_from_slice(entries);
    // The frame grows by what the head grew by.
    let old_size = i32::from_be_bytes(size_bytes(head));
    let grow = out.len() as i64 - (8 + end) as i64;
    let size = i32::try_from(i64::from(old_size) + grow).map_err(|_| DecodeError::Invalid {
        field: "frame",
        reason: "spliced frame too large",
    })?;
    if let Some(p) = out.get_mut(..4) {
        p.copy_from_slice(&size.to_be_bytes());
    }
    Ok(Some((8 + end, out)))
}

const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;

/// Which directions' bodies this config needs walked.
fn cfg_walks(cfg: &Config) -> (bool, bool) {
    let m = &cfg.metrics;
    let log = cfg.access_log.enabled || cfg.compiled_policy.is_some();
    let req = log || m.on(Family::Produce) || m.on(Family::Lag) || m.on(Family::Groups);
    let endpoints = cfg
        .compiled_rewrite
        .as_ref()
        .is_some_and(|r| r.node_endpoints == crate::rewrite::NodeEndpointsMode::Rewrite);
    let resp = log
        || endpoints
        || m.on(Family::Fetch)
        || m.on(Family::Errors)
        || m.on(Family::Lag)
        || m.on(Family::Produce);
    (req, resp)
}

/// After a guarded walk step that ended at host offset `end`: report the guard's notes, move
/// its mark, and overwrite the bytes it neutralised or restored (same length, in place).
fn apply_guard(
    g: &mut WalkGuard,
    mark: &mut Option<usize>,
    end: usize,
    buf: &mut dyn HostBuffer,
    pending: &mut Edits,
    obs: &mut dyn Observer,
) -> Result<(), Malformed> {
    let fx = match g {
        WalkGuard::Produce(p) => p.effects(),
        WalkGuard::Restore(r) => r.effects(),
        WalkGuard::Metadata(m) => m.effects(),
    };
    for n in &fx.notes {
        obs.policy_note(n);
    }
    if let Some(reason) = fx.close {
        return Err(Malformed::PolicyClose { reason });
    }
    for e in fx.edits {
        let at = match e.target {
            Target::LastField => end.checked_sub(e.data.len()),
            Target::Back(n) => end.checked_sub(n),
            Target::Mark => *mark,
        };
        let Some(at) = at else {
            return Err(Malformed::HostError {
                what: "guard edit without a position",
            });
        };
        if at.saturating_add(e.data.len()) > buf.len() {
            return Err(Malformed::HostError {
                what: "guard edit past the buffer",
            });
        }
        pending.push((at, e.data));
    }
    match fx.mark {
        MarkOp::Keep => {}
        MarkOp::Set(n) => *mark = end.checked_sub(n),
        MarkOp::Clear => *mark = None,
    }
    Ok(())
}

/// The first `n` bytes of the host buffer with the pending edits inside them applied (and
/// taken off the list): the copy a drain-and-prepend writes back.
fn front_with_edits(
    buf: &mut dyn HostBuffer,
    n: usize,
    edits: &mut Edits,
) -> Result<Vec<u8>, Malformed> {
    let mut out = if n > 0 {
        read_exact(buf, 0, n)?
    } else {
        Vec::new()
    };
    let mut err = None;
    edits.retain(|(at, data)| {
        let end = at.saturating_add(data.len());
        if end > n {
            return true;
        }
        match out.get_mut(*at..end) {
            Some(dst) => dst.copy_from_slice(data),
            None => err = Some(()),
        }
        false
    });
    match err {
        Some(()) => Err(Malformed::HostError {
            what: "guard edit outside the buffer",
        }),
        None => Ok(out),
    }
}

/// Write every pending edit into the host buffer at once. Envoy cannot write mid-buffer
/// (`Buffer::copyFrom`): the bytes through the last edit are copied out, patched and written
/// back with one drain-and-prepend, so the edits of one callback cost one copy, not one each.
fn flush_edits(buf: &mut dyn HostBuffer, edits: &mut Edits) -> Result<(), Malformed> {
    let Some(end) = edits.iter().map(|(at, d)| at.saturating_add(d.len())).max() else {
        return Ok(());
    };
    let bytes = front_with_edits(buf, end, edits)?;
    if buf.replace_front(end, &bytes) {
        Ok(())
    } else {
        Err(Malformed::HostError {
            what: "set_buffer_bytes",
        })
    }
}

/// The bytes in front of a replacement at `start`, edits applied. An edit at or past
/// `start` (never expected: edits are in frames already walked) is written in first, as the
/// replacement would move it.
fn prefix_for_replace(
    buf: &mut dyn HostBuffer,
    start: usize,
    edits: &mut Edits,
) -> Result<Vec<u8>, Malformed> {
    if edits.iter().any(|(at, d)| at + d.len() > start) {
        flush_edits(buf, edits)?;
    }
    front_with_edits(buf, start, edits)
}

/// Remove `[from, len)` from the end of the host buffer, keeping `[0, from)`: Envoy can only
/// drain and prepend at the front, so the kept part is copied out and written back.
fn cut_tail(
    buf: &mut dyn HostBuffer,
    from: usize,
    len: usize,
    edits: &mut Edits,
) -> Result<(), Malformed> {
    let keep = prefix_for_replace(buf, from, edits)?;
    if buf.replace_front(len, &keep) {
        Ok(())
    } else {
        Err(Malformed::HostError {
            what: "set_buffer_bytes",
        })
    }
}

/// Copy exactly `len` bytes at `start` out of the host; a short or failed read is a host error.
fn read_exact(buf: &mut dyn HostBuffer, start: usize, len: usize) -> Result<Vec<u8>, Malformed> {
    buf.read(start, len)
        .filter(|b| b.len() == len)
        .ok_or(Malformed::HostError {
            what: "get_buffer_bytes",
        })
}

fn size_bytes(head: &[u8]) -> [u8; 4] {
    let mut s = [0u8; 4];
    if let Some(b) = head.get(..4) {
        s.copy_from_slice(b);
    }
    s
}

/// Total frame length (size prefix included) from a head of at least 4 bytes whose size was
/// already validated as non-negative.
fn frame_total(head: &[u8]) -> usize {
    (i32::from_be_bytes(size_bytes(head)).max(0) as usize).saturating_add(4)
}
