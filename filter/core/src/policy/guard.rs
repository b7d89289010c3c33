//! Produce under a policy, decided while the request streams through.
//!
//! A Produce request can be a megabyte of record batches (librdkafka's default `batch.size`
//! is 1,000,000 per partition, and it pipelines several such requests). Holding it whole to
//! drop denied topics would stall the connection at Envoy's buffer limit, and its size prefix
//! has left the filter long before the records of its last topic arrive. So nothing changes
//! size: each denied part is **neutralised in place**, with the same number of bytes, so that
//! the broker refuses it and writes nothing, and the small Produce response is put right on
//! its way back (the original name, index or id, and the policy's error code):
//!
//! - a denied topic (v3-12): its name becomes a same-length name made of characters Kafka
//!   never allows in a topic name (`[a-zA-Z0-9._-]` only, `org.apache.kafka.common.internals.Topic`).
//!   Kafka answers a Produce to a topic it does not have with UNKNOWN_TOPIC_OR_PARTITION and
//!   never creates topics on Produce (`ReplicaManager.appendToLocalLog`, apache/kafka
//!   `core/src/main/scala/kafka/server/ReplicaManager.scala`);
//! - a denied topic by id (v13+): its id becomes an id no topic has (UNKNOWN_TOPIC_ID);
//! - a partition refused by a produce constraint seen in its first batch header (size,
//!   compression): its partition index becomes a negative index no partition has. The index
//!   precedes the batch, so the session keeps the few bytes from the index to the end of the
//!   batch header back (a *mark*) until the decision is made;
//! - and every record batch of a neutralised part carries a producer id no broker issued
//!   (see `ProduceGuard::neutralise_batch`): tansu 0.6 stores a Produce to any name or
//!   index, but refuses that.
//!
//! Kafka closes the connection when a partition of an `acks=0` Produce fails
//! (`KafkaApis.handleProduceRequest`), as it does for its own authorization failures.
//!
//! The decisions are the same as [`crate::policy::enforce`]'s whole-request ones (same rules, notes
//! and error codes); the session applies the edits with Envoy's drain-and-prepend, which
//! copies only the bytes in front of the edit in the current buffer, and only on denial.

use std::rc::Rc;

use super::model::{AcksValue, Codec, Identity, OnDeny, Operation, Policy, Question};
use crate::codec::walk::{Batch, Event, F};
use crate::policy::enforce::{
    Note, Outcome, CLUSTER_AUTHORIZATION_FAILED, INVALID_REQUIRED_ACKS, RECORD_LIST_TOO_LARGE,
    TOPIC_AUTHORIZATION_FAILED, TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    UNSUPPORTED_COMPRESSION_TYPE,
};

/// Characters that never appear in a Kafka topic name: a neutralised name can neither be
/// an existing topic nor be created.
const NEUTRAL_ALPHABET: &[u8] = b"!#$%&()*+,/:;<=>?@[]^`{|}~";
/// Neutralised partition indexes count down from here (Kafka partitions are >= 0).
const NEUTRAL_PARTITION_BASE: i32 = -1_000_000;
/// Neutralised topic ids: this prefix then a counter (ids are random v4 UUIDs).
const NEUTRAL_ID_PREFIX: &[u8; 8] = b"kmf-deny";
/// The producer id a neutralised batch carries: far above any id a broker hands out.
const NEUTRAL_PRODUCER_ID: i64 = 0x7fff_ffff_0000_0001;
/// A v2 record batch header (KIP-98) and where its producer id starts.
const BATCH_HEADER_BYTES: u64 = 61;
const PRODUCER_ID_OFFSET: usize = 43;
/// Most neutralised parts one request may carry (each is remembered until its response).
pub const MAX_NEUTRAL: usize = 4096;

/// Which bytes an edit overwrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The last `data.len()` bytes of the step that emitted the event.
    LastField,
    /// The bytes at the mark set earlier.
    Mark,
    /// `n` bytes before the end of the step.
    Back(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub target: Target,
    pub data: Vec<u8>,
}

