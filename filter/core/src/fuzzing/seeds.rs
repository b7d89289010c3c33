//! Seed inputs for every target, built from real encodings (kafka-protocol's encoders and
//! [`crate::testkit::record_batch`]) of every API the filter inspects. Written to
//! `fuzz/corpus/<target>/seed-*` by the ignored test `write_seeds`
//! (`src/tests/fuzz_corpus.rs`); the replay test runs them on every `cargo test`.

use bytes::Bytes as Buf;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

use super::differential::generate_body;
use super::{
    differential_input, rewrite_input, session_input, Segment, DIFF_CASES, REWRITERS,
    SESSION_CONFIGS,
};
use crate::codec::api;
use crate::session::Direction;
use crate::testkit::{client_header, encode_request, encode_response, record_batch};

/// One seed file: `fuzz/corpus/<target>/seed-<name>`.
#[derive(Debug, Clone)]
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A request frame and the broker's answer (none for `acks=0`).
pub(crate) type Exchange = (Vec<u8>, Option<Vec<u8>>);

const CLIENT: &str = "orders-fuzz";

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

fn t(x: &str) -> TopicName {
    TopicName(s(x))
}

fn id(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

fn req<B: Encodable + HeaderVersion>(key: i16, v: i16, corr: i32, body: &B) -> Vec<u8> {
    encode_request(&client_header(key, v, corr, CLIENT), body, v)
}

fn batches(n: usize, payload: usize) -> Buf {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(record_batch(
            i64::try_from(i * 3).unwrap_or(0),
            3,
            payload,
            0,
        ));
    }
    Buf::from(out)
}

fn brokers_md(n: i32) -> Vec<metadata_response::MetadataResponseBroker> {
    (0..n)
        .map(|i| {
            metadata_response::MetadataResponseBroker::default()
                .with_node_id(i.into())
                .with_host(s(&format!("broker-{i}.internal")))
                .with_port(9092)
                .with_rack(Some(s("zone-a")))
        })
        .collect()
}

/// ApiVersions, then Metadata for all topics.
fn bootstrap(v_md: i16) -> Vec<Exchange> {
    let av = ApiVersionsResponse::default().with_api_keys(
        [
            (0i16, 13i16),
            (1, 18),
            (3, 13),
            (10, 6),
            (11, 9),
            (18, 4),
            (60, 2),
        ]
        .iter()
        .map(|(k, m)| {
            api_versions_response::ApiVersion::default()
                .with_api_key(*k)
                .with_max_version(*m)
        })
        .collect(),
    );
    let topics = [("orders.a", 1u8), ("secret-1", 2), ("public.news", 3)]
        .iter()
        .map(|(n, i)| {
            metadata_response::MetadataResponseTopic::default()
                .with_name(Some(t(n)))
                .with_topic_id(if v_md >= 10 {
                    id(*i)
                } else {
                    uuid::Uuid::nil()
                })
                .with_partitions(vec![metadata_response::MetadataResponsePartition::default(
                )
                .with_leader_id(0.into())
                .with_replica_nodes(vec![0.into(), 1.into()])])
        })
        .collect();
    let md = MetadataResponse::default()
        .with_brokers(brokers_md(3))
        .with_topics(topics);
    let mreq = MetadataRequest::default().with_topics(if v_md >= 1 { None } else { Some(vec![]) });
    vec![
        (
            req(
                18,
                3,
                1,
                &ApiVersionsRequest::default().with_client_software_name(s("fuzz")),
            ),
            Some(encode_response(1, &av, 3)),
        ),
        (req(3, v_md, 2, &mreq), Some(encode_response(2, &md, v_md))),
    ]
}

