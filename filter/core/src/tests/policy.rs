//! Policy enforcement through the session under Envoy's buffer semantics: a client request
//! stream goes in (whole, byte by byte, in 7-byte pieces, split at many points), a fake broker
//! answers exactly what was forwarded (decoded with kafka-protocol), and the client stream
//! that comes back is decoded with kafka-protocol and checked: denied parts carry the Kafka
//! error, allowed parts are what the broker said, correlation ids and order are intact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::type_complexity
)]

use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::config::Config;
use crate::observe::collect::FactSink;
use crate::policy::enforce::Note;
use crate::policy::Identity;
use crate::session::*;
use crate::testkit::*;
use crate::testkit::{client_header as hdr, config_json as cfg, topic_name as name};

#[derive(Default)]
struct Obs {
    notes: Vec<Note>,
    malformed: Vec<String>,
    ids: HashMap<[u8; 16], String>,
}
impl FactSink for Obs {}
impl Observer for Obs {
    fn policy_note(&mut self, n: &Note) {
        self.notes.push(n.clone());
    }
    fn malformed(&mut self, _d: Direction, m: &Malformed, _a: crate::config::MalformedAction) {
        self.malformed.push(m.to_string());
    }
    fn topic_name(&mut self, id: &[u8; 16]) -> Option<String> {
        self.ids.get(id).cloned()
    }
}

fn uuid(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

/// Client stream in (under `chunks`), broker in the middle, client responses out.
fn roundtrip(
    c: &Rc<Config>,
    id: &Identity,
    obs: &mut Obs,
    reqs: &[u8],
    req_chunks: Vec<&[u8]>,
    resp_chunk: usize,
) -> (Vec<u8>, Vec<(i16, i16, RequestHeader, Bytes)>, Vec<u8>) {
    let mut s = Session::new(c.clone());
    s.set_identity(id.clone());
    let p = pump(&mut s, Direction::Request, req_chunks, false, obs);
    assert!(!p.closed, "{:?}", obs.malformed);
    let _ = reqs;
    let (resps, seen) = broker(&p.out);
    let q = pump(
        &mut s,
        Direction::Response,
        resps.chunks(resp_chunk.max(1)),
        false,
        obs,
    );
    assert!(!q.closed, "{:?}", obs.malformed);
    assert_eq!(s.inflight(), 0);
    (p.out, seen, q.out)
}

const POLICY: &str = r#"{"policy": {"defaultAction": "deny", "rules": [
    {"name": "orders-producers", "action": "allow", "clientIds": ["orders-*"], "operations": ["produce"], "topics": ["orders.*"]},
    {"name": "readers", "action": "allow", "operations": ["consume", "describe"], "topics": ["orders.*", "public"]},
    {"name": "no-delete", "action": "deny", "apiKeys": ["DeleteTopics"]},
    {"name": "groups", "action": "allow", "groups": ["shop-*"]}
]}}"#;

fn produce_req(v: i16, acks: i16) -> ProduceRequest {
    let topic = |n: &'static str, id: u8, parts: &[i32]| {
        let t = produce_request::TopicProduceData::default().with_partition_data(
            parts
                .iter()
                .map(|p| {
                    produce_request::PartitionProduceData::default()
                        .with_index(*p)
                        .with_records(Some(Bytes::from_static(b"")))
                })
                .collect(),
        );
        if v >= 13 {
            t.with_topic_id(uuid(id))
        } else {
            t.with_name(name(n))
        }
    };
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(1000)
        .with_topic_data(vec![
            topic("orders.eu", 1, &[0, 1]),
            topic("payments", 2, &[0, 3]),
            topic("orders.us", 3, &[2]),
        ])
}

fn ids() -> HashMap<[u8; 16], String> {
    HashMap::from([
        ([1; 16], "orders.eu".to_string()),
        ([2; 16], "payments".to_string()),
        ([3; 16], "orders.us".to_string()),
    ])
}

#[test]
fn produce_denied_topics_get_topic_authorization_failed_others_land() {
    let c = cfg(POLICY);
    for v in 3..=13 {
        let reqs = encode_request(&hdr(0, v, 41, "orders-svc"), &produce_req(v, -1), v);
        let mut cuts = chunkings(&reqs);
        cuts.truncate(3 + 80);
        for chunks in cuts {
            let mut obs = Obs {
                ids: ids(),
                ..Obs::default()
            };
            let (_fwd, seen, back) =
                roundtrip(&c, &Identity::default(), &mut obs, &reqs, chunks, 5);
            // the broker wrote only the allowed topics: the denied one reached it neutralised
            assert_eq!(seen.len(), 1);
            assert_eq!(
                written(&seen, &ids()),
                vec![
                    ("orders.eu".into(), 0),
                    ("orders.eu".into(), 1),
                    ("orders.us".into(), 2)
                ],
                "v{v}"
            );
            assert_eq!(_fwd.len(), reqs.len(), "sizes never change");
            // the client sees every partition it sent, payments denied
            let fr = frames(&back);
            assert_eq!(fr.len(), 1);
            let (corr, resp): (i32, ProduceResponse) = decode_resp(fr[0], v);
            assert_eq!(corr, 41);
            let mut got: Vec<(String, i32, i16)> = Vec::new();
            for t in &resp.responses {
                let n = if v >= 13 {
                    ids()[t.topic_id.as_bytes()].clone()
                } else {
                    t.name.0.to_string()
                };
                for p in &t.partition_responses {
                    got.push((n.clone(), p.index, p.error_code));
                }
            }
            got.sort();
            assert_eq!(
                got,
                vec![
                    ("orders.eu".into(), 0, 0),
                    ("orders.eu".into(), 1, 0),
                    ("orders.us".into(), 2, 0),
                    ("payments".into(), 0, 29),
                    ("payments".into(), 3, 29),
                ],
                "v{v}"
            );
            assert!(obs
                .notes
                .iter()
                .any(|n| n.rule == "default" && n.what == "produce payments"));
        }
    }
}

#[test]
fn produce_from_an_unlisted_client_is_denied_by_default_and_acks0_just_drops() {
    let c = cfg(POLICY);
    let reqs = encode_request(&hdr(0, 9, 1, "other"), &produce_req(9, 0), 9);
    let mut s = Session::new(c);
    let mut obs = Obs::default();
    for chunks in chunkings(&reqs).into_iter().take(40) {
        let p = pump(&mut s, Direction::Request, chunks, false, &mut obs);
        let (resps, seen) = broker(&p.out);
        assert!(resps.is_empty());
        assert!(
            written(&seen, &ids()).is_empty(),
            "nothing of a fully denied acks=0 produce is written"
        );
        assert_eq!(s.inflight(), 0);
    }
}

#[test]
fn fetch_by_topic_id_denies_unknown_and_denied_ids_and_keeps_the_rest() {
    let c = cfg(POLICY);
    for v in 4..=18 {
        let topic = |n: &'static str, id: u8| {
            let t = fetch_request::FetchTopic::default().with_partitions(vec![
                fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(3),
            ]);
            if v >= 13 {
                t.with_topic_id(uuid(id))
            } else {
                t.with_topic(name(n))
            }
        };
        let req = FetchRequest::default().with_topics(vec![
            topic("orders.eu", 1),
            topic("payments", 2),
            topic("mystery", 9),
        ]);
        let reqs = encode_request(&hdr(1, v, 7, "reader"), &req, v);
        for chunks in [vec![&reqs[..]], reqs.chunks(1).collect()] {
            let mut obs = Obs {
                ids: ids(),
                ..Obs::default()
            };
            let (_f, seen, back) = roundtrip(&c, &Identity::default(), &mut obs, &reqs, chunks, 1);
            let r = FetchRequest::decode(&mut seen[0].3.clone(), v).unwrap();
            assert_eq!(r.topics.len(), 1, "v{v}: only orders.eu reaches the broker");
            let (corr, resp): (i32, FetchResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(corr, 7);
            let mut errs: Vec<i16> = resp
                .responses
                .iter()
                .map(|t| t.partitions[0].error_code)
                .collect();
            errs.sort();
            assert_eq!(errs, vec![0, 29, 29], "v{v}");
            if v >= 13 {
                assert!(obs.notes.iter().any(|n| n.rule == "unknownTopicIds"));
            }
        }
    }
}