/// What the guard wants done with the mark after the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MarkOp {
    #[default]
    Keep,
    /// Set it at the start of the last `n` bytes of the step.
    Set(usize),
    Clear,
}

/// What a guard asks of the session after one walk step: the same for every guard.
#[derive(Debug, Default)]
pub struct Effects {
    pub edits: Vec<Edit>,
    pub mark: MarkOp,
    /// Decisions to count and log.
    pub notes: Vec<Note>,
    /// Close the connection (`onDeny: close`, or a denial that cannot be neutralised).
    pub close: Option<String>,
}

/// How the collector should see an event the guard changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Same,
    /// An error code replaced by this one.
    Code(i16),
    /// A topic name restored: the `n`th neutralised topic's original.
    Topic(usize),
    /// Not counted (a denied topic's records never reach the broker).
    Hidden,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NeutralTopic {
    /// The neutral name (v3-12) or id (v13+) the broker sees.
    neutral: Vec<u8>,
    original: Vec<u8>,
    code: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NeutralPartition {
    /// The topic's name or id as the broker sees it.
    topic: Vec<u8>,
    neutral: i32,
    original: i32,
    code: i16,
}

/// What a Produce response needs put right: carried with the in-flight request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restore {
    topics: Vec<NeutralTopic>,
    partitions: Vec<NeutralPartition>,
}

