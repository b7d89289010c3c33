//! A streaming walk of Kafka message bodies, driven by small static schemas.
//!
//! The walker never sees a whole frame. It is handed the bytes at its current position (a
//! small window the session copies out of the host) and does one *step*: one primitive
//! field, one length prefix, one array count, one tagged-field header or one record-batch
//! header. A step either succeeds completely (state advanced, events emitted) or fails with
//! [`DecodeError::Truncated`] having changed nothing, so the session can fetch more bytes and
//! retry. Fields nobody asked for (record payloads, unreported strings, tagged fields) are
//! returned as [`Step::Skip`] so their bytes stream through without ever being copied into
//! the VM. This is the model of Envoy's `contrib/kafka` parsers (a chain of small
//! deserializers that say "need more" or "done"), with Kroxylicious' rule that only what a
//! feature asks for is decoded.
//!
//! Layouts follow Kafka's message specs (`clients/src/main/resources/common/message/*.json`)
//! as generated into tychedelia/kafka-protocol-rs 0.18 (`src/messages/*.rs`, the `decode`
//! functions' `if version >= N` branches); the tests walk kafka-protocol's own encodings of
//! every schema at every version and compare.
//!
//! Arrays are only counted, never allocated: a count is a loop bound and a wrong count runs
//! into the frame end, which the session turns into a malformed-frame verdict.

use crate::codec::api;
use crate::codec::reader::{check_tag, DecodeError, DecodeResult, Reader};

/// What a field means to the collector. `Skip` fields are walked over and not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F {
    Skip,
    TransactionalId,
    Acks,
    Topics,
    Topic,
    TopicId,
    Partitions,
    Partition,
    Records,
    /// A partition-level (or per-item) error code.
    ErrorCode,
    /// A message-level error code.
    TopErrorCode,
    HighWatermark,
    FetchOffset,
    GroupId,
    /// FindCoordinator v4+ `coordinators`: an element carries its own error code, reported
    /// when the element ends (it is neither a topic nor a partition).
    Coordinators,
}

