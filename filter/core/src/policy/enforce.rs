//! Applying the policy to one complete request, and what the response must then look like.
//!
//! The proxy-wasm ABI has no call that injects bytes towards the client (Envoy's
//! `proxy_set_buffer_bytes` edits only the buffer of the current callback), so a denial is
//! expressed inside the request/response pair the client is already waiting for:
//!
//! Produce is not here: it can be a megabyte, so it is decided as it streams and its denied
//! parts are neutralised in place ([`crate::policy::guard`]).
//!
//! - **Topic-level denial** (Fetch, DeleteTopics, ListOffsets, offsets and admin APIs): the
//!   denied topics or partitions are removed from the request before it reaches the broker, and their error entries are
//!   *prepended* to the top-level topics array of the broker's response ([`Splice::Prepend`]):
//!   only the response head (through the array count) is rewritten, the rest streams through
//!   unbuffered, however large (a Fetch response full of records). If nothing is left, the
//!   request goes on with zero topics and the broker still answers it.
//! - **Whole-request denial** (a denied API key, a denied consumer group): the request is
//!   replaced by an ApiVersions v0 request with the same correlation id — a request every
//!   broker answers without side effects — and its answer is replaced by the synthesized
//!   error response of the original API and version ([`Splice::Replace`]).
//!
//! Correlation ids and response order are untouched: the broker still sees one request per
//! client request, in order. Kroxylicious' "short-circuit response" is the model; it can send
//! a response itself, a Wasm network filter cannot.
//!
//! kafka-protocol decodes a request only after [`walk::walk_all`] has proved that its counts
//! and lengths fit the bytes present.

use kafka_protocol::messages::{
    alter_configs_response, create_acls_response, create_partitions_response,
    create_topics_response, delete_acls_response, delete_records_response, delete_topics_response,
    fetch_response, incremental_alter_configs_response, list_offsets_response, metadata_response,
    offset_commit_response, offset_fetch_response, AlterConfigsRequest, CreateAclsResponse,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteAclsResponse, DeleteRecordsRequest,
    DeleteTopicsRequest, DescribeAclsResponse, FetchRequest, HeartbeatResponse,
    IncrementalAlterConfigsRequest, InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::codec::api;
use crate::codec::kp::{decode_checked, encode};
use crate::codec::reader::{DecodeResult, Reader};
use crate::codec::walk::{self, Event, F};
use crate::policy::{Identity, Operation, Policy, Question};

pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const INVALID_REQUIRED_ACKS: i16 = 21;
pub const RECORD_LIST_TOO_LARGE: i16 = 18;
pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;

const JOIN_GROUP: i16 = 11;
const HEARTBEAT: i16 = 12;
const LEAVE_GROUP: i16 = 13;
const SYNC_GROUP: i16 = 14;
const DELETE_TOPICS: i16 = 20;
const LIST_OFFSETS: i16 = 2;
const OFFSET_COMMIT: i16 = 8;
const OFFSET_FETCH: i16 = 9;
const CREATE_TOPICS: i16 = 19;
const INIT_PRODUCER_ID: i16 = 22;
const DESCRIBE_ACLS: i16 = 29;
const CREATE_ACLS: i16 = 30;
const DELETE_ACLS: i16 = 31;
const DELETE_RECORDS: i16 = 21;
const ALTER_CONFIGS: i16 = 33;
const CREATE_PARTITIONS: i16 = 37;
const INCREMENTAL_ALTER_CONFIGS: i16 = 44;
/// `resource_type` of a topic in (Incremental)AlterConfigs (Kafka's `ConfigResource.Type`).
const RESOURCE_TOPIC: i8 = 2;

/// Names for topic ids (the map learned from Metadata responses).
pub trait TopicNames {
    fn name_of(&mut self, id: &[u8; 16]) -> Option<String>;
}

/// What happens to the response of a rewritten request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Splice {
    /// Prepend `count` encoded elements to the response's top-level topics array.
    Prepend { count: u32, entries: Vec<u8> },
    /// Replace the response body (after the response header) with this one.
    Replace { body: Vec<u8> },
    /// A Metadata response to rewrite whole: drop or fail the topics the client may not
    /// describe, and add the requested topics the filter kept from the broker.
    Metadata {
        /// The request asked for all topics.
        all_topics: bool,
        /// Requested topics that were denied (name, id), in request order.
        denied: Vec<(Option<String>, [u8; 16])>,
        /// The request's client id (identity for the response-time decisions).
        client_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// Nothing denied: relay the request as it is.
    Forward,
    /// Relay `body` instead of the request body (same header); splice the response.
    Rewrite {
        body: Vec<u8>,
        splice: Option<Splice>,
    },
    /// Relay an ApiVersions v0 probe with the same correlation id; answer with `body`.
    Probe { body: Vec<u8> },
    /// Close the connection (`onDeny: close`, or a denial the filter cannot express).
    Close { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// Audit mode: would have been denied.
    WouldDeny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::WouldDeny => "would_deny",
        }
    }
}