#[test]
fn denied_group_and_denied_api_get_their_errors_through_a_probe() {
    let c = cfg(POLICY);
    for v in 0..=9 {
        let join = JoinGroupRequest::default()
            .with_group_id(StrBytes::from_static_str("other-group").into())
            .with_protocol_type(StrBytes::from_static_str("consumer"));
        let allowed = JoinGroupRequest::default()
            .with_group_id(StrBytes::from_static_str("shop-billing").into())
            .with_protocol_type(StrBytes::from_static_str("consumer"));
        let mut reqs = encode_request(&hdr(11, v, 5, "c"), &join, v);
        reqs.extend(encode_request(&hdr(11, v, 6, "c"), &allowed, v));
        let mut obs = Obs::default();
        let (_f, seen, back) = roundtrip(
            &c,
            &Identity::default(),
            &mut obs,
            &reqs,
            reqs.chunks(3).collect(),
            2,
        );
        assert_eq!(
            seen[0].0, 18,
            "the denied JoinGroup became an ApiVersions probe"
        );
        assert_eq!(seen[0].2.correlation_id, 5);
        assert_eq!(seen[1].0, 11);
        let fr = frames(&back);
        let (c1, r1): (i32, JoinGroupResponse) = decode_resp(fr[0], v);
        let (c2, r2): (i32, JoinGroupResponse) = decode_resp(fr[1], v);
        assert_eq!((c1, r1.error_code), (5, 30), "v{v}");
        assert_eq!((c2, r2.error_code, r2.generation_id), (6, 0, 1), "v{v}");
    }
    // DeleteTopics is denied by API key: nothing is deleted, every topic answers 31
    for v in 1..=6 {
        let req = if v >= 6 {
            DeleteTopicsRequest::default()
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name("orders.eu")))])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![name("orders.eu")])
        };
        let reqs = encode_request(&hdr(20, v, 9, "admin"), &req, v);
        let mut obs = Obs::default();
        let (_f, seen, back) = roundtrip(
            &c,
            &Identity::default(),
            &mut obs,
            &reqs,
            reqs.chunks(1).collect(),
            1,
        );
        let fwd = DeleteTopicsRequest::decode(&mut seen[0].3.clone(), v).unwrap();
        assert!(fwd.topics.is_empty() && fwd.topic_names.is_empty(), "v{v}");
        let (corr, resp): (i32, DeleteTopicsResponse) = decode_resp(frames(&back)[0], v);
        assert_eq!(corr, 9);
        assert_eq!(resp.responses.len(), 1);
        assert_eq!(resp.responses[0].error_code, 31, "v{v}");
    }
}

#[test]
fn pipelined_mix_keeps_order_and_correlation_ids() {
    let c = cfg(POLICY);
    let mut reqs = Vec::new();
    reqs.extend(encode_request(
        &hdr(3, 12, 1, "orders-a"),
        &MetadataRequest::default(),
        12,
    ));
    reqs.extend(encode_request(
        &hdr(0, 9, 2, "orders-a"),
        &produce_req(9, 1),
        9,
    ));
    reqs.extend(encode_request(
        &hdr(11, 5, 3, "orders-a"),
        &JoinGroupRequest::default().with_group_id(StrBytes::from_static_str("x").into()),
        5,
    ));
    reqs.extend(encode_request(
        &hdr(0, 9, 4, "orders-a"),
        &produce_req(9, 1),
        9,
    ));
    let mut cuts = chunkings(&reqs);
    cuts.truncate(3 + 200);
    for chunks in cuts {
        let mut obs = Obs::default();
        let (_f, seen, back) = roundtrip(&c, &Identity::default(), &mut obs, &reqs, chunks, 3);
        let keys: Vec<i16> = seen.iter().map(|s| s.0).collect();
        assert_eq!(keys, vec![3, 0, 18, 0]);
        let corrs: Vec<i32> = frames(&back)
            .iter()
            .map(|f| i32::from_be_bytes(f[..4].try_into().unwrap()))
            .collect();
        assert_eq!(corrs, vec![1, 2, 3, 4]);
        let (_, j): (i32, JoinGroupResponse) = decode_resp(frames(&back)[2], 5);
        assert_eq!(j.error_code, 30);
    }
}

#[test]
fn audit_mode_forwards_everything_and_notes_would_deny() {
    let c = cfg(&POLICY.replace(r#""defaultAction""#, r#""mode": "audit", "defaultAction""#));
    let reqs = encode_request(&hdr(0, 9, 1, "other"), &produce_req(9, 1), 9);
    let mut obs = Obs::default();
    let (fwd, _seen, back) = roundtrip(
        &c,
        &Identity::default(),
        &mut obs,
        &reqs,
        vec![&reqs[..]],
        100,
    );
    assert_eq!(fwd, reqs, "audit changes nothing");
    let (_, r): (i32, ProduceResponse) = decode_resp(frames(&back)[0], 9);
    assert!(r
        .responses
        .iter()
        .all(|t| t.partition_responses.iter().all(|p| p.error_code == 0)));
    assert_eq!(
        obs.notes
            .iter()
            .filter(|n| n.outcome == crate::policy::enforce::Outcome::WouldDeny)
            .count(),
        3
    );
}

#[test]
fn on_deny_close_closes_and_identity_selectors_apply() {
    let c = cfg(&POLICY.replace(
        r#""defaultAction""#,
        r#""onDeny": "close", "defaultAction""#,
    ));
    let reqs = encode_request(&hdr(0, 9, 1, "orders-a"), &produce_req(9, 1), 9);
    let mut s = Session::new(c);
    let mut obs = Obs::default();
    let p = pump(&mut s, Direction::Request, [&reqs[..]], false, &mut obs);
    assert!(
        p.closed && p.out.is_empty(),
        "nothing of a denied request gets out"
    );
    // a principal rule
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "mesh", "action": "allow", "principals": ["spiffe://cluster.local/ns/shop/sa/*"]}]}}"#);
    let mut obs = Obs::default();
    let id = Identity {
        principal: Some("spiffe://cluster.local/ns/shop/sa/orders".into()),
        ..Identity::default()
    };
    let (fwd, _, _) = roundtrip(&c, &id, &mut obs, &reqs, vec![&reqs[..]], 100);
    assert_eq!(fwd, reqs);
    let mut obs = Obs::default();
    let (fwd, _, _) = roundtrip(
        &c,
        &Identity::default(),
        &mut obs,
        &reqs,
        vec![&reqs[..]],
        100,
    );
    assert_ne!(fwd, reqs, "without the principal, everything is denied");
}