#[derive(Debug, Clone, Copy)]
pub enum Ty {
    I8,
    I16,
    I32,
    I64,
    Uuid,
    /// STRING / NULLABLE_STRING, compact in flexible versions.
    Str,
    /// BYTES / NULLABLE_BYTES, skipped.
    Bytes,
    /// NULLABLE_BYTES holding record batches: walked batch header by batch header.
    Records,
    /// An array of structs.
    Array(&'static [Field]),
    /// An array of plain values written as a one-field struct without tagged fields (e.g.
    /// DeleteTopics v0-5 `topic_names`, an array of strings).
    Plain(&'static [Field]),
    /// A nullable struct (Kafka's `"nullableVersions"` on a struct field): an int8 marker, -1
    /// for null, 1 followed by the struct (and its tagged fields when flexible); e.g.
    /// DescribeTopicPartitions' `cursor` (apache/kafka `clients/src/main/resources/common/
    /// message/DescribeTopicPartitionsRequest.json`; kafka-protocol 0.18 writes and reads
    /// the same int8 in `describe_topic_partitions_request.rs`).
    Nullable(&'static [Field]),
    /// An array of int32 / int64, skipped whole.
    I32Array,
    I64Array,
    /// Nothing after this point is needed: the walk ends, the rest of the frame streams.
    Stop,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub id: F,
    pub ty: Ty,
    pub min: i16,
    pub max: i16,
}

const fn f(id: F, ty: Ty, min: i16) -> Field {
    Field {
        id,
        ty,
        min,
        max: i16::MAX,
    }
}

const fn fr(id: F, ty: Ty, min: i16, max: i16) -> Field {
    Field { id, ty, min, max }
}

/// A message body layout and the lowest version it describes.
#[derive(Debug)]
pub struct Schema {
    pub min_version: i16,
    pub fields: &'static [Field],
}

/// Bytes of a v2 record batch header (KIP-98): baseOffset 8, batchLength 4,
/// partitionLeaderEpoch 4, magic 1, crc 4, attributes 2, lastOffsetDelta 4, baseTimestamp 8,
/// maxTimestamp 8, producerId 8, producerEpoch 2, baseSequence 4, recordsCount 4.
pub const BATCH_HEADER: usize = 61;
/// batchLength counts the bytes after baseOffset and batchLength themselves.
const BATCH_LOG_OVERHEAD: u64 = 12;
const MAGIC_OFFSET: usize = 16;
const ATTRIBUTES_OFFSET: usize = 21;
const RECORDS_COUNT_OFFSET: usize = 57;

use Ty::*;
use F::*;

// ---- Produce (api 0), v3+ ------------------------------------------------------------------
static PRODUCE_REQ_PART: &[Field] = &[f(Partition, I32, 0), f(F::Records, Ty::Records, 0)];
static PRODUCE_REQ_TOPIC: &[Field] = &[
    fr(Topic, Str, 0, 12),
    f(TopicId, Uuid, 13),
    f(Partitions, Array(PRODUCE_REQ_PART), 0),
];
static PRODUCE_REQ: &[Field] = &[
    f(TransactionalId, Str, 3),
    f(Acks, I16, 0),
    f(Skip, I32, 0), // timeout_ms
    f(Topics, Array(PRODUCE_REQ_TOPIC), 0),
];
static PRODUCE_RECORD_ERR: &[Field] = &[f(Skip, I32, 0), f(Skip, Str, 0)];
static PRODUCE_RESP_PART: &[Field] = &[
    f(Partition, I32, 0),
    f(ErrorCode, I16, 0),
    f(Skip, I64, 0), // base_offset
    f(Skip, I64, 2), // log_append_time_ms
    f(Skip, I64, 5), // log_start_offset
    f(Skip, Array(PRODUCE_RECORD_ERR), 8),
    f(Skip, Str, 8), // error_message
];
static PRODUCE_RESP_TOPIC: &[Field] = &[
    fr(Topic, Str, 0, 12),
    f(TopicId, Uuid, 13),
    f(Partitions, Array(PRODUCE_RESP_PART), 0),
];
static PRODUCE_RESP: &[Field] = &[
    f(Topics, Array(PRODUCE_RESP_TOPIC), 0),
    f(Skip, I32, 1), // throttle_time_ms
];

// ---- Fetch (api 1), v4+ --------------------------------------------------------------------
static FETCH_REQ_PART: &[Field] = &[
    f(Partition, I32, 0),
    f(Skip, I32, 9), // current_leader_epoch
    f(FetchOffset, I64, 0),
    f(Skip, I32, 12), // last_fetched_epoch
    f(Skip, I64, 5),  // log_start_offset
    f(Skip, I32, 0),  // partition_max_bytes
];
static FETCH_REQ_TOPIC: &[Field] = &[
    fr(Topic, Str, 0, 12),
    f(TopicId, Uuid, 13),
    f(Partitions, Array(FETCH_REQ_PART), 0),
];
static FETCH_REQ: &[Field] = &[
    fr(Skip, I32, 0, 14), // replica_id
    f(Skip, I32, 0),      // max_wait_ms
    f(Skip, I32, 0),      // min_bytes
    f(Skip, I32, 3),      // max_bytes
    f(Skip, I8, 4),       // isolation_level
    f(Skip, I32, 7),      // session_id
    f(Skip, I32, 7),      // session_epoch
    f(Topics, Array(FETCH_REQ_TOPIC), 0),
    f(Skip, Stop, 0), // forgotten_topics_data, rack_id: not needed
];
static FETCH_FORGOTTEN: &[Field] = &[
    fr(Skip, Str, 7, 12),
    f(Skip, Uuid, 13),
    f(Skip, I32Array, 7),
];
/// The whole Fetch request, for validating it before kafka-protocol decodes it.
static FETCH_REQ_FULL: &[Field] = &[
    fr(Skip, I32, 0, 14),
    f(Skip, I32, 0),
    f(Skip, I32, 0),
    f(Skip, I32, 3),
    f(Skip, I8, 4),
    f(Skip, I32, 7),
    f(Skip, I32, 7),
    f(Topics, Array(FETCH_REQ_TOPIC), 0),
    f(Skip, Array(FETCH_FORGOTTEN), 7),
    f(Skip, Str, 11), // rack_id
];
static FETCH_ABORTED: &[Field] = &[f(Skip, I64, 0), f(Skip, I64, 0)];
static FETCH_RESP_PART: &[Field] = &[
    f(Partition, I32, 0),
    f(ErrorCode, I16, 0),
    f(HighWatermark, I64, 0),
    f(Skip, I64, 4), // last_stable_offset
    f(Skip, I64, 5), // log_start_offset
    f(Skip, Array(FETCH_ABORTED), 4),
    f(Skip, I32, 11), // preferred_read_replica
    f(F::Records, Ty::Records, 0),
];
static FETCH_RESP_TOPIC: &[Field] = &[
    fr(Topic, Str, 0, 12),
    f(TopicId, Uuid, 13),
    f(Partitions, Array(FETCH_RESP_PART), 0),
];
static FETCH_RESP: &[Field] = &[
    f(Skip, I32, 1), // throttle_time_ms
    f(TopErrorCode, I16, 7),
    f(Skip, I32, 7), // session_id
    f(Topics, Array(FETCH_RESP_TOPIC), 0),
];

// ---- Metadata (api 3), v0+: topic errors and the topic-id map ------------------------------
static METADATA_BROKER: &[Field] = &[
    f(Skip, I32, 0), // node_id
    f(Skip, Str, 0), // host
    f(Skip, I32, 0), // port
    f(Skip, Str, 1), // rack
];
static METADATA_PART: &[Field] = &[
    f(Skip, I16, 0), // error_code (partition)
    f(Skip, I32, 0), // partition_index
    f(Skip, I32, 0), // leader_id
    f(Skip, I32, 7), // leader_epoch
    f(Skip, I32Array, 0),
    f(Skip, I32Array, 0),
    f(Skip, I32Array, 5),
];
static METADATA_TOPIC: &[Field] = &[
    f(ErrorCode, I16, 0),
    f(Topic, Str, 0),
    f(TopicId, Uuid, 10),
    f(Skip, I8, 1), // is_internal
    f(Skip, Array(METADATA_PART), 0),
    f(Skip, I32, 8), // topic_authorized_operations
];
static METADATA_RESP: &[Field] = &[
    f(Skip, I32, 3), // throttle_time_ms
    f(Skip, Array(METADATA_BROKER), 0),
    f(Skip, Str, 2), // cluster_id
    f(Skip, I32, 1), // controller_id
    f(Topics, Array(METADATA_TOPIC), 0),
    fr(Skip, I32, 8, 10), // cluster_authorized_operations
    f(TopErrorCode, I16, 13),
];

static METADATA_REQ_TOPIC: &[Field] = &[f(TopicId, Uuid, 10), f(Topic, Str, 0)];
static METADATA_REQ: &[Field] = &[
    f(Topics, Array(METADATA_REQ_TOPIC), 0),
    f(Skip, I8, 4),
    fr(Skip, I8, 8, 10),
    f(Skip, I8, 8),
];

// ---- Consumer groups: the group id leads every request --------------------------------------
static GROUP_REQ: &[Field] = &[f(GroupId, Str, 0), f(Skip, Stop, 0)];
static JOIN_GROUP_RESP: &[Field] = &[f(Skip, I32, 2), f(TopErrorCode, I16, 0), f(Skip, Stop, 0)];
/// SyncGroup, Heartbeat, LeaveGroup: throttle from v1, then the error code.
static GROUP_RESP: &[Field] = &[f(Skip, I32, 1), f(TopErrorCode, I16, 0), f(Skip, Stop, 0)];
static OFFSET_COMMIT_RESP_PART: &[Field] = &[f(Partition, I32, 0), f(ErrorCode, I16, 0)];
static OFFSET_COMMIT_RESP_TOPIC: &[Field] = &[
    fr(Topic, Str, 0, 9),
    f(TopicId, Uuid, 10),
    f(Partitions, Array(OFFSET_COMMIT_RESP_PART), 0),
];
static OFFSET_COMMIT_RESP: &[Field] = &[
    f(Skip, I32, 3),
    f(Topics, Array(OFFSET_COMMIT_RESP_TOPIC), 0),
];

// ---- DeleteTopics (api 20), v1+ ----------------------------------------------------------
static DELETE_TOPICS_REQ_TOPIC: &[Field] = &[f(Topic, Str, 0), f(TopicId, Uuid, 0)];
static DELETE_TOPICS_REQ_NAME: &[Field] = &[f(Topic, Str, 0)];
static DELETE_TOPICS_REQ: &[Field] = &[
    f(Topics, Array(DELETE_TOPICS_REQ_TOPIC), 6),
    fr(Topics, Plain(DELETE_TOPICS_REQ_NAME), 0, 5),
    f(Skip, I32, 0), // timeout_ms
];

// ---- ListOffsets (api 2), OffsetCommit (8), OffsetFetch (9): complete request schemas ----
static LIST_OFFSETS_REQ_PART: &[Field] = &[
    f(Partition, I32, 0),
    f(Skip, I32, 4), // current_leader_epoch
    f(Skip, I64, 0), // timestamp
];
static LIST_OFFSETS_REQ_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(Partitions, Array(LIST_OFFSETS_REQ_PART), 0),
];
static LIST_OFFSETS_REQ: &[Field] = &[
    f(Skip, I32, 0), // replica_id
    f(Skip, I8, 2),  // isolation_level
    f(Topics, Array(LIST_OFFSETS_REQ_TOPIC), 0),
    f(Skip, I32, 10), // timeout_ms
];
static OFFSET_COMMIT_REQ_PART: &[Field] = &[
    f(Partition, I32, 0),
    f(Skip, I64, 0), // committed_offset
    f(Skip, I32, 6), // committed_leader_epoch
    f(Skip, Str, 0), // committed_metadata
];
static OFFSET_COMMIT_REQ_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(Partitions, Array(OFFSET_COMMIT_REQ_PART), 0),
];
static OFFSET_COMMIT_REQ: &[Field] = &[
    f(GroupId, Str, 0),
    f(Skip, I32, 0),     // generation_id_or_member_epoch
    f(Skip, Str, 0),     // member_id
    f(Skip, Str, 7),     // group_instance_id
    fr(Skip, I64, 2, 4), // retention_time_ms
    f(Topics, Array(OFFSET_COMMIT_REQ_TOPIC), 0),
];
static OFFSET_FETCH_REQ_TOPIC: &[Field] = &[f(Topic, Str, 0), f(Skip, I32Array, 0)];
/// OffsetFetch v8+ batches groups (KIP-709); v9 adds the member id and epoch (KIP-848),
/// v10 names topics by id (apache/kafka `clients/src/main/resources/common/message/OffsetFetchRequest.json`).
static OFFSET_FETCH_REQ_GROUP_TOPIC: &[Field] = &[
    fr(Topic, Str, 8, 9),
    f(TopicId, Uuid, 10),
    f(Skip, I32Array, 8),
];
static OFFSET_FETCH_REQ_GROUP: &[Field] = &[
    f(GroupId, Str, 8),
    f(Skip, Str, 9), // member_id (nullable)
    f(Skip, I32, 9), // member_epoch
    f(Topics, Array(OFFSET_FETCH_REQ_GROUP_TOPIC), 8),
];
static OFFSET_FETCH_REQ: &[Field] = &[
    fr(GroupId, Str, 0, 7),
    fr(Topics, Array(OFFSET_FETCH_REQ_TOPIC), 0, 7),
    f(Skip, Array(OFFSET_FETCH_REQ_GROUP), 8),
    f(Skip, I8, 7), // require_stable
];

// ---- Admin requests the policy checks per topic (create, alter) --------------------------
static CREATE_TOPICS_ASSIGN: &[Field] = &[f(Skip, I32, 0), f(Skip, I32Array, 0)];
static CREATE_TOPICS_CONFIG: &[Field] = &[f(Skip, Str, 0), f(Skip, Str, 0)];
static CREATE_TOPICS_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(Skip, I32, 0), // num_partitions
    f(Skip, I16, 0), // replication_factor
    f(Skip, Array(CREATE_TOPICS_ASSIGN), 0),
    f(Skip, Array(CREATE_TOPICS_CONFIG), 0),
];
static CREATE_TOPICS_REQ: &[Field] = &[
    f(Topics, Array(CREATE_TOPICS_TOPIC), 0),
    f(Skip, I32, 0), // timeout_ms
    f(Skip, I8, 0),  // validate_only (v1+; the walk starts at v2)
];
static CREATE_PARTITIONS_ASSIGN: &[Field] = &[f(Skip, I32Array, 0)];
static CREATE_PARTITIONS_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(Skip, I32, 0),
    f(Skip, Array(CREATE_PARTITIONS_ASSIGN), 0),
];
static CREATE_PARTITIONS_REQ: &[Field] = &[
    f(Topics, Array(CREATE_PARTITIONS_TOPIC), 0),
    f(Skip, I32, 0),
    f(Skip, I8, 0),
];
static DELETE_RECORDS_PART: &[Field] = &[f(Partition, I32, 0), f(Skip, I64, 0)];
static DELETE_RECORDS_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(Partitions, Array(DELETE_RECORDS_PART), 0),
];
static DELETE_RECORDS_REQ: &[Field] = &[f(Topics, Array(DELETE_RECORDS_TOPIC), 0), f(Skip, I32, 0)];
static ALTER_CONFIGS_ENTRY: &[Field] = &[f(Skip, Str, 0), f(Skip, Str, 0)];
static ALTER_CONFIGS_RESOURCE: &[Field] = &[
    f(Skip, I8, 0),
    f(Topic, Str, 0),
    f(Skip, Array(ALTER_CONFIGS_ENTRY), 0),
];
static ALTER_CONFIGS_REQ: &[Field] = &[f(Topics, Array(ALTER_CONFIGS_RESOURCE), 0), f(Skip, I8, 0)];
static INC_ALTER_CONFIGS_ENTRY: &[Field] = &[f(Skip, Str, 0), f(Skip, I8, 0), f(Skip, Str, 0)];
static INC_ALTER_CONFIGS_RESOURCE: &[Field] = &[
    f(Skip, I8, 0),
    f(Topic, Str, 0),
    f(Skip, Array(INC_ALTER_CONFIGS_ENTRY), 0),
];
static INC_ALTER_CONFIGS_REQ: &[Field] = &[
    f(Topics, Array(INC_ALTER_CONFIGS_RESOURCE), 0),
    f(Skip, I8, 0),
];

