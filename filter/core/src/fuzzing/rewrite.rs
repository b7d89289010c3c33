//! The `rewrite` target: [`rewrite_response`] and [`rewrite_metadata_head`] on arbitrary
//! response bodies of every API that carries broker addresses, at every version byte.
//!
//! Input format:
//!
//! ```text
//! byte 0   API: index into REWRITE_APIS (modulo its length)
//! byte 1   version: modulo (the filter's highest version of the API + 2), so one version
//!          past the highest is tried too
//! byte 2   rewriter: index into REWRITERS (modulo its length)
//! rest     the response body (after the response header), at most MAX_INPUT bytes
//! ```
//!
//! Properties:
//!
//! 1. no panic, and no allocation sized by a wire count that the bytes do not back;
//! 2. a rewritten body is a valid message of the same API and version (the filter's own
//!    walk accepts it and kafka-protocol decodes it);
//! 3. a rewrite changes addresses only: the rewritten message equals the original one with
//!    each advertised address replaced by what the rules map it to;
//! 4. "nothing changes" (`Ok(None)`, the body is relayed as it is) only when no advertised
//!    address maps to anything else: no internal address leaks unrewritten;
//! 5. a valid message is never refused (`Err`);
//! 6. for the idempotent rule sets, rewriting a rewritten body changes nothing;
//! 7. Metadata heads (the path for responses too large to hold): on a valid message the
//!    head rewrite finds the end of the brokers array, and the rewritten head followed by
//!    the untouched rest decodes to the same message as the whole-body rewrite; and the
//!    head rewrite is stable under streaming: on any prefix shorter than that end it asks
//!    for more bytes (`Ok(None)`), on any longer prefix it gives the same answer.

use std::cell::OnceCell;

use bytes::Bytes as Buf;
use kafka_protocol::messages::{
    DescribeClusterResponse, FetchResponse, FindCoordinatorResponse, MetadataResponse,
    ProduceResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::{capped, pending, Bytes};
use crate::codec::api;
use crate::codec::walk;
use crate::rewrite::{
    rewrite_metadata_head, rewrite_response, RewriteSpec, Rewriter, DESCRIBE_CLUSTER,
    FIND_COORDINATOR,
};

/// The APIs whose responses carry addresses: Metadata, FindCoordinator, DescribeCluster,
/// Produce (KIP-951 NodeEndpoints, v10+), Fetch (NodeEndpoints, v16+).
pub const REWRITE_APIS: &[i16] = &[
    api::METADATA,
    FIND_COORDINATOR,
    DESCRIBE_CLUSTER,
    api::PRODUCE,
    api::FETCH,
];

/// Rule sets: the `rewrite` section of a config, and whether rewriting twice is the same
/// as rewriting once (property 6).
pub const REWRITERS: &[(&str, bool)] = &[
    (
        r#"{"nodeTemplate": "gw-{nodeId}.mesh.example.com:{19092+nodeId}", "nodeEndpoints": "rewrite"}"#,
        true,
    ),
    (
        r#"{"nodes": {"0": "kafka-0.mesh:9092", "1": "kafka-1.mesh:{port}"},
            "hosts": {"broker-2.internal": "b2.mesh:9094", "broker-3.internal:9092": "b3.mesh:{port}"},
            "hostPatterns": [{"match": "^broker-([0-9]+)\\.internal$", "target": "kafka-$1.mesh:{port}"}]}"#,
        true,
    ),
    (
        r#"{"hostPatterns": [{"match": "^(.*)$", "target": "p-$1-{nodeId}:{9000+nodeId}"}]}"#,
        false,
    ),
];

thread_local! {
    static COMPILED: OnceCell<Vec<Option<Rewriter>>> = const { OnceCell::new() };
}

fn compiled(i: usize) -> Option<Rewriter> {
    COMPILED.with(|c| {
        c.get_or_init(|| {
            REWRITERS
                .iter()
                .map(|(json, _)| {
                    let spec: RewriteSpec = serde_json::from_str(json).ok()?;
                    Rewriter::compile(&spec, ".rewrite").ok()
                })
                .collect()
        })
        .get(i)
        .cloned()
        .flatten()
    })
}