fn produce(v: i16, acks: i16, corr: i32, tx: Option<&str>) -> Exchange {
    let topic = |n: &str, i: u8, parts: i32| {
        produce_request::TopicProduceData::default()
            .with_name(t(n))
            .with_topic_id(if v >= 13 { id(i) } else { uuid::Uuid::nil() })
            .with_partition_data(
                (0..parts)
                    .map(|p| {
                        produce_request::PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(batches(2, 20)))
                    })
                    .collect(),
            )
    };
    let r = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_transactional_id(tx.map(|x| s(x).into()))
        .with_topic_data(vec![
            topic("orders.a", 1, 2),
            topic("secret-1", 2, 1),
            topic("public.news", 3, 1),
        ]);
    let mut resp = ProduceResponse::default().with_responses(
        [
            ("orders.a", 1u8, 0i16),
            ("secret-1", 2, 29),
            ("public.news", 3, 6),
        ]
        .iter()
        .map(|(n, i, e)| {
            produce_response::TopicProduceResponse::default()
                .with_name(t(n))
                .with_topic_id(if v >= 13 { id(*i) } else { uuid::Uuid::nil() })
                .with_partition_responses(vec![
                    produce_response::PartitionProduceResponse::default()
                        .with_error_code(*e)
                        .with_base_offset(100),
                ])
        })
        .collect(),
    );
    if v >= 10 {
        resp = resp.with_node_endpoints(vec![produce_response::NodeEndpoint::default()
            .with_node_id(1.into())
            .with_host(s("broker-1.internal"))
            .with_port(9092)]);
    }
    (
        req(0, v, corr, &r),
        (acks != 0).then(|| encode_response(corr, &resp, v)),
    )
}

fn fetch(v: i16, corr: i32, payload: usize) -> Exchange {
    let r = FetchRequest::default().with_max_wait_ms(500).with_topics(
        [("orders.a", 1u8), ("secret-1", 2)]
            .iter()
            .map(|(n, i)| {
                fetch_request::FetchTopic::default()
                    .with_topic(t(n))
                    .with_topic_id(if v >= 13 { id(*i) } else { uuid::Uuid::nil() })
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(5)
                        .with_partition_max_bytes(1 << 20)])
            })
            .collect(),
    );
    let mut resp = FetchResponse::default().with_responses(
        [("orders.a", 1u8, 0i16), ("secret-1", 2, 3)]
            .iter()
            .map(|(n, i, e)| {
                fetch_response::FetchableTopicResponse::default()
                    .with_topic(t(n))
                    .with_topic_id(if v >= 13 { id(*i) } else { uuid::Uuid::nil() })
                    .with_partitions(vec![fetch_response::PartitionData::default()
                        .with_error_code(*e)
                        .with_high_watermark(12)
                        .with_records(Some(batches(2, payload)))])
            })
            .collect(),
    );
    if v >= 16 {
        resp = resp.with_node_endpoints(vec![fetch_response::NodeEndpoint::default()
            .with_node_id(0.into())
            .with_host(s("broker-0.internal"))
            .with_port(9092)]);
    }
    (req(1, v, corr, &r), Some(encode_response(corr, &resp, v)))
}

