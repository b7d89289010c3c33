//! Body walks checked against kafka-protocol's encodings of every walked message at every
//! version the filter advertises, fed whole, byte by byte, in 7-byte pieces and split at
//! many single points, with the facts (per-topic totals, errors, lag, groups, topic ids,
//! access-log records) asserted exactly and the output byte-identical to the input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{
    fetch_request, fetch_response, metadata_response, produce_request, produce_response,
    FetchRequest, FetchResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::codec::api;

use crate::config::{Config, Family};
use crate::observe::collect::TopicRef;
use crate::session::*;
use crate::testkit::*;

#[derive(Default, Debug)]
struct Facts {
    facts: Vec<String>,
    access: Vec<AccessLog>,
    malformed: Vec<String>,
}

impl FactLines for Facts {
    fn lines(&mut self) -> &mut Vec<String> {
        &mut self.facts
    }
}

impl Observer for Facts {
    fn access_log(&mut self, e: &AccessLog) {
        self.access.push(e.clone());
    }
    fn malformed(&mut self, _d: Direction, m: &Malformed, _a: crate::config::MalformedAction) {
        self.malformed.push(m.to_string());
    }
}

fn uuid(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

fn hex_of(n: u8) -> String {
    crate::observe::collect::hex(&[n; 16])
}

fn topic_label(v_names: bool, name: &str, id: u8) -> String {
    if v_names {
        name.to_string()
    } else {
        hex_of(id)
    }
}

fn hdr(key: i16, v: i16, corr: i32) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("walk-test")))
}

fn cfg(f: impl FnOnce(&mut Config)) -> Rc<Config> {
    let mut c = Config::default();
    f(&mut c);
    Rc::new(c)
}

/// Chunkings for long inputs: whole, 1, 7, and splits at every point of the first and last
/// 200 bytes plus every 97th in between.
fn cuts(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all: Vec<Vec<&[u8]>> = vec![
        vec![bytes],
        bytes.chunks(1).collect(),
        bytes.chunks(7).collect(),
    ];
    let n = bytes.len();
    for at in 1..n {
        if at < 200 || at + 200 > n || at % 97 == 0 {
            all.push(vec![&bytes[..at], &bytes[at..]]);
        }
    }
    all
}

/// Run a request stream then a response stream through one session under every chunking
/// of both; return the facts (identical under every chunking) and check the bytes.
fn run(c: &Rc<Config>, reqs: &[u8], resps: &[u8]) -> Facts {
    let mut first: Option<Facts> = None;
    let req_cuts = cuts(reqs);
    let resp_cuts = cuts(resps);
    let n = req_cuts.len().max(resp_cuts.len());
    for i in 0..n {
        let rq = &req_cuts[i % req_cuts.len()];
        let rs = &resp_cuts[i % resp_cuts.len()];
        let mut s = Session::new(c.clone());
        let mut f = Facts::default();
        let p = pump(
            &mut s,
            Direction::Request,
            rq.iter().copied(),
            false,
            &mut f,
        );
        assert_eq!(p.out, reqs, "request bytes changed (cut {i})");
        let p = pump(
            &mut s,
            Direction::Response,
            rs.iter().copied(),
            false,
            &mut f,
        );
        assert_eq!(p.out, resps, "response bytes changed (cut {i})");
        assert!(f.malformed.is_empty(), "cut {i}: {:?}", f.malformed);
        match &first {
            None => first = Some(f),
            Some(want) => {
                assert_eq!(f.facts, want.facts, "facts differ under cut {i}");
                assert_eq!(f.access.len(), want.access.len());
            }
        }
    }
    first.unwrap()
}

fn produce_request(v: i16, acks: i16) -> (ProduceRequest, Vec<String>, usize) {
    let names = v <= 12;
    let mut topics = Vec::new();
    let mut expect = Vec::new();
    let mut payload = 0;
    for (ti, (name, id)) in [("orders", 1u8), ("payments.eu", 2u8)]
        .into_iter()
        .enumerate()
    {
        let mut parts = Vec::new();
        let (mut b, mut r, mut n) = (0, 0, 0);
        for p in 0..(ti as i32 + 2) {
            let mut recs = record_batch(0, 3 + p, 100 + p as usize, 0);
            recs.extend(record_batch(3, 5, 40, 4));
            b += 2;
            r += 8 + p as u64;
            n += recs.len() as u64;
            payload += 140 + p as usize;
            parts.push(
                produce_request::PartitionProduceData::default()
                    .with_index(p)
                    .with_records(Some(Bytes::from(recs))),
            );
        }
        // a partition with no records at all
        parts.push(produce_request::PartitionProduceData::default().with_index(9));
        let mut t = produce_request::TopicProduceData::default().with_partition_data(parts);
        if names {
            t = t.with_name(TopicName(StrBytes::from_static_str(name)));
        } else {
            t = t.with_topic_id(uuid(id));
        }
        topics.push(t);
        expect.push(format!(
            "produce {} b={b} r={r} n={n}",
            topic_label(names, name, id)
        ));
    }
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_transactional_id(Some(StrBytes::from_static_str("tx-1").into()))
        .with_topic_data(topics);
    (req, expect, payload)
}