/// One decision, for the per-rule counters and the (rate-limited) log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub rule: String,
    pub outcome: Outcome,
    pub what: String,
    /// The Kafka error the client gets (0 when allowed).
    pub code: i16,
}

impl Note {
    /// A decision as the policy's mode makes it: denied, or only noted in audit mode.
    pub fn of(policy: &Policy, allow: bool, rule: String, what: String, code: i16) -> Note {
        let audit = policy.mode == crate::policy::Mode::Audit;
        let outcome = match (allow, audit) {
            (true, _) => Outcome::Allow,
            (false, true) => Outcome::WouldDeny,
            (false, false) => Outcome::Deny,
        };
        Note {
            rule,
            outcome,
            what,
            code: if outcome == Outcome::Deny { code } else { 0 },
        }
    }
}

struct Judge<'p> {
    policy: &'p Policy,
    id: &'p Identity,
    notes: Vec<Note>,
}

impl Judge<'_> {
    /// Decide and record. Returns whether the request part goes through (audit: always).
    fn ok(&mut self, q: Question<'_>, what: impl FnOnce() -> String, code: i16) -> bool {
        let d = self.policy.decide(self.id, q);
        self.record(d.allow, self.policy.rule_name(d).to_string(), what(), code)
    }

    fn record(&mut self, allow: bool, rule: String, what: String, code: i16) -> bool {
        let note = Note::of(self.policy, allow, rule, what, code);
        let pass = note.outcome != Outcome::Deny;
        self.notes.push(note);
        pass
    }

    fn denied_any(&self) -> bool {
        self.notes.iter().any(|n| n.outcome == Outcome::Deny)
    }
}

/// Split a request's items into those that go on to the broker (code 0) and the error
/// entries the client gets for the others.
fn split<T: Clone, D>(
    items: &[T],
    mut code: impl FnMut(&T) -> i16,
    deny: impl Fn(&T, i16) -> D,
) -> (Vec<T>, Vec<D>) {
    let (mut kept, mut denied) = (Vec::new(), Vec::new());
    for item in items {
        match code(item) {
            0 => kept.push(item.clone()),
            c => denied.push(deny(item, c)),
        }
    }
    (kept, denied)
}

