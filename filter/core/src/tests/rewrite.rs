//! Address rewriting through the session: real encoded Metadata / FindCoordinator /
//! DescribeCluster / Produce / Fetch responses of a three-broker cluster, every version the
//! filter advertises, fed byte by byte and whole; what the client receives must be exactly
//! kafka-protocol's encoding of the expected response (the same message with the rewritten
//! addresses), and a rule set that does not apply must leave the bytes identical.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::config::Config;
use crate::rewrite::{RewriteSpec, Rewriter};
use crate::session::*;
use crate::testkit::config_json as cfg;
use crate::testkit::*;

#[derive(Default)]
struct Seen(Vec<String>);
impl crate::observe::collect::FactSink for Seen {}
impl Observer for Seen {
    fn malformed(&mut self, _d: Direction, m: &Malformed, _a: crate::config::MalformedAction) {
        self.0.push(m.to_string());
    }
}

const TEMPLATE: &str =
    r#"{"rewrite": {"nodeTemplate": "gw.example.com:{19092+nodeId}", "nodeEndpoints": "rewrite"}}"#;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

fn brokers() -> Vec<(i32, String, i32)> {
    (0..3)
        .map(|i| (i, format!("broker-{i}.internal"), 9092))
        .collect()
}

/// Run request + response through a session; return what the client got.
fn through<Req: Encodable + HeaderVersion>(
    c: &Rc<Config>,
    key: i16,
    v: i16,
    req: &Req,
    resp: &[u8],
    chunk: usize,
) -> Vec<u8> {
    let h = RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(9)
        .with_client_id(Some(s("rw")));
    let reqs = encode_request(&h, req, v);
    let mut sess = Session::new(c.clone());
    let mut obs = Seen::default();
    let p = pump(
        &mut sess,
        Direction::Request,
        reqs.chunks(chunk),
        false,
        &mut obs,
    );
    assert_eq!(p.out, reqs);
    let q = pump(
        &mut sess,
        Direction::Response,
        resp.chunks(chunk),
        false,
        &mut obs,
    );
    assert!(!q.closed, "{:?}", obs.0);
    assert_eq!(sess.inflight(), 0);
    q.out
}

fn metadata(v: i16, b: &[(i32, String, i32)]) -> MetadataResponse {
    MetadataResponse::default()
        .with_brokers(
            b.iter()
                .map(|(id, h, p)| {
                    metadata_response::MetadataResponseBroker::default()
                        .with_node_id((*id).into())
                        .with_host(s(h))
                        .with_port(*p)
                        .with_rack(if v >= 1 { Some(s("r1")) } else { None })
                })
                .collect(),
        )
        .with_controller_id(1.into())
        .with_topics(vec![metadata_response::MetadataResponseTopic::default()
            .with_name(Some(TopicName(s("orders"))))
            .with_partitions(vec![
                metadata_response::MetadataResponsePartition::default()
                    .with_leader_id(2.into())
                    .with_replica_nodes(vec![0.into(), 1.into(), 2.into()]),
            ])])
}

fn rewritten() -> Vec<(i32, String, i32)> {
    (0..3)
        .map(|i| (i, "gw.example.com".to_string(), 19092 + i))
        .collect()
}

#[test]
fn metadata_every_version() {
    let c = cfg(TEMPLATE);
    for v in 0..=13 {
        let resp = encode_response(9, &metadata(v, &brokers()), v);
        let want = encode_response(9, &metadata(v, &rewritten()), v);
        for chunk in [1, 7, 1 << 20] {
            let got = through(&c, 3, v, &MetadataRequest::default(), &resp, chunk);
            assert_eq!(got, want, "v{v} chunk {chunk}");
        }
    }
}

#[test]
fn a_rule_set_that_does_not_apply_leaves_bytes_identical() {
    let c = cfg(
        r#"{"rewrite": {"hosts": {"elsewhere:9092": "x:1"}, "hostPatterns": [{"match": "^nomatch-(\\d+)$", "target": "n$1:1"}]}}"#,
    );
    for v in [1i16, 9, 12, 13] {
        let resp = encode_response(9, &metadata(v, &brokers()), v);
        assert_eq!(
            through(&c, 3, v, &MetadataRequest::default(), &resp, 3),
            resp
        );
    }
}