#[test]
fn produce_per_topic_totals_and_partition_errors_every_version() {
    let c = cfg(|_| {});
    for v in 3..=api::api_info(0).unwrap().max_version {
        let names = v <= 12;
        let (req, mut expect, payload) = produce_request(v, -1);
        let reqs = encode_request(&hdr(0, v, 7), &req, v);
        let resp = ProduceResponse::default().with_responses(vec![{
            let mut t =
                produce_response::TopicProduceResponse::default().with_partition_responses(vec![
                    produce_response::PartitionProduceResponse::default().with_index(0),
                    produce_response::PartitionProduceResponse::default()
                        .with_index(1)
                        .with_error_code(6),
                ]);
            if names {
                t = t.with_name(TopicName(StrBytes::from_static_str("orders")));
            } else {
                t = t.with_topic_id(uuid(1));
            }
            t
        }]);
        let resps = encode_response(7, &resp, v);
        let f = run(&c, &reqs, &resps);
        expect.push(format!("error 0 {} 6", topic_label(names, "orders", 1)));
        assert_eq!(f.facts, expect, "v{v}");
        // record payloads are never copied into the filter
        let mut s = Session::new(c.clone());
        let mut sink = Facts::default();
        let p = pump(&mut s, Direction::Request, [&reqs[..]], false, &mut sink);
        assert!(
            p.copied + payload <= reqs.len() + 128 * 12,
            "v{v}: copied {} of {} with {payload} payload bytes",
            p.copied,
            reqs.len()
        );
    }
}

#[test]
fn produce_acks0_is_walked_and_not_queued() {
    let c = cfg(|_| {});
    let (req, expect, _) = produce_request(9, 0);
    let reqs = encode_request(&hdr(0, 9, 1), &req, 9);
    let mut s = Session::new(c);
    let mut f = Facts::default();
    for chunks in cuts(&reqs) {
        f.facts.clear();
        let p = pump(&mut s, Direction::Request, chunks, false, &mut f);
        assert_eq!(p.out, reqs);
        assert_eq!(f.facts, expect);
        assert_eq!(s.inflight(), 0);
    }
}

#[test]
fn fetch_totals_errors_and_lag_every_version() {
    let c = cfg(|_| {});
    for v in 4..=api::api_info(1).unwrap().max_version {
        let names = v <= 12;
        let topic = |t: fetch_request::FetchTopic| {
            if names {
                t.with_topic(TopicName(StrBytes::from_static_str("orders")))
            } else {
                t.with_topic_id(uuid(1))
            }
        };
        let req = FetchRequest::default()
            .with_max_bytes(1 << 20)
            .with_topics(vec![topic(
                fetch_request::FetchTopic::default().with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(10),
                    fetch_request::FetchPartition::default()
                        .with_partition(1)
                        .with_fetch_offset(500),
                ]),
            )])
            .with_rack_id(StrBytes::from_static_str("rack-a"));
        let reqs = encode_request(&hdr(1, v, 3), &req, v);
        let mut recs = record_batch(10, 4, 64, 1);
        recs.extend(record_batch(14, 6, 10, 1));
        let full = recs.len() as u64;
        // a partial trailing batch, as brokers send when max bytes cut a batch
        recs.extend(&record_batch(20, 9, 300, 1)[..40]);
        let rtopic = |t: fetch_response::FetchableTopicResponse| {
            if names {
                t.with_topic(TopicName(StrBytes::from_static_str("orders")))
            } else {
                t.with_topic_id(uuid(1))
            }
        };
        let resp = FetchResponse::default().with_responses(vec![rtopic(
            fetch_response::FetchableTopicResponse::default().with_partitions(vec![
                fetch_response::PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(30)
                    .with_aborted_transactions(Some(vec![
                        fetch_response::AbortedTransaction::default(),
                    ]))
                    .with_records(Some(Bytes::from(recs.clone()))),
                fetch_response::PartitionData::default()
                    .with_partition_index(1)
                    .with_error_code(1)
                    .with_high_watermark(-1),
            ]),
        )]);
        let resps = encode_response(3, &resp, v);
        let f = run(&c, &reqs, &resps);
        let t = topic_label(names, "orders", 1);
        let total = full + 40;
        assert_eq!(
            f.facts,
            vec![
                format!("lag {t} 0 20"),
                format!("error 1 {t} 1"),
                format!("fetch {t} r=10 n={total}"),
            ],
            "v{v}"
        );
    }
}