/// Apply `policy` to a complete request body (the bytes after the request header).
pub fn enforce_request(
    policy: &Policy,
    id: &Identity,
    names: &mut dyn TopicNames,
    api_key: i16,
    version: i16,
    body: &[u8],
) -> DecodeResult<(Enforced, Vec<Note>)> {
    let flexible = api::api_info(api_key).is_some_and(|a| a.is_flexible(version));
    let mut j = Judge {
        policy,
        id,
        notes: Vec::new(),
    };
    let api_name = api::api_name(api_key);
    let api_ok = j.ok(
        Question::Api(api_key),
        || format!("api {api_name}"),
        CLUSTER_AUTHORIZATION_FAILED,
    );
    let forced = if api_ok {
        None
    } else {
        Some(CLUSTER_AUTHORIZATION_FAILED)
    };
    let out = match api_key {
        // Produce is never held: it is decided field by field as it streams (crate::policy::guard).
        api::PRODUCE => Enforced::Close {
            reason: "produce is enforced as it streams, not as a whole request".to_string(),
        },
        api::FETCH if version >= 4 => fetch(&mut j, names, version, flexible, body, forced)?,
        DELETE_TOPICS if version >= 1 => {
            delete_topics(&mut j, names, version, flexible, body, forced)?
        }
        LIST_OFFSETS if (1..=10).contains(&version) => {
            list_offsets(&mut j, version, flexible, body, forced)?
        }
        OFFSET_COMMIT if (2..=9).contains(&version) => {
            offset_commit(&mut j, version, flexible, body, forced)?
        }
        OFFSET_FETCH if (1..=7).contains(&version) => {
            offset_fetch(&mut j, version, flexible, body, forced)?
        }
        LIST_OFFSETS | OFFSET_COMMIT | OFFSET_FETCH => Enforced::Close {
            reason: format!(
                "{api_name} v{version} cannot be enforced (no topic-level rewrite for it)"
            ),
        },
        CREATE_TOPICS if version >= 2 => admin(&mut j, api_key, version, flexible, body, forced)?,
        DELETE_RECORDS | ALTER_CONFIGS | CREATE_PARTITIONS | INCREMENTAL_ALTER_CONFIGS => {
            admin(&mut j, api_key, version, flexible, body, forced)?
        }
        api::METADATA if version >= 1 => metadata(&mut j, names, version, flexible, body, forced)?,
        JOIN_GROUP | HEARTBEAT | LEAVE_GROUP | SYNC_GROUP => {
            let mut r = Reader::new(body);
            let group = String::from_utf8_lossy(r.string_v(flexible, "group_id")?).into_owned();
            let code = match forced {
                Some(c) => Some(c),
                None => {
                    let ok = j.ok(
                        Question::Group(&group),
                        || format!("group {group} ({api_name})"),
                        GROUP_AUTHORIZATION_FAILED,
                    );
                    (!ok).then_some(GROUP_AUTHORIZATION_FAILED)
                }
            };
            match code {
                Some(c) => Enforced::Probe {
                    body: group_error(api_key, version, c)?,
                },
                None => Enforced::Forward,
            }
        }
        INIT_PRODUCER_ID => {
            let mut r = Reader::new(body);
            let txn = r.nullable_string_v(flexible, "transactional_id")?;
            let code = match (forced, txn) {
                (Some(c), _) => Some(c),
                (None, Some(t)) => {
                    let t = String::from_utf8_lossy(t).into_owned();
                    let ok = j.ok(
                        Question::TransactionalId(&t),
                        || format!("transactional id {t} (init_producer_id)"),
                        TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    );
                    (!ok).then_some(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                }
                (None, None) => None,
            };
            match code {
                Some(c) => Enforced::Probe {
                    body: encode(
                        &InitProducerIdResponse::default()
                            .with_error_code(c)
                            .with_producer_id((-1).into())
                            .with_producer_epoch(-1),
                        version,
                    )?,
                },
                None => Enforced::Forward,
            }
        }
        DESCRIBE_ACLS | CREATE_ACLS | DELETE_ACLS if forced.is_some() && version >= 1 => {
            let msg = Some(StrBytes::from_static_str(DENIED));
            let body = match api_key {
                DESCRIBE_ACLS => encode(
                    &DescribeAclsResponse::default()
                        .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                        .with_error_message(msg),
                    version,
                )?,
                _ => {
                    // One result per creation / filter, as the client matches them by position.
                    let mut n = 0usize;
                    walk::walk_all(&walk::S_ACLS_REQ, version, flexible, body, &mut |ev| {
                        if ev == Event::Begin(F::Topics) {
                            n += 1;
                        }
                    })?;
                    if api_key == CREATE_ACLS {
                        let one = create_acls_response::AclCreationResult::default()
                            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                            .with_error_message(msg);
                        encode(
                            &CreateAclsResponse::default().with_results(vec![one; n]),
                            version,
                        )?
                    } else {
                        let one = delete_acls_response::DeleteAclsFilterResult::default()
                            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                            .with_error_message(msg);
                        encode(
                            &DeleteAclsResponse::default().with_filter_results(vec![one; n]),
                            version,
                        )?
                    }
                }
            };
            Enforced::Probe { body }
        }
        _ => match forced {
            Some(_) => Enforced::Close {
                reason: format!(
                    "{api_name} v{version} is denied and the filter has no error response for it"
                ),
            },
            None => Enforced::Forward,
        },
    };
    let out = if j.denied_any() && policy.on_deny == crate::policy::OnDeny::Close {
        Enforced::Close {
            reason: "denied request with onDeny: close".to_string(),
        }
    } else {
        out
    };
    Ok((out, j.notes))
}

fn group_error(api_key: i16, version: i16, code: i16) -> DecodeResult<Vec<u8>> {
    match api_key {
        JOIN_GROUP => encode(
            &JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1),
            version,
        ),
        SYNC_GROUP => encode(&SyncGroupResponse::default().with_error_code(code), version),
        HEARTBEAT => encode(&HeartbeatResponse::default().with_error_code(code), version),
        _ => encode(
            &LeaveGroupResponse::default().with_error_code(code),
            version,
        ),
    }
}