static ACL_ENTRY: &[Field] = &[
    f(Skip, I8, 0),
    f(Skip, Str, 0),
    f(Skip, I8, 1),
    f(Skip, Str, 0),
    f(Skip, Str, 0),
    f(Skip, I8, 0),
    f(Skip, I8, 0),
];
/// CreateAcls `creations` and DeleteAcls `filters` have the same layout (v1+).
static ACLS_REQ: &[Field] = &[f(Topics, Array(ACL_ENTRY), 0)];

// ---- Group, transaction and consumer-protocol requests the policy checks (issue 11) --------
// Layouts from apache/kafka `clients/src/main/resources/common/message/<Name>Request.json`.
static NAME: &[Field] = &[f(Skip, Str, 0)];
/// DeleteGroups (42): `groups_names`.
static DELETE_GROUPS_REQ: &[Field] = &[f(Skip, Plain(NAME), 0)];
/// DescribeGroups (15): `groups`, `include_authorized_operations` (v3+).
static DESCRIBE_GROUPS_REQ: &[Field] = &[f(Skip, Plain(NAME), 0), f(Skip, I8, 3)];
/// ConsumerGroupDescribe (69), ShareGroupDescribe (77), StreamsGroupDescribe (89):
/// `group_ids`, `include_authorized_operations`.
static GROUPS_DESCRIBE_REQ: &[Field] = &[f(Skip, Plain(NAME), 0), f(Skip, I8, 0)];
static OFFSET_DELETE_PART: &[Field] = &[f(Skip, I32, 0)];
static OFFSET_DELETE_TOPIC: &[Field] = &[f(Skip, Str, 0), f(Skip, Array(OFFSET_DELETE_PART), 0)];
/// OffsetDelete (47) v0: `group_id`, `topics[name, partitions[partition_index]]`.
static OFFSET_DELETE_REQ: &[Field] = &[f(Skip, Str, 0), f(Skip, Array(OFFSET_DELETE_TOPIC), 0)];
static TXN_OFFSET_COMMIT_PART: &[Field] = &[
    f(Skip, I32, 0), // partition_index
    f(Skip, I64, 0), // committed_offset
    f(Skip, I32, 2), // committed_leader_epoch
    f(Skip, Str, 0), // committed_metadata
];
static TXN_OFFSET_COMMIT_TOPIC: &[Field] =
    &[f(Skip, Str, 0), f(Skip, Array(TXN_OFFSET_COMMIT_PART), 0)];
/// TxnOffsetCommit (28).
static TXN_OFFSET_COMMIT_REQ: &[Field] = &[
    f(Skip, Str, 0), // transactional_id
    f(Skip, Str, 0), // group_id
    f(Skip, I64, 0), // producer_id
    f(Skip, I16, 0), // producer_epoch
    f(Skip, I32, 3), // generation_id
    f(Skip, Str, 3), // member_id
    f(Skip, Str, 3), // group_instance_id
    f(Skip, Array(TXN_OFFSET_COMMIT_TOPIC), 0),
];
static ADD_PARTITIONS_TOPIC: &[Field] = &[f(Skip, Str, 0), f(Skip, I32Array, 0)];
/// AddPartitionsToTxn (24) v0-3 (v4+ batches transactions, for brokers).
static ADD_PARTITIONS_REQ: &[Field] = &[
    fr(Skip, Str, 0, 3), // v3_and_below_transactional_id
    fr(Skip, I64, 0, 3),
    fr(Skip, I16, 0, 3),
    fr(Skip, Array(ADD_PARTITIONS_TOPIC), 0, 3),
];
static CGH_TOPIC_PARTITIONS: &[Field] = &[f(Skip, Uuid, 0), f(Skip, I32Array, 0)];
/// ConsumerGroupHeartbeat (68, KIP-848).
static CONSUMER_GROUP_HEARTBEAT_REQ: &[Field] = &[
    f(Skip, Str, 0),         // group_id
    f(Skip, Str, 0),         // member_id
    f(Skip, I32, 0),         // member_epoch
    f(Skip, Str, 0),         // instance_id
    f(Skip, Str, 0),         // rack_id
    f(Skip, I32, 0),         // rebalance_timeout_ms
    f(Skip, Plain(NAME), 0), // subscribed_topic_names (nullable)
    f(Skip, Str, 1),         // subscribed_topic_regex
    f(Skip, Str, 0),         // server_assignor
    f(Skip, Array(CGH_TOPIC_PARTITIONS), 0),
];
static LISTED_GROUP: &[Field] = &[
    f(Skip, Str, 0), // group_id
    f(Skip, Str, 0), // protocol_type
    f(Skip, Str, 4), // group_state
    f(Skip, Str, 5), // group_type
];
/// ListGroups (16) response, whole, for filtering it.
static LIST_GROUPS_RESP_FULL: &[Field] = &[
    f(Skip, I32, 1),
    f(TopErrorCode, I16, 0),
    f(Skip, Array(LISTED_GROUP), 0),
];
pub static S_DELETE_GROUPS_REQ: Schema = schema(0, DELETE_GROUPS_REQ);
pub static S_DESCRIBE_GROUPS_REQ: Schema = schema(0, DESCRIBE_GROUPS_REQ);
pub static S_GROUPS_DESCRIBE_REQ: Schema = schema(0, GROUPS_DESCRIBE_REQ);
pub static S_OFFSET_DELETE_REQ: Schema = schema(0, OFFSET_DELETE_REQ);
pub static S_TXN_OFFSET_COMMIT_REQ: Schema = schema(0, TXN_OFFSET_COMMIT_REQ);
pub static S_ADD_PARTITIONS_REQ: Schema = schema(0, ADD_PARTITIONS_REQ);
pub static S_CONSUMER_GROUP_HEARTBEAT_REQ: Schema = schema(0, CONSUMER_GROUP_HEARTBEAT_REQ);
pub static S_LIST_GROUPS_RESP_FULL: Schema = schema(0, LIST_GROUPS_RESP_FULL);

// ---- Topic-naming admin and consumer requests the policy checks (issue 11, point 4) --------
// Layouts from apache/kafka `clients/src/main/resources/common/message/<Name>Request.json`,
// as kafka-protocol 0.18 encodes them (`src/messages/<name>_request.rs`).
static DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[
    f(Skip, I8, 0),          // resource_type
    f(Skip, Str, 0),         // resource_name
    f(Skip, Plain(NAME), 0), // configuration_keys (nullable)
];
/// DescribeConfigs (32) v1-4 (kafka-protocol 0.18 reads v1+).
static DESCRIBE_CONFIGS_REQ: &[Field] = &[
    f(Skip, Array(DESCRIBE_CONFIGS_RESOURCE), 0),
    f(Skip, I8, 1), // include_synonyms
    f(Skip, I8, 3), // include_documentation
];
static NAME_PARTITIONS: &[Field] = &[f(Skip, Str, 0), f(Skip, I32Array, 0)];
/// DescribeProducers (61) v0: `topics[name, partition_indexes]`.
static DESCRIBE_PRODUCERS_REQ: &[Field] = &[f(Skip, Array(NAME_PARTITIONS), 0)];
static OFFSET_FOR_LEADER_EPOCH_PART: &[Field] = &[
    f(Skip, I32, 0), // partition
    f(Skip, I32, 2), // current_leader_epoch
    f(Skip, I32, 0), // leader_epoch
];
static OFFSET_FOR_LEADER_EPOCH_TOPIC: &[Field] = &[
    f(Skip, Str, 0),
    f(Skip, Array(OFFSET_FOR_LEADER_EPOCH_PART), 0),
];
/// OffsetForLeaderEpoch (23) v2-4 (kafka-protocol 0.18 reads v2+).
static OFFSET_FOR_LEADER_EPOCH_REQ: &[Field] = &[
    f(Skip, I32, 3), // replica_id
    f(Skip, Array(OFFSET_FOR_LEADER_EPOCH_TOPIC), 0),
];
/// DescribeTopicPartitions' `cursor` / `next_cursor`: topic name, partition index.
static DTP_CURSOR: &[Field] = &[f(Skip, Str, 0), f(Skip, I32, 0)];
/// DescribeTopicPartitions (75) v0: `topics[name]`, `response_partition_limit`, `cursor`.
static DESCRIBE_TOPIC_PARTITIONS_REQ: &[Field] = &[
    f(Skip, Array(NAME), 0),
    f(Skip, I32, 0),
    f(Skip, Nullable(DTP_CURSOR), 0),
];
static DTP_RESP_PART: &[Field] = &[
    f(Skip, I16, 0),      // error_code
    f(Skip, I32, 0),      // partition_index
    f(Skip, I32, 0),      // leader_id
    f(Skip, I32, 0),      // leader_epoch
    f(Skip, I32Array, 0), // replica_nodes
    f(Skip, I32Array, 0), // isr_nodes
    f(Skip, I32Array, 0), // eligible_leader_replicas (nullable)
    f(Skip, I32Array, 0), // last_known_elr (nullable)
    f(Skip, I32Array, 0), // offline_replicas
];
static DTP_RESP_TOPIC: &[Field] = &[
    f(Skip, I16, 0),  // error_code
    f(Skip, Str, 0),  // name (nullable)
    f(Skip, Uuid, 0), // topic_id
    f(Skip, I8, 0),   // is_internal
    f(Skip, Array(DTP_RESP_PART), 0),
    f(Skip, I32, 0), // topic_authorized_operations
];
/// DescribeTopicPartitions (75) response v0, whole, for filtering an all-topics answer.
static DESCRIBE_TOPIC_PARTITIONS_RESP: &[Field] = &[
    f(Skip, I32, 0),
    f(Skip, Array(DTP_RESP_TOPIC), 0),
    f(Skip, Nullable(DTP_CURSOR), 0),
];