#[test]
fn lag_table_is_bounded_by_config() {
    let c = cfg(|c| c.metrics.max_lag_partitions = 3);
    let parts = (0..10)
        .map(|p| {
            fetch_request::FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(1)
        })
        .collect();
    let req = FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_static_str("t")))
        .with_partitions(parts)]);
    let reqs = encode_request(&hdr(1, 12, 1), &req, 12);
    let mut s = Session::new(c);
    pump(
        &mut s,
        Direction::Request,
        [&reqs[..]],
        false,
        &mut Facts::default(),
    );
    assert_eq!(s.fetch_offsets(), 3);
}

#[test]
fn metadata_learns_topic_ids_and_counts_topic_errors_every_version() {
    let c = cfg(|_| {});
    for v in 0..=api::api_info(3).unwrap().max_version {
        let resp = MetadataResponse::default()
            .with_brokers(vec![metadata_response::MetadataResponseBroker::default()
                .with_host(StrBytes::from_static_str("broker-0.kafka"))
                .with_port(9092)
                .with_rack(Some(StrBytes::from_static_str("r1")))])
            .with_cluster_id(Some(StrBytes::from_static_str("cluster")))
            .with_topics(vec![
                metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
                    .with_topic_id(uuid(1))
                    .with_partitions(vec![metadata_response::MetadataResponsePartition::default(
                    )
                    .with_replica_nodes(vec![0.into(), 1.into()])
                    .with_isr_nodes(vec![0.into()])]),
                metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("missing"))))
                    .with_error_code(3),
            ]);
        let req = kafka_protocol::messages::MetadataRequest::default();
        let reqs = encode_request(&hdr(3, v, 9), &req, v);
        let resps = encode_response(9, &resp, v);
        let f = run(&c, &reqs, &resps);
        let mut want = Vec::new();
        if v >= 10 {
            want.push(format!("topic_id {} orders", hex_of(1)));
        }
        want.push("error 3 missing 3".to_string());
        assert_eq!(f.facts, want, "v{v}");
    }
}

#[test]
fn group_ids_and_group_errors_every_version() {
    let c = cfg(|_| {});
    for v in 0..=api::api_info(12).unwrap().max_version {
        let req = HeartbeatRequest::default()
            .with_group_id(StrBytes::from_static_str("billing").into())
            .with_member_id(StrBytes::from_static_str("m-1"));
        let reqs = encode_request(&hdr(12, v, 4), &req, v);
        let resps = encode_response(4, &HeartbeatResponse::default().with_error_code(27), v);
        let f = run(&c, &reqs, &resps);
        assert_eq!(f.facts, vec!["group 12 billing", "error 12 - 27"], "v{v}");
    }
    for v in 0..=api::api_info(11).unwrap().max_version {
        let req = JoinGroupRequest::default()
            .with_group_id(StrBytes::from_static_str("g2").into())
            .with_protocol_type(StrBytes::from_static_str("consumer"));
        let reqs = encode_request(&hdr(11, v, 4), &req, v);
        let mut s = Session::new(c.clone());
        let mut f = Facts::default();
        pump(&mut s, Direction::Request, reqs.chunks(1), false, &mut f);
        assert_eq!(f.facts, vec!["group 11 g2"], "v{v}");
    }
}

#[test]
fn access_log_records_topics_latency_and_error_sampled() {
    let c = cfg(|c| {
        c.access_log.enabled = true;
        c.access_log.sample_rate = 0.5;
    });
    let mut reqs = Vec::new();
    let mut resps = Vec::new();
    for corr in 0..4 {
        let (req, _, _) = produce_request(9, 1);
        reqs.extend(encode_request(&hdr(0, 9, corr), &req, 9));
        let resp = ProduceResponse::default().with_responses(vec![
            produce_response::TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_responses(vec![
                    produce_response::PartitionProduceResponse::default()
                        .with_error_code(if corr == 1 { 29 } else { 0 }),
                ]),
        ]);
        resps.extend(encode_response(corr, &resp, 9));
    }
    let f = run(&c, &reqs, &resps);
    // 0.5: every second request, deterministically (corr 1 and 3)
    assert_eq!(f.access.len(), 2);
    let a = &f.access[0];
    assert_eq!(a.correlation_id, 1);
    assert_eq!(a.client_id, "walk-test");
    assert_eq!(
        a.topics.topics,
        vec![
            TopicRef::Name("orders".into()),
            TopicRef::Name("payments.eu".into())
        ]
    );
    assert_eq!(a.error_code, Some(29));
    assert!(a.latency_ns.is_some());
    let j: serde_json::Value = serde_json::from_str(&a.to_json(&mut |_| None)).unwrap();
    assert_eq!(j["api"], "produce");
    assert_eq!(j["error"], "TOPIC_AUTHORIZATION_FAILED");
    assert_eq!(j["topics"][1], "payments.eu");
    assert_eq!(f.access[1].error_code, Some(0));
}