fn groups() -> Vec<Exchange> {
    let gid = |g: &str| -> GroupId { s(g).into() };
    let fc3 = FindCoordinatorResponse::default()
        .with_node_id(1.into())
        .with_host(s("broker-1.internal"))
        .with_port(9092);
    let fc4 = FindCoordinatorResponse::default().with_coordinators(
        [("orders-group", 0i16), ("admin-ops", 15)]
            .iter()
            .enumerate()
            .map(|(i, (k, e))| {
                find_coordinator_response::Coordinator::default()
                    .with_key(s(k))
                    .with_node_id(i32::try_from(i).unwrap_or(0).into())
                    .with_host(s(&format!("broker-{i}.internal")))
                    .with_port(9092)
                    .with_error_code(*e)
            })
            .collect(),
    );
    let commit = OffsetCommitRequest::default()
        .with_group_id(gid("orders-group"))
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(t("orders.a"))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_committed_offset(7),
                ]),
        ]);
    let commit_resp = OffsetCommitResponse::default().with_topics(vec![
        offset_commit_response::OffsetCommitResponseTopic::default()
            .with_name(t("orders.a"))
            .with_partitions(vec![
                offset_commit_response::OffsetCommitResponsePartition::default()
                    .with_error_code(22),
            ]),
    ]);
    let of7 = OffsetFetchRequest::default()
        .with_group_id(gid("orders-group"))
        .with_topics(Some(vec![
            offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(t("orders.a"))
                .with_partition_indexes(vec![0]),
        ]));
    let of7r = OffsetFetchResponse::default().with_topics(vec![
        offset_fetch_response::OffsetFetchResponseTopic::default()
            .with_name(t("orders.a"))
            .with_partitions(vec![
                offset_fetch_response::OffsetFetchResponsePartition::default()
                    .with_committed_offset(7),
            ]),
    ]);
    let of8 = OffsetFetchRequest::default().with_groups(vec![
        offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(gid("admin-ops"))
            .with_topics(None),
    ]);
    let of8r = OffsetFetchResponse::default().with_groups(vec![
        offset_fetch_response::OffsetFetchResponseGroup::default()
            .with_group_id(gid("admin-ops"))
            .with_error_code(30),
    ]);
    vec![
        (
            req(
                10,
                3,
                10,
                &FindCoordinatorRequest::default().with_key(s("orders-group")),
            ),
            Some(encode_response(10, &fc3, 3)),
        ),
        (
            req(
                10,
                4,
                11,
                &FindCoordinatorRequest::default()
                    .with_coordinator_keys(vec![s("orders-group"), s("admin-ops")]),
            ),
            Some(encode_response(11, &fc4, 4)),
        ),
        (
            req(
                11,
                5,
                12,
                &JoinGroupRequest::default()
                    .with_group_id(gid("orders-group"))
                    .with_protocol_type(s("consumer"))
                    .with_session_timeout_ms(10_000),
            ),
            Some(encode_response(
                12,
                &JoinGroupResponse::default()
                    .with_generation_id(1)
                    .with_member_id(s("m-1")),
                5,
            )),
        ),
        (
            req(
                14,
                3,
                13,
                &SyncGroupRequest::default()
                    .with_group_id(gid("orders-group"))
                    .with_generation_id(1)
                    .with_member_id(s("m-1")),
            ),
            Some(encode_response(13, &SyncGroupResponse::default(), 3)),
        ),
        (
            req(
                12,
                4,
                14,
                &HeartbeatRequest::default().with_group_id(gid("admin-ops")),
            ),
            Some(encode_response(
                14,
                &HeartbeatResponse::default().with_error_code(27),
                4,
            )),
        ),
        (
            req(8, 8, 15, &commit),
            Some(encode_response(15, &commit_resp, 8)),
        ),
        (req(9, 7, 16, &of7), Some(encode_response(16, &of7r, 7))),
        (req(9, 8, 17, &of8), Some(encode_response(17, &of8r, 8))),
        (
            req(
                13,
                4,
                18,
                &LeaveGroupRequest::default()
                    .with_group_id(gid("orders-group"))
                    .with_members(vec![
                        leave_group_request::MemberIdentity::default().with_member_id(s("m-1"))
                    ]),
            ),
            Some(encode_response(18, &LeaveGroupResponse::default(), 4)),
        ),
    ]
}