#[test]
fn a_frame_too_large_to_inspect_closes_instead_of_bypassing() {
    let c = cfg(&POLICY.replace(
        r#"{"policy""#,
        r#"{"maxBufferedFrameBytes": 1024, "policy""#,
    ));
    // Produce streams whatever its size; a Fetch request is held whole to be rewritten.
    let mut req = FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
        .with_topic(name("orders.eu"))
        .with_partitions(vec![fetch_request::FetchPartition::default(); 200])]);
    req.max_wait_ms = 1;
    let reqs = encode_request(&hdr(1, 12, 1, "orders-a"), &req, 12);
    assert!(reqs.len() > 1024);
    let mut s = Session::new(c);
    let mut obs = Obs::default();
    let p = pump(
        &mut s,
        Direction::Request,
        reqs.chunks(100),
        false,
        &mut obs,
    );
    assert!(p.closed);
    assert!(
        obs.malformed[0].contains("maxBufferedFrameBytes"),
        "{:?}",
        obs.malformed
    );
}

#[test]
fn produce_constraints_acks_batch_size_compression_and_transactional_ids() {
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "tx", "action": "allow", "transactionalIds": ["tx-*"]},
        {"name": "strict", "action": "allow", "topics": ["strict"],
         "produce": {"acks": ["all"], "maxBatchBytes": 300, "compression": ["none", "zstd"]}}]}}"#);
    let req = |acks: i16, txn: Option<&'static str>| {
        ProduceRequest::default()
            .with_acks(acks)
            .with_transactional_id(txn.map(|t| StrBytes::from_static_str(t).into()))
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name("strict"))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(record_batch(0, 2, 100, 0)))),
                    produce_request::PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(Bytes::from(record_batch(0, 2, 400, 0)))),
                    produce_request::PartitionProduceData::default()
                        .with_index(2)
                        .with_records(Some(Bytes::from(record_batch(0, 2, 10, 1)))),
                    produce_request::PartitionProduceData::default()
                        .with_index(3)
                        .with_records(Some(Bytes::from(record_batch(0, 2, 10, 4)))),
                ])])
    };
    let codes = |reqs: &[u8], obs: &mut Obs| -> Vec<(i32, i16)> {
        let (_f, _seen, back) = roundtrip(
            &c,
            &Identity::default(),
            obs,
            reqs,
            reqs.chunks(1).collect(),
            4,
        );
        let (_, r): (i32, ProduceResponse) = decode_resp(frames(&back)[0], 9);
        let mut v: Vec<(i32, i16)> = r
            .responses
            .iter()
            .flat_map(|t| {
                t.partition_responses
                    .iter()
                    .map(|p| (p.index, p.error_code))
            })
            .collect();
        v.sort();
        v
    };
    let mut obs = Obs::default();
    let reqs = encode_request(&hdr(0, 9, 1, "p"), &req(-1, None), 9);
    assert_eq!(
        codes(&reqs, &mut obs),
        vec![(0, 0), (1, 18), (2, 76), (3, 0)]
    );
    let reqs = encode_request(&hdr(0, 9, 1, "p"), &req(1, None), 9);
    assert_eq!(
        codes(&reqs, &mut obs),
        vec![(0, 21), (1, 21), (2, 21), (3, 21)]
    );
    let reqs = encode_request(&hdr(0, 9, 1, "p"), &req(-1, Some("rogue")), 9);
    assert_eq!(
        codes(&reqs, &mut obs),
        vec![(0, 53), (1, 53), (2, 53), (3, 53)]
    );
    let reqs = encode_request(&hdr(0, 9, 1, "p"), &req(-1, Some("tx-1")), 9);
    assert_eq!(
        codes(&reqs, &mut obs),
        vec![(0, 0), (1, 18), (2, 76), (3, 0)]
    );
    assert!(
        obs.notes
            .iter()
            .any(|n| n.what.contains("batch of 461 bytes")),
        "{:?}",
        obs.notes
    );
}

#[test]
fn sasl_plain_username_counts_only_once_the_broker_accepts_it() {
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "alice", "action": "allow", "saslUsers": ["alice"], "operations": ["produce"]}]}}"#);
    for (password, allowed) in [("secret", true), ("wrong", false)] {
        for v in 0..=2 {
            let mut reqs = encode_request(
                &hdr(17, 1, 1, "p"),
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
                1,
            );
            let auth = format!("\0alice\0{password}");
            reqs.extend(encode_request(
                &hdr(36, v, 2, "p"),
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(auth.into_bytes())),
                v,
            ));
            let mut s = Session::new(c.clone());
            let mut obs = Obs::default();
            let p = pump(&mut s, Direction::Request, reqs.chunks(1), false, &mut obs);
            let (resps, _) = broker(&p.out);
            pump(
                &mut s,
                Direction::Response,
                resps.chunks(1),
                false,
                &mut obs,
            );
            let produce = encode_request(&hdr(0, 9, 3, "p"), &produce_req(9, 1), 9);
            let p = pump(&mut s, Direction::Request, [&produce[..]], false, &mut obs);
            assert_eq!(
                p.out == produce,
                allowed,
                "password {password} v{v}: {:?}",
                obs.notes
            );
        }
    }
}

#[test]
fn list_offsets_offset_commit_and_offset_fetch_check_topics_and_groups() {
    let c = cfg(POLICY);
    for v in 1..=10 {
        let req = ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name("orders.eu"))
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name("payments"))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default().with_partition_index(4)
                ]),
        ]);
        let reqs = encode_request(&hdr(2, v, 8, "r"), &req, v);
        let mut obs = Obs::default();
        let (_f, seen, back) = roundtrip(
            &c,
            &Identity::default(),
            &mut obs,
            &reqs,
            reqs.chunks(1).collect(),
            1,
        );
        assert_eq!(
            ListOffsetsRequest::decode(&mut seen[0].3.clone(), v)
                .unwrap()
                .topics
                .len(),
            1
        );
        let (corr, r): (i32, ListOffsetsResponse) = decode_resp(frames(&back)[0], v);
        assert_eq!(corr, 8);
        let mut got: Vec<(String, i16, i64)> = r
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.0.to_string(),
                    t.partitions[0].error_code,
                    t.partitions[0].offset,
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("orders.eu".into(), 0, 5), ("payments".into(), 29, -1)],
            "v{v}"
        );
    }
    for v in 2..=9 {
        for (group, want) in [("shop-a", vec![0i16, 29]), ("rogue", vec![30, 30])] {
            let req = OffsetCommitRequest::default()
                .with_group_id(StrBytes::from_static_str(group).into())
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(name("orders.eu"))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default(),
                        ]),
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(name("payments"))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default(),
                        ]),
                ]);
            let reqs = encode_request(&hdr(8, v, 3, "r"), &req, v);
            let mut obs = Obs::default();
            let (_f, _seen, back) = roundtrip(
                &c,
                &Identity::default(),
                &mut obs,
                &reqs,
                vec![&reqs[..]],
                2,
            );
            let (_, r): (i32, OffsetCommitResponse) = decode_resp(frames(&back)[0], v);
            let mut got: Vec<(String, i16)> = r
                .topics
                .iter()
                .map(|t| (t.name.0.to_string(), t.partitions[0].error_code))
                .collect();
            got.sort();
            assert_eq!(
                got.iter().map(|g| g.1).collect::<Vec<_>>(),
                want,
                "v{v} {group}"
            );
        }
    }
    for v in 1..=7 {
        let req = OffsetFetchRequest::default()
            .with_group_id(StrBytes::from_static_str("shop-a").into())
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(name("payments"))
                    .with_partition_indexes(vec![0, 1]),
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(name("public"))
                    .with_partition_indexes(vec![2]),
            ]));
        let reqs = encode_request(&hdr(9, v, 4, "r"), &req, v);
        let mut obs = Obs::default();
        let (_f, _seen, back) = roundtrip(
            &c,
            &Identity::default(),
            &mut obs,
            &reqs,
            reqs.chunks(2).collect(),
            3,
        );
        let (_, r): (i32, OffsetFetchResponse) = decode_resp(frames(&back)[0], v);
        let mut got: Vec<(String, i32, i16, i64)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        p.error_code,
                        p.committed_offset,
                    )
                })
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("payments".into(), 0, 29, -1),
                ("payments".into(), 1, 29, -1),
                ("public".into(), 2, 0, 7)
            ],
            "v{v}"
        );
    }
}