/// A topic as policy sees it.
enum Named {
    Name(String),
    /// An id nobody has named yet, let through (no deny could apply, or configured so).
    Pass,
    /// An id nobody has named yet, denied.
    Deny,
}

fn topic_name(
    j: &mut Judge<'_>,
    names: &mut dyn TopicNames,
    name: &str,
    id: &[u8; 16],
    by_id: bool,
    op: Operation,
) -> Named {
    if !by_id {
        return Named::Name(name.to_string());
    }
    if let Some(n) = names.name_of(id) {
        return Named::Name(n);
    }
    // Unknown id: deny if any deny could apply (unless configured otherwise).
    let could_deny = j.policy.may_deny_topics(j.id, op);
    let allow = !could_deny || j.policy.unknown_topic_ids == crate::policy::Action::Allow;
    let hexid = crate::observe::collect::hex(id);
    let pass = j.record(
        allow,
        "unknownTopicIds".to_string(),
        format!("{} topic id {hexid}", op.as_str()),
        TOPIC_AUTHORIZATION_FAILED,
    );
    if pass {
        Named::Pass
    } else {
        Named::Deny
    }
}

/// The error code for a topic-level question (0: allowed).
fn topic_code(j: &mut Judge<'_>, named: Named, op: Operation) -> i16 {
    match named {
        Named::Pass => 0,
        Named::Deny => TOPIC_AUTHORIZATION_FAILED,
        Named::Name(n) => {
            if j.ok(
                Question::Topic(op, &n),
                || format!("{} {n}", op.as_str()),
                TOPIC_AUTHORIZATION_FAILED,
            ) {
                0
            } else {
                TOPIC_AUTHORIZATION_FAILED
            }
        }
    }
}

fn fetch(
    j: &mut Judge<'_>,
    names: &mut dyn TopicNames,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let req: FetchRequest = decode_checked(&walk::S_FETCH_REQ_FULL, version, flexible, body)?;
    let by_id = version >= 13;
    let (kept, denied) = split(
        &req.topics,
        |topic| match forced {
            Some(c) => c,
            None => {
                let named = topic_name(
                    j,
                    names,
                    &topic.topic.0,
                    topic.topic_id.as_bytes(),
                    by_id,
                    Operation::Consume,
                );
                topic_code(j, named, Operation::Consume)
            }
        },
        |topic, code| {
            let parts = topic
                .partitions
                .iter()
                .map(|p| {
                    fetch_response::PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_error_code(code)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_preferred_read_replica((-1).into())
                })
                .collect();
            fetch_response::FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(parts)
        },
    );
    finish(&denied, &req.clone().with_topics(kept), version)
}