fn admin() -> Vec<Exchange> {
    let lo = ListOffsetsRequest::default().with_topics(
        ["orders.a", "secret-1"]
            .iter()
            .map(|n| {
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(t(n))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)
                    ])
            })
            .collect(),
    );
    let lor = ListOffsetsResponse::default().with_topics(vec![
        list_offsets_response::ListOffsetsTopicResponse::default()
            .with_name(t("orders.a"))
            .with_partitions(vec![
                list_offsets_response::ListOffsetsPartitionResponse::default().with_offset(42),
            ]),
    ]);
    let dt4 = DeleteTopicsRequest::default().with_topic_names(vec![t("secret-1"), t("orders.a")]);
    let dt4r = DeleteTopicsResponse::default().with_responses(vec![
        delete_topics_response::DeletableTopicResult::default()
            .with_name(Some(t("orders.a")))
            .with_error_code(41),
    ]);
    let dt6 = DeleteTopicsRequest::default().with_topics(vec![
        delete_topics_request::DeleteTopicState::default().with_topic_id(id(2)),
    ]);
    let dt6r = DeleteTopicsResponse::default().with_responses(vec![
        delete_topics_response::DeletableTopicResult::default()
            .with_topic_id(id(2))
            .with_error_code(100),
    ]);
    let ct = CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(t("orders.new"))
            .with_num_partitions(3)
            .with_replication_factor(1),
    ]);
    let ctr = CreateTopicsResponse::default().with_topics(vec![
        create_topics_response::CreatableTopicResult::default().with_name(t("orders.new")),
    ]);
    let dc = DescribeClusterResponse::default()
        .with_cluster_id(s("c-1"))
        .with_brokers(
            (0..3)
                .map(|i| {
                    describe_cluster_response::DescribeClusterBroker::default()
                        .with_broker_id(i.into())
                        .with_host(s(&format!("broker-{i}.internal")))
                        .with_port(9092)
                })
                .collect(),
        );
    vec![
        (req(2, 7, 20, &lo), Some(encode_response(20, &lor, 7))),
        (req(20, 4, 21, &dt4), Some(encode_response(21, &dt4r, 4))),
        (req(20, 6, 22, &dt6), Some(encode_response(22, &dt6r, 6))),
        (req(19, 5, 23, &ct), Some(encode_response(23, &ctr, 5))),
        (
            req(60, 1, 24, &DescribeClusterRequest::default()),
            Some(encode_response(24, &dc, 1)),
        ),
        (
            req(
                22,
                4,
                25,
                &InitProducerIdRequest::default()
                    .with_transactional_id(Some(s("tx-1").into()))
                    .with_transaction_timeout_ms(60_000),
            ),
            Some(encode_response(
                25,
                &InitProducerIdResponse::default().with_producer_id(7.into()),
                4,
            )),
        ),
    ]
}

fn sasl() -> Vec<Exchange> {
    vec![
        (
            req(
                17,
                1,
                30,
                &SaslHandshakeRequest::default().with_mechanism(s("PLAIN")),
            ),
            Some(encode_response(
                30,
                &SaslHandshakeResponse::default().with_mechanisms(vec![s("PLAIN")]),
                1,
            )),
        ),
        (
            req(
                36,
                2,
                31,
                &SaslAuthenticateRequest::default()
                    .with_auth_bytes(Buf::from_static(b"\0alice\0secret")),
            ),
            Some(encode_response(31, &SaslAuthenticateResponse::default(), 2)),
        ),
    ]
}

/// Frames too large to hold or to pause on (the cut-and-stash and big-Metadata paths).
fn big() -> Vec<Exchange> {
    let md = MetadataResponse::default()
        .with_brokers(brokers_md(2))
        .with_topics(
            (0..150u8)
                .map(|i| {
                    metadata_response::MetadataResponseTopic::default()
                        .with_name(Some(t(&format!(
                            "{}-{i}",
                            if i % 2 == 0 { "orders.x" } else { "secret" }
                        ))))
                        .with_topic_id(id(i))
                })
                .collect(),
        );
    vec![
        produce(9, -1, 40, None),
        (
            req(3, 12, 41, &MetadataRequest::default().with_topics(None)),
            Some(encode_response(41, &md, 12)),
        ),
        fetch(16, 42, 6000),
    ]
}

/// A short conversation over every API the filter inspects (the config target carries it
/// through every accepted config).
pub(crate) fn conversation() -> Vec<Exchange> {
    let mut c = bootstrap(12);
    c.push(produce(9, -1, 3, None));
    c.push(fetch(12, 4, 10));
    c.extend(groups());
    c
}