#[test]
fn find_coordinator_single_and_batched() {
    let c = cfg(TEMPLATE);
    for v in 0..=6 {
        let (resp, want) = if v <= 3 {
            let r = |h: &str, p: i32| {
                FindCoordinatorResponse::default()
                    .with_node_id(2.into())
                    .with_host(s(h))
                    .with_port(p)
            };
            (
                encode_response(9, &r("broker-2.internal", 9092), v),
                encode_response(9, &r("gw.example.com", 19094), v),
            )
        } else {
            let r = |b: &[(i32, String, i32)]| {
                FindCoordinatorResponse::default().with_coordinators(
                    b.iter()
                        .map(|(id, h, p)| {
                            find_coordinator_response::Coordinator::default()
                                .with_key(s("group-a"))
                                .with_node_id((*id).into())
                                .with_host(s(h))
                                .with_port(*p)
                        })
                        .collect(),
                )
            };
            (
                encode_response(9, &r(&brokers()), v),
                encode_response(9, &r(&rewritten()), v),
            )
        };
        let req = if v <= 3 {
            FindCoordinatorRequest::default().with_key(s("group-a"))
        } else {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("group-a")])
        };
        assert_eq!(through(&c, 10, v, &req, &resp, 1), want, "v{v}");
    }
}

#[test]
fn describe_cluster_every_version() {
    let c = cfg(TEMPLATE);
    for v in 0..=2 {
        let r = |b: &[(i32, String, i32)]| {
            DescribeClusterResponse::default()
                .with_cluster_id(s("c"))
                .with_brokers(
                    b.iter()
                        .map(|(id, h, p)| {
                            describe_cluster_response::DescribeClusterBroker::default()
                                .with_broker_id((*id).into())
                                .with_host(s(h))
                                .with_port(*p)
                        })
                        .collect(),
                )
        };
        let resp = encode_response(9, &r(&brokers()), v);
        let want = encode_response(9, &r(&rewritten()), v);
        assert_eq!(
            through(&c, 60, v, &DescribeClusterRequest::default(), &resp, 2),
            want,
            "v{v}"
        );
    }
}

#[test]
fn kip951_node_endpoints_in_produce_and_fetch() {
    let c = cfg(TEMPLATE);
    for v in 10..=13 {
        let r = |b: &[(i32, String, i32)]| {
            ProduceResponse::default()
                .with_responses(vec![produce_response::TopicProduceResponse::default()
                    .with_name(TopicName(s("orders")))
                    .with_topic_id(uuid::Uuid::from_bytes([1; 16]))
                    .with_partition_responses(vec![
                        produce_response::PartitionProduceResponse::default().with_error_code(6),
                    ])])
                .with_node_endpoints(
                    b.iter()
                        .map(|(id, h, p)| {
                            produce_response::NodeEndpoint::default()
                                .with_node_id((*id).into())
                                .with_host(s(h))
                                .with_port(*p)
                        })
                        .collect(),
                )
        };
        let resp = encode_response(9, &r(&brokers()), v);
        let want = encode_response(9, &r(&rewritten()), v);
        let req = ProduceRequest::default().with_acks(1);
        assert_eq!(through(&c, 0, v, &req, &resp, 1), want, "produce v{v}");
    }
    for v in 16..=18 {
        let r = |b: &[(i32, String, i32)]| {
            FetchResponse::default()
                .with_responses(vec![fetch_response::FetchableTopicResponse::default()
                    .with_topic_id(uuid::Uuid::from_bytes([1; 16]))
                    .with_partitions(vec![fetch_response::PartitionData::default()
                        .with_records(Some(Bytes::from(vec![0u8; 300])))])])
                .with_node_endpoints(
                    b.iter()
                        .map(|(id, h, p)| {
                            fetch_response::NodeEndpoint::default()
                                .with_node_id((*id).into())
                                .with_host(s(h))
                                .with_port(*p)
                        })
                        .collect(),
                )
        };
        // A Fetch response streams (its NodeEndpoints come after every record): the tag is
        // renamed to one clients skip, every other byte is the broker's.
        let resp = encode_response(9, &r(&brokers()), v);
        for chunk in [1, 7, 1 << 20] {
            let got = through(&c, 1, v, &FetchRequest::default(), &resp, chunk);
            assert_eq!(got.len(), resp.len());
            let diff: Vec<usize> = (0..got.len()).filter(|i| got[*i] != resp[*i]).collect();
            assert_eq!(diff.len(), 1, "fetch v{v}: one byte changes");
            assert_eq!(got[diff[0]], crate::policy::guard::HIDDEN_TAG);
            let (_, back): (i32, FetchResponse) = decode(&got, v);
            assert!(back.node_endpoints.is_empty(), "fetch v{v}");
            assert_eq!(back.responses, r(&brokers()).responses);
        }
    }
}