fn delete_topics(
    j: &mut Judge<'_>,
    names: &mut dyn TopicNames,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let req: DeleteTopicsRequest =
        decode_checked(&walk::S_DELETE_TOPICS_REQ, version, flexible, body)?;
    let judge = |j: &mut Judge<'_>, named: Named| -> i16 {
        match forced {
            Some(c) => c,
            None => topic_code(j, named, Operation::Delete),
        }
    };
    let result = |name: Option<kafka_protocol::messages::TopicName>, id, code| {
        delete_topics_response::DeletableTopicResult::default()
            .with_name(name)
            .with_topic_id(id)
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_static_str(DENIED)))
    };
    if version >= 6 {
        let (kept, denied) = split(
            &req.topics,
            |t| {
                let named = match &t.name {
                    Some(n) => Named::Name(n.0.to_string()),
                    None => {
                        topic_name(j, names, "", t.topic_id.as_bytes(), true, Operation::Delete)
                    }
                };
                judge(j, named)
            },
            |t, code| result(t.name.clone(), t.topic_id, code),
        );
        finish(&denied, &req.clone().with_topics(kept), version)
    } else {
        let (kept, denied) = split(
            &req.topic_names,
            |n| judge(j, Named::Name(n.0.to_string())),
            |n, code| result(Some(n.clone()), Default::default(), code),
        );
        finish(&denied, &req.clone().with_topic_names(kept), version)
    }
}

/// Where the top-level topics array count sits in a response body, for [`Splice::Prepend`]:
/// the fixed fields before it, by API and version.
pub fn prepend_prefix_len(api_key: i16, version: i16) -> Option<usize> {
    match api_key {
        api::PRODUCE => Some(0),
        api::FETCH => Some(if version >= 7 { 4 + 2 + 4 } else { 4 }),
        DELETE_TOPICS => Some(4),
        LIST_OFFSETS => Some(if version >= 2 { 4 } else { 0 }),
        CREATE_TOPICS
        | DELETE_RECORDS
        | ALTER_CONFIGS
        | CREATE_PARTITIONS
        | INCREMENTAL_ALTER_CONFIGS => Some(4),
        OFFSET_COMMIT | OFFSET_FETCH => Some(if version >= 3 { 4 } else { 0 }),
        _ => None,
    }
}

/// The group check shared by OffsetCommit and OffsetFetch: `Some(code)` when denied.
fn group_code(j: &mut Judge<'_>, group: &str, forced: Option<i16>, what: &str) -> Option<i16> {
    if forced.is_some() {
        return forced;
    }
    let ok = j.ok(
        Question::Group(group),
        || format!("group {group} ({what})"),
        GROUP_AUTHORIZATION_FAILED,
    );
    (!ok).then_some(GROUP_AUTHORIZATION_FAILED)
}

/// Consume check for one topic named in a request.
fn consume_code(j: &mut Judge<'_>, topic: &str, group_denied: Option<i16>) -> i16 {
    match group_denied {
        Some(c) => c,
        None => topic_code(j, Named::Name(topic.to_string()), Operation::Consume),
    }
}

fn finish<T: Encodable, R: Encodable>(
    denied: &[T],
    new_req: &R,
    version: i16,
) -> DecodeResult<Enforced> {
    if denied.is_empty() {
        return Ok(Enforced::Forward);
    }
    let mut entries = Vec::new();
    for d in denied {
        entries.extend(encode(d, version)?);
    }
    Ok(Enforced::Rewrite {
        body: encode(new_req, version)?,
        splice: Some(Splice::Prepend {
            count: u32::try_from(denied.len()).unwrap_or(u32::MAX),
            entries,
        }),
    })
}

