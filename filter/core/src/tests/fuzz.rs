//! Never panic, never trust a length: real frames of every kind the filter inspects, mutated
//! (bytes flipped, lengths and counts corrupted, frames cut short, garbage appended) and fed
//! in random chunkings through a session with every feature on (metrics walks, access log,
//! policy holds and rewrites, address rewriting). Debug builds trap on arithmetic overflow, so
//! this also proves the length arithmetic. The outcome may be a close or a pass-through; it
//! must never be a panic, and a session that continues must never emit more bytes than the
//! rewrite rules could have produced from what it was given.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::config::Config;
use crate::session::*;
use crate::testkit::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn hdr(key: i16, v: i16, corr: i32) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("orders-fuzz")))
}

fn batch() -> Bytes {
    Bytes::from(record_batch(0, 3, 20, 0))
}

fn name(s: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(s))
}

/// (requests, responses) of one realistic conversation.
fn corpus() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for v in [3i16, 9, 12, 13] {
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(name("orders.a"))
                    .with_topic_id(uuid::Uuid::from_bytes([1; 16]))
                    .with_partition_data(vec![produce_request::PartitionProduceData::default()
                        .with_records(Some(batch()))]),
                produce_request::TopicProduceData::default()
                    .with_name(name("payments"))
                    .with_partition_data(vec![produce_request::PartitionProduceData::default()
                        .with_index(1)
                        .with_records(Some(batch()))]),
            ]);
        let resp = ProduceResponse::default().with_responses(vec![
            produce_response::TopicProduceResponse::default()
                .with_name(name("orders.a"))
                .with_partition_responses(vec![
                    produce_response::PartitionProduceResponse::default(),
                ]),
        ]);
        out.push((
            encode_request(&hdr(0, v, 1), &req, v),
            encode_response(1, &resp, v),
        ));
    }
    for v in [4i16, 12, 13, 16] {
        let req = FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name("orders.a"))
            .with_topic_id(uuid::Uuid::from_bytes([1; 16]))
            .with_partitions(vec![
                fetch_request::FetchPartition::default().with_fetch_offset(1)
            ])]);
        let resp = FetchResponse::default().with_responses(vec![
            fetch_response::FetchableTopicResponse::default()
                .with_topic(name("orders.a"))
                .with_topic_id(uuid::Uuid::from_bytes([1; 16]))
                .with_partitions(vec![fetch_response::PartitionData::default()
                    .with_high_watermark(9)
                    .with_records(Some(batch()))]),
        ]);
        out.push((
            encode_request(&hdr(1, v, 2), &req, v),
            encode_response(2, &resp, v),
        ));
    }
    for v in [1i16, 9, 12] {
        let md = MetadataResponse::default()
            .with_brokers(vec![metadata_response::MetadataResponseBroker::default()
                .with_host(StrBytes::from_static_str("broker-0.internal"))
                .with_port(9092)])
            .with_topics(vec![metadata_response::MetadataResponseTopic::default()
                .with_name(Some(name("orders.a")))
                .with_topic_id(uuid::Uuid::from_bytes([1; 16]))]);
        out.push((
            encode_request(
                &hdr(3, v, 3),
                &MetadataRequest::default().with_topics(None),
                v,
            ),
            encode_response(3, &md, v),
        ));
    }
    let jg = JoinGroupRequest::default().with_group_id(StrBytes::from_static_str("x").into());
    out.push((
        encode_request(&hdr(11, 5, 4), &jg, 5),
        encode_response(4, &ApiVersionsResponse::default(), 0),
    ));
    let dt = DeleteTopicsRequest::default().with_topic_names(vec![name("orders.a")]);
    out.push((
        encode_request(&hdr(20, 4, 5), &dt, 4),
        encode_response(5, &DeleteTopicsResponse::default(), 4),
    ));
    out.push((
        encode_request(&hdr(18, 3, 6), &ApiVersionsRequest::default(), 3),
        encode_response(6, &ApiVersionsResponse::default(), 3),
    ));
    // Large frames, so that reads end inside heads and guarded fields of buffers over the
    // pause bound (the cut-and-stash path), and responses exceed maxBufferedFrameBytes.
    let big = |n: usize| Bytes::from(record_batch(0, 5, n, 0));
    let parts = |n: usize| {
        (0..2)
            .map(|i| {
                produce_request::PartitionProduceData::default()
                    .with_index(i)
                    .with_records(Some(big(n)))
            })
            .collect::<Vec<_>>()
    };
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(name("orders.a"))
                .with_partition_data(parts(6000)),
            produce_request::TopicProduceData::default()
                .with_name(name("payments"))
                .with_partition_data(parts(3000)),
            produce_request::TopicProduceData::default()
                .with_name(name("orders.b"))
                .with_partition_data(parts(80)),
        ]);
    let resp = ProduceResponse::default().with_responses(
        ["orders.a", "!!!!!!!!", "orders.b"]
            .iter()
            .map(|t| {
                produce_response::TopicProduceResponse::default()
                    .with_name(name(t))
                    .with_partition_responses(vec![
                        produce_response::PartitionProduceResponse::default().with_index(0),
                        produce_response::PartitionProduceResponse::default().with_index(1),
                    ])
            })
            .collect(),
    );
    out.push((
        encode_request(&hdr(0, 9, 7), &req, 9),
        encode_response(7, &resp, 9),
    ));
    let md = MetadataResponse::default()
        .with_brokers(vec![metadata_response::MetadataResponseBroker::default()
            .with_host(StrBytes::from_static_str("broker-0.internal"))
            .with_port(9092)])
        .with_topics(
            (0..120)
                .map(|i| {
                    metadata_response::MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(format!(
                            "{}-{i}",
                            if i % 2 == 0 { "orders.x" } else { "secret" }
                        )))))
                        .with_topic_id(uuid::Uuid::from_bytes([i as u8; 16]))
                })
                .collect(),
        );
    out.push((
        encode_request(
            &hdr(3, 12, 8),
            &MetadataRequest::default().with_topics(None),
            12,
        ),
        encode_response(8, &md, 12),
    ));
    let fr = FetchResponse::default()
        .with_responses(vec![fetch_response::FetchableTopicResponse::default()
            .with_topic_id(uuid::Uuid::from_bytes([1; 16]))
            .with_partitions(vec![fetch_response::PartitionData::default()
                .with_high_watermark(9)
                .with_records(Some(big(9000)))])])
        .with_node_endpoints(vec![fetch_response::NodeEndpoint::default()
            .with_host(StrBytes::from_static_str("broker-0.internal"))
            .with_port(9092)]);
    let fq = FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
        .with_topic_id(uuid::Uuid::from_bytes([1; 16]))
        .with_partitions(vec![fetch_request::FetchPartition::default()])]);
    out.push((
        encode_request(&hdr(1, 16, 9), &fq, 16),
        encode_response(9, &fr, 16),
    ));
    out
}

fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(6) {
        0 => {} // intact
        1 => {
            // flip a few bytes anywhere past the size prefix
            for _ in 0..1 + rng.below(4) {
                if f.len() > 4 {
                    let i = 4 + rng.below(f.len() - 4);
                    f[i] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            // corrupt a length or count: write 0xff.. or a big value at a random offset
            if f.len() > 8 {
                let i = 4 + rng.below(f.len() - 8);
                let v: [u8; 4] = match rng.below(3) {
                    0 => [0xff; 4],
                    1 => [0x7f, 0xff, 0xff, 0xff],
                    _ => [0, 0, 0x10, 0],
                };
                f[i..i + 4].copy_from_slice(&v);
            }
        }
        3 => {
            // cut the body short but keep the size prefix consistent
            let keep = 4 + rng.below(f.len().saturating_sub(4) + 1);
            f.truncate(keep);
            let size = (f.len() - 4) as i32;
            f[..4].copy_from_slice(&size.to_be_bytes());
        }
        4 => {
            // a size prefix that lies
            let v = [(rng.next() as i32), -1, i32::MAX, 0, 3][rng.below(5)];
            f[..4].copy_from_slice(&v.to_be_bytes());
        }
        _ => {
            // garbage after the frame
            for _ in 0..rng.below(40) {
                f.push(rng.next() as u8);
            }
        }
    }
    f
}

fn chunks<'a>(rng: &mut Rng, b: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let max = match rng.below(3) {
            0 => 3,
            1 => 40,
            _ => 4096,
        };
        let n = 1 + rng.below(max);
        let end = (at + n).min(b.len());
        out.push(&b[at..end]);
        at = end;
    }
    out
}