fn decode<T: Decodable + HeaderVersion>(frame: &[u8], v: i16) -> (i32, T) {
    let mut b = Bytes::copy_from_slice(&frame[4..]);
    let h = ResponseHeader::decode(&mut b, T::header_version(v)).unwrap();
    (h.correlation_id, T::decode(&mut b, v).unwrap())
}

#[test]
fn a_metadata_response_too_large_to_hold_gets_its_brokers_rewritten_and_streams() {
    // 400 topics of 3 partitions: far over a 4 KiB maxBufferedFrameBytes.
    let c = cfg(&TEMPLATE.replace(
        r#"{"rewrite""#,
        r#"{"maxBufferedFrameBytes": 4096, "rewrite""#,
    ));
    let big = |v: i16, b: &[(i32, String, i32)]| {
        let mut m = metadata(v, b);
        let t = m.topics[0].clone();
        m.topics = (0..400)
            .map(|i| {
                t.clone()
                    .with_name(Some(TopicName(s(&format!("topic-{i:04}")))))
            })
            .collect();
        m
    };
    for v in 0..=13 {
        let resp = encode_response(9, &big(v, &brokers()), v);
        assert!(resp.len() > 4096);
        let want = encode_response(9, &big(v, &rewritten()), v);
        for chunk in [1, 7, 1000, 1 << 20] {
            let got = through(&c, 3, v, &MetadataRequest::default(), &resp, chunk);
            assert_eq!(got, want, "v{v} chunk {chunk}");
        }
    }
}

#[test]
fn a_produce_response_too_large_to_hold_streams_with_its_node_endpoints_hidden() {
    let c = cfg(&TEMPLATE.replace(
        r#"{"rewrite""#,
        r#"{"maxBufferedFrameBytes": 1024, "rewrite""#,
    ));
    let r = ProduceResponse::default()
        .with_responses(
            (0..100)
                .map(|i| {
                    produce_response::TopicProduceResponse::default()
                        .with_name(TopicName(s(&format!("orders-{i}"))))
                        .with_partition_responses(vec![
                            produce_response::PartitionProduceResponse::default()
                                .with_error_code(6),
                        ])
                })
                .collect(),
        )
        .with_node_endpoints(vec![produce_response::NodeEndpoint::default()
            .with_node_id(1.into())
            .with_host(s("broker-1.internal"))
            .with_port(9092)]);
    let resp = encode_response(9, &r, 11);
    assert!(resp.len() > 1024);
    let req = ProduceRequest::default().with_acks(1);
    for chunk in [1, 7, 1 << 20] {
        let got = through(&c, 0, 11, &req, &resp, chunk);
        assert_eq!(got.len(), resp.len());
        let (_, back): (i32, ProduceResponse) = decode(&got, 11);
        assert!(back.node_endpoints.is_empty());
        assert_eq!(back.responses, r.responses);
    }
}