/// The rewrite target's input (see the module documentation).
pub fn rewrite_input(api_key: i16, version: i16, rewriter: u8, body: &[u8]) -> Vec<u8> {
    let a = REWRITE_APIS.iter().position(|k| *k == api_key).unwrap_or(0);
    let mut out = vec![
        u8::try_from(a).unwrap_or(0),
        u8::try_from(version.max(0)).unwrap_or(0),
        rewriter,
    ];
    out.extend_from_slice(body);
    out
}

/// The `rewrite` target.
pub fn rewrite(data: &[u8]) {
    let data = capped(data);
    let mut b = Bytes::new(data);
    let Some(api_key) = REWRITE_APIS
        .get(usize::from(b.u8()) % REWRITE_APIS.len())
        .copied()
    else {
        return;
    };
    let max = api::api_info(api_key).map_or(0, |a| a.max_version);
    let span = u8::try_from(max + 2).unwrap_or(u8::MAX);
    let v = i16::from(b.u8() % span.max(1));
    let ri = usize::from(b.u8()) % REWRITERS.len();
    let idempotent = REWRITERS.get(ri).is_some_and(|r| r.1);
    let Some(rw) = compiled(ri) else {
        return; // the rule sets are fixed; the replay test checks each compiles
    };
    let body = b.rest();
    if !pending::KNOWN_TAGS_BOUNDED_FIXED && pending::kp_tags_unsafe(api_key, false, v, body) {
        return; // see pending::KNOWN_TAGS_BOUNDED_FIXED
    }
    if !pending::TAGS_OVER_I32_FIXED
        && Msg::decode(api_key, v, body).is_some_and(|m| m.tags_over_i32())
    {
        return; // see pending::TAGS_OVER_I32_FIXED
    }
    let res = rewrite_response(&rw, api_key, v, body);
    let flexible = api::api_info(api_key).is_some_and(|a| a.is_flexible(v));
    match &res {
        Ok(Some(out)) => {
            // rewrite_response decoded the body: kafka-protocol may decode it again.
            let schema = full_schema(api_key);
            assert!(
                walk::walk_all(schema, v, flexible, out, &mut |_| {}).is_ok(),
                "property 2: the rewritten {} v{v} body is not one the walk accepts",
                api::api_name(api_key)
            );
            let got = Msg::decode(api_key, v, out);
            assert!(
                got.is_some(),
                "property 2: kafka-protocol cannot decode the rewritten {} v{v}",
                api::api_name(api_key)
            );
            // (the harness decodes the original only where that is safe: see pending)
            if let Some(mut want) = Msg::decode(api_key, v, body) {
                want.map(&rw, v);
                assert!(
                    Some(want) == got,
                    "property 3: the rewrite of {} v{v} changed more than addresses",
                    api::api_name(api_key)
                );
            }
            if idempotent {
                let again = rewrite_response(&rw, api_key, v, out);
                assert!(
                    matches!(again, Ok(None)),
                    "property 6: rewriting the rewritten {} v{v} gives {again:?}",
                    api::api_name(api_key)
                );
            }
        }
        Ok(None) => {
            if let Some(mut m) = Msg::decode(api_key, v, body) {
                assert_eq!(
                    m.map(&rw, v),
                    0,
                    "property 4: {} v{v} relayed unchanged with addresses the rules map",
                    api::api_name(api_key)
                );
            }
        }
        Err(_) => {
            let valid = api::api_info(api_key).is_some_and(|a| a.supports(v))
                && walk::walk_all(full_schema(api_key), v, flexible, body, &mut |_| {}).is_ok()
                && Msg::decode(api_key, v, body).is_some();
            assert!(
                !valid,
                "property 5: a valid {} v{v} is refused",
                api::api_name(api_key)
            );
        }
    }
    if api_key == api::METADATA {
        metadata_head(&rw, v, body, &res);
    }
}