fn list_offsets(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let req: ListOffsetsRequest =
        decode_checked(&walk::S_LIST_OFFSETS_REQ, version, flexible, body)?;
    let (kept, denied) = split(
        &req.topics,
        |t| consume_code(j, &t.name.0, forced),
        |t, code| {
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            list_offsets_response::ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                                .with_timestamp(-1)
                                .with_offset(-1)
                                .with_leader_epoch(-1)
                        })
                        .collect(),
                )
        },
    );
    finish(&denied, &req.clone().with_topics(kept), version)
}

fn offset_commit(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let req: OffsetCommitRequest =
        decode_checked(&walk::S_OFFSET_COMMIT_REQ_FULL, version, flexible, body)?;
    let group_denied = group_code(j, &req.group_id.0, forced, "offset_commit");
    let (kept, denied) = split(
        &req.topics,
        |t| consume_code(j, &t.name.0, group_denied),
        |t, code| {
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            offset_commit_response::OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        },
    );
    finish(&denied, &req.clone().with_topics(kept), version)
}

fn offset_fetch(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let req: OffsetFetchRequest =
        decode_checked(&walk::S_OFFSET_FETCH_REQ, version, flexible, body)?;
    let group_denied = group_code(j, &req.group_id.0, forced, "offset_fetch");
    let Some(topics) = req.topics.as_ref() else {
        // All of the group's committed offsets: only the group can be checked here.
        return Ok(match group_denied {
            Some(_) => Enforced::Close {
                reason: "OffsetFetch of all topics for a denied group".to_string(),
            },
            None => Enforced::Forward,
        });
    };
    let (kept, denied) = split(
        topics,
        |t| consume_code(j, &t.name.0, group_denied),
        |t, code| {
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partition_indexes
                        .iter()
                        .map(|p| {
                            offset_fetch_response::OffsetFetchResponsePartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(-1)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(StrBytes::default()))
                                .with_error_code(code)
                        })
                        .collect(),
                )
        },
    );
    finish(&denied, &req.clone().with_topics(Some(kept)), version)
}

/// The ApiVersions v0 request body used as a probe: empty.
pub const PROBE_API_VERSION: i16 = 0;

fn metadata(
    j: &mut Judge<'_>,
    names: &mut dyn TopicNames,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let req: MetadataRequest = decode_checked(&walk::S_METADATA_REQ, version, flexible, body)?;
    let Some(topics) = req.topics.as_ref() else {
        // All topics: decided per topic on the response.
        return Ok(Enforced::Rewrite {
            body: body.to_vec(),
            splice: Some(Splice::Metadata {
                all_topics: true,
                denied: Vec::new(),
                client_id: j.id.client_id.clone(),
            }),
        });
    };
    let mut kept = Vec::new();
    let mut denied = Vec::new();
    for t in topics {
        let named = match &t.name {
            Some(n) => Named::Name(n.0.to_string()),
            None => topic_name(
                j,
                names,
                "",
                t.topic_id.as_bytes(),
                true,
                Operation::Describe,
            ),
        };
        let code = match forced {
            Some(c) => c,
            None => topic_code(j, named, Operation::Describe),
        };
        if code == 0 {
            kept.push(t.clone());
        } else {
            denied.push((
                t.name.as_ref().map(|n| n.0.to_string()),
                *t.topic_id.as_bytes(),
            ));
        }
    }
    // A denied topic never reaches the broker, so it cannot be auto-created either.
    Ok(Enforced::Rewrite {
        body: if denied.is_empty() {
            body.to_vec()
        } else {
            encode(&req.clone().with_topics(Some(kept)), version)?
        },
        splice: Some(Splice::Metadata {
            all_topics: false,
            denied,
            client_id: j.id.client_id.clone(),
        }),
    })
}