fn interleaved(ex: &[Exchange]) -> Vec<Segment<'_>> {
    let mut segs = Vec::new();
    for (rq, rs) in ex {
        segs.push(Segment {
            dir: Direction::Request,
            eos: false,
            bytes: rq,
        });
        if let Some(rs) = rs {
            segs.push(Segment {
                dir: Direction::Response,
                eos: false,
                bytes: rs,
            });
        }
    }
    segs
}

/// Requests pipelined (all sent before any answer), then the answers.
fn pipelined(ex: &[Exchange]) -> Vec<Segment<'_>> {
    let mut segs: Vec<Segment<'_>> = ex
        .iter()
        .map(|(rq, _)| Segment {
            dir: Direction::Request,
            eos: false,
            bytes: rq,
        })
        .collect();
    segs.extend(ex.iter().filter_map(|(_, rs)| {
        rs.as_ref().map(|rs| Segment {
            dir: Direction::Response,
            eos: false,
            bytes: rs,
        })
    }));
    segs
}

pub(crate) fn conversation_segments(ex: &[Exchange]) -> Vec<Segment<'_>> {
    interleaved(ex)
}

fn session_seeds(out: &mut Vec<Seed>) {
    let convs: Vec<(&str, Vec<Exchange>)> = vec![
        ("bootstrap-v12", bootstrap(12)),
        ("bootstrap-v1", bootstrap(1)),
        ("bootstrap-v13", bootstrap(13)),
        (
            "produce",
            vec![
                produce(3, 1, 3, Some("tx-1")),
                produce(9, -1, 4, None),
                produce(12, -1, 5, Some("forbidden-tx")),
                produce(13, -1, 6, None),
                produce(7, 0, 7, None),
            ],
        ),
        (
            "fetch",
            vec![
                fetch(4, 3, 30),
                fetch(11, 4, 30),
                fetch(13, 5, 30),
                fetch(16, 6, 30),
                fetch(18, 7, 30),
            ],
        ),
        ("groups", groups()),
        ("admin", admin()),
        ("sasl", sasl()),
    ];
    let chunks = [0u8, 7, 0, 3, 1];
    for (name, ex) in &convs {
        for (ci, sc) in SESSION_CONFIGS.iter().enumerate() {
            let c = u8::try_from(ci).unwrap_or(0);
            let chunk = chunks.get(ci).copied().unwrap_or(0);
            out.push(Seed {
                target: "session",
                name: format!("{name}-{}", sc.name),
                bytes: session_input(c, chunk, &interleaved(ex)),
            });
        }
        out.push(Seed {
            target: "session",
            name: format!("{name}-pipelined-enforce"),
            bytes: session_input(2, 0, &pipelined(ex)),
        });
    }
    let b = big();
    for c in [0u8, 2] {
        out.push(Seed {
            target: "session",
            name: format!(
                "big-{}",
                SESSION_CONFIGS.get(usize::from(c)).map_or("", |s| s.name)
            ),
            bytes: session_input(c, 0, &interleaved(&b)),
        });
    }
    // The stream ends mid-frame on both sides.
    let p = produce(9, -1, 3, None);
    let half = p.0.get(..p.0.len() / 2).unwrap_or(&[]);
    out.push(Seed {
        target: "session",
        name: "cut-short".into(),
        bytes: session_input(
            2,
            5,
            &[
                Segment {
                    dir: Direction::Request,
                    eos: true,
                    bytes: half,
                },
                Segment {
                    dir: Direction::Response,
                    eos: true,
                    bytes: b"\0\0\0\x10\0\0",
                },
            ],
        ),
    });
}