#[test]
fn under_a_policy_apiversions_caps_the_versions_the_policy_cannot_rewrite() {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    let c = cfg(POLICY);
    let av = ApiVersionsResponse::default().with_api_keys(vec![
        ApiVersion::default().with_api_key(9).with_max_version(10),
        ApiVersion::default().with_api_key(8).with_max_version(10),
    ]);
    let mut s = Session::new(c);
    let mut obs = Obs::default();
    let req = encode_request(&hdr(18, 3, 1, "c"), &ApiVersionsRequest::default(), 3);
    pump(&mut s, Direction::Request, [&req[..]], false, &mut obs);
    let resp = encode_response(1, &av, 3);
    let p = pump(&mut s, Direction::Response, [&resp[..]], false, &mut obs);
    let (_, r): (i32, ApiVersionsResponse) = decode_resp(frames(&p.out)[0], 3);
    let maxes: Vec<(i16, i16)> = r
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.max_version))
        .collect();
    assert_eq!(maxes, vec![(9, 9), (8, 9)]);
}

#[test]
fn metadata_hides_or_fails_topics_the_client_may_not_describe() {
    for (hide, all_want) in [
        (true, vec![("orders.eu", 0), ("public", 0)]),
        (
            false,
            vec![("orders.eu", 0), ("payments", 29), ("public", 0)],
        ),
    ] {
        let c = cfg(&POLICY.replace(
            r#""defaultAction""#,
            &format!(r#""hideUnauthorizedTopics": {hide}, "defaultAction""#),
        ));
        for v in 1..=13 {
            // all topics (null list; v1-3 have no null, an empty list meant all only in v0)
            if v >= 1 {
                let reqs = encode_request(
                    &hdr(3, v, 1, "r"),
                    &MetadataRequest::default().with_topics(None),
                    v,
                );
                let mut obs = Obs::default();
                let (_f, _seen, back) = roundtrip(
                    &c,
                    &Identity::default(),
                    &mut obs,
                    &reqs,
                    reqs.chunks(3).collect(),
                    7,
                );
                let (_, r): (i32, MetadataResponse) = decode_resp(frames(&back)[0], v);
                let got: Vec<(String, i16)> = r
                    .topics
                    .iter()
                    .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
                    .collect();
                let want: Vec<(String, i16)> =
                    all_want.iter().map(|(n, e)| (n.to_string(), *e)).collect();
                assert_eq!(got, want, "v{v} hide={hide}");
            }
            // named topics: the denied one never reaches the broker
            let req = MetadataRequest::default()
                .with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(name("payments"))),
                    metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(name("public"))),
                ]))
                .with_allow_auto_topic_creation(true);
            let reqs = encode_request(&hdr(3, v, 2, "r"), &req, v);
            let mut obs = Obs::default();
            let (_f, seen, back) = roundtrip(
                &c,
                &Identity::default(),
                &mut obs,
                &reqs,
                reqs.chunks(1).collect(),
                1,
            );
            let fwd = MetadataRequest::decode(&mut seen[0].3.clone(), v).unwrap();
            assert_eq!(fwd.topics.unwrap().len(), 1, "v{v}");
            let (corr, r): (i32, MetadataResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(corr, 2);
            let mut got: Vec<(String, i16)> = r
                .topics
                .iter()
                .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
                .collect();
            got.sort();
            assert_eq!(
                got,
                vec![("payments".into(), 29), ("public".into(), 0)],
                "v{v}"
            );
        }
    }
}

const ADMIN: &str = r#"{"policy": {"defaultAction": "deny", "rules": [
    {"name": "team-create", "action": "allow", "operations": ["create", "alter"], "topics": ["team.*"]}
]}}"#;

fn admin_errors(c: &Rc<Config>, key: i16, v: i16, reqs: &[u8]) -> Vec<(String, i16)> {
    let mut obs = Obs::default();
    let (_f, seen, back) = roundtrip(
        c,
        &Identity::default(),
        &mut obs,
        reqs,
        reqs.chunks(1).collect(),
        2,
    );
    assert_eq!(seen.len(), 1);
    let f = frames(&back)[0];
    let mut got: Vec<(String, i16)> = match key {
        19 => decode_resp::<CreateTopicsResponse>(f, v)
            .1
            .topics
            .iter()
            .map(|t| (t.name.0.to_string(), t.error_code))
            .collect(),
        37 => decode_resp::<CreatePartitionsResponse>(f, v)
            .1
            .results
            .iter()
            .map(|t| (t.name.0.to_string(), t.error_code))
            .collect(),
        21 => decode_resp::<DeleteRecordsResponse>(f, v)
            .1
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.0.to_string(),
                    t.partitions.first().map_or(0, |p| p.error_code),
                )
            })
            .collect(),
        33 => decode_resp::<AlterConfigsResponse>(f, v)
            .1
            .responses
            .iter()
            .map(|t| (t.resource_name.to_string(), t.error_code))
            .collect(),
        _ => decode_resp::<IncrementalAlterConfigsResponse>(f, v)
            .1
            .responses
            .iter()
            .map(|t| (t.resource_name.to_string(), t.error_code))
            .collect(),
    };
    got.sort();
    got
}