#[test]
fn mutated_conversations_never_panic() {
    let configs = [
        r#"{"accessLog": {"enabled": true, "sampleRate": 0.5},
            "rewrite": {"nodeTemplate": "gw:{19092+nodeId}", "nodeEndpoints": "rewrite"},
            "policy": {"defaultAction": "deny", "rules": [
              {"name": "o", "action": "allow", "clientIds": ["orders-*"], "operations": ["produce", "consume", "describe"], "topics": ["orders.*"],
               "produce": {"maxBatchBytes": 100, "compression": ["none"]}},
              {"name": "nd", "action": "deny", "apiKeys": ["DeleteTopics"]}]}}"#,
        r#"{"onMalformed": "passthrough", "maxBufferedFrameBytes": 1024, "maxFrameBytes": 4096,
            "policy": {"mode": "audit", "rules": [{"name": "x", "action": "deny", "topics": ["*"]}]}}"#,
        r#"{"maxInflightRequests": 2}"#,
    ];
    let corpus = corpus();
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng(seed.max(1));
    let mut outcomes = [0usize; 2];
    let rounds: usize = std::env::var("FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000);
    for round in 0..rounds {
        if std::env::var("FUZZ_TRACE").is_ok() {
            eprintln!("round {round}");
        }
        let cfg = Rc::new(Config::from_json(configs[round % configs.len()].as_bytes()).unwrap());
        let mut s = Session::new(cfg);
        let mut obs = NoopObserver;
        // a conversation of 1-4 exchanges, requests pipelined
        let n = 1 + rng.below(4);
        let picks: Vec<usize> = (0..n).map(|_| rng.below(corpus.len())).collect();
        let mut reqs = Vec::new();
        let mut resps = Vec::new();
        for &i in &picks {
            reqs.extend(mutate(&mut rng, corpus[i].0.clone()));
            resps.extend(mutate(&mut rng, corpus[i].1.clone()));
        }
        let rc = chunks(&mut rng, &reqs);
        let trace = std::env::var("FUZZ_TRACE").is_ok();
        if trace {
            eprintln!("picks {picks:?} reqs {} chunks {}", reqs.len(), rc.len());
        }
        let p = pump(&mut s, Direction::Request, rc, rng.below(4) == 0, &mut obs);
        let sc = chunks(&mut rng, &resps);
        if trace {
            eprintln!(
                "requests done; resps {} chunks {}: {:02x?}",
                resps.len(),
                sc.len(),
                &resps[..resps.len().min(64)]
            );
        }
        let q = pump(&mut s, Direction::Response, sc, rng.below(4) == 0, &mut obs);
        outcomes[usize::from(p.closed || q.closed)] += 1;
        // a rewrite can grow a frame (error entries, longer addresses) but only by what the
        // synthesized parts need: never without bound
        assert!(p.out.len() <= reqs.len() + 64, "round {round}");
        assert!(q.out.len() <= resps.len() + 4096, "round {round}");
    }
    // both outcomes happen: the mutations are strong enough to matter, not all fatal
    assert!(outcomes[0] > 500 && outcomes[1] > 500, "{outcomes:?}");
}