// ---- Share groups (KIP-932), v1: the version kafka-protocol 0.18 reads --------------------
// Layouts from apache/kafka `clients/src/main/resources/common/message/Share*Request.json`
// as kafka-protocol 0.18 encodes v1 (`src/messages/share_*_request.rs`).
/// ShareGroupHeartbeat (76).
static SHARE_GROUP_HEARTBEAT_REQ: &[Field] = &[
    f(Skip, Str, 0),         // group_id
    f(Skip, Str, 0),         // member_id
    f(Skip, I32, 0),         // member_epoch
    f(Skip, Str, 0),         // rack_id
    f(Skip, Plain(NAME), 0), // subscribed_topic_names (nullable)
];
static I8_ITEM: &[Field] = &[f(Skip, I8, 0)];
static SHARE_ACK_BATCH: &[Field] = &[
    f(Skip, I64, 0),            // first_offset
    f(Skip, I64, 0),            // last_offset
    f(Skip, Plain(I8_ITEM), 0), // acknowledge_types
];
static SHARE_PART: &[Field] = &[f(Skip, I32, 0), f(Skip, Array(SHARE_ACK_BATCH), 0)];
static SHARE_TOPIC: &[Field] = &[f(Skip, Uuid, 0), f(Skip, Array(SHARE_PART), 0)];
static SHARE_FORGOTTEN: &[Field] = &[f(Skip, Uuid, 0), f(Skip, I32Array, 0)];
/// ShareFetch (78) v1.
static SHARE_FETCH_REQ: &[Field] = &[
    f(Skip, Str, 0), // group_id
    f(Skip, Str, 0), // member_id
    f(Skip, I32, 0), // share_session_epoch
    f(Skip, I32, 0), // max_wait_ms
    f(Skip, I32, 0), // min_bytes
    f(Skip, I32, 0), // max_bytes
    f(Skip, I32, 1), // max_records
    f(Skip, I32, 1), // batch_size
    f(Skip, Array(SHARE_TOPIC), 0),
    f(Skip, Array(SHARE_FORGOTTEN), 0),
];
/// ShareAcknowledge (79) v1.
static SHARE_ACKNOWLEDGE_REQ: &[Field] = &[
    f(Skip, Str, 0), // group_id
    f(Skip, Str, 0), // member_id
    f(Skip, I32, 0), // share_session_epoch
    f(Skip, Array(SHARE_TOPIC), 0),
];
/// DescribeShareGroupOffsets (90) v0: `groups[group_id, topics (nullable)[topic_name,
/// partitions]]`.
static DSGO_GROUP: &[Field] = &[f(Skip, Str, 0), f(Skip, Array(NAME_PARTITIONS), 0)];
static DESCRIBE_SHARE_GROUP_OFFSETS_REQ: &[Field] = &[f(Skip, Array(DSGO_GROUP), 0)];
static DSGO_RESP_PART: &[Field] = &[
    f(Skip, I32, 0), // partition_index
    f(Skip, I64, 0), // start_offset
    f(Skip, I32, 0), // leader_epoch
    f(Skip, I16, 0), // error_code
    f(Skip, Str, 0), // error_message
];
static DSGO_RESP_TOPIC: &[Field] = &[
    f(Skip, Str, 0),
    f(Skip, Uuid, 0),
    f(Skip, Array(DSGO_RESP_PART), 0),
];
static DSGO_RESP_GROUP: &[Field] = &[
    f(Skip, Str, 0),
    f(Skip, Array(DSGO_RESP_TOPIC), 0),
    f(Skip, I16, 0),
    f(Skip, Str, 0),
];
/// DescribeShareGroupOffsets (90) response v0, whole, for a rewrite.
static DESCRIBE_SHARE_GROUP_OFFSETS_RESP: &[Field] =
    &[f(Skip, I32, 0), f(Skip, Array(DSGO_RESP_GROUP), 0)];
static ASGO_PART: &[Field] = &[f(Skip, I32, 0), f(Skip, I64, 0)];
static ASGO_TOPIC: &[Field] = &[f(Skip, Str, 0), f(Skip, Array(ASGO_PART), 0)];
/// AlterShareGroupOffsets (91) v0: `group_id`, `topics[topic_name, partitions[index,
/// start_offset]]`.
static ALTER_SHARE_GROUP_OFFSETS_REQ: &[Field] = &[f(Skip, Str, 0), f(Skip, Array(ASGO_TOPIC), 0)];
/// DeleteShareGroupOffsets (92) v0: `group_id`, `topics[topic_name]`.
static DELETE_SHARE_GROUP_OFFSETS_REQ: &[Field] = &[f(Skip, Str, 0), f(Skip, Array(NAME), 0)];
pub static S_DESCRIBE_SHARE_GROUP_OFFSETS_REQ: Schema = schema(0, DESCRIBE_SHARE_GROUP_OFFSETS_REQ);
pub static S_DESCRIBE_SHARE_GROUP_OFFSETS_RESP: Schema =
    schema(0, DESCRIBE_SHARE_GROUP_OFFSETS_RESP);
pub static S_ALTER_SHARE_GROUP_OFFSETS_REQ: Schema = schema(0, ALTER_SHARE_GROUP_OFFSETS_REQ);
pub static S_DELETE_SHARE_GROUP_OFFSETS_REQ: Schema = schema(0, DELETE_SHARE_GROUP_OFFSETS_REQ);
pub static S_SHARE_GROUP_HEARTBEAT_REQ: Schema = schema(1, SHARE_GROUP_HEARTBEAT_REQ);
pub static S_SHARE_FETCH_REQ: Schema = schema(1, SHARE_FETCH_REQ);
pub static S_SHARE_ACKNOWLEDGE_REQ: Schema = schema(1, SHARE_ACKNOWLEDGE_REQ);
pub static S_DESCRIBE_CONFIGS_REQ: Schema = schema(1, DESCRIBE_CONFIGS_REQ);
pub static S_DESCRIBE_PRODUCERS_REQ: Schema = schema(0, DESCRIBE_PRODUCERS_REQ);
pub static S_OFFSET_FOR_LEADER_EPOCH_REQ: Schema = schema(2, OFFSET_FOR_LEADER_EPOCH_REQ);
pub static S_DESCRIBE_TOPIC_PARTITIONS_REQ: Schema = schema(0, DESCRIBE_TOPIC_PARTITIONS_REQ);
pub static S_DESCRIBE_TOPIC_PARTITIONS_RESP: Schema = schema(0, DESCRIBE_TOPIC_PARTITIONS_RESP);

// ---- Address-carrying responses (for rewriting them whole) ---------------------------------
static FIND_COORDINATOR_RESP_FULL: &[Field] = &[
    f(Skip, I32, 1),             // throttle_time_ms
    fr(TopErrorCode, I16, 0, 3), // error_code
    fr(Skip, Str, 1, 3),         // error_message
    fr(Skip, I32, 0, 3),         // node_id
    fr(Skip, Str, 0, 3),         // host
    fr(Skip, I32, 0, 3),         // port
    f(Coordinators, Array(FIND_COORDINATOR_ITEM), 4),
];
static DESCRIBE_CLUSTER_BROKER: &[Field] = &[
    f(Skip, I32, 0),
    f(Skip, Str, 0),
    f(Skip, I32, 0),
    f(Skip, Str, 0),
    f(Skip, I8, 2), // is_fenced
];
static DESCRIBE_CLUSTER_RESP: &[Field] = &[
    f(Skip, I32, 0),
    f(TopErrorCode, I16, 0),
    f(Skip, Str, 0),
    f(Skip, I8, 1), // endpoint_type
    f(Skip, Str, 0),
    f(Skip, I32, 0),
    f(Skip, Array(DESCRIBE_CLUSTER_BROKER), 0),
    f(Skip, I32, 0),
];

// ---- More responses whose error codes are counted ------------------------------------------
/// EndTxn, AddOffsetsToTxn: throttle, error.
static TXN_RESP: &[Field] = &[f(Skip, I32, 0), f(TopErrorCode, I16, 0), f(Skip, Stop, 0)];
static S_TXN_RESP: Schema = schema(0, TXN_RESP);
static LIST_GROUPS_RESP: &[Field] = &[f(Skip, I32, 1), f(TopErrorCode, I16, 0), f(Skip, Stop, 0)];
static S_LIST_GROUPS_RESP: Schema = schema(0, LIST_GROUPS_RESP);
static SASL_HANDSHAKE_RESP: &[Field] = &[f(TopErrorCode, I16, 0), f(Skip, Stop, 0)];
static S_SASL_HANDSHAKE_RESP: Schema = schema(0, SASL_HANDSHAKE_RESP);
static CREATE_TOPICS_RESP_CONFIG: &[Field] = &[
    f(Skip, Str, 0),
    f(Skip, Str, 0),
    f(Skip, I8, 0),
    f(Skip, I8, 0),
    f(Skip, I8, 0),
];
static CREATE_TOPICS_RESP_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(TopicId, Uuid, 7),
    f(ErrorCode, I16, 0),
    f(Skip, Str, 1),
    f(Skip, I32, 5),
    f(Skip, I16, 5),
    f(Skip, Array(CREATE_TOPICS_RESP_CONFIG), 5),
];
static CREATE_TOPICS_RESP: &[Field] = &[
    f(Skip, I32, 2),
    f(Topics, Array(CREATE_TOPICS_RESP_TOPIC), 0),
];
static S_CREATE_TOPICS_RESP: Schema = schema(2, CREATE_TOPICS_RESP);
static CREATE_PARTITIONS_RESP_TOPIC: &[Field] =
    &[f(Topic, Str, 0), f(ErrorCode, I16, 0), f(Skip, Str, 0)];