#[test]
fn create_and_alter_are_checked_per_topic() {
    let c = cfg(ADMIN);
    let want = vec![("other".to_string(), 29), ("team.a".to_string(), 0)];
    for v in 2..=7 {
        let req = CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default()
                .with_name(name("team.a"))
                .with_num_partitions(1),
            create_topics_request::CreatableTopic::default()
                .with_name(name("other"))
                .with_num_partitions(1),
        ]);
        assert_eq!(
            admin_errors(&c, 19, v, &encode_request(&hdr(19, v, 1, "a"), &req, v)),
            want,
            "create v{v}"
        );
    }
    for v in 0..=3 {
        let req = CreatePartitionsRequest::default().with_topics(vec![
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name("team.a"))
                .with_count(3),
            create_partitions_request::CreatePartitionsTopic::default()
                .with_name(name("other"))
                .with_count(3),
        ]);
        assert_eq!(
            admin_errors(&c, 37, v, &encode_request(&hdr(37, v, 1, "a"), &req, v)),
            want,
            "partitions v{v}"
        );
    }
    for v in 0..=2 {
        let req = DeleteRecordsRequest::default().with_topics(vec![
            delete_records_request::DeleteRecordsTopic::default().with_name(name("team.a")),
            delete_records_request::DeleteRecordsTopic::default()
                .with_name(name("other"))
                .with_partitions(vec![
                    delete_records_request::DeleteRecordsPartition::default(),
                ]),
        ]);
        assert_eq!(
            admin_errors(&c, 21, v, &encode_request(&hdr(21, v, 1, "a"), &req, v)),
            want,
            "records v{v}"
        );
    }
    let res = |n: &'static str, ty: i8| (StrBytes::from_static_str(n), ty);
    for v in 0..=2 {
        let req = AlterConfigsRequest::default().with_resources(
            [res("team.a", 2), res("other", 2), res("1", 4)]
                .into_iter()
                .map(|(n, t)| {
                    alter_configs_request::AlterConfigsResource::default()
                        .with_resource_name(n)
                        .with_resource_type(t)
                })
                .collect(),
        );
        // A broker resource is the cluster's: refused unless an apiKeys rule allows it.
        let mut w = want.clone();
        w.insert(0, ("1".to_string(), 31));
        assert_eq!(
            admin_errors(&c, 33, v, &encode_request(&hdr(33, v, 1, "a"), &req, v)),
            w,
            "alter v{v}"
        );
        let ops = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
            {"name": "team-create", "action": "allow", "operations": ["create", "alter"], "topics": ["team.*"]},
            {"name": "ops", "action": "allow", "clientIds": ["a"], "apiKeys": ["AlterConfigs"]}
        ]}}"#);
        let got = admin_errors(&ops, 33, v, &encode_request(&hdr(33, v, 1, "a"), &req, v));
        assert!(
            got.contains(&("1".to_string(), 0)),
            "alter v{v} allowed: {got:?}"
        );
    }
    // Group resources (KIP-848 group configs, type 32) are checked as the group; broker and
    // client-metrics resources as the cluster's.
    for v in 0..=1 {
        let req = IncrementalAlterConfigsRequest::default().with_resources(
            [res("grp", 32), res("1", 4), res("m", 16)]
                .into_iter()
                .map(|(n, t)| {
                    incremental_alter_configs_request::AlterConfigsResource::default()
                        .with_resource_name(n)
                        .with_resource_type(t)
                })
                .collect(),
        );
        let got = admin_errors(&c, 44, v, &encode_request(&hdr(44, v, 1, "a"), &req, v));
        assert_eq!(
            got,
            vec![("1".into(), 31), ("grp".into(), 30), ("m".into(), 31)],
            "incremental v{v}"
        );
    }
    for v in 0..=1 {
        let req = IncrementalAlterConfigsRequest::default().with_resources(
            [res("team.a", 2), res("other", 2)]
                .into_iter()
                .map(|(n, t)| {
                    incremental_alter_configs_request::AlterConfigsResource::default()
                        .with_resource_name(n)
                        .with_resource_type(t)
                })
                .collect(),
        );
        assert_eq!(
            admin_errors(&c, 44, v, &encode_request(&hdr(44, v, 1, "a"), &req, v)),
            want,
            "incremental v{v}"
        );
    }
}

#[test]
fn a_retried_denied_request_is_denied_again() {
    let c = cfg(POLICY);
    let one = encode_request(&hdr(0, 9, 1, "orders-a"), &produce_req(9, 1), 9);
    let mut reqs = one.clone();
    reqs.extend(encode_request(
        &hdr(0, 9, 2, "orders-a"),
        &produce_req(9, 1),
        9,
    ));
    let mut obs = Obs::default();
    let (_f, seen, back) = roundtrip(
        &c,
        &Identity::default(),
        &mut obs,
        &reqs,
        reqs.chunks(5).collect(),
        9,
    );
    assert_eq!(seen.len(), 2);
    for (i, f) in frames(&back).iter().enumerate() {
        let (corr, r): (i32, ProduceResponse) = decode_resp(f, 9);
        assert_eq!(corr, i as i32 + 1);
        assert!(r.responses.iter().any(|t| t.name.0.as_str() == "payments"
            && t.partition_responses.iter().all(|p| p.error_code == 29)));
    }
}

#[test]
fn acl_admin_apis_and_init_producer_id_answer_with_authorization_errors() {
    let c = cfg(r#"{"policy": {"rules": [
        {"name": "no-acls", "action": "deny", "apiKeys": ["CreateAcls", "DeleteAcls", "DescribeAcls"]},
        {"name": "tx", "action": "allow", "transactionalIds": ["tx-*"]},
        {"name": "no-other-tx", "action": "deny", "transactionalIds": ["*"]}]}}"#);
    for v in 1..=3 {
        let creation = create_acls_request::AclCreation::default()
            .with_resource_name(StrBytes::from_static_str("t"))
            .with_principal(StrBytes::from_static_str("User:x"))
            .with_host(StrBytes::from_static_str("*"));
        let reqs = encode_request(
            &hdr(30, v, 11, "a"),
            &CreateAclsRequest::default().with_creations(vec![
                creation.clone(),
                creation.clone(),
                creation,
            ]),
            v,
        );
        let mut obs = Obs::default();
        let (_f, seen, back) = roundtrip(
            &c,
            &Identity::default(),
            &mut obs,
            &reqs,
            reqs.chunks(1).collect(),
            1,
        );
        assert_eq!(seen[0].0, 18);
        let (corr, r): (i32, CreateAclsResponse) = decode_resp(frames(&back)[0], v);
        assert_eq!(corr, 11);
        assert_eq!(
            r.results.iter().map(|x| x.error_code).collect::<Vec<_>>(),
            vec![31, 31, 31],
            "v{v}"
        );
        let reqs = encode_request(
            &hdr(31, v, 12, "a"),
            &DeleteAclsRequest::default()
                .with_filters(vec![delete_acls_request::DeleteAclsFilter::default()]),
            v,
        );
        let (_f, _seen, back) = roundtrip(
            &c,
            &Identity::default(),
            &mut obs,
            &reqs,
            vec![&reqs[..]],
            3,
        );
        let (_, r): (i32, DeleteAclsResponse) = decode_resp(frames(&back)[0], v);
        assert_eq!(r.filter_results.len(), 1);
        assert_eq!(r.filter_results[0].error_code, 31);
        let reqs = encode_request(&hdr(29, v, 13, "a"), &DescribeAclsRequest::default(), v);
        let (_f, _seen, back) = roundtrip(
            &c,
            &Identity::default(),
            &mut obs,
            &reqs,
            vec![&reqs[..]],
            3,
        );
        let (_, r): (i32, DescribeAclsResponse) = decode_resp(frames(&back)[0], v);
        assert_eq!(r.error_code, 31);
    }
    for v in 0..=5 {
        for (txn, want) in [("tx-1", None), ("rogue", Some(53))] {
            let reqs = encode_request(
                &hdr(22, v, 14, "p"),
                &InitProducerIdRequest::default()
                    .with_transactional_id(Some(StrBytes::from_static_str(txn).into())),
                v,
            );
            let mut obs = Obs::default();
            let mut s = Session::new(c.clone());
            let p = pump(&mut s, Direction::Request, reqs.chunks(2), false, &mut obs);
            match want {
                None => assert_eq!(p.out, reqs, "v{v}"),
                Some(code) => {
                    assert_eq!(
                        i16::from_be_bytes([p.out[4], p.out[5]]),
                        18,
                        "v{v}: a probe"
                    );
                    let probe_answer = encode_response(14, &ApiVersionsResponse::default(), 0);
                    let q = pump(
                        &mut s,
                        Direction::Response,
                        [&probe_answer[..]],
                        false,
                        &mut obs,
                    );
                    let (_, r): (i32, InitProducerIdResponse) = decode_resp(frames(&q.out)[0], v);
                    assert_eq!(r.error_code, code, "v{v}");
                }
            }
        }
    }
}