fn config_seeds(out: &mut Vec<Seed>) {
    let mut docs: Vec<(String, String)> = SESSION_CONFIGS
        .iter()
        .map(|c| (c.name.to_string(), c.json.to_string()))
        .collect();
    for (i, (r, _)) in REWRITERS.iter().enumerate() {
        docs.push((format!("rewrite-{i}"), format!(r#"{{"rewrite": {r}}}"#)));
    }
    let more = [
        ("empty", ""),
        ("object", "{}"),
        (
            "limits",
            r#"{"maxFrameBytes": 2048, "maxBufferedFrameBytes": 2048, "maxInflightRequests": 1, "onMalformed": "passthrough", "clampApiVersions": false}"#,
        ),
        (
            "metrics",
            r#"{"metrics": {"families": ["api", "produce", "fetch", "errors", "lag", "groups", "clients"], "maxTopics": 5, "maxClientIds": 1, "maxGroups": 100000, "maxLagPartitions": 7, "maxTopicIds": 9}}"#,
        ),
        (
            "access-log",
            r#"{"accessLog": {"enabled": true, "sampleRate": 0.001}}"#,
        ),
        (
            "policy-full",
            r#"{"policy": {"mode": "enforce", "defaultAction": "allow", "onDeny": "error", "unknownTopicIds": "deny", "hideUnauthorizedTopics": true, "rules": [{"name": "a", "action": "deny", "principals": ["spiffe://*"], "clientIds": ["c?"], "saslUsers": ["bob"], "sourceCidrs": ["10.0.0.0/8", "::1/128"], "operations": ["produce", "consume", "describe", "create", "delete", "alter"], "topics": ["t*"]}, {"name": "b", "action": "allow", "apiKeys": ["Produce", 1, "delete_topics"]}, {"name": "c", "action": "deny", "groups": ["g*"]}, {"name": "d", "action": "deny", "transactionalIds": ["x*"]}, {"name": "e", "action": "allow", "produce": {"acks": ["all", 0, 1], "maxBatchBytes": 1048576, "compression": ["none", "gzip", "snappy", "lz4", "zstd"]}}]}}"#,
        ),
        (
            "bad-path",
            r#"{"policy": {"rules": [{"name": "a", "action": "deny", "topics": ["a[b"]}]}}"#,
        ),
        ("bad-type", r#"{"maxFrameBytes": "big"}"#),
        ("array", "[1, 2]"),
        ("trailing", "{} {}"),
    ];
    docs.extend(more.iter().map(|(n, d)| (n.to_string(), d.to_string())));
    for (name, doc) in docs {
        out.push(Seed {
            target: "config",
            name,
            bytes: doc.into_bytes(),
        });
    }
}

fn rewrite_seeds(out: &mut Vec<Seed>) {
    let mut push = |name: String, api_key: i16, v: i16, body: Option<Vec<u8>>| {
        if let Some(body) = body {
            let r = u8::try_from(out.len() % REWRITERS.len()).unwrap_or(0);
            out.push(Seed {
                target: "rewrite",
                name,
                bytes: rewrite_input(api_key, v, r, &body),
            });
        }
    };
    for v in 0..=api::api_info(api::METADATA).map_or(0, |a| a.max_version) {
        let md = |v: i16| {
            crate::codec::kp::encode(
                &MetadataResponse::default()
                    .with_brokers(brokers_md(4))
                    .with_topics(vec![metadata_response::MetadataResponseTopic::default()
                        .with_name(Some(t("orders.a")))
                        .with_topic_id(if v >= 10 { id(1) } else { uuid::Uuid::nil() })]),
                v,
            )
            .ok()
        };
        push(format!("metadata-v{v}"), api::METADATA, v, md(v));
    }
    for v in 0..=6i16 {
        let fc = if v <= 3 {
            FindCoordinatorResponse::default()
                .with_node_id(2.into())
                .with_host(s("broker-2.internal"))
                .with_port(9092)
        } else {
            FindCoordinatorResponse::default().with_coordinators(
                (-1..3)
                    .map(|i| {
                        find_coordinator_response::Coordinator::default()
                            .with_key(s("g"))
                            .with_node_id(i.into())
                            .with_host(s(&format!("broker-{i}.internal")))
                            .with_port(9092)
                    })
                    .collect(),
            )
        };
        push(
            format!("find-coordinator-v{v}"),
            10,
            v,
            crate::codec::kp::encode(&fc, v).ok(),
        );
    }
    for v in 0..=2i16 {
        let dc = DescribeClusterResponse::default().with_brokers(
            (0..4)
                .map(|i| {
                    describe_cluster_response::DescribeClusterBroker::default()
                        .with_broker_id(i.into())
                        .with_host(s(&format!("broker-{i}.internal")))
                        .with_port(9092)
                })
                .collect(),
        );
        push(
            format!("describe-cluster-v{v}"),
            60,
            v,
            crate::codec::kp::encode(&dc, v).ok(),
        );
    }
    for v in 10..=13i16 {
        let body = produce(v, -1, 1, None)
            .1
            .and_then(|f| f.get(resp_body_at(0, v)..).map(<[u8]>::to_vec));
        push(format!("produce-v{v}"), api::PRODUCE, v, body);
    }
    for v in 16..=18i16 {
        let body = fetch(v, 1, 10)
            .1
            .and_then(|f| f.get(resp_body_at(1, v)..).map(<[u8]>::to_vec));
        push(format!("fetch-v{v}"), api::FETCH, v, body);
    }
}

/// Where a response frame's body starts: size, correlation id, and the header's empty
/// tagged-field section in flexible versions.
fn resp_body_at(api_key: i16, v: i16) -> usize {
    if api::api_info(api_key).is_some_and(|a| a.response_header_version(v) >= 1) {
        9
    } else {
        8
    }
}

/// Generator inputs: a few topics and partitions, errors, records.
pub(crate) const PATTERNS: &[&[u8]] = &[
    &[
        3, 1, 1, 2, 2, 0, 1, 3, 0, 5, 2, 1, 1, 0, 3, 7, 1, 9, 2, 2, 0, 4, 1, 0, 3, 3, 2, 1, 0, 2,
        1, 1, 6, 0, 2, 1, 3, 1, 0, 2, 4, 0, 1, 1, 2, 3, 0, 1, 2, 5, 1, 0, 0, 3, 2, 1, 4, 1, 2, 0,
    ],
    &[
        8, 0, 2, 3, 1, 4, 0, 2, 1, 3, 3, 29, 1, 2, 2, 0, 6, 1, 1, 3, 2, 0, 1, 2, 4, 1, 2, 0, 3, 3,
        1, 2, 1, 0, 5, 0, 3, 1, 2, 2, 1, 0, 4, 1, 0, 1, 2, 3, 1, 1, 2, 0, 0, 2,
    ],
];

fn differential_seeds(out: &mut Vec<Seed>) {
    for case in DIFF_CASES {
        let (lo, hi) = case.versions();
        let flex = api::api_info(case.api()).map_or(lo, |a| a.flexible_from);
        let mut vs = vec![lo, hi, flex.saturating_sub(1), flex, (lo + hi) / 2];
        vs.retain(|v| (lo..=hi).contains(v));
        vs.sort_unstable();
        vs.dedup();
        for v in vs {
            for (pi, p) in PATTERNS.iter().enumerate() {
                let chunk = if pi == 0 { 0 } else { 5 };
                out.push(Seed {
                    target: "differential",
                    name: format!("{case:?}-v{v}-encode-{pi}"),
                    bytes: differential_input(*case, v, chunk, true, p),
                });
                if let Some(body) = generate_body(*case, v, p) {
                    out.push(Seed {
                        target: "differential",
                        name: format!("{case:?}-v{v}-decode-{pi}"),
                        bytes: differential_input(*case, v, chunk, false, &body),
                    });
                }
            }
        }
    }
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    session_seeds(&mut out);
    config_seeds(&mut out);
    rewrite_seeds(&mut out);
    differential_seeds(&mut out);
    out
}