static CREATE_PARTITIONS_RESP: &[Field] = &[
    f(Skip, I32, 0),
    f(Topics, Array(CREATE_PARTITIONS_RESP_TOPIC), 0),
];
static S_CREATE_PARTITIONS_RESP: Schema = schema(0, CREATE_PARTITIONS_RESP);
static DELETE_RECORDS_RESP_PART: &[Field] =
    &[f(Partition, I32, 0), f(Skip, I64, 0), f(ErrorCode, I16, 0)];
static DELETE_RECORDS_RESP_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(Partitions, Array(DELETE_RECORDS_RESP_PART), 0),
];
static DELETE_RECORDS_RESP: &[Field] = &[
    f(Skip, I32, 0),
    f(Topics, Array(DELETE_RECORDS_RESP_TOPIC), 0),
];
static S_DELETE_RECORDS_RESP: Schema = schema(0, DELETE_RECORDS_RESP);
/// AlterConfigs / IncrementalAlterConfigs: one error per resource (topic or broker).
static ALTER_CONFIGS_RESP_ITEM: &[Field] = &[
    f(TopErrorCode, I16, 0),
    f(Skip, Str, 0),
    f(Skip, I8, 0),
    f(Skip, Str, 0),
];
static ALTER_CONFIGS_RESP: &[Field] =
    &[f(Skip, I32, 0), f(Skip, Array(ALTER_CONFIGS_RESP_ITEM), 0)];
static S_ALTER_CONFIGS_RESP: Schema = schema(0, ALTER_CONFIGS_RESP);

// ---- Others with a simple error layout -----------------------------------------------------
static FIND_COORDINATOR_ITEM: &[Field] = &[
    f(Skip, Str, 0), // key
    f(Skip, I32, 0), // node_id
    f(Skip, Str, 0), // host
    f(Skip, I32, 0), // port
    f(ErrorCode, I16, 0),
    f(Skip, Str, 0), // error_message
];
static FIND_COORDINATOR_RESP: &[Field] = &[
    f(Skip, I32, 1),
    fr(TopErrorCode, I16, 0, 3),
    fr(Skip, Stop, 0, 3),
    f(Coordinators, Array(FIND_COORDINATOR_ITEM), 4),
];
static INIT_PRODUCER_ID_RESP: &[Field] =
    &[f(Skip, I32, 0), f(TopErrorCode, I16, 0), f(Skip, Stop, 0)];
static DELETE_TOPICS_ITEM: &[Field] = &[
    f(Topic, Str, 0),
    f(TopicId, Uuid, 6),
    f(ErrorCode, I16, 0),
    f(Skip, Str, 5),
];
static DELETE_TOPICS_RESP: &[Field] = &[f(Skip, I32, 0), f(Topics, Array(DELETE_TOPICS_ITEM), 0)];
static LIST_OFFSETS_PART: &[Field] = &[
    f(Partition, I32, 0),
    f(ErrorCode, I16, 0),
    f(Skip, I64, 1), // timestamp
    f(Skip, I64, 1), // offset
    f(Skip, I32, 4), // leader_epoch
];
static LIST_OFFSETS_TOPIC: &[Field] =
    &[f(Topic, Str, 0), f(Partitions, Array(LIST_OFFSETS_PART), 0)];
static LIST_OFFSETS_RESP: &[Field] = &[f(Skip, I32, 2), f(Topics, Array(LIST_OFFSETS_TOPIC), 0)];

const fn schema(min_version: i16, fields: &'static [Field]) -> Schema {
    Schema {
        min_version,
        fields,
    }
}

static S_PRODUCE_REQ: Schema = schema(3, PRODUCE_REQ);
static S_PRODUCE_RESP: Schema = schema(3, PRODUCE_RESP);
static S_FETCH_REQ: Schema = schema(4, FETCH_REQ);
/// Complete request schemas: a walk that ends without error proves every count and length in
/// the frame fits the bytes present, the precondition for handing it to kafka-protocol.
pub static S_FETCH_REQ_FULL: Schema = schema(4, FETCH_REQ_FULL);
pub static S_DELETE_TOPICS_REQ: Schema = schema(1, DELETE_TOPICS_REQ);
pub static S_METADATA_RESP_FULL: Schema = schema(0, METADATA_RESP);
pub static S_METADATA_REQ: Schema = schema(1, METADATA_REQ);
pub static S_FIND_COORDINATOR_RESP_FULL: Schema = schema(0, FIND_COORDINATOR_RESP_FULL);
pub static S_DESCRIBE_CLUSTER_RESP: Schema = schema(0, DESCRIBE_CLUSTER_RESP);
pub static S_PRODUCE_RESP_FULL: Schema = schema(3, PRODUCE_RESP);
pub static S_FETCH_RESP_FULL: Schema = schema(4, FETCH_RESP);
pub static S_ACLS_REQ: Schema = schema(1, ACLS_REQ);
pub static S_CREATE_TOPICS_REQ: Schema = schema(2, CREATE_TOPICS_REQ);
pub static S_CREATE_PARTITIONS_REQ: Schema = schema(0, CREATE_PARTITIONS_REQ);
pub static S_DELETE_RECORDS_REQ: Schema = schema(0, DELETE_RECORDS_REQ);
pub static S_ALTER_CONFIGS_REQ: Schema = schema(0, ALTER_CONFIGS_REQ);
pub static S_INC_ALTER_CONFIGS_REQ: Schema = schema(0, INC_ALTER_CONFIGS_REQ);
pub static S_LIST_OFFSETS_REQ: Schema = schema(1, LIST_OFFSETS_REQ);
pub static S_OFFSET_COMMIT_REQ_FULL: Schema = schema(2, OFFSET_COMMIT_REQ);
pub static S_OFFSET_FETCH_REQ: Schema = schema(1, OFFSET_FETCH_REQ);
static S_FETCH_RESP: Schema = schema(4, FETCH_RESP);
static S_METADATA_RESP: Schema = schema(0, METADATA_RESP);
static S_GROUP_REQ: Schema = schema(0, GROUP_REQ);
static S_OFFSET_COMMIT_REQ: Schema = schema(2, GROUP_REQ);
static S_JOIN_GROUP_RESP: Schema = schema(0, JOIN_GROUP_RESP);
static S_GROUP_RESP: Schema = schema(0, GROUP_RESP);
static S_OFFSET_COMMIT_RESP: Schema = schema(2, OFFSET_COMMIT_RESP);
static S_FIND_COORDINATOR_RESP: Schema = schema(0, FIND_COORDINATOR_RESP);
static S_INIT_PRODUCER_ID_RESP: Schema = schema(0, INIT_PRODUCER_ID_RESP);
static S_DELETE_TOPICS_RESP: Schema = schema(1, DELETE_TOPICS_RESP);
static S_LIST_OFFSETS_RESP: Schema = schema(1, LIST_OFFSETS_RESP);
static OFFSET_FETCH_RESP_PART: &[Field] = &[
    f(Partition, I32, 0),
    f(Skip, I64, 0), // committed_offset
    f(Skip, I32, 5), // committed_leader_epoch
    f(Skip, Str, 0), // metadata
    f(ErrorCode, I16, 0),
];
static OFFSET_FETCH_RESP_TOPIC: &[Field] = &[
    f(Topic, Str, 0),
    f(Partitions, Array(OFFSET_FETCH_RESP_PART), 0),
];
/// OffsetFetch, every version: v1-7 topics, v8+ the same per group (errors per topic).
static S_OFFSET_FETCH_RESP: Schema = schema(1, OFFSET_FETCH_RESP_FULL);
/// OffsetFetch v1-7 as tansu 0.6 answers a request for all of a group's offsets (`topics`
/// null): it leaves the `topics` array out altogether, because tansu-sans-io writes nothing
/// for a `None` in a field that is not nullable in that version (crate tansu-sans-io 0.6.0
/// `src/ser.rs`, `serialize_none`), and tansu fills `topics` only for named topics (crate
/// tansu-broker 0.6.0 `src/coordinator/group/administrator.rs`, `fetch_offset`). Such a body
/// is shorter than any body Kafka's layout allows ([`offset_fetch_bare`]), so it cannot be
/// mistaken for one.
static OFFSET_FETCH_RESP_BARE: &[Field] = &[f(Skip, I32, 3), f(TopErrorCode, I16, 2)];
static S_OFFSET_FETCH_RESP_BARE: Schema = schema(1, OFFSET_FETCH_RESP_BARE);
static OFFSET_FETCH_RESP_GROUP_PART: &[Field] = &[
    f(Partition, I32, 8),
    f(Skip, I64, 8), // committed_offset
    f(Skip, I32, 8), // committed_leader_epoch
    f(Skip, Str, 8), // metadata
    f(ErrorCode, I16, 8),
];
static OFFSET_FETCH_RESP_GROUP_TOPIC: &[Field] = &[
    fr(Topic, Str, 8, 9),
    f(TopicId, Uuid, 10),
    f(Partitions, Array(OFFSET_FETCH_RESP_GROUP_PART), 8),
];
static OFFSET_FETCH_RESP_GROUP: &[Field] = &[
    f(Skip, Str, 8), // group_id (a response's group is not a group request)
    f(Topics, Array(OFFSET_FETCH_RESP_GROUP_TOPIC), 8),
    f(TopErrorCode, I16, 8),
];
/// The whole OffsetFetch response, every version, for a rewrite (apache/kafka
/// `clients/src/main/resources/common/message/OffsetFetchResponse.json`).
static OFFSET_FETCH_RESP_FULL: &[Field] = &[
    f(Skip, I32, 3),
    fr(Topics, Array(OFFSET_FETCH_RESP_TOPIC), 0, 7),
    fr(TopErrorCode, I16, 2, 7),
    f(Skip, Array(OFFSET_FETCH_RESP_GROUP), 8),
];
pub static S_OFFSET_FETCH_RESP_FULL: Schema = schema(1, OFFSET_FETCH_RESP_FULL);