/// A Fetch request of about 6 KiB that the policy rewrites (payments is denied): held whole.
fn big_fetch(corr: i32) -> Vec<u8> {
    let req = FetchRequest::default().with_topics(vec![
        fetch_request::FetchTopic::default()
            .with_topic(name("orders.eu"))
            .with_partitions(
                (0..200)
                    .map(|p| fetch_request::FetchPartition::default().with_partition(p))
                    .collect(),
            ),
        fetch_request::FetchTopic::default()
            .with_topic(name("payments"))
            .with_partitions(vec![fetch_request::FetchPartition::default()]),
    ]);
    encode_request(&hdr(1, 12, corr, "reader"), &req, 12)
}

#[test]
fn pipelined_held_requests_never_wait_for_the_next_one() {
    // librdkafka pipelines: the buffer may never end on a frame boundary. Every held request
    // must go on in the callback that completes it, whatever follows it.
    let c = cfg(POLICY);
    let reqs: Vec<Vec<u8>> = (1..=6).map(big_fetch).collect();
    for lead in [1, 3, 4, 40, 500, 5000] {
        let mut s = Session::new(c.clone());
        let mut obs = Obs::default();
        let chunks = pipelined_cuts(&reqs, lead);
        let (p, steps) = pump_traced(
            &mut s,
            Direction::Request,
            chunks.iter().map(|c| &c[..]),
            &mut obs,
        );
        assert!(!p.closed, "{:?}", obs.malformed);
        for (k, st) in steps.iter().enumerate() {
            let sent = frames(&p.out[..st.out]);
            assert_eq!(sent.len(), k + 1, "lead {lead}: after callback {k}");
            if st.verdict == Verdict::Pause {
                assert!(st.buffered <= 4096, "paused on {} bytes", st.buffered);
            }
        }
        let (resps, seen) = broker(&p.out);
        assert_eq!(seen.len(), 6);
        for (_, _, h, body) in &seen {
            let r = FetchRequest::decode(&mut body.clone(), 12).unwrap();
            assert_eq!(r.topics.len(), 1, "corr {}", h.correlation_id);
        }
        // and the answers, pipelined the same way, come back with the denial spliced in
        let answers: Vec<Vec<u8>> = {
            let mut v = Vec::new();
            let mut at = 0;
            while at < resps.len() {
                let n = i32::from_be_bytes(resps[at..at + 4].try_into().unwrap()) as usize;
                v.push(resps[at..at + 4 + n].to_vec());
                at += 4 + n;
            }
            v
        };
        let chunks = pipelined_cuts(&answers, lead.min(7));
        let (q, _) = pump_traced(
            &mut s,
            Direction::Response,
            chunks.iter().map(|c| &c[..]),
            &mut obs,
        );
        assert!(!q.closed, "{:?}", obs.malformed);
        let back = frames(&q.out);
        assert_eq!(back.len(), 6);
        for f in back {
            let (_, r): (i32, FetchResponse) = decode_resp(f, 12);
            assert_eq!(r.responses.len(), 2);
        }
        assert_eq!(s.inflight(), 0);
    }
}

#[test]
fn pipelined_probes_and_their_answers_never_wait_for_the_next_one() {
    // Heartbeats for a denied group become ApiVersions probes; their answers are replaced.
    let c = cfg(POLICY);
    let hb = |corr, member: usize| {
        encode_request(
            &hdr(12, 4, corr, "reader"),
            &HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("intruders")))
                .with_member_id(StrBytes::from_string("m".repeat(member))),
            4,
        )
    };
    for member in [300, 6000] {
        let reqs: Vec<Vec<u8>> = (1..=5).map(|c| hb(c, member)).collect();
        for lead in [1, 5, 100] {
            let mut s = Session::new(c.clone());
            let mut obs = Obs::default();
            let chunks = pipelined_cuts(&reqs, lead);
            let (p, steps) = pump_traced(
                &mut s,
                Direction::Request,
                chunks.iter().map(|c| &c[..]),
                &mut obs,
            );
            assert!(!p.closed, "{:?}", obs.malformed);
            for (k, st) in steps.iter().enumerate() {
                // a small buffer may wait (at most 4 KiB, far below any Envoy buffer limit);
                // a larger one never holds a finished request back
                if st.verdict == Verdict::Pause {
                    assert!(st.buffered <= 4096, "paused on {} bytes", st.buffered);
                } else {
                    assert_eq!(
                        frames(&p.out[..st.out]).len(),
                        k + 1,
                        "lead {lead} callback {k}"
                    );
                }
            }
            let (resps, seen) = broker(&p.out);
            assert!(
                seen.iter().all(|(k, ..)| *k == 18),
                "only probes reach the broker"
            );
            let q = pump(
                &mut s,
                Direction::Response,
                resps.chunks(3),
                false,
                &mut obs,
            );
            let back = frames(&q.out);
            assert_eq!(back.len(), 5);
            for f in back {
                let (_, r): (i32, HeartbeatResponse) = decode_resp(f, 4);
                assert_eq!(r.error_code, 30);
            }
        }
    }
}