fn full_schema(api_key: i16) -> &'static walk::Schema {
    match api_key {
        FIND_COORDINATOR => &walk::S_FIND_COORDINATOR_RESP_FULL,
        DESCRIBE_CLUSTER => &walk::S_DESCRIBE_CLUSTER_RESP,
        api::PRODUCE => &walk::S_PRODUCE_RESP_FULL,
        api::FETCH => &walk::S_FETCH_RESP_FULL,
        _ => &walk::S_METADATA_RESP_FULL,
    }
}

fn metadata_head(
    rw: &Rewriter,
    v: i16,
    body: &[u8],
    full: &Result<Option<Vec<u8>>, crate::codec::reader::DecodeError>,
) {
    let head = rewrite_metadata_head(rw, v, body);
    if let Ok(whole) = full {
        assert!(
            matches!(head, Ok(Some(_))),
            "property 7: no head rewrite of a valid Metadata v{v}: {head:?}"
        );
        let Ok(Some((n, prefix))) = &head else {
            return;
        };
        let mut joined = prefix.clone();
        joined.extend_from_slice(body.get(*n..).unwrap_or(&[]));
        let want = whole.as_deref().unwrap_or(body);
        // Both are valid Metadata bodies of bounded counts: the whole-body rewrite decoded
        // one, and the joined one has the same counts.
        let a = Msg::decode(api::METADATA, v, want);
        let b = if walk::walk_all(
            &walk::S_METADATA_RESP_FULL,
            v,
            api::api_info(api::METADATA).is_some_and(|x| x.is_flexible(v)),
            &joined,
            &mut |_| {},
        )
        .is_ok()
        {
            Msg::decode(api::METADATA, v, &joined)
        } else {
            None
        };
        assert!(
            a.is_some() && a == b,
            "property 7: the head rewrite of Metadata v{v} means something else than the whole-body rewrite"
        );
    }
    if let Ok(Some((n, prefix))) = &head {
        let n = *n;
        for k in [n.saturating_sub(1), n / 2, n.saturating_sub(7)] {
            if k < n {
                let short = rewrite_metadata_head(rw, v, body.get(..k).unwrap_or(&[]));
                assert!(
                    matches!(short, Ok(None)),
                    "property 7: Metadata v{v} head of {k} bytes (brokers end at {n}): {short:?}"
                );
            }
        }
        let exact = rewrite_metadata_head(rw, v, body.get(..n).unwrap_or(&[]));
        assert!(
            matches!(&exact, Ok(Some((m, p))) if *m == n && p == prefix),
            "property 7: Metadata v{v} head cut at the brokers' end gives {exact:?}"
        );
    }
}

/// A decoded address-carrying response.
#[derive(Debug, PartialEq)]
enum Msg {
    Metadata(MetadataResponse),
    FindCoordinator(FindCoordinatorResponse),
    DescribeCluster(DescribeClusterResponse),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
}

fn dec<T: Decodable>(v: i16, body: &[u8]) -> Option<T> {
    T::decode(&mut Buf::copy_from_slice(body), v).ok()
}

impl Msg {
    /// Only for bodies whose counts are bounded (a rewrite decoded them, or the walk has
    /// accepted them and no tagged array is unbounded).
    fn decode(api_key: i16, v: i16, body: &[u8]) -> Option<Msg> {
        if pending::kp_tags_unsafe(api_key, false, v, body) {
            return None;
        }
        let flexible = api::api_info(api_key).is_some_and(|a| a.is_flexible(v));
        walk::walk_all(full_schema(api_key), v, flexible, body, &mut |_| {}).ok()?;
        Some(match api_key {
            api::METADATA => Msg::Metadata(dec(v, body)?),
            FIND_COORDINATOR => Msg::FindCoordinator(dec(v, body)?),
            DESCRIBE_CLUSTER => Msg::DescribeCluster(dec(v, body)?),
            api::PRODUCE => Msg::Produce(dec(v, body)?),
            api::FETCH => Msg::Fetch(dec(v, body)?),
            _ => return None,
        })
    }