/// Whether an OffsetFetch v1-7 response body of `body_len` bytes (after the response header)
/// is tansu's form without the `topics` array ([`OFFSET_FETCH_RESP_BARE`]): Kafka's shortest
/// body has an empty array (4 bytes, 1 when flexible) where tansu's has none.
pub fn offset_fetch_bare(version: i16, body_len: usize) -> bool {
    let bare = match version {
        1 => 0,
        2 => 2,
        3..=5 => 6,
        6 | 7 => 7,
        _ => return false,
    };
    body_len == bare
}

/// The response schema for (api, version) given the body's length: tansu's bare OffsetFetch
/// answers get theirs ([`offset_fetch_bare`]).
pub fn response_schema_sized(
    api_key: i16,
    version: i16,
    body_len: usize,
) -> Option<&'static Schema> {
    if api_key == 9 && offset_fetch_bare(version, body_len) {
        return usable(&S_OFFSET_FETCH_RESP_BARE, api_key, version);
    }
    response_schema(api_key, version)
}
/// SaslAuthenticate: the error code comes first (the policy learns a PLAIN username on 0).
static SASL_AUTH_RESP: &[Field] = &[f(TopErrorCode, I16, 0), f(Skip, Stop, 0)];
static S_SASL_AUTH_RESP: Schema = schema(0, SASL_AUTH_RESP);

pub const JOIN_GROUP: i16 = 11;
pub const HEARTBEAT: i16 = 12;
pub const LEAVE_GROUP: i16 = 13;
pub const SYNC_GROUP: i16 = 14;
pub const OFFSET_COMMIT: i16 = 8;

/// The request body schema for (api, version), if the filter walks that request.
pub fn request_schema(api_key: i16, version: i16) -> Option<&'static Schema> {
    let s = match api_key {
        api::PRODUCE => &S_PRODUCE_REQ,
        api::FETCH => &S_FETCH_REQ,
        JOIN_GROUP | HEARTBEAT | LEAVE_GROUP | SYNC_GROUP => &S_GROUP_REQ,
        OFFSET_COMMIT => &S_OFFSET_COMMIT_REQ,
        _ => return None,
    };
    usable(s, api_key, version)
}

/// The response body schema for (api, version), if the filter walks that response.
pub fn response_schema(api_key: i16, version: i16) -> Option<&'static Schema> {
    let s = match api_key {
        api::PRODUCE => &S_PRODUCE_RESP,
        api::FETCH => &S_FETCH_RESP,
        api::METADATA => &S_METADATA_RESP,
        JOIN_GROUP => &S_JOIN_GROUP_RESP,
        HEARTBEAT | LEAVE_GROUP | SYNC_GROUP => &S_GROUP_RESP,
        OFFSET_COMMIT => &S_OFFSET_COMMIT_RESP,
        10 => &S_FIND_COORDINATOR_RESP,
        22 => &S_INIT_PRODUCER_ID_RESP,
        20 => &S_DELETE_TOPICS_RESP,
        2 => &S_LIST_OFFSETS_RESP,
        36 => &S_SASL_AUTH_RESP,
        17 => &S_SASL_HANDSHAKE_RESP,
        16 => &S_LIST_GROUPS_RESP,
        25 | 26 => &S_TXN_RESP,
        19 => &S_CREATE_TOPICS_RESP,
        37 => &S_CREATE_PARTITIONS_RESP,
        21 => &S_DELETE_RECORDS_RESP,
        33 | 44 => &S_ALTER_CONFIGS_RESP,
        9 => &S_OFFSET_FETCH_RESP,
        _ => return None,
    };
    usable(s, api_key, version)
}