/// A Produce request of about `parts` x `batch` bytes over the given topics.
fn big_produce(corr: i32, topics: &[&'static str], parts: i32, batch_bytes: usize) -> Vec<u8> {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(1000)
        .with_topic_data(
            topics
                .iter()
                .map(|t| {
                    produce_request::TopicProduceData::default()
                        .with_name(name(t))
                        .with_partition_data(
                            (0..parts)
                                .map(|p| {
                                    produce_request::PartitionProduceData::default()
                                        .with_index(p)
                                        .with_records(Some(Bytes::from(record_batch(
                                            0,
                                            10,
                                            batch_bytes - 61,
                                            0,
                                        ))))
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    encode_request(&hdr(0, 9, corr, "orders-a"), &req, 9)
}

#[test]
fn megabyte_produce_requests_stream_under_a_policy_pipelined() {
    // librdkafka's defaults: ~1 MB Produce requests, several in flight. Under a policy
    // that denies nothing here, and one that denies a topic inside the same requests.
    let c = cfg(POLICY);
    let allowed = ["orders.eu", "orders.us", "orders.apac"];
    let mixed = ["orders.eu", "payments", "orders.us"];
    for topics in [allowed, mixed] {
        let reqs: Vec<Vec<u8>> = (1..=3)
            .map(|corr| big_produce(corr, &topics, 3, 110_000))
            .collect();
        let total: usize = reqs.iter().map(Vec::len).sum();
        assert!(reqs[0].len() > 900_000);
        let stream = reqs.concat();
        for chunk in [16 * 1024, 64 * 1024, 1 << 20] {
            let mut s = Session::new(c.clone());
            let mut obs = Obs::default();
            let (p, steps) =
                pump_traced(&mut s, Direction::Request, stream.chunks(chunk), &mut obs);
            assert!(!p.closed, "{:?}", obs.malformed);
            assert_eq!(p.out.len(), total, "sizes never change");
            for st in &steps {
                if st.verdict == Verdict::Pause {
                    assert!(st.buffered <= 4096);
                }
            }
            let (resps, seen) = broker(&p.out);
            let w = written(&seen, &HashMap::new());
            let want: Vec<(String, i32)> = topics
                .iter()
                .filter(|t| t.starts_with("orders"))
                .flat_map(|t| (0..3).map(move |p| (t.to_string(), p)))
                .flat_map(|x| std::iter::repeat_n(x, 3))
                .collect::<Vec<_>>();
            let mut want = want;
            want.sort();
            assert_eq!(w, want, "chunk {chunk}");
            assert_eq!(tansu_written(&seen), want, "tansu: chunk {chunk}");
            let copied_pct = p.copied as f64 * 100.0 / total as f64;
            if topics == allowed {
                assert!(
                    copied_pct < 0.5,
                    "copied {copied_pct:.3}% with nothing denied"
                );
            } else {
                // each denial edits in place (the name, then each batch's producer id): the
                // bytes in front of an edit in its callback are copied once, never more
                let edits = 3 * (1 + 3);
                assert!(p.copied <= edits * chunk + 4096, "copied {}", p.copied);
            }
            let q = pump(
                &mut s,
                Direction::Response,
                resps.chunks(5),
                false,
                &mut obs,
            );
            for f in frames(&q.out) {
                let (_, r): (i32, ProduceResponse) = decode_resp(f, 9);
                for t in &r.responses {
                    for pr in &t.partition_responses {
                        let code = if t.name.0.starts_with("orders") {
                            0
                        } else {
                            29
                        };
                        assert_eq!(pr.error_code, code, "{}", t.name.0.as_str());
                    }
                }
                let names: Vec<&str> = r.responses.iter().map(|t| t.name.0.as_str()).collect();
                assert_eq!(names, topics.to_vec());
            }
            assert_eq!(s.inflight(), 0);
        }
    }
}

#[test]
fn an_all_topics_metadata_answer_too_large_to_hold_streams_with_denied_topics_answered_in_place() {
    for hide in [true, false] {
        let c = cfg(&POLICY.replace(
            r#"{"policy": {"defaultAction""#,
            &format!(
                r#"{{"maxBufferedFrameBytes": 4096, "policy": {{"hideUnauthorizedTopics": {hide}, "defaultAction""#
            ),
        ));
        for v in [1i16, 9, 12] {
            let topic = |n: String, id: u8| {
                metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(n))))
                    .with_topic_id(uuid(id))
                    .with_partitions(vec![metadata_response::MetadataResponsePartition::default(
                    )
                    .with_leader_id(1.into())
                    .with_replica_nodes(vec![1.into()])])
            };
            let resp = MetadataResponse::default().with_topics(
                (0..300)
                    .map(|i| {
                        if i % 3 == 0 {
                            topic(format!("payments-{i:03}"), 2)
                        } else {
                            topic(format!("orders.eu-{i:03}"), 1)
                        }
                    })
                    .collect(),
            );
            let reqs = encode_request(
                &hdr(3, v, 5, "r"),
                &MetadataRequest::default().with_topics(None),
                v,
            );
            let answer = encode_response(5, &resp, v);
            assert!(answer.len() > 4096);
            for chunk in [1, 7, 1000, 1 << 20] {
                let mut s = Session::new(c.clone());
                let mut obs = Obs::default();
                let p = pump(&mut s, Direction::Request, [&reqs[..]], false, &mut obs);
                assert!(!p.closed);
                let q = pump(
                    &mut s,
                    Direction::Response,
                    answer.chunks(chunk),
                    false,
                    &mut obs,
                );
                assert!(!q.closed, "{:?}", obs.malformed);
                assert_eq!(q.out.len(), answer.len(), "streamed: same size");
                let (_, r): (i32, MetadataResponse) = decode_resp(frames(&q.out)[0], v);
                for (i, t) in r.topics.iter().enumerate() {
                    let n = t.name.as_ref().unwrap().0.to_string();
                    if i % 3 == 0 {
                        assert_eq!(t.error_code, 29, "v{v} {n}");
                        if hide {
                            assert!(!n.contains("payments"), "v{v}: {n} leaked");
                            assert!(n.bytes().all(|b| !b.is_ascii_alphanumeric()));
                            if v >= 10 {
                                assert!(t.topic_id.is_nil());
                            }
                        } else {
                            assert_eq!(n, format!("payments-{i:03}"));
                        }
                    } else {
                        assert_eq!(t.error_code, 0);
                        assert_eq!(n, format!("orders.eu-{i:03}"));
                    }
                }
                if hide {
                    let text = String::from_utf8_lossy(&q.out);
                    assert!(
                        !text.contains("payments"),
                        "v{v}: a denied name reached the client"
                    );
                }
            }
        }
    }
}

/// Number of whole frames in the first `n` bytes of `stream`.
fn whole_frames(stream: &[u8], n: usize) -> usize {
    let (mut at, mut k) = (0, 0);
    while at + 4 <= n {
        let len = 4 + i32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        if at + len > n {
            break;
        }
        at += len;
        k += 1;
    }
    k
}

#[test]
fn every_held_kind_pipelined_under_every_chunking() {
    // One frame of every kind the filter holds whole, pipelined, both directions: the
    // ApiVersions clamp, Fetch / Metadata / ListOffsets / OffsetCommit / DeleteTopics request
    // rewrites and their response splices, a probe and its replaced answer, and the address
    // rewrite of the Metadata answer. Whatever the chunking: the same bytes come out, and a
    // callback that does not pause has forwarded every frame that was whole in it.
    let c = cfg(&POLICY.replace(
        r#"{"policy""#,
        r#"{"rewrite": {"nodeTemplate": "gw:{19092+nodeId}"}, "policy""#,
    ));
    let t = |n: &'static str| name(n);
    let mut reqs = Vec::new();
    reqs.extend(encode_request(
        &hdr(18, 3, 1, "reader"),
        &ApiVersionsRequest::default(),
        3,
    ));
    reqs.extend(encode_request(
        &hdr(1, 12, 2, "reader"),
        &FetchRequest::default().with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(t("orders.eu"))
                .with_partitions(vec![fetch_request::FetchPartition::default()]),
            fetch_request::FetchTopic::default()
                .with_topic(t("payments"))
                .with_partitions(vec![fetch_request::FetchPartition::default()]),
        ]),
        12,
    ));
    reqs.extend(encode_request(
        &hdr(3, 12, 3, "reader"),
        &MetadataRequest::default().with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(t("payments"))),
            metadata_request::MetadataRequestTopic::default().with_name(Some(t("public"))),
        ])),
        12,
    ));
    reqs.extend(encode_request(
        &hdr(12, 4, 4, "reader"),
        &HeartbeatRequest::default().with_group_id(GroupId(StrBytes::from_static_str("intruders"))),
        4,
    ));
    reqs.extend(encode_request(
        &hdr(2, 7, 5, "reader"),
        &ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(t("orders.eu"))
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(t("payments"))
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
        ]),
        7,
    ));
    reqs.extend(encode_request(
        &hdr(8, 8, 6, "reader"),
        &OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("shop-1")))
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(t("payments"))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default(),
                    ]),
            ]),
        8,
    ));
    reqs.extend(encode_request(
        &hdr(20, 6, 7, "reader"),
        &DeleteTopicsRequest::default().with_topics(vec![
            delete_topics_request::DeleteTopicState::default().with_name(Some(t("orders.eu"))),
        ]),
        6,
    ));
    let n_frames = whole_frames(&reqs, reqs.len());
    assert_eq!(n_frames, 7);
    // the reference: everything in one callback
    let mut s = Session::new(c.clone());
    let mut obs = Obs::default();
    let p = pump(&mut s, Direction::Request, [&reqs[..]], false, &mut obs);
    assert!(!p.closed, "{:?}", obs.malformed);
    let want_fwd = p.out.clone();
    let (resps, _) = broker(&want_fwd);
    let q = pump(&mut s, Direction::Response, [&resps[..]], false, &mut obs);
    assert!(!q.closed, "{:?}", obs.malformed);
    let want_back = q.out.clone();
    let back = frames(&want_back);
    assert_eq!(back.len(), 7);
    let (_, f): (i32, FetchResponse) = decode_resp(back[1], 12);
    assert_eq!(f.responses.len(), 2, "payments' denial spliced in");
    let (_, m): (i32, MetadataResponse) = decode_resp(back[2], 12);
    assert!(!m.brokers.is_empty());
    assert!(
        m.brokers.iter().all(|b| b.host.as_str() == "gw"),
        "{:?}",
        m.brokers
    );
    assert!(m.topics.iter().any(|t| t.error_code == 29));
    let (_, h): (i32, HeartbeatResponse) = decode_resp(back[3], 4);
    assert_eq!(h.error_code, 30);
    for chunks in chunkings(&reqs) {
        let mut s = Session::new(c.clone());
        let mut obs = Obs::default();
        let (p, steps) = pump_traced(&mut s, Direction::Request, chunks.iter().copied(), &mut obs);
        assert_eq!(p.out, want_fwd);
        let mut fed = 0;
        for (chunk, st) in chunks.iter().zip(&steps) {
            fed += chunk.len();
            if st.verdict == Verdict::Pause {
                assert!(st.buffered <= 4096);
            } else {
                assert_eq!(whole_frames(&p.out, st.out), whole_frames(&reqs, fed));
            }
        }
        for rchunks in [
            vec![&resps[..]],
            resps.chunks(1).collect(),
            resps.chunks(7).collect(),
        ] {
            let mut s2 = Session::new(c.clone());
            pump(
                &mut s2,
                Direction::Request,
                chunks.iter().copied(),
                false,
                &mut obs,
            );
            let q = pump(&mut s2, Direction::Response, rchunks, false, &mut obs);
            assert!(!q.closed, "{:?}", obs.malformed);
            assert_eq!(q.out, want_back);
            assert_eq!(s2.inflight(), 0);
        }
    }
    // and the answers split at every point
    for rchunks in chunkings(&resps) {
        let mut s = Session::new(c.clone());
        let mut obs = Obs::default();
        pump(&mut s, Direction::Request, [&reqs[..]], false, &mut obs);
        let q = pump(&mut s, Direction::Response, rchunks, false, &mut obs);
        assert_eq!(q.out, want_back);
    }
}