#[test]
fn cap_versions_mode_offers_no_node_endpoint_versions() {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    let c = cfg(r#"{"rewrite": {"nodeTemplate": "gw:{19092+nodeId}"}}"#);
    let av = ApiVersionsResponse::default().with_api_keys(vec![
        ApiVersion::default().with_api_key(0).with_max_version(12),
        ApiVersion::default().with_api_key(1).with_max_version(17),
        ApiVersion::default().with_api_key(3).with_max_version(12),
    ]);
    let resp = encode_response(9, &av, 3);
    let out = through(&c, 18, 3, &ApiVersionsRequest::default(), &resp, 5);
    let mut b = Bytes::copy_from_slice(&out[8..]);
    let r = ApiVersionsResponse::decode(&mut b, 3).unwrap();
    let maxes: Vec<(i16, i16)> = r
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.max_version))
        .collect();
    assert_eq!(maxes, vec![(0, 9), (1, 15), (3, 12)]);
}

#[test]
fn rules_in_order_of_specificity() {
    let spec: RewriteSpec = serde_json::from_str(
        r#"{"nodes": {"7": "seven.mesh:7777"}, "nodeTemplate": null,
            "hosts": {"a.internal:9092": "a.mesh:{port}", "b.internal": "b.mesh:9093"},
            "hostPatterns": [{"match": "^broker-(\\d+)\\.(\\w+)$", "target": "k-$1.$2.mesh:{29092+nodeId}"}]}"#,
    )
    .unwrap();
    let rw = Rewriter::compile(&spec, ".rewrite").unwrap();
    assert_eq!(rw.map(7, "whatever", 1), Some(("seven.mesh".into(), 7777)));
    assert_eq!(rw.map(1, "a.internal", 9092), Some(("a.mesh".into(), 9092)));
    assert_eq!(rw.map(1, "a.internal", 9093), None);
    assert_eq!(rw.map(1, "b.internal", 1234), Some(("b.mesh".into(), 9093)));
    assert_eq!(
        rw.map(3, "broker-3.east", 9092),
        Some(("k-3.east.mesh".into(), 29095))
    );
    assert_eq!(rw.map(3, "other", 9092), None);
    let t: RewriteSpec =
        serde_json::from_str(r#"{"nodeTemplate": "kafka-{nodeId}.kafka.svc.cluster.local:9092"}"#)
            .unwrap();
    let rw = Rewriter::compile(&t, ".rewrite").unwrap();
    assert_eq!(
        rw.map(2, "x", 1),
        Some(("kafka-2.kafka.svc.cluster.local".into(), 9092))
    );
    assert_eq!(
        rw.map(2, "kafka-2.kafka.svc.cluster.local", 9092),
        None,
        "already right"
    );
}

#[test]
fn config_errors_name_the_path() {
    for (json, path) in [
        (
            r#"{"rewrite": {"nodeTemplate": "nohost"}}"#,
            ".rewrite.nodeTemplate",
        ),
        (
            r#"{"rewrite": {"nodeTemplate": "h:{x+nodeId}"}}"#,
            ".rewrite.nodeTemplate",
        ),
        (
            r#"{"rewrite": {"nodes": {"a": "h:1"}}}"#,
            ".rewrite.nodes.a",
        ),
        (
            r#"{"rewrite": {"hostPatterns": [{"match": "(", "target": "h:1"}]}}"#,
            ".rewrite.hostPatterns[0].match",
        ),
        (
            r#"{"rewrite": {"hostPatterns": [{"match": "x", "target": "h$2:1"}]}}"#,
            ".rewrite.hostPatterns[0].target",
        ),
        (
            r#"{"rewrite": {"hosts": {"a": "b:99999"}}}"#,
            ".rewrite.hosts.a",
        ),
        (
            r#"{"rewrite": {"nodeEndpoints": "maybe"}}"#,
            ".rewrite.nodeEndpoints",
        ),
    ] {
        let e = Config::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, path, "{json}: {e}");
    }
}

#[test]
fn policy_and_rewrite_together_on_one_metadata_response() {
    let c = cfg(
        r#"{"rewrite": {"nodeTemplate": "gw.example.com:{19092+nodeId}"},
            "policy": {"defaultAction": "deny", "rules": [
              {"name": "d", "action": "allow", "operations": ["describe"], "topics": ["orders"]}]}}"#,
    );
    for v in [1i16, 9, 12, 13] {
        let mut resp = metadata(v, &brokers());
        resp.topics.push(
            metadata_response::MetadataResponseTopic::default()
                .with_name(Some(TopicName(s("secret")))),
        );
        let resp = encode_response(9, &resp, v);
        let want = encode_response(9, &metadata(v, &rewritten()), v);
        for chunk in [1, 1 << 20] {
            let got = through(
                &c,
                3,
                v,
                &MetadataRequest::default().with_topics(None),
                &resp,
                chunk,
            );
            assert_eq!(got, want, "v{v}: secret hidden and brokers rewritten");
        }
    }
}