fn usable(s: &'static Schema, api_key: i16, version: i16) -> Option<&'static Schema> {
    let max = api::api_info(api_key)?.max_version;
    (version >= s.min_version && version <= max).then_some(s)
}

/// A record batch header seen inside a `Records` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Bytes of the batch present in this field (all of it unless `complete` is false).
    pub bytes: u64,
    /// `recordsCount` of a v2 batch; 0 for legacy message sets and partial batches.
    pub records: u32,
    /// The magic byte (2 for current batches), -1 when too short to tell.
    pub magic: i8,
    /// Batch attributes (compression codec in the low 3 bits), v2 only.
    pub attributes: i16,
    /// False for the truncated last batch a Fetch response may end with (the client drops it).
    pub complete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    Int(F, i64),
    Str(F, Option<&'a [u8]>),
    Uuid(F, [u8; 16]),
    /// An element of array `F` starts / ends.
    Begin(F),
    End(F),
    Batch(Batch),
    /// A tagged field of the message's top level (not of a nested struct): its tag, its
    /// size, and the bytes of its tag and size varints (the last `len` bytes of the step).
    Tag {
        tag: u32,
        size: u32,
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Consumed what the reader advanced over; call again.
    Advanced,
    /// Consumed what the reader advanced over, and the next `n` bytes are to be skipped
    /// unread. Call again after skipping.
    Skip(u64),
    /// The walk is over; the rest of the frame (if any) is not needed.
    Done,
}

/// The layout kafka-protocol 0.18 reads a known tagged field with.
#[derive(Debug, Clone, Copy)]
enum TagLayout {
    Uuid,
    I64,
    CompactNullableString,
    /// A struct of `n` bytes of fixed-size fields, then its own tagged-field section.
    Fixed(usize),
    /// KIP-951 `NodeEndpoints`: a compact array of {node_id int32, host compact string,
    /// port int32, rack compact nullable string, tagged fields}.
    NodeEndpoints,
}

impl TagLayout {
    fn check(self, r: &mut Reader<'_>) -> DecodeResult<()> {
        match self {
            TagLayout::Uuid => r.skip(16, "tagged_field.uuid"),
            TagLayout::I64 => r.skip(8, "tagged_field.int64"),
            TagLayout::CompactNullableString => {
                r.compact_nullable_string("tagged_field.string").map(|_| ())
            }
            TagLayout::Fixed(n) => {
                r.skip(n, "tagged_field.struct")?;
                r.skip_tagged_fields("tagged_fields")
            }
            TagLayout::NodeEndpoints => {
                // Every element is read from the bytes present, one by one: a count far beyond
                // them fails here instead of sizing kafka-protocol's `Vec::with_capacity`.
                let n = r.uvarint("node_endpoints")?;
                for _ in 1..n {
                    r.skip(4, "node_endpoints.node_id")?;
                    r.compact_string("node_endpoints.host")?;
                    r.skip(4, "node_endpoints.port")?;
                    r.compact_nullable_string("node_endpoints.rack")?;
                    r.skip_tagged_fields("node_endpoints.tagged_fields")?;
                }
                Ok(())
            }
        }
    }
}

struct KnownTag {
    /// The struct (a schema's fields, or an array element's) whose tagged fields these are.
    fields: &'static [Field],
    tag: u32,
    /// From this version on kafka-protocol decodes the tag by its layout (below it, it refuses
    /// the message, which allocates nothing).
    min: i16,
    layout: TagLayout,
}

/// Every tagged field kafka-protocol 0.18 decodes by its layout in a message the filter hands
/// it ([`crate::codec::kp::decode_checked`]): its generated decoders read a known tag with
/// `types::...decode(buf)` straight from the buffer and ignore the declared size (e.g.
/// `messages/fetch_response.rs`, `PartitionData::decode`, `match tag { 0 => ... }`). The walk
/// skips a tag by its size, so without this check a lying size, or a NodeEndpoints count far
/// beyond the bytes present, puts kafka-protocol out of step with what the walk proved and
/// lets it size `Vec::with_capacity` from an unchecked count: an allocation failure aborts
/// the Wasm VM (found by `fuzz/`, rewrite and session targets). The other messages decoded
/// with kafka-protocol have no known tagged fields in 0.18.
static KP_KNOWN_TAGS: &[KnownTag] = &[
    // FetchRequest: cluster_id (tag 0), replica_state {replica_id int32, replica_epoch int64}
    // (tag 1, v15+); FetchPartition: replica_directory_id (tag 0, v17+), high_watermark
    // (tag 1, v18+). messages/fetch_request.rs.
    KnownTag {
        fields: FETCH_REQ_FULL,
        tag: 0,
        min: 12,
        layout: TagLayout::CompactNullableString,
    },
    KnownTag {
        fields: FETCH_REQ_FULL,
        tag: 1,
        min: 15,
        layout: TagLayout::Fixed(12),
    },
    KnownTag {
        fields: FETCH_REQ_PART,
        tag: 0,
        min: 17,
        layout: TagLayout::Uuid,
    },
    KnownTag {
        fields: FETCH_REQ_PART,
        tag: 1,
        min: 18,
        layout: TagLayout::I64,
    },
    // FetchResponse: node_endpoints (tag 0, v16+); PartitionData: diverging_epoch {epoch
    // int32, end_offset int64}, current_leader {leader_id int32, leader_epoch int32},
    // snapshot_id {end_offset int64, epoch int32} (tags 0-2). messages/fetch_response.rs.
    KnownTag {
        fields: FETCH_RESP,
        tag: 0,
        min: 16,
        layout: TagLayout::NodeEndpoints,
    },
    KnownTag {
        fields: FETCH_RESP_PART,
        tag: 0,
        min: 12,
        layout: TagLayout::Fixed(12),
    },
    KnownTag {
        fields: FETCH_RESP_PART,
        tag: 1,
        min: 12,
        layout: TagLayout::Fixed(8),
    },
    KnownTag {
        fields: FETCH_RESP_PART,
        tag: 2,
        min: 12,
        layout: TagLayout::Fixed(12),
    },
    // ProduceResponse: node_endpoints (tag 0, v10+); PartitionProduceResponse: current_leader
    // (tag 0, v10+). messages/produce_response.rs.
    KnownTag {
        fields: PRODUCE_RESP,
        tag: 0,
        min: 10,
        layout: TagLayout::NodeEndpoints,
    },
    KnownTag {
        fields: PRODUCE_RESP_PART,
        tag: 0,
        min: 10,
        layout: TagLayout::Fixed(8),
    },
];

const MAX_DEPTH: usize = 5;

#[derive(Debug, Clone, Copy)]
struct Level {
    fields: &'static [Field],
    idx: usize,
    left: u32,
    id: F,
    tags_done: bool,
    /// Elements carry a tagged-field section (structs in flexible versions).
    tags: bool,
}

const EMPTY_LEVEL: Level = Level {
    fields: &[],
    idx: 0,
    left: 0,
    id: F::Skip,
    tags_done: true,
    tags: false,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The response header's tagged fields (response header v1) come first.
    HeaderTags,
    Fields,
    Tags {
        left: u32,
        /// The message's top-level tagged fields (reported as [`Event::Tag`]).
        top: bool,
    },
    Records {
        left: u64,
    },
    Done,
}

/// The walk state of one frame. Small and `Copy`-sized: a handful of words.
#[derive(Debug, Clone)]
pub struct Walker {
    version: i16,
    flexible: bool,
    /// Check the layout of the tagged fields kafka-protocol decodes ([`KP_KNOWN_TAGS`]): set
    /// by [`walk_all`], which runs before a message is handed to kafka-protocol and always has
    /// the whole message.
    strict_tags: bool,
    stack: [Level; MAX_DEPTH],
    depth: usize,
    mode: Mode,
}

type Emit<'e, 'a> = &'e mut dyn FnMut(Event<'a>);

impl Walker {
    /// `header_tags`: the walk starts at response header v1's tagged fields.
    pub fn new(schema: &'static Schema, version: i16, flexible: bool, header_tags: bool) -> Self {
        let mut stack = [EMPTY_LEVEL; MAX_DEPTH];
        if let Some(top) = stack.first_mut() {
            *top = Level {
                fields: schema.fields,
                idx: 0,
                left: 1,
                id: F::Skip,
                tags_done: false,
                tags: flexible,
            };
        }
        Walker {
            version,
            flexible,
            strict_tags: false,
            stack,
            depth: 1,
            mode: if header_tags {
                Mode::HeaderTags
            } else {
                Mode::Fields
            },
        }
    }

    pub fn is_done(&self) -> bool {
        self.mode == Mode::Done
    }

    /// How many bytes the next step needs at least, given the `have` bytes at the walk's
    /// position (a lower bound where a varint or a string's length is not in `have` yet).
    /// The session reads exactly this much more from the host, not a fixed window: copying
    /// bytes into the VM is a Wasm filter's main cost, and a record batch's 61-byte header is
    /// read without any of its records.
    pub fn need(&self, have: &[u8]) -> usize {
        let varint_or = |n: usize| if self.flexible { 1 } else { n };
        match self.mode {
            Mode::Done => 0,
            Mode::HeaderTags => 1,
            Mode::Tags { left: 0, .. } => 0,
            Mode::Tags { .. } => 2,
            Mode::Records { left } => {
                if left < (MAGIC_OFFSET as u64 + 1) {
                    0
                } else {
                    left.min(BATCH_HEADER as u64) as usize
                }
            }
            Mode::Fields => {
                let Some(lvl) = self.stack.get(self.depth.wrapping_sub(1)) else {
                    return 0;
                };
                let Some(field) = lvl.fields.get(lvl.idx) else {
                    return usize::from(lvl.tags && !lvl.tags_done);
                };
                if self.version < field.min || self.version > field.max {
                    return 0;
                }
                let fixed = |n: usize| if field.id == F::Skip { 0 } else { n };
                match field.ty {
                    I8 => fixed(1),
                    I16 => fixed(2),
                    I32 => fixed(4),
                    I64 => fixed(8),
                    Uuid => fixed(16),
                    Str => {
                        let prefix = varint_or(2);
                        if field.id == F::Skip {
                            return prefix;
                        }
                        let mut r = Reader::new(have);
                        match str_len(&mut r, self.flexible, "str") {
                            Ok(Some(n)) => r.position().saturating_add(n as usize),
                            Ok(None) => r.position(),
                            Err(_) => prefix,
                        }
                    }
                    Bytes | Ty::Records => varint_or(4),
                    I32Array | I64Array | Array(_) | Plain(_) => varint_or(4),
                    Nullable(_) => 1,
                    Stop => 0,
                }
            }
        }
    }

    /// A tagged field kafka-protocol knows is decoded by its own layout, not skipped by its
    /// declared size: its content must be exactly what that layout takes (see
    /// [`KP_KNOWN_TAGS`]). `r` is just past the tag's size varint.
    fn check_known_tag(&self, r: &Reader<'_>, tag: u32, size: u32, top: bool) -> DecodeResult<()> {
        let fields = if top {
            self.stack.first().map(|l| l.fields)
        } else if self.depth > 1 {
            self.stack.get(self.depth.wrapping_sub(1)).map(|l| l.fields)
        } else {
            None // the response header's tagged fields
        };
        let Some(fields) = fields else {
            return Ok(());
        };
        let known = KP_KNOWN_TAGS
            .iter()
            .find(|k| k.tag == tag && self.version >= k.min && std::ptr::eq(k.fields, fields));
        let Some(known) = known else {
            return Ok(());
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let content = r.rest().get(..size).ok_or(DecodeError::Invalid {
            field: "tagged_field.size",
            reason: "tagged field runs past the message",
        })?;
        let mut c = Reader::new(content);
        known.layout.check(&mut c)?;
        if !c.is_empty() {
            return Err(DecodeError::Invalid {
                field: "tagged_field.size",
                reason: "a known tagged field's size is not what its layout takes",
            });
        }
        Ok(())
    }

    /// One step over the bytes at the walk's position. On `Err` nothing changed.
    pub fn step<'a>(&mut self, r: &mut Reader<'a>, emit: Emit<'_, 'a>) -> DecodeResult<Step> {
        match self.mode {
            Mode::Done => Ok(Step::Done),
            Mode::HeaderTags => {
                let n = r.uvarint("response_header.tagged_fields")?;
                self.mode = Mode::Tags {
                    left: n,
                    top: false,
                };
                Ok(Step::Advanced)
            }
            Mode::Tags { left: 0, .. } => {
                self.mode = Mode::Fields;
                Ok(Step::Advanced)
            }
            Mode::Tags { left, top } => {
                let at = r.position();
                let tag = r.uvarint("tagged_field.tag")?;
                let size = r.uvarint("tagged_field.size")?;
                check_tag(tag, "tagged_field.tag")?;
                if self.strict_tags {
                    self.check_known_tag(r, tag, size, top)?;
                }
                if top {
                    let len = r.position().saturating_sub(at);
                    emit(Event::Tag { tag, size, len });
                }
                self.mode = Mode::Tags {
                    left: left - 1,
                    top,
                };
                Ok(Step::Skip(u64::from(size)))
            }
            Mode::Records { left: 0 } => {
                self.mode = Mode::Fields;
                Ok(Step::Advanced)
            }
            Mode::Records { left } => self.batch(r, left, emit),
            Mode::Fields => self.field(r, emit),
        }
    }

    fn batch<'a>(
        &mut self,
        r: &mut Reader<'a>,
        left: u64,
        emit: Emit<'_, 'a>,
    ) -> DecodeResult<Step> {
        if left < (MAGIC_OFFSET as u64 + 1) {
            // Too short to be a batch: a partial trailing batch of a Fetch response.
            emit(Event::Batch(Batch {
                bytes: left,
                records: 0,
                magic: -1,
                attributes: 0,
                complete: false,
            }));
            self.mode = Mode::Records { left: 0 };
            return Ok(Step::Skip(left));
        }
        // Peek baseOffset and batchLength first: a batch shorter than a v2 header (a legacy
        // message or garbage) must not have more than its own bytes consumed.
        let mut peek = Reader::new(r.rest());
        let _base_offset = peek.i64("record_batch.base_offset")?;
        let batch_len = peek.i32("record_batch.batch_length")?;
        let batch_len = u64::try_from(batch_len).map_err(|_| DecodeError::Invalid {
            field: "record_batch.batch_length",
            reason: "negative batch length",
        })?;
        let total = batch_len.saturating_add(BATCH_LOG_OVERHEAD);
        let complete = total <= left;
        let bytes = total.min(left);
        let want = bytes.min(BATCH_HEADER as u64) as usize;
        let hdr = r.take(want, "record_batch.header")?;
        let magic = hdr.get(MAGIC_OFFSET).map_or(-1, |m| *m as i8);
        let (records, attributes) = if magic == 2 && complete && hdr.len() == BATCH_HEADER {
            let mut a = Reader::new(hdr.get(ATTRIBUTES_OFFSET..).unwrap_or(&[]));
            let attributes = a.i16("record_batch.attributes")?;
            let mut c = Reader::new(hdr.get(RECORDS_COUNT_OFFSET..).unwrap_or(&[]));
            let count = c.i32("record_batch.records_count")?;
            (u32::try_from(count).unwrap_or(0), attributes)
        } else {
            (0, 0)
        };
        emit(Event::Batch(Batch {
            bytes,
            records,
            magic,
            attributes,
            complete,
        }));
        self.mode = Mode::Records { left: left - bytes };
        Ok(Step::Skip(bytes.saturating_sub(want as u64)))
    }

    fn field<'a>(&mut self, r: &mut Reader<'a>, emit: Emit<'_, 'a>) -> DecodeResult<Step> {
        let flexible = self.flexible;
        let version = self.version;
        let depth = self.depth;
        let lvl = self
            .stack
            .get_mut(depth.wrapping_sub(1))
            .ok_or(DecodeError::Invalid {
                field: "walk",
                reason: "empty walk stack",
            })?;
        let Some(field) = lvl.fields.get(lvl.idx).copied() else {
            if lvl.tags && !lvl.tags_done {
                let n = r.uvarint("tagged_fields")?;
                lvl.tags_done = true;
                self.mode = Mode::Tags {
                    left: n,
                    top: depth == 1,
                };
                return Ok(Step::Advanced);
            }
            self.end_struct(emit);
            return Ok(Step::Advanced);
        };
        if version < field.min || version > field.max {
            lvl.idx += 1;
            return Ok(Step::Advanced);
        }
        let name = field_name(field.id);
        let skip_fixed = match field.ty {
            I8 => Some(1u64),
            I16 => Some(2),
            I32 => Some(4),
            I64 => Some(8),
            Uuid => Some(16),
            _ => None,
        };
        if let (F::Skip, Some(n)) = (field.id, skip_fixed) {
            // A fixed-size field nobody reads streams past like a payload.
            lvl.idx += 1;
            return Ok(Step::Skip(n));
        }
        let step = match field.ty {
            I8 => {
                let v = r.i8(name)?;
                emit_int(emit, field.id, i64::from(v));
                Step::Advanced
            }
            I16 => {
                let v = r.i16(name)?;
                emit_int(emit, field.id, i64::from(v));
                Step::Advanced
            }
            I32 => {
                let v = r.i32(name)?;
                emit_int(emit, field.id, i64::from(v));
                Step::Advanced
            }
            I64 => {
                let v = r.i64(name)?;
                emit_int(emit, field.id, v);
                Step::Advanced
            }
            Uuid => {
                let v = r.uuid(name)?;
                if field.id != F::Skip {
                    emit(Event::Uuid(field.id, v));
                }
                Step::Advanced
            }
            Str => {
                let len = str_len(r, flexible, name)?;
                if field.id == F::Skip {
                    lvl.idx += 1;
                    return Ok(Step::Skip(len.unwrap_or(0)));
                }
                let v = match len {
                    None => None,
                    Some(n) => Some(r.take(n as usize, name)?),
                };
                emit(Event::Str(field.id, v));
                Step::Advanced
            }
            Bytes => Step::Skip(bytes_len(r, flexible, name)?.unwrap_or(0)),
            Ty::Records => {
                let len = bytes_len(r, flexible, name)?.unwrap_or(0);
                emit_int(emit, field.id, len as i64);
                lvl.idx += 1;
                self.mode = Mode::Records { left: len };
                return Ok(Step::Advanced);
            }
            I32Array | I64Array => {
                let n = count(r, flexible, name)?;
                let size: u64 = if matches!(field.ty, I32Array) { 4 } else { 8 };
                Step::Skip(u64::from(n).saturating_mul(size))
            }
            Array(sub) | Plain(sub) | Nullable(sub) => {
                let n = match field.ty {
                    // The marker: -1 null, else one struct follows.
                    Nullable(_) => u32::from(r.i8(name)? >= 0),
                    _ => count(r, flexible, name)?,
                };
                let tags = flexible && matches!(field.ty, Array(_) | Nullable(_));
                lvl.idx += 1;
                if n > 0 {
                    let slot = self.stack.get_mut(depth).ok_or(DecodeError::Invalid {
                        field: name,
                        reason: "schema nesting too deep",
                    })?;
                    *slot = Level {
                        fields: sub,
                        idx: 0,
                        left: n,
                        id: field.id,
                        tags_done: false,
                        tags,
                    };
                    self.depth += 1;
                    if field.id != F::Skip {
                        emit(Event::Begin(field.id));
                    }
                }
                return Ok(Step::Advanced);
            }
            Stop => {
                self.mode = Mode::Done;
                return Ok(Step::Done);
            }
        };
        lvl.idx += 1;
        Ok(step)
    }

    fn end_struct<'a>(&mut self, emit: Emit<'_, 'a>) {
        if self.depth <= 1 {
            self.mode = Mode::Done;
            return;
        }
        let Some(lvl) = self.stack.get_mut(self.depth - 1) else {
            self.mode = Mode::Done;
            return;
        };
        if lvl.id != F::Skip {
            emit(Event::End(lvl.id));
        }
        lvl.left = lvl.left.saturating_sub(1);
        if lvl.left > 0 {
            lvl.idx = 0;
            lvl.tags_done = false;
            if lvl.id != F::Skip {
                emit(Event::Begin(lvl.id));
            }
        } else {
            self.depth -= 1;
        }
    }
}

