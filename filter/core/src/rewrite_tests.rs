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
use crate::testutil::*;

#[derive(Default)]
struct Seen(Vec<String>);
impl crate::collect::FactSink for Seen {}
impl Observer for Seen {
    fn malformed(&mut self, _d: Direction, m: &Malformed, _a: crate::config::MalformedAction) {
        self.0.push(m.to_string());
    }
}

fn cfg(json: &str) -> Rc<Config> {
    Rc::new(Config::from_json(json.as_bytes()).unwrap())
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
        let resp = encode_response(9, &r(&brokers()), v);
        let want = encode_response(9, &r(&rewritten()), v);
        assert_eq!(
            through(&c, 1, v, &FetchRequest::default(), &resp, 7),
            want,
            "fetch v{v}"
        );
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
