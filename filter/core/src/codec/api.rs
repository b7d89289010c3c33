//! The one table of Kafka APIs the filter knows: names, the highest version it can parse, and
//! from which version each API uses flexible encoding (KIP-482 tagged fields, compact strings).
//!
//! Sources: the `flexibleVersions` and `validVersions` of each message in Kafka's
//! `clients/src/main/resources/common/message/*Request.json`, as generated into
//! tychedelia/kafka-protocol-rs 0.18 `src/messages.rs` (`header_version`, `VersionRange`). APIs
//! that Kafka 4 removed (LeaderAndIsr, StopReplica, UpdateMetadata, ControlledShutdown) and the
//! Streams group APIs (KIP-1071, keys 88/89) are taken from the Kafka 3.9 / 4.1 JSON specs.
//!
//! `max_version` is what the filter advertises at most in ApiVersions responses (see
//! [`crate::codec::apiversions`]): a client never sends a version this table cannot describe. Raising
//! it for an API means the filter must parse that version wherever it reads that API's body.

/// Sentinel for APIs that never became flexible (SaslHandshake, OffsetDelete).
pub const NEVER: i16 = i16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiInfo {
    pub key: i16,
    pub name: &'static str,
    pub max_version: i16,
    pub flexible_from: i16,
}

const fn api(key: i16, name: &'static str, max_version: i16, flexible_from: i16) -> ApiInfo {
    ApiInfo {
        key,
        name,
        max_version,
        flexible_from,
    }
}

pub const PRODUCE: i16 = 0;
pub const FETCH: i16 = 1;
pub const METADATA: i16 = 3;
pub const CONTROLLED_SHUTDOWN: i16 = 7;
pub const API_VERSIONS: i16 = 18;

/// Sorted by key (checked by a test), looked up by binary search.
pub static APIS: &[ApiInfo] = &[
    api(0, "produce", 13, 9),
    api(1, "fetch", 18, 12),
    api(2, "list_offsets", 10, 6),
    api(3, "metadata", 13, 9),
    api(4, "leader_and_isr", 7, 4),
    api(5, "stop_replica", 4, 2),
    api(6, "update_metadata", 8, 6),
    api(7, "controlled_shutdown", 3, 3),
    api(8, "offset_commit", 10, 8),
    api(9, "offset_fetch", 10, 6),
    api(10, "find_coordinator", 6, 3),
    api(11, "join_group", 9, 6),
    api(12, "heartbeat", 4, 4),
    api(13, "leave_group", 5, 4),
    api(14, "sync_group", 5, 4),
    api(15, "describe_groups", 6, 5),
    api(16, "list_groups", 5, 3),
    api(17, "sasl_handshake", 1, NEVER),
    api(18, "api_versions", 4, 3),
    api(19, "create_topics", 7, 5),
    api(20, "delete_topics", 6, 4),
    api(21, "delete_records", 2, 2),
    api(22, "init_producer_id", 6, 2),
    api(23, "offset_for_leader_epoch", 4, 4),
    api(24, "add_partitions_to_txn", 5, 3),
    api(25, "add_offsets_to_txn", 4, 3),
    api(26, "end_txn", 5, 3),
    api(27, "write_txn_markers", 1, 1),
    api(28, "txn_offset_commit", 5, 3),
    api(29, "describe_acls", 3, 2),
    api(30, "create_acls", 3, 2),
    api(31, "delete_acls", 3, 2),
    api(32, "describe_configs", 4, 4),
    api(33, "alter_configs", 2, 2),
    api(34, "alter_replica_log_dirs", 2, 2),
    api(35, "describe_log_dirs", 4, 2),
    api(36, "sasl_authenticate", 2, 2),
    api(37, "create_partitions", 3, 2),
    api(38, "create_delegation_token", 3, 2),
    api(39, "renew_delegation_token", 2, 2),
    api(40, "expire_delegation_token", 2, 2),
    api(41, "describe_delegation_token", 3, 2),
    api(42, "delete_groups", 2, 2),
    api(43, "elect_leaders", 2, 2),
    api(44, "incremental_alter_configs", 1, 1),
    api(45, "alter_partition_reassignments", 1, 0),
    api(46, "list_partition_reassignments", 0, 0),
    api(47, "offset_delete", 0, NEVER),
    api(48, "describe_client_quotas", 1, 1),
    api(49, "alter_client_quotas", 1, 1),
    api(50, "describe_user_scram_credentials", 0, 0),
    api(51, "alter_user_scram_credentials", 0, 0),
    api(52, "vote", 2, 0),
    api(53, "begin_quorum_epoch", 1, 1),
    api(54, "end_quorum_epoch", 1, 1),
    api(55, "describe_quorum", 2, 0),
    api(56, "alter_partition", 3, 0),
    api(57, "update_features", 2, 0),
    api(58, "envelope", 0, 0),
    api(59, "fetch_snapshot", 1, 0),
    api(60, "describe_cluster", 2, 0),
    api(61, "describe_producers", 0, 0),
    api(62, "broker_registration", 4, 0),
    api(63, "broker_heartbeat", 1, 0),
    api(64, "unregister_broker", 0, 0),
    api(65, "describe_transactions", 0, 0),
    api(66, "list_transactions", 2, 0),
    api(67, "allocate_producer_ids", 0, 0),
    api(68, "consumer_group_heartbeat", 1, 0),
    api(69, "consumer_group_describe", 1, 0),
    api(70, "controller_registration", 0, 0),
    api(71, "get_telemetry_subscriptions", 0, 0),
    api(72, "push_telemetry", 0, 0),
    api(73, "assign_replicas_to_dirs", 0, 0),
    api(74, "list_config_resources", 1, 0),
    api(75, "describe_topic_partitions", 0, 0),
    api(76, "share_group_heartbeat", 1, 0),
    api(77, "share_group_describe", 1, 0),
    api(78, "share_fetch", 1, 0),
    api(79, "share_acknowledge", 1, 0),
    api(80, "add_raft_voter", 0, 0),
    api(81, "remove_raft_voter", 0, 0),
    api(82, "update_raft_voter", 0, 0),
    api(83, "initialize_share_group_state", 0, 0),
    api(84, "read_share_group_state", 0, 0),
    api(85, "write_share_group_state", 0, 0),
    api(86, "delete_share_group_state", 0, 0),
    api(87, "read_share_group_state_summary", 0, 0),
    api(88, "streams_group_heartbeat", 0, 0),
    api(89, "streams_group_describe", 0, 0),
    api(90, "describe_share_group_offsets", 0, 0),
    api(91, "alter_share_group_offsets", 0, 0),
    api(92, "delete_share_group_offsets", 0, 0),
];

