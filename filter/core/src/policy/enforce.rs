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
const DESCRIBE_GROUPS: i16 = 15;
const LIST_GROUPS: i16 = 16;
const ADD_PARTITIONS_TO_TXN: i16 = 24;
const ADD_OFFSETS_TO_TXN: i16 = 25;
const END_TXN: i16 = 26;
const TXN_OFFSET_COMMIT: i16 = 28;
const DELETE_GROUPS: i16 = 42;
const OFFSET_DELETE: i16 = 47;
const CONSUMER_GROUP_HEARTBEAT: i16 = 68;
const CONSUMER_GROUP_DESCRIBE: i16 = 69;
const OFFSET_FOR_LEADER_EPOCH: i16 = 23;
const DESCRIBE_CONFIGS: i16 = 32;
const DESCRIBE_PRODUCERS: i16 = 61;
const DESCRIBE_TOPIC_PARTITIONS: i16 = 75;
const SHARE_GROUP_HEARTBEAT: i16 = 76;
const SHARE_GROUP_DESCRIBE: i16 = 77;
const SHARE_FETCH: i16 = 78;
const SHARE_ACKNOWLEDGE: i16 = 79;
const DESCRIBE_SHARE_GROUP_OFFSETS: i16 = 90;
const ALTER_SHARE_GROUP_OFFSETS: i16 = 91;
const DELETE_SHARE_GROUP_OFFSETS: i16 = 92;
/// Kafka's OPERATION_NOT_ATTEMPTED: the other partitions of a refused AddPartitionsToTxn.
const OPERATION_NOT_ATTEMPTED: i16 = 55;
/// `resource_type` of a topic in (Incremental)AlterConfigs (Kafka's `ConfigResource.Type`).
const RESOURCE_TOPIC: i8 = 2;
/// `resource_type` of a group (KIP-848 group configs), apache/kafka
/// `clients/src/main/java/org/apache/kafka/common/config/ConfigResource.java`.
const RESOURCE_GROUP: i8 = 32;

/// How the policy treats an API key (the README's per-API table says the same per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Names no topic, group or transactional id the policy governs (ApiVersions, SASL,
    /// FindCoordinator, DescribeCluster, client telemetry): relayed unless an `apiKeys` rule
    /// denies it.
    NoResource,
    /// Its topics, groups or transactional ids are checked ([`enforce_request`]).
    Checked,
    /// Its resources are not checked: refused unless allowed explicitly
    /// ([`Policy::decide_unchecked_api`]).
    Unchecked,
}

/// The API keys whose requests name nothing the policy governs. FindCoordinator names a
/// group or transactional id only to locate its coordinator (Kafka asks DESCRIBE on it,
/// `KafkaApis.handleFindCoordinatorRequest`); every API that then uses the group or
/// transaction is checked, so the filter lets it through.
pub const NO_RESOURCE: &[i16] = &[10, 17, 18, 36, 60, 71, 72];

/// The API keys whose resources the filter checks. The ACL APIs (29-31) are not among them:
/// they govern the cluster (Kafka asks DESCRIBE / ALTER on it, KafkaApis.scala
/// `handleDescribeAcls`, `handleCreateAcls`, `handleDeleteAcls`), which the policy models
/// only through `apiKeys`, so they are allowed only explicitly (refused with
/// CLUSTER_AUTHORIZATION_FAILED otherwise).
pub const CHECKED: &[i16] = &[
    0, 1, 2, 3, 8, 9, 11, 12, 13, 14, 15, 16, 19, 20, 21, 22, 23, 24, 25, 26, 28, 32, 33, 37, 42,
    44, 47, 61, 68, 69, 75, 76, 77, 78, 79, 90, 91, 92,
];

pub fn class(api_key: i16) -> Class {
    if NO_RESOURCE.contains(&api_key) {
        Class::NoResource
    } else if CHECKED.contains(&api_key) {
        Class::Checked
    } else {
        Class::Unchecked
    }
}

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
    /// A response to rewrite whole once it has arrived: held when it fits
    /// `maxBufferedFrameBytes`, the connection closed otherwise ([`rewrite_response`]).
    Rewrite(Box<Rewrite>),
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

/// How a held response is rewritten ([`Splice::Rewrite`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The request's client id (identity for the decisions made on the response).
    pub client_id: Option<String>,
    pub edit: Edit,
}