#[test]
fn families_off_means_no_walks() {
    let c = cfg(|c| c.metrics.families = vec![Family::Api]);
    let (req, _, _) = produce_request(9, 1);
    let reqs = encode_request(&hdr(0, 9, 1), &req, 9);
    let mut s = Session::new(c);
    let mut f = Facts::default();
    let p = pump(&mut s, Direction::Request, [&reqs[..]], false, &mut f);
    assert!(f.facts.is_empty());
    assert!(p.copied <= 128, "copied {}", p.copied);
}

#[test]
fn a_body_shorter_than_its_fields_is_malformed() {
    let c = cfg(|_| {});
    let (req, _, _) = produce_request(9, 1);
    let mut reqs = encode_request(&hdr(0, 9, 1), &req, 9);
    // cut the frame short inside the topics array and fix up the size prefix
    reqs.truncate(60);
    let size = (reqs.len() - 4) as i32;
    reqs[..4].copy_from_slice(&size.to_be_bytes());
    for chunks in cuts(&reqs) {
        let mut s = Session::new(c.clone());
        let mut f = Facts::default();
        let p = pump(&mut s, Direction::Request, chunks, false, &mut f);
        assert!(p.closed);
        assert_eq!(f.malformed.len(), 1, "{:?}", f.malformed);
    }
    // a record-batch length that runs past the frame
    let mut recs = record_batch(0, 1, 10, 0);
    recs.truncate(61);
    let req = ProduceRequest::default().with_acks(1).with_topic_data(vec![
        produce_request::TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_data(vec![produce_request::PartitionProduceData::default()
                .with_records(Some(Bytes::from(recs)))]),
    ]);
    let reqs = encode_request(&hdr(0, 9, 1), &req, 9);
    let mut s = Session::new(c);
    let mut f = Facts::default();
    pump(&mut s, Direction::Request, [&reqs[..]], false, &mut f);
    // the records field itself is whole: the batch inside is counted as partial, no crash
    assert!(f.malformed.is_empty(), "{:?}", f.malformed);
    assert_eq!(f.facts, vec!["produce t b=1 r=0 n=61"]);
}