#[test]
fn pipelined_metadata_responses_are_rewritten_without_waiting_for_the_next_one() {
    // Five pipelined Metadata requests; their ~8 KiB answers are held whole to be rewritten
    // and arrive so that no callback ends on a frame boundary.
    let c = cfg(TEMPLATE);
    let big = |v: i16, b: &[(i32, String, i32)]| {
        let mut m = metadata(v, b);
        let t = m.topics[0].clone();
        m.topics = (0..150)
            .map(|i| {
                t.clone()
                    .with_name(Some(TopicName(s(&format!("topic-{i:04}")))))
            })
            .collect();
        m
    };
    let v = 12;
    let mut reqs = Vec::new();
    let mut resps = Vec::new();
    let mut want = Vec::new();
    for corr in 1..=5 {
        let h = RequestHeader::default()
            .with_request_api_key(3)
            .with_request_api_version(v)
            .with_correlation_id(corr)
            .with_client_id(Some(s("rw")));
        reqs.extend(encode_request(&h, &MetadataRequest::default(), v));
        resps.push(encode_response(corr, &big(v, &brokers()), v));
        want.push(encode_response(corr, &big(v, &rewritten()), v));
    }
    assert!(resps[0].len() > 4096);
    for lead in [1, 2, 4, 9, 300, 5000] {
        let mut sess = Session::new(c.clone());
        let mut obs = Seen::default();
        pump(&mut sess, Direction::Request, [&reqs[..]], false, &mut obs);
        let chunks = pipelined_cuts(&resps, lead);
        let (p, steps) = pump_traced(
            &mut sess,
            Direction::Response,
            chunks.iter().map(|c| &c[..]),
            &mut obs,
        );
        assert!(!p.closed, "{:?}", obs.0);
        for (k, st) in steps.iter().enumerate() {
            let done: usize = want[..=k].iter().map(Vec::len).sum();
            assert_eq!(st.out, done, "lead {lead}: after callback {k}");
            assert_ne!(st.verdict, Verdict::Pause);
        }
        assert_eq!(p.out, want.concat());
        assert_eq!(sess.inflight(), 0);
    }
}

#[test]
fn a_32k_buffer_limit_never_holds_more_than_the_pause_bound() {
    // Istio gateways use a 32 KiB connection buffer limit: a held frame larger than that
    // must accumulate in the VM, not in Envoy's buffer (which would stop reading).
    let c = cfg(TEMPLATE);
    let mut m = metadata(12, &brokers());
    let t = m.topics[0].clone();
    m.topics = (0..2000)
        .map(|i| {
            t.clone()
                .with_name(Some(TopicName(s(&format!("topic-{i:05}")))))
        })
        .collect();
    let resp = encode_response(9, &m, 12);
    assert!(resp.len() > 64 * 1024);
    let mut want_m = m.clone();
    want_m.brokers = metadata(12, &rewritten()).brokers;
    let want = encode_response(9, &want_m, 12);
    let h = RequestHeader::default()
        .with_request_api_key(3)
        .with_request_api_version(12)
        .with_correlation_id(9)
        .with_client_id(Some(s("rw")));
    let req = encode_request(&h, &MetadataRequest::default(), 12);
    let mut sess = Session::new(c);
    let mut obs = Seen::default();
    pump(&mut sess, Direction::Request, [&req[..]], false, &mut obs);
    let (p, steps) = pump_traced(
        &mut sess,
        Direction::Response,
        resp.chunks(16 * 1024),
        &mut obs,
    );
    for st in &steps {
        assert!(
            st.buffered <= 4096,
            "{} bytes left in the host",
            st.buffered
        );
    }
    assert_eq!(p.out, want);
}