fn emit_int(emit: Emit<'_, '_>, id: F, v: i64) {
    if id != F::Skip {
        emit(Event::Int(id, v));
    }
}

fn field_name(id: F) -> &'static str {
    match id {
        F::Skip => "field",
        F::TransactionalId => "transactional_id",
        F::Acks => "acks",
        F::Topics => "topics",
        F::Topic => "topic",
        F::TopicId => "topic_id",
        F::Partitions => "partitions",
        F::Partition => "partition",
        F::Records => "records",
        F::ErrorCode | F::TopErrorCode => "error_code",
        F::HighWatermark => "high_watermark",
        F::FetchOffset => "fetch_offset",
        F::GroupId => "group_id",
        F::Coordinators => "coordinators",
    }
}

/// String length: `None` is null.
fn str_len(r: &mut Reader<'_>, flexible: bool, field: &'static str) -> DecodeResult<Option<u64>> {
    if flexible {
        Ok(r.uvarint(field)?.checked_sub(1).map(u64::from))
    } else {
        match r.i16(field)? {
            -1 => Ok(None),
            n => u64::try_from(n)
                .map(Some)
                .map_err(|_| DecodeError::Invalid {
                    field,
                    reason: "negative string length",
                }),
        }
    }
}

fn bytes_len(r: &mut Reader<'_>, flexible: bool, field: &'static str) -> DecodeResult<Option<u64>> {
    if flexible {
        Ok(r.uvarint(field)?.checked_sub(1).map(u64::from))
    } else {
        match r.i32(field)? {
            -1 => Ok(None),
            n => u64::try_from(n)
                .map(Some)
                .map_err(|_| DecodeError::Invalid {
                    field,
                    reason: "negative bytes length",
                }),
        }
    }
}

fn count(r: &mut Reader<'_>, flexible: bool, field: &'static str) -> DecodeResult<u32> {
    if flexible {
        Ok(r.uvarint(field)?.saturating_sub(1))
    } else {
        match r.i32(field)? {
            -1 => Ok(0),
            n => u32::try_from(n).map_err(|_| DecodeError::Invalid {
                field,
                reason: "negative array length",
            }),
        }
    }
}

/// Walk a complete in-memory body (no header) to its end. `Err` when it is malformed, ends
/// early, or has bytes past the end of the schema: a body that passes has every array count
/// and length bounded by the bytes present.
pub fn walk_all<'a>(
    schema: &'static Schema,
    version: i16,
    flexible: bool,
    body: &'a [u8],
    emit: Emit<'_, 'a>,
) -> DecodeResult<()> {
    let mut w = Walker::new(schema, version, flexible, false);
    w.strict_tags = true;
    let mut r = Reader::new(body);
    loop {
        match w.step(&mut r, emit)? {
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
    if !r.is_empty() {
        return Err(DecodeError::Invalid {
            field: "frame",
            reason: "bytes after the end of the message",
        });
    }
    Ok(())
}