impl Restore {
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.partitions.is_empty()
    }
    fn len(&self) -> usize {
        self.topics.len() + self.partitions.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicState {
    /// The topic's name or id has not gone by yet.
    Open,
    /// Allowed without constraints: nothing of it will be edited.
    Allowed,
    /// Every partition of the topic is refused with this code (already neutralised).
    Denied,
    /// Allowed, with batch constraints of rule `rule` to check in each partition.
    Constrained { rule: usize },
}

/// The request side: decides and neutralises as the Produce request's fields go by.
#[derive(Debug)]
pub struct ProduceGuard {
    policy: Rc<Policy>,
    id: Identity,
    by_id: bool,
    forced: Option<i16>,
    acks: i16,
    /// The current topic as the broker will see it (neutral or original).
    topic_wire: Vec<u8>,
    topic_name: String,
    state: TopicState,
    topic_denied_any: bool,
    partition: Option<i32>,
    batches: u32,
    restore: Restore,
    out: Effects,
}

impl ProduceGuard {
    /// `None` when the policy cannot deny anything in this client's Produce requests.
    pub fn new(policy: Rc<Policy>, id: Identity, version: i16) -> Option<ProduceGuard> {
        let api = policy.decide(&id, Question::Api(crate::codec::api::PRODUCE));
        let api_denied = !api.allow;
        let need = api_denied
            || policy.may_deny_topics(&id, Operation::Produce)
            || policy.rules.iter().any(|r| r.has_transactional_ids());
        if !need {
            return None;
        }
        let mut g = ProduceGuard {
            policy: policy.clone(),
            id,
            by_id: version >= 13,
            forced: None,
            acks: -1,
            topic_wire: Vec::new(),
            topic_name: String::new(),
            state: TopicState::Open,
            topic_denied_any: false,
            partition: None,
            batches: 0,
            restore: Restore::default(),
            out: Effects::default(),
        };
        if api_denied {
            let rule = policy.rule_name(api).to_string();
            if !g.record(
                false,
                rule,
                "api produce".into(),
                CLUSTER_AUTHORIZATION_FAILED,
            ) {
                g.forced = Some(CLUSTER_AUTHORIZATION_FAILED);
            }
        }
        Some(g)
    }

    /// Record a decision; whether the part goes through (audit: always).
    fn record(&mut self, allow: bool, rule: String, what: String, code: i16) -> bool {
        let note = Note::of(&self.policy, allow, rule, what, code);
        let denied = note.outcome == Outcome::Deny;
        if denied && self.policy.on_deny == OnDeny::Close && self.out.close.is_none() {
            self.out.close = Some("denied request with onDeny: close".to_string());
        }
        self.out.notes.push(note);
        !denied
    }

    /// One walk event, before the collector sees it.
    pub fn on_event(
        &mut self,
        ev: &Event<'_>,
        names: &mut dyn FnMut(&[u8; 16]) -> Option<String>,
    ) -> Seen {
        match *ev {
            Event::Str(F::TransactionalId, Some(t)) if self.forced.is_none() => {
                let t = String::from_utf8_lossy(t).into_owned();
                let d = self.policy.decide(&self.id, Question::TransactionalId(&t));
                let rule = self.policy.rule_name(d).to_string();
                if !self.record(
                    d.allow,
                    rule,
                    format!("transactional id {t}"),
                    TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                ) {
                    self.forced = Some(TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
                }
                Seen::Same
            }
            Event::Int(F::Acks, a) => {
                self.acks = i16::try_from(a).unwrap_or(-1);
                Seen::Same
            }
            Event::Begin(F::Topics) => {
                self.state = TopicState::Open;
                self.topic_denied_any = false;
                self.topic_name.clear();
                self.topic_wire.clear();
                Seen::Same
            }
            Event::Str(F::Topic, name) if !self.by_id => {
                let name = name.unwrap_or(&[]);
                self.topic_wire = name.to_vec();
                self.topic_name = String::from_utf8_lossy(name).into_owned();
                let code = self.topic_code(None);
                self.deny_topic(code, name.len())
            }
            Event::Uuid(F::TopicId, id) if self.by_id => {
                self.topic_wire = id.to_vec();
                let known = names(&id);
                self.topic_name = known
                    .clone()
                    .unwrap_or_else(|| crate::observe::collect::hex(&id));
                let code = self.topic_code(Some(known.is_some()));
                self.deny_topic(code, 16)
            }
            Event::Begin(F::Partitions) => {
                self.partition = None;
                self.batches = 0;
                if self.state == TopicState::Denied {
                    Seen::Hidden
                } else {
                    Seen::Same
                }
            }
            Event::Int(F::Partition, p) => {
                self.partition = i32::try_from(p).ok();
                if matches!(self.state, TopicState::Constrained { .. }) {
                    self.out.mark = MarkOp::Set(4);
                }
                Seen::Same
            }
            Event::Int(F::Records, 0) => {
                if matches!(self.state, TopicState::Constrained { .. }) {
                    self.out.mark = MarkOp::Clear; // no batch: nothing to check
                }
                Seen::Same
            }
            Event::Batch(b) => {
                if let TopicState::Constrained { rule } = self.state {
                    self.batch(rule, &b);
                }
                if self.state == TopicState::Denied {
                    self.neutralise_batch(&b);
                    Seen::Hidden
                } else {
                    Seen::Same
                }
            }
            Event::End(F::Partitions) => {
                if matches!(self.state, TopicState::Constrained { .. }) {
                    self.out.mark = MarkOp::Clear;
                }
                Seen::Same
            }
            Event::End(F::Topics) => {
                if let TopicState::Constrained { rule } = self.state {
                    if !self.topic_denied_any {
                        let rule = self.rule_name(rule);
                        let what = format!("produce {}", self.topic_name);
                        self.record(true, rule, what, 0);
                    }
                }
                if self.state == TopicState::Denied {
                    Seen::Hidden
                } else {
                    Seen::Same
                }
            }
            _ => {
                if self.state == TopicState::Denied
                    && matches!(ev, Event::Int(F::Records, _) | Event::Int(F::Partition, _))
                {
                    Seen::Hidden
                } else {
                    Seen::Same
                }
            }
        }
    }

    fn rule_name(&self, rule: usize) -> String {
        self.policy
            .rules
            .get(rule)
            .map_or_else(|| "default".to_string(), |r| r.name.clone())
    }

    /// The error code for the current topic (0: allowed, maybe with batch constraints).
    /// `known`: for a topic id, whether it has a name.
    fn topic_code(&mut self, known: Option<bool>) -> i16 {
        if let Some(c) = self.forced {
            return c;
        }
        let policy = self.policy.clone();
        if known == Some(false) {
            // A topic id nobody has named yet: deny if any deny could apply (unless configured
            // otherwise), as the whole-request path does.
            let could_deny = policy.may_deny_topics(&self.id, Operation::Produce);
            let allow = !could_deny || policy.unknown_topic_ids == crate::policy::Action::Allow;
            let what = format!("produce topic id {}", self.topic_name);
            let pass = self.record(
                allow,
                "unknownTopicIds".into(),
                what,
                TOPIC_AUTHORIZATION_FAILED,
            );
            return if pass { 0 } else { TOPIC_AUTHORIZATION_FAILED };
        }
        let name = self.topic_name.clone();
        let d = policy.decide(&self.id, Question::Topic(Operation::Produce, &name));
        let rule = policy.rule_name(d).to_string();
        if !d.allow {
            let pass = self.record(
                false,
                rule,
                format!("produce {name}"),
                TOPIC_AUTHORIZATION_FAILED,
            );
            return if pass { 0 } else { TOPIC_AUTHORIZATION_FAILED };
        }
        let Some((idx, c)) = d
            .rule
            .and_then(|i| policy.rules.get(i).map(|r| (i, r)))
            .and_then(|(i, r)| r.produce.as_ref().map(|c| (i, c)))
        else {
            self.record(true, rule, format!("produce {name}"), 0);
            return 0;
        };
        let acks = self.acks;
        let acks_ok = c.acks.is_empty()
            || c.acks.iter().any(|a| match a {
                AcksValue::Num(v) => *v == acks,
                AcksValue::Name(_) => acks == -1,
            });
        if !acks_ok {
            let what = format!("produce {name} with acks={acks}");
            let pass = self.record(false, rule, what, INVALID_REQUIRED_ACKS);
            return if pass { 0 } else { INVALID_REQUIRED_ACKS };
        }
        if c.max_batch_bytes.is_some() || !c.compression.is_empty() {
            self.state = TopicState::Constrained { rule: idx };
        } else {
            self.record(true, rule, format!("produce {name}"), 0);
        }
        0
    }

    /// Neutralise the current topic's name or id (the last `len` bytes of the step).
    fn deny_topic(&mut self, code: i16, len: usize) -> Seen {
        if code == 0 {
            if self.state == TopicState::Open {
                self.state = TopicState::Allowed;
            }
            return Seen::Same;
        }
        self.state = TopicState::Denied;
        if !self.room() {
            return Seen::Hidden;
        }
        let k = self.restore.len();
        let neutral = if self.by_id {
            neutral_id(k).to_vec()
        } else {
            match neutral_name(k, len) {
                Some(n) => n,
                None => {
                    self.out.close = Some(format!(
                        "cannot neutralise denied topic '{}': too many denied topics of that name length in one request",
                        self.topic_name
                    ));
                    return Seen::Hidden;
                }
            }
        };
        self.out.edits.push(Edit {
            target: Target::LastField,
            data: neutral.clone(),
        });
        self.restore.topics.push(NeutralTopic {
            neutral: neutral.clone(),
            original: std::mem::replace(&mut self.topic_wire, neutral),
            code,
        });
        Seen::Hidden
    }

    fn room(&mut self) -> bool {
        if self.restore.len() >= MAX_NEUTRAL {
            self.out.close = Some(format!(
                "more than {MAX_NEUTRAL} denied parts in one produce request"
            ));
            return false;
        }
        true
    }

    /// A batch header of a constrained topic's partition.
    fn batch(&mut self, rule: usize, b: &Batch) {
        self.batches += 1;
        let Some(c) = self.policy.rules.get(rule).and_then(|r| r.produce.clone()) else {
            return;
        };
        let name = self.topic_name.clone();
        let what = |why: String| format!("produce {name}: {why}");
        let violation = if c.max_batch_bytes.is_some_and(|m| b.bytes > u64::from(m)) {
            Some((
                what(format!("batch of {} bytes", b.bytes)),
                RECORD_LIST_TOO_LARGE,
            ))
        } else {
            let codec = Codec::from_attributes(b.attributes);
            (b.magic == 2
                && !c.compression.is_empty()
                && !codec.is_some_and(|x| c.compression.contains(&x)))
            .then(|| {
                (
                    what(format!("compression {codec:?}")),
                    UNSUPPORTED_COMPRESSION_TYPE,
                )
            })
        };
        let first = self.batches == 1;
        if let Some((what, code)) = violation {
            let rule_name = self.rule_name(rule);
            if !self.record(false, rule_name, what, code) {
                self.topic_denied_any = true;
                match (first, self.partition) {
                    (true, Some(original)) if self.room() => {
                        let k = self.restore.len();
                        let neutral = NEUTRAL_PARTITION_BASE.saturating_sub(k as i32);
                        self.out.edits.push(Edit {
                            target: Target::Mark,
                            data: neutral.to_be_bytes().to_vec(),
                        });
                        self.neutralise_batch(b);
                        self.restore.partitions.push(NeutralPartition {
                            topic: self.topic_wire.clone(),
                            neutral,
                            original,
                            code,
                        });
                    }
                    (true, _) => {}
                    (false, _) => {
                        // Clients send one batch per partition; a later one's partition index
                        // has already gone to the broker and cannot be neutralised any more.
                        self.out.close = Some(format!(
                            "produce {name}: a later record batch of a partition breaks a produce constraint"
                        ));
                    }
                }
            }
        }
        if first {
            self.out.mark = MarkOp::Clear;
        }
    }

    /// The second half of every neutralisation, for brokers that store what Kafka would
    /// refuse: tansu 0.6 writes a Produce to any name, any partition index and any batch
    /// (CRC and magic unchecked), but refuses a batch whose producer id it never issued with
    /// UNKNOWN_PRODUCER_ID before storing anything (tansu-storage 0.6.0 `src/dynostore.rs`, `produce`; checked against the
    /// tansu binary by the e2e tests). So the batch header's producer id, epoch and base
    /// sequence become an id no broker has issued (producer ids are handed out upwards from
    /// 0) and sequence 0. Kafka never reads them: it refuses the part on its name or index
    /// first (`KafkaApis.handleProduceRequest`), and the batch's CRC no longer matches
    /// anyway (CORRUPT_MESSAGE).
    fn neutralise_batch(&mut self, b: &Batch) {
        if b.magic != 2 || b.bytes < BATCH_HEADER_BYTES {
            return; // a legacy or partial batch: the name or index change alone
        }
        let mut data = Vec::with_capacity(14);
        data.extend_from_slice(&NEUTRAL_PRODUCER_ID.to_be_bytes());
        data.extend_from_slice(&0i16.to_be_bytes()); // producer epoch
        data.extend_from_slice(&0i32.to_be_bytes()); // base sequence
        self.out.edits.push(Edit {
            // producerId starts at byte 43 of the 61-byte header the step ended with
            target: Target::Back(BATCH_HEADER_BYTES as usize - PRODUCER_ID_OFFSET),
            data,
        });
    }

    /// Whether the bytes at the walk's position may still be edited (so they must not be
    /// forwarded yet): not inside a topic that is allowed without constraints.
    pub fn editable(&self) -> bool {
        self.state != TopicState::Allowed
    }

    /// What to do after the current step.
    pub fn effects(&mut self) -> Effects {
        std::mem::take(&mut self.out)
    }
    /// What the response will need, once the request has been walked.
    pub fn into_restore(self) -> Restore {
        self.restore
    }
}

/// The response side: puts back what the request's guard neutralised.
#[derive(Debug)]
pub struct RestoreGuard {
    restore: Restore,
    /// The current topic: its index in `restore.topics`, if neutralised.
    topic: Option<usize>,
    /// The current topic as the broker named it.
    wire: Vec<u8>,
    code: Option<i16>,
    out: Effects,
    /// Hide the response's KIP-951 `NodeEndpoints` (see [`RestoreGuard::hiding_endpoints`]).
    hide_endpoints: bool,
    hidden: u32,
}

/// The top-level tag of KIP-951 `NodeEndpoints` in Produce (v10+) and Fetch (v16+) responses.
pub const NODE_ENDPOINTS_TAG: u32 = 0;
/// What a hidden `NodeEndpoints` tag becomes: a one-byte tag no Produce or Fetch response
/// version defines, which clients skip as an unknown tagged field (KIP-482).
pub const HIDDEN_TAG: u8 = 0x7f;

impl RestoreGuard {
    pub fn new(restore: Restore) -> Self {
        RestoreGuard {
            restore,
            topic: None,
            wire: Vec::new(),
            code: None,
            out: Effects::default(),
            hide_endpoints: false,
            hidden: 0,
        }
    }

    /// Also hide `NodeEndpoints` from the client. Used where broker addresses are rewritten
    /// but the response is too large to hold whole: a rewritten endpoint list would change
    /// the frame's size, which has already gone on, while renaming the tag keeps every byte
    /// count. The client then finds the new leader through a Metadata request, whose answer
    /// is rewritten - what clients did before KIP-951.
    pub fn hiding_endpoints(mut self) -> Self {
        self.hide_endpoints = true;
        self
    }

    /// How many `NodeEndpoints` fields were hidden.
    pub fn hidden(&self) -> u32 {
        self.hidden
    }

    pub fn original(&self, i: usize) -> &[u8] {
        self.restore
            .topics
            .get(i)
            .map_or(&[][..], |t| t.original.as_slice())
    }

    pub fn on_event(&mut self, ev: &Event<'_>) -> Seen {
        match *ev {
            Event::Begin(F::Topics) => {
                self.topic = None;
                self.wire.clear();
                Seen::Same
            }
            Event::Str(F::Topic, Some(name)) => self.topic_seen(name),
            Event::Uuid(F::TopicId, id) => self.topic_seen(&id),
            Event::Begin(F::Partitions) => {
                self.code = self
                    .topic
                    .and_then(|i| self.restore.topics.get(i))
                    .map(|t| t.code);
                Seen::Same
            }
            Event::Int(F::Partition, p) => {
                if self.topic.is_none() {
                    let p = i32::try_from(p).unwrap_or(0);
                    if let Some(np) = self
                        .restore
                        .partitions
                        .iter()
                        .find(|np| np.neutral == p && np.topic == self.wire)
                    {
                        self.code = Some(np.code);
                        self.out.edits.push(Edit {
                            target: Target::LastField,
                            data: np.original.to_be_bytes().to_vec(),
                        });
                    }
                }
                Seen::Same
            }
            Event::Int(F::ErrorCode, _) => match self.code {
                Some(c) => {
                    self.out.edits.push(Edit {
                        target: Target::LastField,
                        data: c.to_be_bytes().to_vec(),
                    });
                    Seen::Code(c)
                }
                None => Seen::Same,
            },
            Event::End(F::Partitions) => {
                if self.topic.is_none() {
                    self.code = None;
                }
                Seen::Same
            }
            Event::Tag { tag, size, len } if self.hide_endpoints && tag == NODE_ENDPOINTS_TAG => {
                // The tag varint (one byte for tag 0) leads the step's `len` bytes; the size
                // varint after it is kept as it is.
                let mut data = vec![HIDDEN_TAG];
                crate::codec::reader::put_uvarint(&mut data, size);
                if data.len() == len {
                    self.out.edits.push(Edit {
                        target: Target::LastField,
                        data,
                    });
                    self.hidden += 1;
                }
                Seen::Same
            }
            _ => Seen::Same,
        }
    }

    fn topic_seen(&mut self, wire: &[u8]) -> Seen {
        self.wire = wire.to_vec();
        self.topic = self.restore.topics.iter().position(|t| t.neutral == wire);
        match self.topic {
            Some(i) => {
                let original = self.original(i).to_vec();
                self.out.edits.push(Edit {
                    target: Target::LastField,
                    data: original,
                });
                Seen::Topic(i)
            }
            None => Seen::Same,
        }
    }

    /// What to do after the current step.
    pub fn effects(&mut self) -> Effects {
        std::mem::take(&mut self.out)
    }
}

/// The `k`th neutral name of `len` bytes: `k` in base |alphabet|, left-padded. `None` when
/// `len` is too short to tell `k` apart (or zero).
pub fn neutral_name(k: usize, len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return None;
    }
    let base = NEUTRAL_ALPHABET.len();
    let pad = *NEUTRAL_ALPHABET.first()?;
    let mut out = vec![pad; len];
    let mut v = k;
    for slot in out.iter_mut().rev() {
        *slot = *NEUTRAL_ALPHABET.get(v % base)?;
        v /= base;
        if v == 0 {
            break;
        }
    }
    (v == 0).then_some(out)
}

pub fn neutral_id(k: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Some(p) = id.get_mut(..8) {
        p.copy_from_slice(NEUTRAL_ID_PREFIX);
    }
    if let Some(p) = id.get_mut(8..) {
        p.copy_from_slice(&(k as u64).to_be_bytes());
    }
    id
}

/// An all-topics Metadata response too large to hold whole, under a policy: the topics the
/// client may not describe are answered in place, with the same number of bytes: their
/// error code becomes TOPIC_AUTHORIZATION_FAILED and, with `hideUnauthorizedTopics`, their
/// name becomes a same-length name of characters no topic name has and their id the zero
/// id, so neither name nor id reaches the client. (A held response drops them instead, as
/// Kafka omits unauthorized topics; a streamed one cannot change its size.) Clients skip
/// topics with errors they did not ask for.
#[derive(Debug)]
pub struct MetadataGuard {
    policy: Rc<Policy>,
    id: Identity,
    hide: bool,
    denied: bool,
    k: usize,
    out: Effects,
}

impl MetadataGuard {
    pub fn new(policy: Rc<Policy>, id: Identity) -> Self {
        let hide = policy.hide_unauthorized_topics;
        MetadataGuard {
            policy,
            id,
            hide,
            denied: false,
            k: 0,
            out: Effects::default(),
        }
    }

    pub fn on_event(&mut self, ev: &Event<'_>) -> Seen {
        match *ev {
            Event::Begin(F::Topics) => {
                self.denied = false;
                Seen::Same
            }
            // The topic's error code precedes its name: keep it editable until the name.
            Event::Int(F::ErrorCode, _) => {
                self.out.mark = MarkOp::Set(2);
                Seen::Same
            }
            Event::Str(F::Topic, name) => {
                let name = name.unwrap_or(&[]);
                let text = String::from_utf8_lossy(name).into_owned();
                self.out.mark = MarkOp::Clear;
                let policy = self.policy.clone();
                let d = policy.decide(&self.id, Question::Topic(Operation::Describe, &text));
                let note = Note::of(
                    &policy,
                    d.allow,
                    policy.rule_name(d).to_string(),
                    format!("describe {text}"),
                    TOPIC_AUTHORIZATION_FAILED,
                );
                let outcome = note.outcome;
                self.out.notes.push(note);
                if outcome != Outcome::Deny {
                    return Seen::Same;
                }
                self.denied = true;
                self.out.edits.push(Edit {
                    target: Target::Mark,
                    data: TOPIC_AUTHORIZATION_FAILED.to_be_bytes().to_vec(),
                });
                if self.hide {
                    if let Some(n) = neutral_name(self.k, name.len()) {
                        self.k += 1;
                        self.out.edits.push(Edit {
                            target: Target::LastField,
                            data: n,
                        });
                    }
                }
                Seen::Hidden
            }
            Event::Uuid(F::TopicId, _) if self.denied && self.hide => {
                self.out.edits.push(Edit {
                    target: Target::LastField,
                    data: vec![0; 16],
                });
                Seen::Hidden
            }
            Event::End(F::Topics) if self.denied => Seen::Hidden,
            _ => Seen::Same,
        }
    }

    /// What to do after the current step.
    pub fn effects(&mut self) -> Effects {
        std::mem::take(&mut self.out)
    }
}