#[test]
fn a_named_metadata_answer_too_large_to_hold_gets_the_denied_topics_in_its_head() {
    // The client names a denied topic and 55 allowed ones; the broker's answer (without
    // the denied one) is over maxBufferedFrameBytes: the denied topic's error entry goes in
    // front of the broker's topics and everything else streams. With address rewriting on,
    // the brokers in the head are rewritten too.
    for rewrite in [false, true] {
        let extra = if rewrite {
            r#""rewrite": {"nodeTemplate": "gw:{19092+nodeId}"}, "#
        } else {
            ""
        };
        let c = cfg(&POLICY.replace(
            r#"{"policy""#,
            &format!(r#"{{"maxBufferedFrameBytes": 2048, {extra}"policy""#),
        ));
        for v in [1i16, 4, 9, 12] {
            let mut topics =
                vec![metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(name("payments")))];
            for i in 0..55 {
                topics.push(
                    metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(
                        StrBytes::from_string(format!("orders.eu-{i:03}")),
                    ))),
                );
            }
            let req = MetadataRequest::default().with_topics(Some(topics));
            let reqs = encode_request(&hdr(3, v, 9, "r"), &req, v);
            for chunk in [1, 7, 4096, 1 << 20] {
                let mut s = Session::new(c.clone());
                let mut obs = Obs::default();
                let p = pump(&mut s, Direction::Request, [&reqs[..]], false, &mut obs);
                assert!(!p.closed, "{:?}", obs.malformed);
                let (resps, seen) = broker(&p.out);
                let fwd = MetadataRequest::decode(&mut seen[0].3.clone(), v).unwrap();
                assert_eq!(
                    fwd.topics.unwrap().len(),
                    55,
                    "payments never reaches the broker"
                );
                assert!(reqs.len() < 2048 && resps.len() > 2048);
                let q = pump(
                    &mut s,
                    Direction::Response,
                    resps.chunks(chunk),
                    false,
                    &mut obs,
                );
                assert!(!q.closed, "v{v} chunk {chunk}: {:?}", obs.malformed);
                let (corr, r): (i32, MetadataResponse) = decode_resp(frames(&q.out)[0], v);
                assert_eq!(corr, 9);
                assert_eq!(r.topics.len(), 56);
                let first = &r.topics[0];
                assert_eq!(first.name.as_ref().unwrap().0.as_str(), "payments");
                assert_eq!(first.error_code, 29);
                assert!(r.topics[1..].iter().all(|t| t.error_code == 0));
                let hosts: Vec<&str> = r.brokers.iter().map(|b| b.host.as_str()).collect();
                if rewrite {
                    assert_eq!(hosts, ["gw", "gw"], "v{v}");
                } else {
                    assert_eq!(hosts, ["broker-0.internal", "broker-1.internal"]);
                }
                assert_eq!(s.inflight(), 0);
            }
        }
    }
}

#[test]
fn a_callback_with_no_new_bytes_changes_nothing() {
    // After readDisable(false) Envoy calls the filter again with the same buffer
    // (`Context::onData` on a resumed read). Every callback here is followed by one with no
    // new bytes: the bytes out and the decisions must be those of a plain run.
    let c = cfg(&POLICY.replace(
        r#"{"policy""#,
        r#"{"rewrite": {"nodeTemplate": "gw:{19092+nodeId}"}, "policy""#,
    ));
    let mut stream = big_produce(1, &["orders.eu", "payments"], 2, 9000);
    stream.extend(big_fetch(2));
    stream.extend(encode_request(
        &hdr(3, 12, 3, "reader"),
        &MetadataRequest::default().with_topics(None),
        12,
    ));
    for chunk in [1usize, 7, 1000, 5000] {
        let run = |again: bool| {
            let mut s = Session::new(c.clone());
            let mut obs = Obs::default();
            let mut buf = EnvoyBuf::default();
            let mut out = Vec::new();
            let mut t = 0;
            let mut feed =
                |s: &mut Session, buf: &mut EnvoyBuf, obs: &mut Obs, out: &mut Vec<u8>| {
                    t += 1;
                    match s.on_data(Direction::Request, buf, false, t, obs) {
                        Verdict::Continue => out.append(&mut buf.data),
                        Verdict::Pause => {}
                        Verdict::Close => panic!("closed: {:?}", obs.malformed),
                    }
                };
            for c in stream.chunks(chunk) {
                buf.data.extend_from_slice(c);
                feed(&mut s, &mut buf, &mut obs, &mut out);
                if again {
                    feed(&mut s, &mut buf, &mut obs, &mut out);
                }
            }
            let notes: Vec<String> = obs.notes.iter().map(|n| format!("{n:?}")).collect();
            (out, notes, s.inflight())
        };
        let plain = run(false);
        assert_eq!(run(true), plain, "chunk {chunk}");
        assert_eq!(
            plain.0.len(),
            stream.len() - big_fetch(2).len() + {
                // the held Fetch is rewritten (payments removed): compare with a whole run
                let mut s = Session::new(c.clone());
                let p = pump(
                    &mut s,
                    Direction::Request,
                    [&big_fetch(2)[..]],
                    false,
                    &mut Obs::default(),
                );
                p.out.len()
            }
        );
    }
}