/// A topic the filter withheld from the broker: name, partitions, the client's error.
pub type DeniedTopic = (String, Vec<i32>, i16);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// ListGroups: the groups the client may not use are dropped from the answer, as Kafka
    /// lists only the groups the caller may describe (KafkaApis.scala,
    /// `handleListGroupsRequest`).
    ListGroups,
    /// DescribeTopicPartitions of all topics (`topics` empty): the topics the client may not
    /// describe are dropped, as Kafka leaves them out of an all-topics answer
    /// (apache/kafka `core/src/main/java/kafka/server/handlers/
    /// DescribeTopicPartitionsRequestHandler.java`: only named topics get
    /// TOPIC_AUTHORIZATION_FAILED entries).
    DescribeTopicPartitions,
    /// DescribeShareGroupOffsets: as [`Edit::OffsetFetch`] v8+, for share groups (topics
    /// checked for describe, KIP-932).
    DescribeShareGroupOffsets {
        denied_groups: Vec<String>,
        denied_topics: Vec<(String, Vec<DeniedTopic>)>,
        all_topics: Vec<String>,
    },
    /// OffsetFetch v8+ (groups batched, KIP-709): the groups withheld from the broker answer
    /// GROUP_AUTHORIZATION_FAILED, the topics withheld from an allowed group answer their
    /// code inside that group, and the answer for all of a group's offsets (`topics` null)
    /// drops the topics the client may not consume, as Kafka drops the topics the caller may
    /// not describe (apache/kafka `core/src/main/scala/kafka/server/KafkaApis.scala`,
    /// `handleOffsetFetchRequestFromCoordinator`).
    OffsetFetch {
        denied_groups: Vec<String>,
        denied_topics: Vec<(String, Vec<DeniedTopic>)>,
        all_topics: Vec<String>,
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

    /// [`Policy::decide_unchecked_api`], decided and recorded.
    fn ok_unchecked(&mut self, api_key: i16, code: i16) -> bool {
        let d = self.policy.decide_unchecked_api(self.id, api_key);
        let what = format!("api {} (resources not checked)", api::api_name(api_key));
        self.record(d.allow, self.policy.rule_name(d).to_string(), what, code)
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
    let api_ok = if class(api_key) == Class::Unchecked {
        j.ok_unchecked(api_key, CLUSTER_AUTHORIZATION_FAILED)
    } else {
        j.ok(
            Question::Api(api_key),
            || format!("api {api_name}"),
            CLUSTER_AUTHORIZATION_FAILED,
        )
    };
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
        OFFSET_FETCH if (1..=9).contains(&version) => {
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
        DELETE_GROUPS | DESCRIBE_GROUPS | CONSUMER_GROUP_DESCRIBE | SHARE_GROUP_DESCRIBE => {
            groups_list(&mut j, api_key, version, flexible, body, forced)?
        }
        LIST_GROUPS => match forced {
            Some(c) => refusal(api_key, version, c),
            None => Enforced::Rewrite {
                body: body.to_vec(),
                splice: Some(Splice::Rewrite(Box::new(Rewrite {
                    client_id: j.id.client_id.clone(),
                    edit: Edit::ListGroups,
                }))),
            },
        },
        OFFSET_DELETE => offset_delete(&mut j, version, flexible, body, forced)?,
        TXN_OFFSET_COMMIT => txn_offset_commit(&mut j, version, flexible, body, forced)?,
        ADD_OFFSETS_TO_TXN | END_TXN => {
            // Both lead with the transactional id; AddOffsetsToTxn then names a group
            // (producer_id, producer_epoch, group_id). Kafka checks WRITE on the
            // transactional id, and READ on the group for AddOffsetsToTxn (KafkaApis.scala,
            // `handleAddOffsetsToTxnRequest`, `handleEndTxnRequest`).
            let mut r = Reader::new(body);
            let txn =
                String::from_utf8_lossy(r.string_v(flexible, "transactional_id")?).into_owned();
            let mut code = forced.or_else(|| txn_code(&mut j, &txn, api_name));
            if code.is_none() && api_key == ADD_OFFSETS_TO_TXN {
                r.i64("producer_id")?;
                r.i16("producer_epoch")?;
                let group = String::from_utf8_lossy(r.string_v(flexible, "group_id")?).into_owned();
                code = group_code(&mut j, &group, None, api_name);
            }
            match code {
                Some(c) => refusal(api_key, version, c),
                None => Enforced::Forward,
            }
        }
        ADD_PARTITIONS_TO_TXN if version <= 3 => {
            add_partitions_to_txn(&mut j, version, flexible, body, forced)?
        }
        ADD_PARTITIONS_TO_TXN => {
            // v4+ batches transactions and is what brokers send each other (KIP-890): not
            // checked, so allowed only explicitly.
            let ok = forced.is_none() && j.ok_unchecked(api_key, CLUSTER_AUTHORIZATION_FAILED);
            match ok {
                true => Enforced::Forward,
                false => match encode(
                    &kafka_protocol::messages::AddPartitionsToTxnResponse::default()
                        .with_error_code(CLUSTER_AUTHORIZATION_FAILED),
                    version,
                ) {
                    Ok(body) => Enforced::Probe { body },
                    Err(_) => refusal(api_key, version, CLUSTER_AUTHORIZATION_FAILED),
                },
            }
        }
        CONSUMER_GROUP_HEARTBEAT => {
            let req: kafka_protocol::messages::ConsumerGroupHeartbeatRequest = decode_checked(
                &walk::S_CONSUMER_GROUP_HEARTBEAT_REQ,
                version,
                flexible,
                body,
            )?;
            // KIP-848: joining is by heartbeat. Kafka checks READ on the group, then
            // DESCRIBE on the subscribed topics (KafkaApis.scala,
            // `handleConsumerGroupHeartbeat`); a subscription is a request to consume, so the
            // filter asks consume.
            let mut code = forced.or_else(|| group_code(&mut j, &req.group_id.0, None, api_name));
            if code.is_none() {
                for t in req.subscribed_topic_names.iter().flatten() {
                    if consume_code(&mut j, &t.0, None) != 0 {
                        code = Some(TOPIC_AUTHORIZATION_FAILED);
                    }
                }
                if req.subscribed_topic_regex.is_some()
                    && j.policy.may_deny_topics(j.id, Operation::Consume)
                {
                    // A regex subscription names no topic the filter could check.
                    let ok = j.record(
                        false,
                        "default".to_string(),
                        format!("subscription regex (group {})", req.group_id.0),
                        TOPIC_AUTHORIZATION_FAILED,
                    );
                    if !ok {
                        code = Some(TOPIC_AUTHORIZATION_FAILED);
                    }
                }
            }
            match code {
                Some(c) => refusal(api_key, version, c),
                None => Enforced::Forward,
            }
        }
        DESCRIBE_CONFIGS if version >= 1 => {
            describe_configs(&mut j, version, flexible, body, forced)?
        }
        DESCRIBE_PRODUCERS => describe_producers(&mut j, version, flexible, body, forced)?,
        OFFSET_FOR_LEADER_EPOCH if version >= 2 => {
            offset_for_leader_epoch(&mut j, version, flexible, body, forced)?
        }
        DESCRIBE_TOPIC_PARTITIONS => {
            describe_topic_partitions(&mut j, version, flexible, body, forced)?
        }
        SHARE_GROUP_HEARTBEAT if version >= 1 => {
            let req: kafka_protocol::messages::ShareGroupHeartbeatRequest =
                decode_checked(&walk::S_SHARE_GROUP_HEARTBEAT_REQ, version, flexible, body)?;
            // KIP-932: a share consumer joins by heartbeat, as a KIP-848 consumer does. Kafka
            // asks READ on the group (KafkaApis.scala, `handleShareGroupHeartbeat`); the
            // subscribed topics are checked for consume, as for ConsumerGroupHeartbeat.
            let mut code = forced.or_else(|| group_code(&mut j, &req.group_id.0, None, api_name));
            if code.is_none() {
                for t in req.subscribed_topic_names.iter().flatten() {
                    if consume_code(&mut j, &t.0, None) != 0 {
                        code = Some(TOPIC_AUTHORIZATION_FAILED);
                    }
                }
            }
            match code {
                Some(c) => refusal(api_key, version, c),
                None => Enforced::Forward,
            }
        }
        DESCRIBE_SHARE_GROUP_OFFSETS => {
            describe_share_group_offsets(&mut j, version, flexible, body, forced)?
        }
        ALTER_SHARE_GROUP_OFFSETS | DELETE_SHARE_GROUP_OFFSETS => {
            share_group_offsets(&mut j, api_key, version, flexible, body, forced)?
        }
        SHARE_FETCH | SHARE_ACKNOWLEDGE if version >= 1 => {
            share_fetch(&mut j, names, api_key, version, flexible, body, forced)?
        }
        DESCRIBE_CONFIGS
        | OFFSET_FOR_LEADER_EPOCH
        | SHARE_GROUP_HEARTBEAT
        | SHARE_FETCH
        | SHARE_ACKNOWLEDGE => Enforced::Close {
            reason: format!(
                "{api_name} v{version} cannot be enforced (kafka-protocol cannot read it)"
            ),
        },
        _ => match forced {
            Some(c) => refusal(api_key, version, c),
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
        DELETE_GROUPS | CONSUMER_GROUP_DESCRIBE | TXN_OFFSET_COMMIT => Some(4),
        DESCRIBE_GROUPS => Some(if version >= 1 { 4 } else { 0 }),
        // error_code, throttle_time_ms, then topics
        OFFSET_DELETE => Some(2 + 4),
        DESCRIBE_CONFIGS
        | DESCRIBE_PRODUCERS
        | DESCRIBE_TOPIC_PARTITIONS
        | SHARE_GROUP_DESCRIBE => Some(4),
        OFFSET_FOR_LEADER_EPOCH => Some(if version >= 2 { 4 } else { 0 }),
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
    if version >= 8 {
        return offset_fetch_groups(j, version, req, forced);
    }
    let group_denied = group_code(j, &req.group_id.0, forced, "offset_fetch");
    let Some(topics) = req.topics.as_ref() else {
        // All of the group's committed offsets (v2+). A denied group gets the top-level
        // GROUP_AUTHORIZATION_FAILED Kafka answers (v2+ has it); an allowed group's answer
        // loses the topics the client may not consume, as Kafka's loses those the caller may
        // not describe (KafkaApis.scala, `handleOffsetFetchRequestFromCoordinator`).
        return Ok(match group_denied {
            Some(code) if version >= 2 => Enforced::Probe {
                body: encode(
                    &kafka_protocol::messages::OffsetFetchResponse::default().with_error_code(code),
                    version,
                )?,
            },
            Some(_) => Enforced::Close {
                reason: "OffsetFetch v1 of all topics for a denied group".to_string(),
            },
            None if j.policy.may_deny_topics(j.id, Operation::Consume) => Enforced::Rewrite {
                body: body.to_vec(),
                splice: Some(Splice::Rewrite(Box::new(Rewrite {
                    client_id: j.id.client_id.clone(),
                    edit: Edit::OffsetFetch {
                        denied_groups: Vec::new(),
                        denied_topics: Vec::new(),
                        all_topics: vec![req.group_id.0.to_string()],
                    },
                }))),
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

/// OffsetFetch v8+: every group is checked, and every named topic of an allowed group.
/// Denied groups and topics never reach the broker; the response is rewritten whole
/// ([`Edit::OffsetFetch`]).
fn offset_fetch_groups(
    j: &mut Judge<'_>,
    version: i16,
    req: OffsetFetchRequest,
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    let filter_all = j.policy.may_deny_topics(j.id, Operation::Consume);
    let (mut denied_groups, mut denied_topics, mut all_topics) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut kept = Vec::new();
    let mut changed = false;
    for g in &req.groups {
        let group = g.group_id.0.to_string();
        if group_code(j, &group, forced, "offset_fetch").is_some() {
            denied_groups.push(group);
            changed = true;
            continue;
        }
        let Some(topics) = g.topics.as_ref() else {
            if filter_all {
                all_topics.push(group);
            }
            kept.push(g.clone());
            continue;
        };
        let mut keep = Vec::new();
        let mut denied = Vec::new();
        for t in topics {
            match consume_code(j, &t.name.0, None) {
                0 => keep.push(t.clone()),
                c => denied.push((t.name.0.to_string(), t.partition_indexes.clone(), c)),
            }
        }
        if !denied.is_empty() {
            changed = true;
            denied_topics.push((group, denied));
        }
        kept.push(g.clone().with_topics(Some(keep)));
    }
    if !changed && all_topics.is_empty() {
        return Ok(Enforced::Forward);
    }
    Ok(Enforced::Rewrite {
        body: encode(&req.with_groups(kept), version)?,
        splice: Some(Splice::Rewrite(Box::new(Rewrite {
            client_id: j.id.client_id.clone(),
            edit: Edit::OffsetFetch {
                denied_groups,
                denied_topics,
                all_topics,
            },
        }))),
    })
}

/// Rewrite a complete response body (after the response header) for [`Splice::Rewrite`].
pub fn rewrite_response(
    policy: &Policy,
    id: &Identity,
    api_key: i16,
    version: i16,
    body: &[u8],
    edit: &Edit,
    notes: &mut Vec<Note>,
) -> DecodeResult<Vec<u8>> {
    let flexible = api::api_info(api_key).is_some_and(|a| a.is_flexible(version));
    let mut j = Judge {
        policy,
        id,
        notes: Vec::new(),
    };
    let out = match edit {
        Edit::ListGroups => {
            let mut resp: kafka_protocol::messages::ListGroupsResponse =
                decode_checked(&walk::S_LIST_GROUPS_RESP_FULL, version, flexible, body)?;
            resp.groups.retain(|g| {
                let name = g.group_id.0.to_string();
                j.ok(
                    Question::Group(&name),
                    || format!("group {name} (list_groups)"),
                    GROUP_AUTHORIZATION_FAILED,
                )
            });
            encode(&resp, version)?
        }
        Edit::DescribeTopicPartitions => {
            let mut resp: kafka_protocol::messages::DescribeTopicPartitionsResponse =
                decode_checked(
                    &walk::S_DESCRIBE_TOPIC_PARTITIONS_RESP,
                    version,
                    flexible,
                    body,
                )?;
            resp.topics.retain(|t| {
                let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                topic_code(&mut j, Named::Name(name), Operation::Describe) == 0
            });
            // The cursor to continue from names the next topic: a denied one would show
            // that it exists, so the listing ends there (Kafka's cursor never names a topic
            // the caller may not describe, it pages over the authorized topics only).
            let cursor_denied = resp.next_cursor.as_ref().is_some_and(|c| {
                let name = c.topic_name.0.to_string();
                !j.policy
                    .decide(j.id, Question::Topic(Operation::Describe, &name))
                    .allow
            });
            if cursor_denied && j.policy.mode != crate::policy::Mode::Audit {
                resp.next_cursor = None;
            }
            encode(&resp, version)?
        }
        Edit::DescribeShareGroupOffsets {
            denied_groups,
            denied_topics,
            all_topics,
        } => {
            use kafka_protocol::messages::describe_share_group_offsets_response as d;
            let mut resp: kafka_protocol::messages::DescribeShareGroupOffsetsResponse =
                decode_checked(
                    &walk::S_DESCRIBE_SHARE_GROUP_OFFSETS_RESP,
                    version,
                    flexible,
                    body,
                )?;
            let withheld =
                |topics: &[DeniedTopic]| -> Vec<d::DescribeShareGroupOffsetsResponseTopic> {
                    topics
                        .iter()
                        .map(|(t, parts, code)| {
                            d::DescribeShareGroupOffsetsResponseTopic::default()
                                .with_topic_name(kafka_protocol::messages::TopicName(
                                    StrBytes::from_string(t.clone()),
                                ))
                                .with_partitions(
                                    parts
                                        .iter()
                                        .map(|p| {
                                            d::DescribeShareGroupOffsetsResponsePartition::default()
                                                .with_partition_index(*p)
                                                .with_start_offset(-1)
                                                .with_leader_epoch(-1)
                                                .with_error_code(*code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect()
                };
            for g in resp.groups.iter_mut() {
                let name = g.group_id.0.to_string();
                if all_topics.contains(&name) {
                    g.topics.retain(|t| {
                        topic_code(
                            &mut j,
                            Named::Name(t.topic_name.0.to_string()),
                            Operation::Describe,
                        ) == 0
                    });
                }
            }
            for (group, topics) in denied_topics {
                match resp
                    .groups
                    .iter_mut()
                    .find(|g| g.group_id.0.as_str() == group)
                {
                    Some(g) => g.topics.extend(withheld(topics)),
                    // Every named topic of the group was withheld: the group never reached
                    // the broker and is answered here.
                    None => resp.groups.push(
                        d::DescribeShareGroupOffsetsResponseGroup::default()
                            .with_group_id(StrBytes::from_string(group.clone()).into())
                            .with_topics(withheld(topics)),
                    ),
                }
            }
            resp.groups.extend(denied_groups.iter().map(|g| {
                d::DescribeShareGroupOffsetsResponseGroup::default()
                    .with_group_id(StrBytes::from_string(g.clone()).into())
                    .with_error_code(GROUP_AUTHORIZATION_FAILED)
                    .with_error_message(Some(StrBytes::from_static_str(DENIED)))
            }));
            encode(&resp, version)?
        }
        Edit::OffsetFetch {
            denied_groups,
            denied_topics,
            all_topics,
        } => {
            if walk::offset_fetch_bare(version, body.len()) {
                // tansu's answer without a topics array: nothing to filter.
                return Ok(body.to_vec());
            }
            let mut resp: kafka_protocol::messages::OffsetFetchResponse =
                decode_checked(&walk::S_OFFSET_FETCH_RESP_FULL, version, flexible, body)?;
            if version < 8 && !all_topics.is_empty() {
                resp.topics
                    .retain(|t| consume_code(&mut j, &t.name.0, None) == 0);
            }
            for g in resp.groups.iter_mut() {
                let name = g.group_id.0.to_string();
                if all_topics.contains(&name) {
                    g.topics
                        .retain(|t| consume_code(&mut j, &t.name.0, None) == 0);
                }
                if let Some((_, denied)) = denied_topics.iter().find(|(n, _)| *n == name) {
                    g.topics.extend(denied.iter().map(|(t, parts, code)| {
                        offset_fetch_response::OffsetFetchResponseTopics::default()
                            .with_name(kafka_protocol::messages::TopicName(
                                StrBytes::from_string(t.clone()),
                            ))
                            .with_partitions(
                                parts
                                    .iter()
                                    .map(|p| {
                                        offset_fetch_response::OffsetFetchResponsePartitions::default()
                                            .with_partition_index(*p)
                                            .with_committed_offset(-1)
                                            .with_committed_leader_epoch(-1)
                                            .with_metadata(Some(StrBytes::default()))
                                            .with_error_code(*code)
                                    })
                                    .collect(),
                            )
                    }));
                }
            }
            resp.groups.extend(denied_groups.iter().map(|g| {
                offset_fetch_response::OffsetFetchResponseGroup::default()
                    .with_group_id(StrBytes::from_string(g.clone()).into())
                    .with_error_code(GROUP_AUTHORIZATION_FAILED)
            }));
            encode(&resp, version)?
        }
    };
    notes.extend(j.notes);
    Ok(out)
}

/// The transactional-id check: `Some(code)` when denied.
fn txn_code(j: &mut Judge<'_>, txn: &str, what: &str) -> Option<i16> {
    let ok = j.ok(
        Question::TransactionalId(txn),
        || format!("transactional id {txn} ({what})"),
        TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    );
    (!ok).then_some(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
}

/// A refused request whose response the filter synthesizes from its top-level error code
/// (answered through the ApiVersions probe); an API without one, or a version whose layout
/// has no room for the code, closes the connection.
fn refusal(api_key: i16, version: i16, code: i16) -> Enforced {
    match top_level_error(api_key, version, code) {
        Some(body) => Enforced::Probe { body },
        None => Enforced::Close {
            reason: format!(
                "{} v{version} is refused and the filter has no error response for it",
                api::api_name(api_key)
            ),
        },
    }
}

/// The response of `api_key` at `version` carrying only `code` in its top-level error field,
/// for the APIs whose response has one (apache/kafka `clients/src/main/resources/common/
/// message/*Response.json`); `None` for the others.
fn top_level_error(api_key: i16, version: i16, code: i16) -> Option<Vec<u8>> {
    use kafka_protocol::messages as m;
    macro_rules! top {
        ($($k:literal => $t:ty),* $(,)?) => {
            match api_key {
                $($k => encode(&<$t>::default().with_error_code(code), version).ok(),)*
                _ => None,
            }
        };
    }
    match api_key {
        JOIN_GROUP | HEARTBEAT | LEAVE_GROUP | SYNC_GROUP => {
            return group_error(api_key, version, code).ok();
        }
        INIT_PRODUCER_ID => {
            return encode(
                &InitProducerIdResponse::default()
                    .with_error_code(code)
                    .with_producer_id((-1).into())
                    .with_producer_epoch(-1),
                version,
            )
            .ok();
        }
        ADD_OFFSETS_TO_TXN | END_TXN | LIST_GROUPS | OFFSET_DELETE => {}
        _ if version < 1 && api_key == 43 => return None, // ElectLeaders v0: per partition
        _ if version < 3 && api_key == 35 => return None, // DescribeLogDirs v0-2
        _ => {}
    }
    top! {
        16 => m::ListGroupsResponse,
        25 => m::AddOffsetsToTxnResponse,
        26 => m::EndTxnResponse,
        35 => m::DescribeLogDirsResponse,
        38 => m::CreateDelegationTokenResponse,
        39 => m::RenewDelegationTokenResponse,
        40 => m::ExpireDelegationTokenResponse,
        41 => m::DescribeDelegationTokenResponse,
        43 => m::ElectLeadersResponse,
        45 => m::AlterPartitionReassignmentsResponse,
        46 => m::ListPartitionReassignmentsResponse,
        47 => m::OffsetDeleteResponse,
        48 => m::DescribeClientQuotasResponse,
        50 => m::DescribeUserScramCredentialsResponse,
        55 => m::DescribeQuorumResponse,
        57 => m::UpdateFeaturesResponse,
        60 => m::DescribeClusterResponse,
        66 => m::ListTransactionsResponse,
        68 => m::ConsumerGroupHeartbeatResponse,
        71 => m::GetTelemetrySubscriptionsResponse,
        72 => m::PushTelemetryResponse,
        74 => m::ListConfigResourcesResponse,
        76 => m::ShareGroupHeartbeatResponse,
        78 => m::ShareFetchResponse,
        79 => m::ShareAcknowledgeResponse,
        80 => m::AddRaftVoterResponse,
        81 => m::RemoveRaftVoterResponse,
        82 => m::UpdateRaftVoterResponse,
        91 => m::AlterShareGroupOffsetsResponse,
        92 => m::DeleteShareGroupOffsetsResponse,
    }
}

/// DeleteGroups, DescribeGroups, ConsumerGroupDescribe: each group is checked; denied groups
/// never reach the broker and their GROUP_AUTHORIZATION_FAILED entries go in front of the
/// broker's (KafkaApis.scala: `handleDeleteGroupsRequest` asks DELETE, `handleDescribeGroups`
/// and `handleConsumerGroupDescribe` DESCRIBE, each per group).
fn groups_list(
    j: &mut Judge<'_>,
    api_key: i16,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let what = api::api_name(api_key);
    let mut code = |g: &m::GroupId| group_code(j, &g.0, forced, what).unwrap_or(0);
    let msg = || Some(StrBytes::from_static_str(DENIED));
    match api_key {
        DELETE_GROUPS => {
            let req: m::DeleteGroupsRequest =
                decode_checked(&walk::S_DELETE_GROUPS_REQ, version, flexible, body)?;
            let (kept, denied) = split(&req.groups_names, &mut code, |g, c| {
                m::delete_groups_response::DeletableGroupResult::default()
                    .with_group_id(g.clone())
                    .with_error_code(c)
            });
            finish(&denied, &req.clone().with_groups_names(kept), version)
        }
        DESCRIBE_GROUPS => {
            let req: m::DescribeGroupsRequest =
                decode_checked(&walk::S_DESCRIBE_GROUPS_REQ, version, flexible, body)?;
            let (kept, denied) = split(&req.groups, &mut code, |g, c| {
                let d = m::describe_groups_response::DescribedGroup::default()
                    .with_group_id(g.clone())
                    .with_error_code(c)
                    .with_authorized_operations(i32::MIN);
                if version >= 6 {
                    d.with_error_message(msg())
                } else {
                    d
                }
            });
            finish(&denied, &req.clone().with_groups(kept), version)
        }
        SHARE_GROUP_DESCRIBE => {
            // Kafka asks DESCRIBE on each group (KafkaApis.scala, `handleShareGroupDescribe`).
            let req: m::ShareGroupDescribeRequest =
                decode_checked(&walk::S_GROUPS_DESCRIBE_REQ, version, flexible, body)?;
            let (kept, denied) = split(&req.group_ids, &mut code, |g, c| {
                m::share_group_describe_response::DescribedGroup::default()
                    .with_group_id(g.clone())
                    .with_error_code(c)
                    .with_error_message(msg())
                    .with_authorized_operations(i32::MIN)
            });
            finish(&denied, &req.clone().with_group_ids(kept), version)
        }
        _ => {
            let req: m::ConsumerGroupDescribeRequest =
                decode_checked(&walk::S_GROUPS_DESCRIBE_REQ, version, flexible, body)?;
            let (kept, denied) = split(&req.group_ids, &mut code, |g, c| {
                m::consumer_group_describe_response::DescribedGroup::default()
                    .with_group_id(g.clone())
                    .with_error_code(c)
                    .with_error_message(msg())
                    .with_authorized_operations(i32::MIN)
            });
            finish(&denied, &req.clone().with_group_ids(kept), version)
        }
    }
}

/// OffsetDelete: a denied group refuses the request (top-level GROUP_AUTHORIZATION_FAILED);
/// in an allowed group, each topic is checked for consume (Kafka: DELETE on the group, READ
/// on each topic, KafkaApis.scala `handleDeleteOffsetsRequest`).
fn offset_delete(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::OffsetDeleteRequest =
        decode_checked(&walk::S_OFFSET_DELETE_REQ, version, flexible, body)?;
    if let Some(c) = group_code(j, &req.group_id.0, forced, "offset_delete") {
        return Ok(refusal(OFFSET_DELETE, version, c));
    }
    let (kept, denied) = split(
        &req.topics,
        |t| consume_code(j, &t.name.0, None),
        |t, c| {
            m::offset_delete_response::OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            m::offset_delete_response::OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        },
    );
    finish(&denied, &req.clone().with_topics(kept), version)
}

/// TxnOffsetCommit: the transactional id and the group refuse the whole request (every
/// partition gets the code, nothing reaches the broker); in an allowed transaction and group
/// each topic is checked for consume (Kafka: WRITE on the transactional id, READ on the
/// group and each topic, KafkaApis.scala `handleTxnOffsetCommitRequest`).
fn txn_offset_commit(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::TxnOffsetCommitRequest =
        decode_checked(&walk::S_TXN_OFFSET_COMMIT_REQ, version, flexible, body)?;
    let whole = forced
        .or_else(|| txn_code(j, &req.transactional_id.0, "txn_offset_commit"))
        .or_else(|| group_code(j, &req.group_id.0, None, "txn_offset_commit"));
    let entry = |t: &m::txn_offset_commit_request::TxnOffsetCommitRequestTopic, c: i16| {
        m::txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
            .with_name(t.name.clone())
            .with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        m::txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(c)
                    })
                    .collect(),
            )
    };
    if let Some(c) = whole {
        let topics = req.topics.iter().map(|t| entry(t, c)).collect();
        return Ok(Enforced::Probe {
            body: encode(
                &m::TxnOffsetCommitResponse::default().with_topics(topics),
                version,
            )?,
        });
    }
    let (kept, denied) = split(&req.topics, |t| consume_code(j, &t.name.0, None), entry);
    finish(&denied, &req.clone().with_topics(kept), version)
}

/// AddPartitionsToTxn v0-3 (what clients send; v4+ batches transactions for brokers): a
/// denied transactional id fails every partition; a topic the client may not produce to
/// fails with TOPIC_AUTHORIZATION_FAILED and the others with OPERATION_NOT_ATTEMPTED, as
/// Kafka answers (KafkaApis.scala, `handleAddPartitionsToTxnRequest`). Nothing reaches the
/// broker then.
fn add_partitions_to_txn(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::AddPartitionsToTxnRequest =
        decode_checked(&walk::S_ADD_PARTITIONS_REQ, version, flexible, body)?;
    let whole = forced.or_else(|| {
        txn_code(
            j,
            &req.v3_and_below_transactional_id.0,
            "add_partitions_to_txn",
        )
    });
    let codes: Vec<i16> = req
        .v3_and_below_topics
        .iter()
        .map(|t| match whole {
            Some(c) => c,
            None => topic_code(j, Named::Name(t.name.0.to_string()), Operation::Produce),
        })
        .collect();
    if codes.iter().all(|c| *c == 0) {
        return Ok(Enforced::Forward);
    }
    let results = req
        .v3_and_below_topics
        .iter()
        .zip(&codes)
        .map(|(t, c)| {
            let c = if *c == 0 { OPERATION_NOT_ATTEMPTED } else { *c };
            m::add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            m::add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(c)
                        })
                        .collect(),
                )
        })
        .collect();
    Ok(Enforced::Probe {
        body: encode(
            &m::AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results),
            version,
        )?,
    })
}

/// A cluster config resource (broker, broker logger, client metrics, or a type the filter
/// does not know) of DescribeConfigs, AlterConfigs or IncrementalAlterConfigs: the policy
/// has no cluster resource, so it is allowed only explicitly
/// ([`Policy::decide_unchecked_api`] for the API); 0 or CLUSTER_AUTHORIZATION_FAILED.
fn cluster_config_code(j: &mut Judge<'_>, api_key: i16, ty: i8, name: &str) -> i16 {
    let d = j.policy.decide_unchecked_api(j.id, api_key);
    let rule = j.policy.rule_name(d).to_string();
    let what = format!(
        "cluster config resource type {ty} {name:?} ({})",
        api::api_name(api_key)
    );
    if j.record(d.allow, rule, what, CLUSTER_AUTHORIZATION_FAILED) {
        0
    } else {
        CLUSTER_AUTHORIZATION_FAILED
    }
}

/// DescribeConfigs: each resource is checked as Kafka asks DESCRIBE_CONFIGS on it
/// (apache/kafka `core/src/main/scala/kafka/server/ConfigHelper.scala`,
/// `handleDescribeConfigsRequest`): a topic for `describe` (TOPIC_AUTHORIZATION_FAILED), a
/// group as any group use (GROUP_AUTHORIZATION_FAILED); broker, broker-logger and
/// client-metrics resources are the cluster's, which the policy governs only through
/// `apiKeys`, so they are allowed only explicitly ([`Policy::decide_unchecked_api`],
/// CLUSTER_AUTHORIZATION_FAILED). Denied resources never reach the broker; their results go
/// in front of the broker's.
fn describe_configs(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::DescribeConfigsRequest =
        decode_checked(&walk::S_DESCRIBE_CONFIGS_REQ, version, flexible, body)?;
    let (kept, denied) = split(
        &req.resources,
        |r| match (forced, r.resource_type) {
            (Some(c), _) => c,
            (None, RESOURCE_TOPIC) => topic_code(
                j,
                Named::Name(r.resource_name.to_string()),
                Operation::Describe,
            ),
            (None, RESOURCE_GROUP) => {
                group_code(j, &r.resource_name, None, "describe_configs").unwrap_or(0)
            }
            (None, t) => cluster_config_code(j, DESCRIBE_CONFIGS, t, &r.resource_name),
        },
        |r, c| {
            m::describe_configs_response::DescribeConfigsResult::default()
                .with_error_code(c)
                .with_error_message(Some(StrBytes::from_static_str(DENIED)))
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
        },
    );
    finish(&denied, &req.clone().with_resources(kept), version)
}

/// DescribeProducers: Kafka asks READ on each topic (KafkaApis.scala,
/// `handleDescribeProducersRequest`), so each is checked for `consume`; a denied topic's
/// partitions answer TOPIC_AUTHORIZATION_FAILED.
fn describe_producers(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::DescribeProducersRequest =
        decode_checked(&walk::S_DESCRIBE_PRODUCERS_REQ, version, flexible, body)?;
    let (kept, denied) = split(
        &req.topics,
        |t| consume_code(j, &t.name.0, forced),
        |t, c| {
            m::describe_producers_response::TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partition_indexes
                        .iter()
                        .map(|p| {
                            m::describe_producers_response::PartitionResponse::default()
                                .with_partition_index(*p)
                                .with_error_code(c)
                        })
                        .collect(),
                )
        },
    );
    finish(&denied, &req.clone().with_topics(kept), version)
}

/// OffsetForLeaderEpoch: consumers use it to detect log truncation (KIP-320); Kafka asks
/// CLUSTER_ACTION (followers) or else DESCRIBE on each topic (KafkaApis.scala,
/// `handleOffsetForLeaderEpochRequest`). The policy has no cluster action, so each topic is
/// checked for `describe`; a denied topic's partitions answer TOPIC_AUTHORIZATION_FAILED.
fn offset_for_leader_epoch(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::OffsetForLeaderEpochRequest = decode_checked(
        &walk::S_OFFSET_FOR_LEADER_EPOCH_REQ,
        version,
        flexible,
        body,
    )?;
    let (kept, denied) = split(
        &req.topics,
        |t| match forced {
            Some(c) => c,
            None => topic_code(j, Named::Name(t.topic.0.to_string()), Operation::Describe),
        },
        |t, c| {
            m::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            m::offset_for_leader_epoch_response::EpochEndOffset::default()
                                .with_partition(p.partition)
                                .with_error_code(c)
                                .with_leader_epoch(-1)
                                .with_end_offset(-1)
                        })
                        .collect(),
                )
        },
    );
    finish(&denied, &req.clone().with_topics(kept), version)
}

/// DescribeTopicPartitions (KIP-966; what the Java admin client's `describeTopics` sends):
/// Kafka asks DESCRIBE on each topic (apache/kafka `core/src/main/java/kafka/server/handlers/
/// DescribeTopicPartitionsRequestHandler.java`). Named topics: a denied one never reaches
/// the broker and answers TOPIC_AUTHORIZATION_FAILED with the zero topic id, as Kafka does;
/// only topics at or after the cursor's are answered, as Kafka answers. If no named topic is
/// left the filter answers alone (an empty list would ask the broker for every topic). All
/// topics (`topics` empty): the answer is filtered ([`Edit::DescribeTopicPartitions`]).
fn describe_topic_partitions(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::DescribeTopicPartitionsRequest = decode_checked(
        &walk::S_DESCRIBE_TOPIC_PARTITIONS_REQ,
        version,
        flexible,
        body,
    )?;
    if req.topics.is_empty() {
        return Ok(match forced {
            Some(c) => refusal(DESCRIBE_TOPIC_PARTITIONS, version, c),
            None if j.policy.may_deny_topics(j.id, Operation::Describe) => Enforced::Rewrite {
                body: body.to_vec(),
                splice: Some(Splice::Rewrite(Box::new(Rewrite {
                    client_id: j.id.client_id.clone(),
                    edit: Edit::DescribeTopicPartitions,
                }))),
            },
            None => Enforced::Forward,
        });
    }
    let from = req
        .cursor
        .as_ref()
        .map(|c| c.topic_name.0.to_string())
        .unwrap_or_default();
    let (kept, denied) = split(
        &req.topics,
        |t| match forced {
            Some(c) => c,
            None => topic_code(j, Named::Name(t.name.0.to_string()), Operation::Describe),
        },
        |t, c| {
            m::describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                .with_error_code(c)
                .with_name(Some(t.name.clone()))
        },
    );
    let denied: Vec<_> = denied
        .into_iter()
        .filter(|d| {
            d.name
                .as_ref()
                .is_some_and(|n| n.0.as_str() >= from.as_str())
        })
        .collect();
    let mut new_req = req.clone().with_topics(kept.clone());
    if let Some(c) = req.cursor.as_ref() {
        if !kept.iter().any(|t| t.name == c.topic_name) {
            // Kafka requires the cursor's topic in the list: the cursor moves to the first
            // topic left after it (from its first partition).
            let mut after: Vec<&m::TopicName> = kept
                .iter()
                .map(|t| &t.name)
                .filter(|n| n.0.as_str() >= from.as_str())
                .collect();
            after.sort();
            new_req.cursor = after.first().map(|n| {
                m::describe_topic_partitions_request::Cursor::default()
                    .with_topic_name((*n).clone())
                    .with_partition_index(0)
            });
            if new_req.cursor.is_none() {
                new_req.topics.clear();
            }
        }
    }
    if new_req.topics.is_empty() {
        return Ok(Enforced::Probe {
            body: encode(
                &m::DescribeTopicPartitionsResponse::default().with_topics(denied),
                version,
            )?,
        });
    }
    if denied.is_empty() && new_req != req {
        // Only topics before the cursor were denied: Kafka would not answer them, but they
        // still must not reach the broker.
        return Ok(Enforced::Rewrite {
            body: encode(&new_req, version)?,
            splice: None,
        });
    }
    finish(&denied, &new_req, version)
}

/// ShareFetch and ShareAcknowledge (KIP-932): Kafka asks READ on the group, refusing the
/// request with GROUP_AUTHORIZATION_FAILED, then READ on each topic (KafkaApis.scala,
/// `handleShareFetchRequest`, `handleShareAcknowledgeRequest`). Topics are named by id only,
/// resolved through the names learned from Metadata (an id nobody named is denied when a
/// deny could apply, see `unknownTopicIds`), and checked for consume. A share session is
/// state the broker keeps per member: removing a topic from it would make the client's and
/// the broker's sessions disagree, so a request naming a denied topic is refused whole with
/// TOPIC_AUTHORIZATION_FAILED in its top-level error instead. A client never has such a
/// topic in its session unless it crafts one: ShareGroupHeartbeat refuses subscribing to it.
/// `forgotten_topics_data` only drops topics from the session and is not checked.
fn share_fetch(
    j: &mut Judge<'_>,
    names: &mut dyn TopicNames,
    api_key: i16,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let what = api::api_name(api_key);
    let (group, topics): (String, Vec<[u8; 16]>) = if api_key == SHARE_FETCH {
        let req: m::ShareFetchRequest =
            decode_checked(&walk::S_SHARE_FETCH_REQ, version, flexible, body)?;
        let group = req.group_id.map(|g| g.0.to_string()).unwrap_or_default();
        (
            group,
            req.topics.iter().map(|t| *t.topic_id.as_bytes()).collect(),
        )
    } else {
        let req: m::ShareAcknowledgeRequest =
            decode_checked(&walk::S_SHARE_ACKNOWLEDGE_REQ, version, flexible, body)?;
        let group = req.group_id.map(|g| g.0.to_string()).unwrap_or_default();
        (
            group,
            req.topics.iter().map(|t| *t.topic_id.as_bytes()).collect(),
        )
    };
    let mut code = forced.or_else(|| group_code(j, &group, None, what));
    if code.is_none() {
        for id in &topics {
            let named = topic_name(j, names, "", id, true, Operation::Consume);
            if topic_code(j, named, Operation::Consume) != 0 {
                code = Some(TOPIC_AUTHORIZATION_FAILED);
            }
        }
    }
    Ok(match code {
        Some(c) => refusal(api_key, version, c),
        None => Enforced::Forward,
    })
}

/// DescribeShareGroupOffsets (KIP-932): Kafka asks DESCRIBE on each group and on each topic,
/// as for OffsetFetch (KafkaApis.scala in Kafka 4.1, `handleDescribeShareGroupOffsetsRequest`;
/// KIP-932 "Share group offsets"). Denied groups and named topics never reach the broker; the
/// response is rewritten whole ([`Edit::DescribeShareGroupOffsets`]): withheld groups answer
/// GROUP_AUTHORIZATION_FAILED, withheld topics TOPIC_AUTHORIZATION_FAILED inside their group,
/// and a group asked for all its topics (`topics` null) loses those the client may not
/// describe. A group whose every named topic is withheld is taken out of the request (an
/// empty list must not be read as "all").
fn describe_share_group_offsets(
    j: &mut Judge<'_>,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let req: m::DescribeShareGroupOffsetsRequest = decode_checked(
        &walk::S_DESCRIBE_SHARE_GROUP_OFFSETS_REQ,
        version,
        flexible,
        body,
    )?;
    let filter_all = j.policy.may_deny_topics(j.id, Operation::Describe);
    let (mut denied_groups, mut denied_topics, mut all_topics) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut kept = Vec::new();
    for g in &req.groups {
        let group = g.group_id.0.to_string();
        if group_code(j, &group, forced, "describe_share_group_offsets").is_some() {
            denied_groups.push(group);
            continue;
        }
        let Some(topics) = g.topics.as_ref() else {
            if filter_all {
                all_topics.push(group);
            }
            kept.push(g.clone());
            continue;
        };
        let (ok, denied) = split(
            topics,
            |t| {
                topic_code(
                    j,
                    Named::Name(t.topic_name.0.to_string()),
                    Operation::Describe,
                )
            },
            |t, c| (t.topic_name.0.to_string(), t.partitions.clone(), c),
        );
        if !denied.is_empty() {
            denied_topics.push((group, denied));
        }
        if !ok.is_empty() {
            kept.push(g.clone().with_topics(Some(ok)));
        }
    }
    if denied_groups.is_empty() && denied_topics.is_empty() && all_topics.is_empty() {
        return Ok(Enforced::Forward);
    }
    Ok(Enforced::Rewrite {
        body: encode(&req.clone().with_groups(kept), version)?,
        splice: Some(Splice::Rewrite(Box::new(Rewrite {
            client_id: j.id.client_id.clone(),
            edit: Edit::DescribeShareGroupOffsets {
                denied_groups,
                denied_topics,
                all_topics,
            },
        }))),
    })
}

/// AlterShareGroupOffsets and DeleteShareGroupOffsets (KIP-932): Kafka asks READ (alter) or
/// DELETE (delete) on the group, refusing the request with a top-level
/// GROUP_AUTHORIZATION_FAILED, then READ on each topic, answering TOPIC_AUTHORIZATION_FAILED
/// per topic (KafkaApis.scala in Kafka 4.1, `handleAlterShareGroupOffsetsRequest`,
/// `handleDeleteShareGroupOffsetsRequest`). Topics are checked for consume; a denied one never
/// reaches the broker and its entry goes in front of the broker's
/// ([`skip_to_share_group_offsets_responses`]).
fn share_group_offsets(
    j: &mut Judge<'_>,
    api_key: i16,
    version: i16,
    flexible: bool,
    body: &[u8],
    forced: Option<i16>,
) -> DecodeResult<Enforced> {
    use kafka_protocol::messages as m;
    let what = api::api_name(api_key);
    let msg = || Some(StrBytes::from_static_str(DENIED));
    if api_key == ALTER_SHARE_GROUP_OFFSETS {
        let req: m::AlterShareGroupOffsetsRequest = decode_checked(
            &walk::S_ALTER_SHARE_GROUP_OFFSETS_REQ,
            version,
            flexible,
            body,
        )?;
        if let Some(c) = group_code(j, &req.group_id.0, forced, what) {
            return Ok(refusal(api_key, version, c));
        }
        let (kept, denied) = split(
            &req.topics,
            |t| consume_code(j, &t.topic_name.0, None),
            |t, c| {
                m::alter_share_group_offsets_response::AlterShareGroupOffsetsResponseTopic::default()
                    .with_topic_name(t.topic_name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                m::alter_share_group_offsets_response::AlterShareGroupOffsetsResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(c)
                                    .with_error_message(msg())
                            })
                            .collect(),
                    )
            },
        );
        return finish(&denied, &req.clone().with_topics(kept), version);
    }
    let req: m::DeleteShareGroupOffsetsRequest = decode_checked(
        &walk::S_DELETE_SHARE_GROUP_OFFSETS_REQ,
        version,
        flexible,
        body,
    )?;
    if let Some(c) = group_code(j, &req.group_id.0, forced, what) {
        return Ok(refusal(api_key, version, c));
    }
    let (kept, denied) = split(
        &req.topics,
        |t| consume_code(j, &t.topic_name.0, None),
        |t, c| {
            m::delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic::default()
                .with_topic_name(t.topic_name.clone())
                .with_error_code(c)
                .with_error_message(msg())
        },
    );
    finish(&denied, &req.clone().with_topics(kept), version)
}

/// For a prepend to AlterShareGroupOffsets / DeleteShareGroupOffsets responses: their
/// `responses` array follows throttle_time_ms, error_code and the variable-length
/// error_message (apache/kafka `clients/src/main/resources/common/message/
/// AlterShareGroupOffsetsResponse.json`, `DeleteShareGroupOffsetsResponse.json`; both
/// flexible from v0).
pub fn skip_to_share_group_offsets_responses(r: &mut Reader<'_>) -> DecodeResult<()> {
    r.i32("throttle_time_ms")?;
    r.i16("error_code")?;
    r.nullable_string_v(true, "error_message")?;
    Ok(())
}

/// Whether a response's prepend point is found by
/// [`skip_to_share_group_offsets_responses`].
pub fn prepends_after_error_message(api_key: i16) -> bool {
    matches!(
        api_key,
        ALTER_SHARE_GROUP_OFFSETS | DELETE_SHARE_GROUP_OFFSETS
    )
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
/// topic resources of (Incremental)AlterConfigs (alter); their group resources are checked as
/// the group, their cluster resources are allowed only explicitly ([`cluster_config_code`]).
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
    // Config resources as Kafka authorizes them (KafkaApis.scala,
    // `processLegacyAlterConfigsRequest`; ConfigAdminManager for the incremental form): a
    // topic ALTER_CONFIGS on it (alter here), a group on the group, broker / broker-logger /
    // client-metrics resources on the cluster, which only an `apiKeys` rule can allow.
    let mut code_for = |name: &str, ty: Option<i8>| -> i16 {
        match (forced, ty) {
            (Some(c), _) => c,
            (None, None | Some(RESOURCE_TOPIC)) => topic_code(j, Named::Name(name.to_string()), op),
            (None, Some(RESOURCE_GROUP)) => {
                group_code(j, name, None, api::api_name(api_key)).unwrap_or(0)
            }
            (None, Some(t)) => cluster_config_code(j, api_key, t, name),
        }
    };
    let msg = || Some(StrBytes::from_static_str(DENIED));
    match api_key {
        CREATE_TOPICS => {
            let req: CreateTopicsRequest =
                decode_checked(&walk::S_CREATE_TOPICS_REQ, version, flexible, body)?;
            let (kept, denied) = split(
                &req.topics,
                |t| code_for(&t.name.0, None),
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
                |t| code_for(&t.name.0, None),
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
                |t| code_for(&t.name.0, None),
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
                |r| code_for(&r.resource_name, Some(r.resource_type)),
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
                |r| code_for(&r.resource_name, Some(r.resource_type)),
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