/// Rewrite a complete Metadata response body for [`Splice::Metadata`]: topics the client may
/// not describe are dropped from all-topics answers (as Kafka itself omits unauthorized
/// topics there) or, with `hide: false`, answered with TOPIC_AUTHORIZATION_FAILED; requested
/// topics the filter withheld from the broker are answered with TOPIC_AUTHORIZATION_FAILED.
#[allow(clippy::too_many_arguments)]
pub fn rewrite_metadata_response(
    policy: &Policy,
    id: &Identity,
    version: i16,
    body: &[u8],
    all_topics: bool,
    denied: &[(Option<String>, [u8; 16])],
    hide: bool,
    notes: &mut Vec<Note>,
) -> DecodeResult<Vec<u8>> {
    let flexible = api::api_info(api::METADATA).is_some_and(|a| a.is_flexible(version));
    let mut resp: MetadataResponse =
        decode_checked(&walk::S_METADATA_RESP_FULL, version, flexible, body)?;
    let mut j = Judge {
        policy,
        id,
        notes: Vec::new(),
    };
    if all_topics {
        let mut out = Vec::new();
        for t in resp.topics.drain(..) {
            let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            if topic_code(&mut j, Named::Name(name.clone()), Operation::Describe) == 0 {
                out.push(t);
            } else if !hide {
                out.push(failed_topic(t.name.clone(), t.topic_id));
            }
        }
        resp.topics = out;
    }
    for (name, id) in denied {
        let name = name
            .clone()
            .map(|n| kafka_protocol::messages::TopicName(StrBytes::from_string(n)));
        resp.topics.push(failed_topic(name, uuid_of(id)));
    }
    notes.extend(j.notes);
    encode(&resp, version)
}

fn uuid_of(b: &[u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*b)
}

fn failed_topic(
    name: Option<kafka_protocol::messages::TopicName>,
    id: uuid::Uuid,
) -> metadata_response::MetadataResponseTopic {
    metadata_response::MetadataResponseTopic::default()
        .with_error_code(TOPIC_AUTHORIZATION_FAILED)
        .with_name(name)
        .with_topic_id(id)
        .with_topic_authorized_operations(i32::MIN)
}

const DENIED: &str = "denied by kafka-mesh-filter policy";

/// The encoded TOPIC_AUTHORIZATION_FAILED entries of the topics a Metadata request named and
/// the filter withheld from the broker, for prepending to a response too large to hold.
pub fn metadata_failed_entries(
    version: i16,
    denied: &[(Option<String>, [u8; 16])],
) -> DecodeResult<Vec<u8>> {
    let mut out = Vec::new();
    for (name, id) in denied {
        let name = name
            .clone()
            .map(|n| kafka_protocol::messages::TopicName(StrBytes::from_string(n)));
        out.extend(encode(&failed_topic(name, uuid_of(id)), version)?);
    }
    Ok(out)
}

/// Advance `r` (at the start of a Metadata response body) to its topics array: past
/// `throttle_time_ms` (v3+), `brokers`, `cluster_id` (v2+) and `controller_id` (v1+), as in
/// Kafka's `MetadataResponse.json`.
pub fn skip_to_metadata_topics(r: &mut Reader<'_>, version: i16) -> DecodeResult<()> {
    let flexible = api::api_info(api::METADATA).is_some_and(|a| a.is_flexible(version));
    if version >= 3 {
        r.i32("throttle_time_ms")?;
    }
    let n = if flexible {
        r.uvarint("brokers")?.saturating_sub(1)
    } else {
        u32::try_from(r.i32("brokers")?.max(0)).unwrap_or(0)
    };
    for _ in 0..n {
        r.i32("brokers.node_id")?;
        r.string_v(flexible, "brokers.host")?;
        r.i32("brokers.port")?;
        if version >= 1 {
            r.nullable_string_v(flexible, "brokers.rack")?;
        }
        if flexible {
            r.skip_tagged_fields("brokers.tagged_fields")?;
        }
    }
    if version >= 2 {
        r.nullable_string_v(flexible, "cluster_id")?;
    }
    if version >= 1 {
        r.i32("controller_id")?;
    }
    Ok(())
}