#[test]
fn garbage_after_a_walked_frame_is_the_next_frame() {
    let c = cfg(|c| c.on_malformed = crate::config::MalformedAction::Passthrough);
    let (req, expect, _) = produce_request(9, 1);
    let mut reqs = encode_request(&hdr(0, 9, 1), &req, 9);
    reqs.extend([0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    for chunks in cuts(&reqs) {
        let mut s = Session::new(c.clone());
        let mut f = Facts::default();
        let p = pump(&mut s, Direction::Request, chunks, false, &mut f);
        assert_eq!(p.out, reqs);
        assert_eq!(f.facts, expect);
        assert_eq!(f.malformed.len(), 1);
    }
}

#[test]
fn offset_fetch_errors_every_version() {
    use kafka_protocol::messages::{
        offset_fetch_response, OffsetFetchRequest, OffsetFetchResponse,
    };
    let c = cfg(|_| {});
    // kafka-protocol 0.18 encodes OffsetFetch requests up to v9
    for v in 1..=9 {
        let resp = if v <= 7 {
            OffsetFetchResponse::default().with_topics(vec![
                offset_fetch_response::OffsetFetchResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![
                        offset_fetch_response::OffsetFetchResponsePartition::default()
                            .with_partition_index(2)
                            .with_metadata(Some(StrBytes::from_static_str("m")))
                            .with_error_code(29),
                    ]),
            ])
        } else {
            OffsetFetchResponse::default().with_groups(vec![
                offset_fetch_response::OffsetFetchResponseGroup::default()
                    .with_group_id(StrBytes::from_static_str("g").into()),
            ])
        };
        let req = if v <= 7 {
            OffsetFetchRequest::default().with_group_id(StrBytes::from_static_str("g").into())
        } else {
            OffsetFetchRequest::default()
        };
        let reqs = encode_request(&hdr(9, v, 5), &req, v);
        let resps = encode_response(5, &resp, v);
        let f = run(&c, &reqs, &resps);
        let want: Vec<String> = if v <= 7 {
            vec!["error 9 orders 29".into()]
        } else {
            vec![]
        };
        assert_eq!(f.facts, want, "v{v}");
    }
}

#[test]
fn more_apis_count_their_errors_every_version() {
    use kafka_protocol::messages::*;
    let c = cfg(|_| {});
    let s = |x: &'static str| StrBytes::from_static_str(x);
    let check = |key: i16, v: i16, req: Vec<u8>, resp: Vec<u8>, want: &str| {
        let f = run(&c, &req, &resp);
        assert_eq!(f.facts, vec![want.to_string()], "api {key} v{v}");
    };
    for v in 0..=5 {
        check(
            26,
            v,
            encode_request(&hdr(26, v, 1), &EndTxnRequest::default(), v),
            encode_response(1, &EndTxnResponse::default().with_error_code(48), v),
            "error 26 - 48",
        );
    }
    for v in 0..=4 {
        check(
            25,
            v,
            encode_request(&hdr(25, v, 1), &AddOffsetsToTxnRequest::default(), v),
            encode_response(
                1,
                &AddOffsetsToTxnResponse::default().with_error_code(51),
                v,
            ),
            "error 25 - 51",
        );
    }
    for v in 0..=5 {
        check(
            16,
            v,
            encode_request(&hdr(16, v, 1), &ListGroupsRequest::default(), v),
            encode_response(
                1,
                &ListGroupsResponse::default()
                    .with_error_code(15)
                    .with_groups(vec![
                        list_groups_response::ListedGroup::default().with_group_id(s("g").into())
                    ]),
                v,
            ),
            "error 16 - 15",
        );
    }
    for v in 0..=1 {
        check(
            17,
            v,
            encode_request(&hdr(17, v, 1), &SaslHandshakeRequest::default(), v),
            encode_response(
                1,
                &SaslHandshakeResponse::default()
                    .with_error_code(33)
                    .with_mechanisms(vec![s("PLAIN")]),
                v,
            ),
            "error 17 - 33",
        );
    }
    for v in 2..=7 {
        let r = CreateTopicsResponse::default().with_topics(vec![
            create_topics_response::CreatableTopicResult::default()
                .with_name(TopicName(s("t")))
                .with_error_code(36)
                .with_configs(if v >= 5 {
                    Some(vec![
                        create_topics_response::CreatableTopicConfigs::default()
                            .with_name(s("retention.ms"))
                            .with_value(Some(s("1"))),
                    ])
                } else {
                    None
                }),
        ]);
        check(
            19,
            v,
            encode_request(&hdr(19, v, 1), &CreateTopicsRequest::default(), v),
            encode_response(1, &r, v),
            "error 19 t 36",
        );
    }
    for v in 0..=3 {
        let r = CreatePartitionsResponse::default().with_results(vec![
            create_partitions_response::CreatePartitionsTopicResult::default()
                .with_name(TopicName(s("t")))
                .with_error_code(37),
        ]);
        check(
            37,
            v,
            encode_request(&hdr(37, v, 1), &CreatePartitionsRequest::default(), v),
            encode_response(1, &r, v),
            "error 37 t 37",
        );
    }
    for v in 0..=2 {
        let r = DeleteRecordsResponse::default().with_topics(vec![
            delete_records_response::DeleteRecordsTopicResult::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![
                    delete_records_response::DeleteRecordsPartitionResult::default()
                        .with_error_code(1),
                ]),
        ]);
        check(
            21,
            v,
            encode_request(&hdr(21, v, 1), &DeleteRecordsRequest::default(), v),
            encode_response(1, &r, v),
            "error 21 t 1",
        );
    }
    for v in 0..=2 {
        let r = AlterConfigsResponse::default().with_responses(vec![
            alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(40)
                .with_resource_name(s("t"))
                .with_resource_type(2),
        ]);
        check(
            33,
            v,
            encode_request(&hdr(33, v, 1), &AlterConfigsRequest::default(), v),
            encode_response(1, &r, v),
            "error 33 - 40",
        );
    }
    for v in 0..=1 {
        let r = IncrementalAlterConfigsResponse::default().with_responses(vec![
            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_error_code(40)
                .with_resource_name(s("t"))
                .with_resource_type(2),
        ]);
        check(
            44,
            v,
            encode_request(
                &hdr(44, v, 1),
                &IncrementalAlterConfigsRequest::default(),
                v,
            ),
            encode_response(1, &r, v),
            "error 44 - 40",
        );
    }
}