    /// Whether a tagged field anywhere has a tag of 2^31 or more (kafka-protocol keeps it
    /// under a negative key, and drops it when it encodes; see pending).
    fn tags_over_i32(&self) -> bool {
        fn neg(t: &std::collections::BTreeMap<i32, Buf>) -> bool {
            t.keys().any(|k| *k < 0)
        }
        match self {
            Msg::Metadata(r) => {
                neg(&r.unknown_tagged_fields)
                    || r.brokers.iter().any(|b| neg(&b.unknown_tagged_fields))
                    || r.topics.iter().any(|t| {
                        neg(&t.unknown_tagged_fields)
                            || t.partitions.iter().any(|p| neg(&p.unknown_tagged_fields))
                    })
            }
            Msg::FindCoordinator(r) => {
                neg(&r.unknown_tagged_fields)
                    || r.coordinators.iter().any(|c| neg(&c.unknown_tagged_fields))
            }
            Msg::DescribeCluster(r) => {
                neg(&r.unknown_tagged_fields)
                    || r.brokers.iter().any(|b| neg(&b.unknown_tagged_fields))
            }
            Msg::Produce(r) => {
                neg(&r.unknown_tagged_fields)
                    || r.node_endpoints
                        .iter()
                        .any(|e| neg(&e.unknown_tagged_fields))
                    || r.responses.iter().any(|t| {
                        neg(&t.unknown_tagged_fields)
                            || t.partition_responses.iter().any(|p| {
                                neg(&p.unknown_tagged_fields)
                                    || neg(&p.current_leader.unknown_tagged_fields)
                                    || p.record_errors
                                        .iter()
                                        .any(|e| neg(&e.unknown_tagged_fields))
                            })
                    })
            }
            Msg::Fetch(r) => {
                neg(&r.unknown_tagged_fields)
                    || r.node_endpoints
                        .iter()
                        .any(|e| neg(&e.unknown_tagged_fields))
                    || r.responses.iter().any(|t| {
                        neg(&t.unknown_tagged_fields)
                            || t.partitions.iter().any(|p| {
                                neg(&p.unknown_tagged_fields)
                                    || neg(&p.diverging_epoch.unknown_tagged_fields)
                                    || neg(&p.current_leader.unknown_tagged_fields)
                                    || neg(&p.snapshot_id.unknown_tagged_fields)
                                    || p.aborted_transactions
                                        .iter()
                                        .flatten()
                                        .any(|a| neg(&a.unknown_tagged_fields))
                            })
                    })
            }
        }
    }

    /// Replace every address the rules map (as the filter documents: all brokers and node
    /// endpoints; FindCoordinator coordinators with a node id, i.e. not -1); how many changed.
    fn map(&mut self, rw: &Rewriter, v: i16) -> usize {
        let mut n = 0;
        let mut swap = |node: i32, host: &mut StrBytes, port: &mut i32| {
            if let Some((h, p)) = rw.map(node, host, *port) {
                *host = StrBytes::from_string(h);
                *port = p;
                n += 1;
            }
        };
        match self {
            Msg::Metadata(r) => {
                for b in &mut r.brokers {
                    swap(b.node_id.0, &mut b.host, &mut b.port);
                }
            }
            Msg::FindCoordinator(r) => {
                if v <= 3 {
                    if r.node_id.0 >= 0 {
                        swap(r.node_id.0, &mut r.host, &mut r.port);
                    }
                } else {
                    for c in &mut r.coordinators {
                        if c.node_id.0 >= 0 {
                            swap(c.node_id.0, &mut c.host, &mut c.port);
                        }
                    }
                }
            }
            Msg::DescribeCluster(r) => {
                for b in &mut r.brokers {
                    swap(b.broker_id.0, &mut b.host, &mut b.port);
                }
            }
            Msg::Produce(r) => {
                for e in &mut r.node_endpoints {
                    swap(e.node_id.0, &mut e.host, &mut e.port);
                }
            }
            Msg::Fetch(r) => {
                for e in &mut r.node_endpoints {
                    swap(e.node_id.0, &mut e.host, &mut e.port);
                }
            }
        }
        n
    }
}