/// Topic-scoped admin requests: CreateTopics (create), CreatePartitions, DeleteRecords and
/// topic resources of (Incremental)AlterConfigs (alter). Broker resources of AlterConfigs are
/// governed by the API-key rules only.
fn admin(
    j: &mut Judge<'_>,
    api_key: i16,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let op = if api_key == CREATE_TOPICS {
        Operation::Create
    } else {
        Operation::Alter
    };
    let mut code_for = |topic: &str, is_topic: bool| -> i16 {
        match forced {
            Some(c) => c,
            None if !is_topic => 0,
            None => topic_code(j, Named::Name(topic.to_string()), op),
        }
    };
    let msg = || Some(StrBytes::from_static_str(DENIED));
    match api_key {
        CREATE_TOPICS => {
            let req: CreateTopicsRequest =
                decode_checked(&walk::S_CREATE_TOPICS_REQ, version, flexible, body)?;
            let (kept, denied) = split(
                &req.topics,
                |t| code_for(&t.name.0, true),
                |t, c| {
                    create_topics_response::CreatableTopicResult::default()
                        .with_name(t.name.clone())
                        .with_error_code(c)
                        .with_error_message(msg())
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                },
            );
            finish(&denied, &req.clone().with_topics(kept), version)
        }
        CREATE_PARTITIONS => {
            let req: CreatePartitionsRequest =
                decode_checked(&walk::S_CREATE_PARTITIONS_REQ, version, flexible, body)?;
            let (kept, denied) = split(
                &req.topics,
                |t| code_for(&t.name.0, true),
                |t, c| {
                    create_partitions_response::CreatePartitionsTopicResult::default()
                        .with_name(t.name.clone())
                        .with_error_code(c)
                        .with_error_message(msg())
                },
            );
            finish(&denied, &req.clone().with_topics(kept), version)
        }
        DELETE_RECORDS => {
            let req: DeleteRecordsRequest =
                decode_checked(&walk::S_DELETE_RECORDS_REQ, version, flexible, body)?;
            let (kept, denied) = split(
                &req.topics,
                |t| code_for(&t.name.0, true),
                |t, c| {
                    delete_records_response::DeleteRecordsTopicResult::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    delete_records_response::DeleteRecordsPartitionResult::default()
                                        .with_partition_index(p.partition_index)
                                        .with_low_watermark(-1)
                                        .with_error_code(c)
                                })
                                .collect(),
                        )
                },
            );
            finish(&denied, &req.clone().with_topics(kept), version)
        }
        ALTER_CONFIGS => {
            let req: AlterConfigsRequest =
                decode_checked(&walk::S_ALTER_CONFIGS_REQ, version, flexible, body)?;
            let (kept, denied) = split(
                &req.resources,
                |r| code_for(&r.resource_name, r.resource_type == RESOURCE_TOPIC),
                |r, c| {
                    alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_error_code(c)
                        .with_error_message(msg())
                        .with_resource_type(r.resource_type)
                        .with_resource_name(r.resource_name.clone())
                },
            );
            finish(&denied, &req.clone().with_resources(kept), version)
        }
        _ => {
            let req: IncrementalAlterConfigsRequest =
                decode_checked(&walk::S_INC_ALTER_CONFIGS_REQ, version, flexible, body)?;
            let (kept, denied) = split(
                &req.resources,
                |r| code_for(&r.resource_name, r.resource_type == RESOURCE_TOPIC),
                |r, c| {
                    incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                        .with_error_code(c)
                        .with_error_message(msg())
                        .with_resource_type(r.resource_type)
                        .with_resource_name(r.resource_name.clone())
                },
            );
            finish(&denied, &req.clone().with_resources(kept), version)
        }
    }
}