pub fn api_info(key: i16) -> Option<&'static ApiInfo> {
    APIS.binary_search_by_key(&key, |a| a.key)
        .ok()
        .and_then(|i| APIS.get(i))
}

/// Name for metrics and logs; unknown keys get a fixed label so cardinality stays bounded.
pub fn api_name(key: i16) -> &'static str {
    api_info(key).map_or("unknown", |a| a.name)
}

impl ApiInfo {
    pub fn is_flexible(&self, version: i16) -> bool {
        version >= self.flexible_from
    }

    /// Request header version for `version` of this API (0, 1 or 2).
    /// ControlledShutdown v0 is the only request with header v0 (no client_id).
    pub fn request_header_version(&self, version: i16) -> i16 {
        if self.key == CONTROLLED_SHUTDOWN && version == 0 {
            0
        } else if self.is_flexible(version) {
            2
        } else {
            1
        }
    }

    /// Response header version: v1 (with tagged fields) for flexible versions, except
    /// ApiVersions, whose response header is always v0 so that a client can read it before
    /// it knows what the broker supports (KIP-511; Kafka `ApiVersionsResponse.json` comment).
    pub fn response_header_version(&self, version: i16) -> i16 {
        if self.key != API_VERSIONS && self.is_flexible(version) {
            1
        } else {
            0
        }
    }

    pub fn supports(&self, version: i16) -> bool {
        (0..=self.max_version).contains(&version)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for w in APIS.windows(2) {
            assert!(w[0].key < w[1].key, "{:?} then {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn header_versions_match_kafka_protocol() {
        use kafka_protocol::messages::ApiKey;
        let mut checked = 0;
        for a in APIS {
            let Ok(k) = ApiKey::try_from(a.key) else {
                continue;
            };
            let range = k.valid_versions();
            assert_eq!(range.max, a.max_version, "{}", a.name);
            for v in range.min..=range.max {
                assert_eq!(
                    k.request_header_version(v),
                    a.request_header_version(v),
                    "{} v{v}",
                    a.name
                );
                assert_eq!(
                    k.response_header_version(v),
                    a.response_header_version(v),
                    "{} v{v} resp",
                    a.name
                );
                checked += 1;
            }
        }
        assert!(
            checked > 250,
            "only {checked} (api, version) pairs compared"
        );
    }

    #[test]
    fn special_cases() {
        assert_eq!(
            api_info(CONTROLLED_SHUTDOWN)
                .unwrap()
                .request_header_version(0),
            0
        );
        assert_eq!(
            api_info(API_VERSIONS).unwrap().response_header_version(3),
            0
        );
        assert_eq!(api_info(API_VERSIONS).unwrap().request_header_version(3), 2);
        assert_eq!(api_info(17).unwrap().request_header_version(1), 1);
        assert_eq!(api_name(999), "unknown");
        assert!(api_info(-1).is_none());
    }
}
