//! Policy enforcement of the group, transaction and admin APIs (issue 11) through the session
//! with a fake broker: a denied resource never reaches the broker (or only neutralised), and
//! the client gets the error Kafka's authorizer gives.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::type_complexity
)]

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::codec::api;
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
    /// Topic ids the session has learned names for (as from Metadata).
    ids: std::collections::HashMap<[u8; 16], String>,
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

fn gid(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_string()))
}

/// The issue's policy: only `team-a` may use `orders.*` and groups `team-a-*`; everyone
/// may describe.
const TEAMS: &str = r#"{"policy": {"defaultAction": "deny", "rules": [
    {"name": "team-a-topics", "action": "allow", "clientIds": ["team-a"], "operations": ["produce", "consume", "describe", "create"], "topics": ["orders.*"]},
    {"name": "team-a-groups", "action": "allow", "clientIds": ["team-a"], "groups": ["team-a-*"]},
    {"name": "all-describe", "action": "allow", "operations": ["describe"]}
]}}"#;

/// The committed offsets the fake broker holds for every group: (topic, partition, offset).
const COMMITTED: &[(&str, i32, i64)] = &[("orders.eu", 0, 7), ("payments", 0, 9)];

/// A fake broker: OffsetFetch answered as Kafka does at every version (all of a group's
/// offsets when `topics` is null), everything else as [`broker`] answers it.
fn answer(forwarded: &[u8]) -> (Vec<u8>, Vec<(i16, i16, RequestHeader, Bytes)>) {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for f in frames(forwarded) {
        let key = i16::from_be_bytes([f[0], f[1]]);
        let v = i16::from_be_bytes([f[2], f[3]]);
        if let Some(resp) = answer_groups(key, v, f) {
            let mut b = Bytes::copy_from_slice(f);
            let h = RequestHeader::decode(
                &mut b,
                api::api_info(key).unwrap().request_header_version(v),
            )
            .unwrap();
            seen.push((key, v, h, b));
            out.extend(resp);
            continue;
        }
        if key != 9 {
            let mut framed = (f.len() as i32).to_be_bytes().to_vec();
            framed.extend_from_slice(f);
            let (o, s) = broker(&framed);
            out.extend(o);
            seen.extend(s);
            continue;
        }
        let mut b = Bytes::copy_from_slice(f);
        let h = RequestHeader::decode(
            &mut b,
            api::api_info(key).unwrap().request_header_version(v),
        )
        .unwrap();
        seen.push((key, v, h.clone(), b.clone()));
        let r = OffsetFetchRequest::decode(&mut b, v).unwrap();
        let parts = |named: Option<Vec<(String, Vec<i32>)>>| -> Vec<(String, i32, i64)> {
            match named {
                None => COMMITTED
                    .iter()
                    .map(|(t, p, o)| (t.to_string(), *p, *o))
                    .collect(),
                Some(ts) => ts
                    .into_iter()
                    .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p, 7)))
                    .collect(),
            }
        };
        let resp = if v >= 8 {
            OffsetFetchResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        let named = g.topics.as_ref().map(|ts| {
                            ts.iter()
                                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                                .collect()
                        });
                        let mut topics: Vec<offset_fetch_response::OffsetFetchResponseTopics> =
                            Vec::new();
                        for (t, p, o) in parts(named) {
                            let part =
                                offset_fetch_response::OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o);
                            match topics.iter_mut().find(|x| x.name.0.as_str() == t) {
                                Some(x) => x.partitions.push(part),
                                None => topics.push(
                                    offset_fetch_response::OffsetFetchResponseTopics::default()
                                        .with_name(name(&t))
                                        .with_partitions(vec![part]),
                                ),
                            }
                        }
                        offset_fetch_response::OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_topics(topics)
                    })
                    .collect(),
            )
        } else {
            let named = r.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let mut topics: Vec<offset_fetch_response::OffsetFetchResponseTopic> = Vec::new();
            for (t, p, o) in parts(named) {
                let part = offset_fetch_response::OffsetFetchResponsePartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(o);
                match topics.iter_mut().find(|x| x.name.0.as_str() == t) {
                    Some(x) => x.partitions.push(part),
                    None => topics.push(
                        offset_fetch_response::OffsetFetchResponseTopic::default()
                            .with_name(name(&t))
                            .with_partitions(vec![part]),
                    ),
                }
            }
            OffsetFetchResponse::default().with_topics(topics)
        };
        out.extend(encode_response(h.correlation_id, &resp, v));
    }
    (out, seen)
}

/// Client stream in (whole, or cut into `chunk`-byte pieces), the fake broker, the client's
/// responses out. Asserts the connection stays open.
fn roundtrip(
    c: &Rc<Config>,
    obs: &mut Obs,
    reqs: &[u8],
    chunk: usize,
) -> (Vec<(i16, i16, RequestHeader, Bytes)>, Vec<u8>) {
    let mut s = Session::new(c.clone());
    s.set_identity(Identity::default());
    let p = pump(
        &mut s,
        Direction::Request,
        reqs.chunks(chunk.max(1)),
        false,
        obs,
    );
    assert!(!p.closed, "{:?}", obs.malformed);
    let (resps, seen) = answer(&p.out);
    let q = pump(
        &mut s,
        Direction::Response,
        resps.chunks(chunk.max(1)),
        false,
        obs,
    );
    assert!(!q.closed, "{:?}", obs.malformed);
    assert_eq!(s.inflight(), 0);
    (seen, q.out)
}

/// (group, topic, partition, error, committed offset) of an OffsetFetch response, sorted;
/// a group-level error shows as topic "" partition -1.
fn offsets(v: i16, group: &str, r: &OffsetFetchResponse) -> Vec<(String, String, i32, i16, i64)> {
    let mut out = Vec::new();
    if v >= 8 {
        for g in &r.groups {
            if g.error_code != 0 {
                out.push((
                    g.group_id.0.to_string(),
                    String::new(),
                    -1,
                    g.error_code,
                    -1,
                ));
            }
            for t in &g.topics {
                for p in &t.partitions {
                    out.push((
                        g.group_id.0.to_string(),
                        t.name.0.to_string(),
                        p.partition_index,
                        p.error_code,
                        p.committed_offset,
                    ));
                }
            }
        }
    } else {
        if r.error_code != 0 {
            out.push((group.to_string(), String::new(), -1, r.error_code, -1));
        }
        for t in &r.topics {
            for p in &t.partitions {
                out.push((
                    group.to_string(),
                    t.name.0.to_string(),
                    p.partition_index,
                    p.error_code,
                    p.committed_offset,
                ));
            }
        }
    }
    out.sort();
    out
}

fn offset_fetch_req(v: i16, groups: &[(&str, Option<&[(&str, &[i32])]>)]) -> OffsetFetchRequest {
    let topics = |ts: Option<&[(&str, &[i32])]>| {
        ts.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(name(t))
                        .with_partition_indexes(ps.to_vec())
                })
                .collect::<Vec<_>>()
        })
    };
    if v >= 8 {
        OffsetFetchRequest::default().with_groups(
            groups
                .iter()
                .map(|(g, ts)| {
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(gid(g))
                        .with_topics(ts.map(|ts| {
                            ts.iter()
                                .map(|(t, ps)| {
                                    offset_fetch_request::OffsetFetchRequestTopics::default()
                                        .with_name(name(t))
                                        .with_partition_indexes(ps.to_vec())
                                })
                                .collect()
                        }))
                })
                .collect(),
        )
    } else {
        let (g, ts) = groups[0];
        OffsetFetchRequest::default()
            .with_group_id(gid(g))
            .with_topics(topics(ts))
    }
}

type Row = (String, String, i32, i16, i64);

fn row(g: &str, t: &str, p: i32, e: i16, o: i64) -> Row {
    (g.to_string(), t.to_string(), p, e, o)
}

/// Issue 11 point 5: OffsetFetch at every version the filter lets clients use (v1-9), for
/// named topics and for all of a group's offsets, allowed and denied groups: kafka-python's
/// `list_group_offsets` lost its connection on the all-offsets form.
#[test]
fn offset_fetch_every_version_named_and_all_offsets_allowed_and_denied_groups() {
    let c = cfg(TEAMS);
    let named: &[(&str, &[i32])] = &[("orders.eu", &[0]), ("payments", &[0, 1])];
    for v in 1..=9i16 {
        for chunk in [1usize, 7, 1 << 20] {
            // An allowed group, named topics: the denied topic never reaches the broker.
            let reqs = encode_request(
                &hdr(9, v, 11, "team-a"),
                &offset_fetch_req(v, &[("team-a-orders", Some(named))]),
                v,
            );
            let mut obs = Obs::default();
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            let fwd = OffsetFetchRequest::decode(&mut seen[0].3.clone(), v).unwrap();
            let fwd_topics: Vec<String> = if v >= 8 {
                fwd.groups[0]
                    .topics
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|t| t.name.0.to_string())
                    .collect()
            } else {
                fwd.topics
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|t| t.name.0.to_string())
                    .collect()
            };
            assert_eq!(fwd_topics, vec!["orders.eu"], "v{v}");
            let (corr, r): (i32, OffsetFetchResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(corr, 11);
            assert_eq!(
                offsets(v, "team-a-orders", &r),
                vec![
                    row("team-a-orders", "orders.eu", 0, 0, 7),
                    row("team-a-orders", "payments", 0, 29, -1),
                    row("team-a-orders", "payments", 1, 29, -1),
                ],
                "v{v} chunk {chunk}"
            );
            if v < 2 {
                continue; // all of a group's offsets (topics null) is v2+
            }
            // An allowed group, all offsets: the answer drops the topic team-a may not consume.
            let reqs = encode_request(
                &hdr(9, v, 12, "team-a"),
                &offset_fetch_req(v, &[("team-a-orders", None)]),
                v,
            );
            let mut obs = Obs::default();
            let (_, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            let (_, r): (i32, OffsetFetchResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(
                offsets(v, "team-a-orders", &r),
                vec![row("team-a-orders", "orders.eu", 0, 0, 7)],
                "v{v} chunk {chunk}"
            );
            // Another team's group, all offsets: GROUP_AUTHORIZATION_FAILED, nothing asked.
            let reqs = encode_request(
                &hdr(9, v, 13, "intruder"),
                &offset_fetch_req(v, &[("team-a-orders", None)]),
                v,
            );
            let mut obs = Obs::default();
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            assert!(
                seen.iter().all(|s| s.0 != 9 || {
                    let f = OffsetFetchRequest::decode(&mut s.3.clone(), v).unwrap();
                    f.groups.is_empty() && v >= 8
                }),
                "v{v}: the denied group never reaches the broker"
            );
            let (corr, r): (i32, OffsetFetchResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(corr, 13);
            assert_eq!(
                offsets(v, "team-a-orders", &r),
                vec![row("team-a-orders", "", -1, 30, -1)],
                "v{v} chunk {chunk}"
            );
        }
    }
    // v8+ batches groups: one allowed, one denied, in one request.
    for v in 8..=9i16 {
        let reqs = encode_request(
            &hdr(9, v, 14, "team-a"),
            &offset_fetch_req(
                v,
                &[
                    ("team-b-billing", None),
                    ("team-a-orders", Some(&[("orders.eu", &[0][..])][..])),
                ],
            ),
            v,
        );
        let mut obs = Obs::default();
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, 5);
        let fwd = OffsetFetchRequest::decode(&mut seen[0].3.clone(), v).unwrap();
        assert_eq!(fwd.groups.len(), 1);
        assert_eq!(fwd.groups[0].group_id.0.as_str(), "team-a-orders");
        let (_, r): (i32, OffsetFetchResponse) = decode_resp(frames(&back)[0], v);
        assert_eq!(
            offsets(v, "", &r),
            vec![
                row("team-a-orders", "orders.eu", 0, 0, 7),
                row("team-b-billing", "", -1, 30, -1),
            ],
            "v{v}"
        );
    }
}

/// tansu 0.6 answers an OffsetFetch v1-7 for all of a group's offsets without the `topics`
/// array (see `walk::offset_fetch_bare`): the filter must relay that answer, byte for byte,
/// with and without a policy, instead of calling it truncated.
#[test]
fn tansu_offset_fetch_answer_without_topics_is_relayed() {
    for (config, client) in [("{}", "team-a"), (TEAMS, "team-a")] {
        let c = cfg(config);
        for v in 2..=7i16 {
            let mut s = Session::new(c.clone());
            let mut obs = Obs::default();
            let req = encode_request(
                &hdr(9, v, 21, client),
                &offset_fetch_req(v, &[("team-a-orders", None)]),
                v,
            );
            let p = pump(&mut s, Direction::Request, [&req[..]], false, &mut obs);
            assert!(!p.closed, "{:?}", obs.malformed);
            // tansu's bytes: [throttle_time_ms v3+] error_code [tagged fields v6+]
            let mut body = 21i32.to_be_bytes().to_vec();
            if v >= 6 {
                body.push(0); // response header v1 tagged fields
            }
            if v >= 3 {
                body.extend_from_slice(&0i32.to_be_bytes());
            }
            body.extend_from_slice(&0i16.to_be_bytes());
            if v >= 6 {
                body.push(0);
            }
            let mut resp = (body.len() as i32).to_be_bytes().to_vec();
            resp.extend_from_slice(&body);
            for chunk in [1usize, 3, 64] {
                let mut s2 = Session::new(c.clone());
                let p = pump(&mut s2, Direction::Request, [&req[..]], false, &mut obs);
                assert!(!p.closed);
                let q = pump(
                    &mut s2,
                    Direction::Response,
                    resp.chunks(chunk),
                    false,
                    &mut obs,
                );
                assert!(!q.closed, "v{v} {config}: {:?}", obs.malformed);
                assert_eq!(q.out, resp, "v{v}: relayed byte for byte");
                assert_eq!(s2.inflight(), 0);
            }
            let _ = &mut s;
        }
    }
}

/// Under a policy OffsetFetch is advertised up to v9 (v8-9 are enforced): kafka-python 3
/// then batches groups with v8 as it does without the filter.
#[test]
fn under_a_policy_offset_fetch_is_advertised_up_to_v9() {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    let c = cfg(TEAMS);
    let av = ApiVersionsResponse::default().with_api_keys(vec![ApiVersion::default()
        .with_api_key(9)
        .with_max_version(10)]);
    let mut s = Session::new(c);
    let mut obs = Obs::default();
    let req = encode_request(&hdr(18, 3, 1, "c"), &ApiVersionsRequest::default(), 3);
    pump(&mut s, Direction::Request, [&req[..]], false, &mut obs);
    let resp = encode_response(1, &av, 3);
    let p = pump(&mut s, Direction::Response, [&resp[..]], false, &mut obs);
    let (_, r): (i32, ApiVersionsResponse) = decode_resp(frames(&p.out)[0], 3);
    assert_eq!(r.api_keys[0].max_version, 9);
}

/// A frame of `key` at `v` with an empty body: enough for a request the filter refuses
/// without reading its body, or relays unread.
fn bare_request(key: i16, v: i16, corr: i32, client: &'static str) -> Option<Vec<u8>> {
    let mut buf = bytes::BytesMut::new();
    use kafka_protocol::protocol::Encodable;
    // ControlledShutdown v0 has request header v0 (no client id), which kafka-protocol
    // does not encode: that one frame is skipped.
    hdr(key, v, corr, client)
        .encode(
            &mut buf,
            api::api_info(key).unwrap().request_header_version(v),
        )
        .ok()?;
    // The ACL APIs are refused by reading the request (one result per ACL creation or
    // filter): they get a real body with one of each.
    match (key, v) {
        (29, 1..) => DescribeAclsRequest::default().encode(&mut buf, v).ok()?,
        (30, 1..) => CreateAclsRequest::default()
            .with_creations(vec![create_acls_request::AclCreation::default()])
            .encode(&mut buf, v)
            .ok()?,
        (31, 1..) => DeleteAclsRequest::default()
            .with_filters(vec![delete_acls_request::DeleteAclsFilter::default()])
            .encode(&mut buf, v)
            .ok()?,
        _ => {}
    }
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    Some(out)
}

/// Issue 11 point 1, over every API key Kafka 4.x defines (kafka-protocol's table): under a
/// policy, an API whose resources the filter does not check never reaches the broker unless
/// a rule allows it explicitly; the client gets the API's own response with
/// CLUSTER_AUTHORIZATION_FAILED where it has a top-level error code, else the connection is
/// closed.
#[test]
fn every_unchecked_api_key_is_refused_unless_allowed_explicitly() {
    use crate::policy::enforce::{class, Class};
    let c = cfg(TEAMS);
    let mut refused = 0;
    for info in api::APIS {
        let k = info.key;
        for v in [0, info.max_version] {
            let Some(req) = bare_request(k, v, 40, "intruder") else {
                continue;
            };
            let mut s = Session::new(c.clone());
            let mut obs = Obs::default();
            let p = pump(&mut s, Direction::Request, [&req[..]], false, &mut obs);
            match class(k) {
                Class::Unchecked => {
                    refused += 1;
                    if p.closed {
                        assert!(
                            obs.malformed
                                .iter()
                                .any(|m| m.contains("no error response")),
                            "{} v{v}: {:?}",
                            info.name,
                            obs.malformed
                        );
                        continue;
                    }
                    let fwd = frames(&p.out);
                    assert_eq!(fwd.len(), 1);
                    assert_eq!(
                        i16::from_be_bytes([fwd[0][0], fwd[0][1]]),
                        18,
                        "{} v{v} reached the broker",
                        info.name
                    );
                    let (resps, _) = broker(&p.out);
                    let q = pump(&mut s, Direction::Response, [&resps[..]], false, &mut obs);
                    assert!(!q.closed);
                    let frame = frames(&q.out)[0];
                    let key = kafka_protocol::messages::ApiKey::try_from(k).unwrap();
                    let mut b = Bytes::copy_from_slice(frame);
                    let h = ResponseHeader::decode(&mut b, key.response_header_version(v)).unwrap();
                    assert_eq!(h.correlation_id, 40);
                    let r = kafka_protocol::messages::ResponseKind::decode(key, &mut b, v)
                        .unwrap_or_else(|e| panic!("{} v{v}: {e}", info.name));
                    assert!(b.is_empty(), "{} v{v}", info.name);
                    assert!(
                        format!("{r:?}").contains("error_code: 31"),
                        "{} v{v}: {r:?}",
                        info.name
                    );
                }
                // SASL requests are read for the username: an empty body is not one.
                Class::NoResource if k == 17 || k == 36 => {}
                Class::NoResource => {
                    assert!(!p.closed, "{} v{v}", info.name);
                    assert_eq!(p.out, req, "{} v{v} relayed unread", info.name);
                }
                Class::Checked => {}
            }
        }
    }
    assert!(refused > 80, "{refused}");
    // An apiKeys allow rule for the client lets each of them through untouched; a rule about
    // who only (everything) does too; a deny anywhere else for that client does not.
    for (policy, client, pass) in [
        (
            r#"{"policy": {"defaultAction": "deny", "rules": [
                {"name": "ops", "action": "allow", "clientIds": ["ops"], "apiKeys": [KEY]}]}}"#,
            "ops",
            true,
        ),
        (
            r#"{"policy": {"defaultAction": "deny", "rules": [
                {"name": "ops", "action": "allow", "clientIds": ["ops"], "apiKeys": [KEY]}]}}"#,
            "intruder",
            false,
        ),
        (
            r#"{"policy": {"defaultAction": "deny", "rules": [
                {"name": "root", "action": "allow", "clientIds": ["ops"]}, {"name": "x", "action": "allow", "apiKeys": [KEY]}]}}"#,
            "ops",
            true,
        ),
        (
            r#"{"policy": {"defaultAction": "allow", "rules": [
                {"name": "x", "action": "allow", "apiKeys": [0]}]}}"#,
            "anyone",
            true,
        ),
        (
            r#"{"policy": {"defaultAction": "allow", "rules": [
                {"name": "no-pay", "action": "deny", "topics": ["payments"]}]}}"#,
            "anyone",
            false,
        ),
    ] {
        for info in api::APIS
            .iter()
            .filter(|a| class(a.key) == Class::Unchecked)
        {
            let c = cfg(&policy.replace("KEY", &info.key.to_string()));
            let req = bare_request(info.key, info.max_version, 41, client).unwrap();
            let mut s = Session::new(c);
            let mut obs = Obs::default();
            let p = pump(&mut s, Direction::Request, [&req[..]], false, &mut obs);
            assert_eq!(
                !p.closed && p.out == req,
                pass,
                "{} {client} {policy}",
                info.name
            );
        }
    }
}

/// The fake broker's answers to the group and transaction APIs: every group / topic it is
/// sent succeeds, ListGroups lists two teams' groups.
fn answer_groups(key: i16, v: i16, f: &[u8]) -> Option<Vec<u8>> {
    let mut b = Bytes::copy_from_slice(f);
    let h = RequestHeader::decode(
        &mut b,
        api::api_info(key).unwrap().request_header_version(v),
    )
    .unwrap();
    let corr = h.correlation_id;
    Some(match key {
        42 => {
            let r = DeleteGroupsRequest::decode(&mut b, v).unwrap();
            let resp = DeleteGroupsResponse::default().with_results(
                r.groups_names
                    .iter()
                    .map(|g| {
                        delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(g.clone())
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        15 => {
            let r = DescribeGroupsRequest::decode(&mut b, v).unwrap();
            let resp = DescribeGroupsResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        describe_groups_response::DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_group_state(StrBytes::from_static_str("Stable"))
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        69 => {
            let r = ConsumerGroupDescribeRequest::decode(&mut b, v).unwrap();
            let resp = ConsumerGroupDescribeResponse::default().with_groups(
                r.group_ids
                    .iter()
                    .map(|g| {
                        consumer_group_describe_response::DescribedGroup::default()
                            .with_group_id(g.clone())
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        16 => {
            let resp = ListGroupsResponse::default().with_groups(
                ["team-a-orders", "team-b-billing"]
                    .iter()
                    .map(|g| list_groups_response::ListedGroup::default().with_group_id(gid(g)))
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        47 => {
            let r = OffsetDeleteRequest::decode(&mut b, v).unwrap();
            let resp = OffsetDeleteResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        offset_delete_response::OffsetDeleteResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_delete_response::OffsetDeleteResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        28 => {
            let r = TxnOffsetCommitRequest::decode(&mut b, v).unwrap();
            let resp = TxnOffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        25 => encode_response(corr, &AddOffsetsToTxnResponse::default(), v),
        26 => encode_response(corr, &EndTxnResponse::default(), v),
        68 => encode_response(
            corr,
            &ConsumerGroupHeartbeatResponse::default().with_member_epoch(1),
            v,
        ),
        32 => {
            let r = DescribeConfigsRequest::decode(&mut b, v).unwrap();
            let resp = DescribeConfigsResponse::default().with_results(
                r.resources
                    .iter()
                    .map(|x| {
                        describe_configs_response::DescribeConfigsResult::default()
                            .with_resource_type(x.resource_type)
                            .with_resource_name(x.resource_name.clone())
                            .with_configs(vec![
                                describe_configs_response::DescribeConfigsResourceResult::default()
                                    .with_name(StrBytes::from_static_str("retention.ms"))
                                    .with_value(Some(StrBytes::from_static_str("1"))),
                            ])
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        61 => {
            let r = DescribeProducersRequest::decode(&mut b, v).unwrap();
            let resp = DescribeProducersResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        describe_producers_response::TopicResponse::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|p| {
                                        describe_producers_response::PartitionResponse::default()
                                            .with_partition_index(*p)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        23 => {
            let r = OffsetForLeaderEpochRequest::decode(&mut b, v).unwrap();
            let resp = OffsetForLeaderEpochResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                            .with_topic(t.topic.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_for_leader_epoch_response::EpochEndOffset::default()
                                            .with_partition(p.partition)
                                            .with_end_offset(42)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        75 => {
            // Named topics: answered (from the cursor's topic on); none: the broker's whole
            // catalogue, paged with a cursor naming the next topic.
            let r = DescribeTopicPartitionsRequest::decode(&mut b, v).unwrap();
            let topic = |n: &str| {
                describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(name(n)))
                    .with_topic_id(uuid::Uuid::from_u128(7))
                    .with_partitions(vec![
                        describe_topic_partitions_response::DescribeTopicPartitionsResponsePartition::default(),
                    ])
            };
            let resp = if r.topics.is_empty() {
                DescribeTopicPartitionsResponse::default()
                    .with_topics(
                        ["orders.eu", "orders.secret", "payments"]
                            .map(topic)
                            .to_vec(),
                    )
                    .with_next_cursor(Some(
                        describe_topic_partitions_response::Cursor::default()
                            .with_topic_name(name(DTP_NEXT.with(|c| c.get()))),
                    ))
            } else {
                let from = r
                    .cursor
                    .as_ref()
                    .map(|c| c.topic_name.0.to_string())
                    .unwrap_or_default();
                DescribeTopicPartitionsResponse::default().with_topics(
                    r.topics
                        .iter()
                        .filter(|t| t.name.0.as_str() >= from.as_str())
                        .map(|t| topic(&t.name.0))
                        .collect(),
                )
            };
            encode_response(corr, &resp, v)
        }
        76 => encode_response(
            corr,
            &ShareGroupHeartbeatResponse::default().with_member_epoch(1),
            v,
        ),
        77 => {
            let r = ShareGroupDescribeRequest::decode(&mut b, v).unwrap();
            let resp = ShareGroupDescribeResponse::default().with_groups(
                r.group_ids
                    .iter()
                    .map(|g| {
                        share_group_describe_response::DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_group_state(StrBytes::from_static_str("Stable"))
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        78 => encode_response(
            corr,
            &ShareFetchResponse::default().with_acquisition_lock_timeout_ms(30000),
            v,
        ),
        79 => encode_response(corr, &ShareAcknowledgeResponse::default(), v),
        90 => {
            // Named topics answered; all topics (null): the group's whole set.
            let r = DescribeShareGroupOffsetsRequest::decode(&mut b, v).unwrap();
            let resp = DescribeShareGroupOffsetsResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        let named: Vec<String> = match &g.topics {
                            Some(ts) => ts.iter().map(|t| t.topic_name.0.to_string()).collect(),
                            None => vec!["orders.eu".into(), "payments".into()],
                        };
                        describe_share_group_offsets_response::DescribeShareGroupOffsetsResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_topics(
                                named
                                    .iter()
                                    .map(|t| {
                                        describe_share_group_offsets_response::DescribeShareGroupOffsetsResponseTopic::default()
                                            .with_topic_name(name(t))
                                            .with_partitions(vec![
                                                describe_share_group_offsets_response::DescribeShareGroupOffsetsResponsePartition::default()
                                                    .with_start_offset(5),
                                            ])
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        91 => {
            let r = AlterShareGroupOffsetsRequest::decode(&mut b, v).unwrap();
            let resp = AlterShareGroupOffsetsResponse::default()
                .with_error_message(Some(StrBytes::from_static_str("ok, with a message")))
                .with_responses(
                    r.topics
                        .iter()
                        .map(|t| {
                            alter_share_group_offsets_response::AlterShareGroupOffsetsResponseTopic::default()
                                .with_topic_name(t.topic_name.clone())
                                .with_partitions(vec![
                                    alter_share_group_offsets_response::AlterShareGroupOffsetsResponsePartition::default(),
                                ])
                        })
                        .collect(),
                );
            encode_response(corr, &resp, v)
        }
        92 => {
            let r = DeleteShareGroupOffsetsRequest::decode(&mut b, v).unwrap();
            let resp = DeleteShareGroupOffsetsResponse::default().with_responses(
                r.topics
                    .iter()
                    .map(|t| {
                        delete_share_group_offsets_response::DeleteShareGroupOffsetsResponseTopic::default()
                            .with_topic_name(t.topic_name.clone())
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        12 => encode_response(corr, &HeartbeatResponse::default(), v),
        13 => encode_response(corr, &LeaveGroupResponse::default(), v),
        14 => encode_response(
            corr,
            &SyncGroupResponse::default().with_assignment(Bytes::from_static(b"a")),
            v,
        ),
        24 => {
            let r = AddPartitionsToTxnRequest::decode(&mut b, v).unwrap();
            let resp = AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
                r.v3_and_below_topics
                    .iter()
                    .map(|t| {
                        add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                            .with_name(t.name.clone())
                            .with_results_by_partition(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                            .with_partition_index(*p)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
            encode_response(corr, &resp, v)
        }
        _ => return None,
    })
}

thread_local! {
    /// The topic the fake broker's all-topics DescribeTopicPartitions cursor names next.
    static DTP_NEXT: std::cell::Cell<&'static str> = const { std::cell::Cell::new("quotes") };
}

/// (group, error) of a group-list response.
fn group_errors(key: i16, v: i16, frame: &[u8]) -> Vec<(String, i16)> {
    let mut out: Vec<(String, i16)> = match key {
        42 => decode_resp::<DeleteGroupsResponse>(frame, v)
            .1
            .results
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.error_code))
            .collect(),
        15 => decode_resp::<DescribeGroupsResponse>(frame, v)
            .1
            .groups
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.error_code))
            .collect(),
        69 => decode_resp::<ConsumerGroupDescribeResponse>(frame, v)
            .1
            .groups
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.error_code))
            .collect(),
        16 => decode_resp::<ListGroupsResponse>(frame, v)
            .1
            .groups
            .iter()
            .map(|g| (g.group_id.0.to_string(), 0))
            .collect(),
        _ => unreachable!(),
    };
    out.sort();
    out
}

/// Issue 11 point 3: DeleteGroups, DescribeGroups and ConsumerGroupDescribe refuse another
/// team's groups per group (GROUP_AUTHORIZATION_FAILED, never sent to the broker) and pass
/// the caller's own; ListGroups lists only the caller's groups. Every version, under
/// several chunkings.
#[test]
fn group_admin_apis_refuse_or_filter_other_teams_groups_per_group() {
    let c = cfg(TEAMS);
    let groups = ["team-b-billing", "team-a-orders"];
    for (key, versions) in [(42i16, 0..=2i16), (15, 0..=6), (69, 0..=1), (16, 0..=5)] {
        for v in versions {
            let body = |gs: &[&str]| -> Vec<u8> {
                let ids: Vec<GroupId> = gs.iter().map(|g| gid(g)).collect();
                let h = hdr(key, v, 50, "team-a");
                match key {
                    42 => encode_request(
                        &h,
                        &DeleteGroupsRequest::default().with_groups_names(ids),
                        v,
                    ),
                    15 => encode_request(&h, &DescribeGroupsRequest::default().with_groups(ids), v),
                    69 => encode_request(
                        &h,
                        &ConsumerGroupDescribeRequest::default().with_group_ids(ids),
                        v,
                    ),
                    _ => encode_request(&h, &ListGroupsRequest::default(), v),
                }
            };
            for chunk in [1usize, 7, 4096] {
                let reqs = body(&groups);
                let mut obs = Obs::default();
                let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
                assert_eq!(seen.len(), 1);
                let sent = format!("{:?}", seen[0].3);
                assert!(
                    !sent.contains("team-b-billing"),
                    "{key} v{v}: another team's group reached the broker"
                );
                let got = group_errors(key, v, frames(&back)[0]);
                let want = if key == 16 {
                    vec![("team-a-orders".to_string(), 0)]
                } else {
                    vec![
                        ("team-a-orders".to_string(), 0),
                        ("team-b-billing".to_string(), 30),
                    ]
                };
                assert_eq!(got, want, "api {key} v{v} chunk {chunk}");
            }
        }
    }
}

/// OffsetDelete, TxnOffsetCommit, AddOffsetsToTxn, EndTxn and ConsumerGroupHeartbeat check
/// their group (and transactional id, and topics): a denied one is answered with Kafka's
/// error and never reaches the broker.
#[test]
fn offset_delete_transactions_and_consumer_heartbeat_check_group_txn_and_topics() {
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "t", "action": "allow", "clientIds": ["team-a"], "operations": ["consume", "produce"], "topics": ["orders.*"]},
        {"name": "g", "action": "allow", "clientIds": ["team-a"], "groups": ["team-a-*"]},
        {"name": "x", "action": "allow", "clientIds": ["team-a"], "transactionalIds": ["team-a-*"]}
    ]}}"#);
    let mut obs = Obs::default();
    // OffsetDelete: another team's group refused whole; in its own group a denied topic.
    let od = |g: &str| {
        OffsetDeleteRequest::default()
            .with_group_id(gid(g))
            .with_topics(
                ["orders.eu", "payments"]
                    .iter()
                    .map(|t| {
                        offset_delete_request::OffsetDeleteRequestTopic::default()
                            .with_name(name(t))
                            .with_partitions(vec![
                                offset_delete_request::OffsetDeleteRequestPartition::default(),
                            ])
                    })
                    .collect(),
            )
    };
    let reqs = encode_request(&hdr(47, 0, 60, "team-a"), &od("team-b-billing"), 0);
    let (seen, back) = roundtrip(&c, &mut obs, &reqs, 3);
    assert_eq!(seen[0].0, 18, "the denied OffsetDelete became a probe");
    let (_, r): (i32, OffsetDeleteResponse) = decode_resp(frames(&back)[0], 0);
    assert_eq!(r.error_code, 30);
    let reqs = encode_request(&hdr(47, 0, 61, "team-a"), &od("team-a-orders"), 0);
    let (seen, back) = roundtrip(&c, &mut obs, &reqs, 3);
    let fwd = OffsetDeleteRequest::decode(&mut seen[0].3.clone(), 0).unwrap();
    assert_eq!(fwd.topics.len(), 1);
    let (_, r): (i32, OffsetDeleteResponse) = decode_resp(frames(&back)[0], 0);
    let mut got: Vec<(String, i16)> = r
        .topics
        .iter()
        .map(|t| (t.name.0.to_string(), t.partitions[0].error_code))
        .collect();
    got.sort();
    assert_eq!(got, vec![("orders.eu".into(), 0), ("payments".into(), 29)]);
    // TxnOffsetCommit: transactional id, group, topics.
    for v in 0..=5i16 {
        for (txn, group, want) in [
            ("team-b-tx", "team-a-orders", vec![53, 53]),
            ("team-a-tx", "team-b-billing", vec![30, 30]),
            ("team-a-tx", "team-a-orders", vec![0, 29]),
        ] {
            let req = TxnOffsetCommitRequest::default()
                .with_transactional_id(StrBytes::from_string(txn.into()).into())
                .with_group_id(gid(group))
                .with_topics(
                    ["orders.eu", "payments"]
                        .iter()
                        .map(|t| {
                            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                                .with_name(name(t))
                                .with_partitions(vec![txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()])
                        })
                        .collect(),
                );
            let reqs = encode_request(&hdr(28, v, 62, "team-a"), &req, v);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, 5);
            if want[0] != 0 {
                assert_eq!(seen[0].0, 18, "v{v} {txn} {group}");
            }
            let (_, r): (i32, TxnOffsetCommitResponse) = decode_resp(frames(&back)[0], v);
            let mut got: Vec<(String, i16)> = r
                .topics
                .iter()
                .map(|t| (t.name.0.to_string(), t.partitions[0].error_code))
                .collect();
            got.sort();
            assert_eq!(
                got.iter().map(|g| g.1).collect::<Vec<_>>(),
                want,
                "v{v} {txn} {group}"
            );
        }
    }
    // AddOffsetsToTxn and EndTxn.
    for v in 0..=4i16 {
        for (txn, group, want) in [
            ("team-b-tx", "team-a-x", 53),
            ("team-a-tx", "team-b-x", 30),
            ("team-a-tx", "team-a-x", 0),
        ] {
            let req = AddOffsetsToTxnRequest::default()
                .with_transactional_id(StrBytes::from_string(txn.into()).into())
                .with_group_id(gid(group));
            let reqs = encode_request(&hdr(25, v, 63, "team-a"), &req, v);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, 2);
            assert_eq!(seen[0].0 == 18, want != 0);
            let (_, r): (i32, AddOffsetsToTxnResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(r.error_code, want, "v{v} {txn} {group}");
            let req = EndTxnRequest::default()
                .with_transactional_id(StrBytes::from_string(txn.into()).into());
            let reqs = encode_request(&hdr(26, v, 64, "team-a"), &req, v);
            let (_, back) = roundtrip(&c, &mut obs, &reqs, 2);
            let (_, r): (i32, EndTxnResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(
                r.error_code,
                if txn == "team-b-tx" { 53 } else { 0 },
                "v{v}"
            );
        }
    }
    // ConsumerGroupHeartbeat (KIP-848): the group, then the subscribed topics.
    for v in 0..=1i16 {
        for (group, topics, want) in [
            ("team-b-billing", vec!["orders.eu"], 30),
            ("team-a-orders", vec!["orders.eu", "payments"], 29),
            ("team-a-orders", vec!["orders.eu"], 0),
        ] {
            let req = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(gid(group))
                .with_subscribed_topic_names(Some(topics.iter().map(|t| name(t)).collect()));
            let reqs = encode_request(&hdr(68, v, 65, "team-a"), &req, v);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, 4);
            assert_eq!(seen[0].0 == 18, want != 0, "v{v} {group}");
            let (_, r): (i32, ConsumerGroupHeartbeatResponse) = decode_resp(frames(&back)[0], v);
            assert_eq!(r.error_code, want, "v{v} {group} {topics:?}");
        }
    }
}

/// The walk schemas of the topic-naming APIs (issue 11, point 4) accept kafka-protocol's own
/// encodings at every version the filter reads, with every optional part present and absent,
/// and refuse a body cut short or with a byte too many: they are what proves a request's
/// counts before kafka-protocol decodes it.
#[test]
fn topic_api_schemas_walk_kafka_protocol_encodings() {
    use crate::codec::kp::encode;
    use crate::codec::walk::{self, walk_all};
    fn check(s: &'static walk::Schema, key: i16, v: i16, body: Vec<u8>) {
        let flexible = api::api_info(key).unwrap().is_flexible(v);
        walk_all(s, v, flexible, &body, &mut |_| {}).unwrap_or_else(|e| panic!("{key} v{v}: {e}"));
        let mut long = body.clone();
        long.push(0);
        assert!(
            walk_all(s, v, flexible, &long, &mut |_| {}).is_err(),
            "{key} v{v} long"
        );
        for cut in 0..body.len() {
            assert!(
                walk_all(s, v, flexible, &body[..cut], &mut |_| {}).is_err(),
                "{key} v{v} cut at {cut}"
            );
        }
    }
    for v in 1..=4 {
        for keys in [None, Some(vec![StrBytes::from_static_str("retention.ms")])] {
            let r = DescribeConfigsRequest::default()
                .with_resources(vec![
                    describe_configs_request::DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(StrBytes::from_static_str("orders"))
                        .with_configuration_keys(keys.clone()),
                    describe_configs_request::DescribeConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(StrBytes::from_static_str("1")),
                ])
                .with_include_synonyms(v >= 1)
                .with_include_documentation(v >= 3);
            check(&walk::S_DESCRIBE_CONFIGS_REQ, 32, v, encode(&r, v).unwrap());
        }
    }
    let r = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default()
            .with_name(name("orders"))
            .with_partition_indexes(vec![0, 1]),
    ]);
    check(
        &walk::S_DESCRIBE_PRODUCERS_REQ,
        61,
        0,
        encode(&r, 0).unwrap(),
    );
    for v in 2..=4 {
        let r = OffsetForLeaderEpochRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name("orders"))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(3)
                            .with_leader_epoch(5),
                    ]),
            ]);
        check(
            &walk::S_OFFSET_FOR_LEADER_EPOCH_REQ,
            23,
            v,
            encode(&r, v).unwrap(),
        );
    }
    for cursor in [false, true] {
        let r = DescribeTopicPartitionsRequest::default()
            .with_topics(vec![
                describe_topic_partitions_request::TopicRequest::default()
                    .with_name(name("orders")),
            ])
            .with_cursor(cursor.then(|| {
                describe_topic_partitions_request::Cursor::default()
                    .with_topic_name(name("orders"))
                    .with_partition_index(2)
            }));
        check(
            &walk::S_DESCRIBE_TOPIC_PARTITIONS_REQ,
            75,
            0,
            encode(&r, 0).unwrap(),
        );
        let resp = DescribeTopicPartitionsResponse::default()
            .with_topics(vec![
                describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(name("orders")))
                    .with_partitions(vec![
                        describe_topic_partitions_response::DescribeTopicPartitionsResponsePartition::default()
                            .with_replica_nodes(vec![1.into()])
                            .with_eligible_leader_replicas(cursor.then(|| vec![1.into()])),
                    ]),
            ])
            .with_next_cursor(cursor.then(|| {
                describe_topic_partitions_response::Cursor::default().with_topic_name(name("x"))
            }));
        check(
            &walk::S_DESCRIBE_TOPIC_PARTITIONS_RESP,
            75,
            0,
            encode(&resp, 0).unwrap(),
        );
    }
}

/// A policy that lets `team-a` describe and consume `orders.*` but not `orders.secret`, use
/// groups `team-a-*` and nothing else; `ops` may describe broker configs (an `apiKeys` rule).
const TOPIC_APIS: &str = r#"{"policy": {"defaultAction": "deny", "rules": [
    {"name": "no-secret", "action": "deny", "topics": ["orders.secret"]},
    {"name": "t", "action": "allow", "clientIds": ["team-a", "ops"], "operations": ["consume", "describe"], "topics": ["orders.*"]},
    {"name": "g", "action": "allow", "clientIds": ["team-a", "ops"], "groups": ["team-a-*"]},
    {"name": "ops-configs", "action": "allow", "clientIds": ["ops"], "apiKeys": ["DescribeConfigs"]}
]}}"#;

/// Issue 11 point 4: DescribeConfigs checks each resource as Kafka does (DESCRIBE_CONFIGS on
/// the topic, the group, or the cluster): a denied one never reaches the broker and its
/// result carries Kafka's code (29 topic, 30 group, 31 broker); broker resources pass only
/// for a client an `apiKeys` rule allows. Every version kafka-protocol reads, several
/// chunkings.
#[test]
fn describe_configs_checks_topic_group_and_broker_resources() {
    let c = cfg(TOPIC_APIS);
    let resources: &[(i8, &str)] = &[
        (2, "orders.eu"),
        (2, "payments"),
        (2, "orders.secret"),
        (4, "1"),
        (8, "1"),
        (32, "team-a-orders"),
        (32, "team-b-billing"),
    ];
    for (client, broker_code) in [("team-a", 31i16), ("ops", 0)] {
        for v in 1..=4i16 {
            for chunk in [1usize, 5, 4096] {
                let req = DescribeConfigsRequest::default().with_resources(
                    resources
                        .iter()
                        .map(|(t, n)| {
                            describe_configs_request::DescribeConfigsResource::default()
                                .with_resource_type(*t)
                                .with_resource_name(StrBytes::from_string(n.to_string()))
                        })
                        .collect(),
                );
                let hdr = RequestHeader::default()
                    .with_request_api_key(32)
                    .with_request_api_version(v)
                    .with_correlation_id(70)
                    .with_client_id(Some(StrBytes::from_string(client.to_string())));
                let reqs = encode_request(&hdr, &req, v);
                let mut obs = Obs::default();
                let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
                let fwd = DescribeConfigsRequest::decode(&mut seen[0].3.clone(), v).unwrap();
                let mut sent: Vec<(i8, String)> = fwd
                    .resources
                    .iter()
                    .map(|r| (r.resource_type, r.resource_name.to_string()))
                    .collect();
                sent.sort();
                let mut want_sent =
                    vec![(2, "orders.eu".to_string()), (32, "team-a-orders".into())];
                if broker_code == 0 {
                    want_sent.extend([(4, "1".to_string()), (8, "1".to_string())]);
                }
                want_sent.sort();
                assert_eq!(sent, want_sent, "{client} v{v}");
                let (corr, r): (i32, DescribeConfigsResponse) = decode_resp(frames(&back)[0], v);
                assert_eq!(corr, 70);
                let mut got: Vec<(i8, String, i16, usize)> = r
                    .results
                    .iter()
                    .map(|x| {
                        (
                            x.resource_type,
                            x.resource_name.to_string(),
                            x.error_code,
                            x.configs.len(),
                        )
                    })
                    .collect();
                got.sort();
                let mut want: Vec<(i8, String, i16, usize)> = vec![
                    (2, "orders.eu".into(), 0, 1),
                    (2, "orders.secret".into(), 29, 0),
                    (2, "payments".into(), 29, 0),
                    (4, "1".into(), broker_code, usize::from(broker_code == 0)),
                    (8, "1".into(), broker_code, usize::from(broker_code == 0)),
                    (32, "team-a-orders".into(), 0, 1),
                    (32, "team-b-billing".into(), 30, 0),
                ];
                want.sort();
                assert_eq!(got, want, "{client} v{v} chunk {chunk}");
            }
        }
    }
}

/// Issue 11 point 4: DescribeProducers (Kafka: READ on each topic, checked as consume) and
/// OffsetForLeaderEpoch (Kafka: DESCRIBE on each topic): a denied topic never reaches the
/// broker, its partitions answer TOPIC_AUTHORIZATION_FAILED, the others the broker's answer.
#[test]
fn describe_producers_and_offset_for_leader_epoch_check_each_topic() {
    let c = cfg(TOPIC_APIS);
    let topics = ["orders.eu", "payments", "orders.secret"];
    for chunk in [1usize, 3, 4096] {
        let req = DescribeProducersRequest::default().with_topics(
            topics
                .iter()
                .map(|t| {
                    describe_producers_request::TopicRequest::default()
                        .with_name(name(t))
                        .with_partition_indexes(vec![0, 1])
                })
                .collect(),
        );
        let reqs = encode_request(&hdr(61, 0, 71, "team-a"), &req, 0);
        let mut obs = Obs::default();
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
        let fwd = DescribeProducersRequest::decode(&mut seen[0].3.clone(), 0).unwrap();
        assert_eq!(fwd.topics.len(), 1);
        assert_eq!(fwd.topics[0].name.0.as_str(), "orders.eu");
        let (_, r): (i32, DescribeProducersResponse) = decode_resp(frames(&back)[0], 0);
        let mut got: Vec<(String, i32, i16)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("orders.eu".into(), 0, 0),
                ("orders.eu".into(), 1, 0),
                ("orders.secret".into(), 0, 29),
                ("orders.secret".into(), 1, 29),
                ("payments".into(), 0, 29),
                ("payments".into(), 1, 29),
            ]
        );
        for v in 2..=4i16 {
            let req = OffsetForLeaderEpochRequest::default()
                .with_replica_id((-1).into())
                .with_topics(
                    topics
                        .iter()
                        .map(|t| {
                            offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                                .with_topic(name(t))
                                .with_partitions(vec![
                                    offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                        .with_partition(2)
                                        .with_leader_epoch(1),
                                ])
                        })
                        .collect(),
                );
            let reqs = encode_request(&hdr(23, v, 72, "team-a"), &req, v);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            let fwd = OffsetForLeaderEpochRequest::decode(&mut seen[0].3.clone(), v).unwrap();
            assert_eq!(fwd.topics.len(), 1, "v{v}");
            assert_eq!(fwd.topics[0].topic.0.as_str(), "orders.eu");
            let (_, r): (i32, OffsetForLeaderEpochResponse) = decode_resp(frames(&back)[0], v);
            let mut got: Vec<(String, i16, i64)> = r
                .topics
                .iter()
                .map(|t| {
                    let p = &t.partitions[0];
                    (t.topic.0.to_string(), p.error_code, p.end_offset)
                })
                .collect();
            got.sort();
            assert_eq!(
                got,
                vec![
                    ("orders.eu".into(), 0, 42),
                    ("orders.secret".into(), 29, -1),
                    ("payments".into(), 29, -1),
                ],
                "v{v} chunk {chunk}"
            );
        }
    }
}

fn dtp(topics: &[&str], cursor: Option<&str>) -> DescribeTopicPartitionsRequest {
    DescribeTopicPartitionsRequest::default()
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    describe_topic_partitions_request::TopicRequest::default().with_name(name(t))
                })
                .collect(),
        )
        .with_cursor(cursor.map(|c| {
            describe_topic_partitions_request::Cursor::default()
                .with_topic_name(name(c))
                .with_partition_index(3)
        }))
}

/// (name, error, topic id is zero) of a DescribeTopicPartitions answer, sorted.
fn dtp_topics(r: &DescribeTopicPartitionsResponse) -> Vec<(String, i16, bool)> {
    let mut out: Vec<(String, i16, bool)> = r
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().unwrap().0.to_string(),
                t.error_code,
                t.topic_id.is_nil(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Issue 11 point 4: DescribeTopicPartitions (Kafka: DESCRIBE on each topic). Named topics: a
/// denied one never reaches the broker and answers TOPIC_AUTHORIZATION_FAILED with the zero
/// topic id; a request with only denied topics is answered by the filter (an empty list would
/// ask the broker for every topic); a cursor on a denied topic moves to the next topic left.
/// All topics: denied topics are dropped from the answer, and a next cursor naming one is
/// dropped too.
#[test]
fn describe_topic_partitions_checks_named_topics_and_filters_listings() {
    let c = cfg(TOPIC_APIS);
    for chunk in [1usize, 6, 4096] {
        let mut obs = Obs::default();
        // Named.
        let reqs = encode_request(
            &hdr(75, 0, 73, "team-a"),
            &dtp(&["payments", "orders.eu"], None),
            0,
        );
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
        let fwd = DescribeTopicPartitionsRequest::decode(&mut seen[0].3.clone(), 0).unwrap();
        assert_eq!(fwd.topics.len(), 1);
        assert_eq!(fwd.topics[0].name.0.as_str(), "orders.eu");
        let (_, r): (i32, DescribeTopicPartitionsResponse) = decode_resp(frames(&back)[0], 0);
        assert_eq!(
            dtp_topics(&r),
            vec![
                ("orders.eu".into(), 0, false),
                ("payments".into(), 29, true)
            ]
        );
        // Only denied topics: answered by the filter, the broker sees a probe.
        let reqs = encode_request(
            &hdr(75, 0, 74, "team-a"),
            &dtp(&["payments", "orders.secret"], None),
            0,
        );
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
        assert_eq!(seen[0].0, 18);
        let (corr, r): (i32, DescribeTopicPartitionsResponse) = decode_resp(frames(&back)[0], 0);
        assert_eq!(corr, 74);
        assert_eq!(
            dtp_topics(&r),
            vec![
                ("orders.secret".into(), 29, true),
                ("payments".into(), 29, true)
            ]
        );
        // A cursor on a denied topic: moves to the next topic left; the denied topics before
        // the cursor are neither sent nor answered (Kafka answers from the cursor on).
        let reqs = encode_request(
            &hdr(75, 0, 75, "team-a"),
            &dtp(
                &["orders.a", "orders.secret", "orders.z", "payments"],
                Some("orders.secret"),
            ),
            0,
        );
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
        let fwd = DescribeTopicPartitionsRequest::decode(&mut seen[0].3.clone(), 0).unwrap();
        let sent: Vec<&str> = fwd.topics.iter().map(|t| t.name.0.as_str()).collect();
        assert_eq!(sent, vec!["orders.a", "orders.z"]);
        let cur = fwd.cursor.unwrap();
        assert_eq!(
            (cur.topic_name.0.as_str(), cur.partition_index),
            ("orders.z", 0)
        );
        let (_, r): (i32, DescribeTopicPartitionsResponse) = decode_resp(frames(&back)[0], 0);
        assert_eq!(
            dtp_topics(&r),
            vec![
                ("orders.secret".into(), 29, true),
                ("orders.z".into(), 0, false),
                ("payments".into(), 29, true)
            ]
        );
        // All topics: filtered; the cursor is kept when it names an allowed topic.
        for (next, kept) in [("payments", false), ("orders.x", true)] {
            DTP_NEXT.with(|c| c.set(next));
            let reqs = encode_request(&hdr(75, 0, 76, "team-a"), &dtp(&[], None), 0);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            assert_eq!(seen[0].0, 75);
            let (_, r): (i32, DescribeTopicPartitionsResponse) = decode_resp(frames(&back)[0], 0);
            assert_eq!(dtp_topics(&r), vec![("orders.eu".into(), 0, false)]);
            assert_eq!(r.next_cursor.is_some(), kept, "cursor {next}");
        }
        DTP_NEXT.with(|c| c.set("quotes"));
    }
}

/// The share-group request schemas (KIP-932, v1) accept kafka-protocol's encodings and refuse
/// a body cut short or with a byte too many.
#[test]
fn share_group_schemas_walk_kafka_protocol_encodings() {
    use crate::codec::kp::encode;
    use crate::codec::walk::{self, walk_all};
    fn check(s: &'static walk::Schema, key: i16, body: Vec<u8>) {
        walk_all(s, 1, true, &body, &mut |_| {}).unwrap_or_else(|e| panic!("{key}: {e}"));
        let mut long = body.clone();
        long.push(0);
        assert!(
            walk_all(s, 1, true, &long, &mut |_| {}).is_err(),
            "{key} long"
        );
        for cut in 0..body.len() {
            assert!(
                walk_all(s, 1, true, &body[..cut], &mut |_| {}).is_err(),
                "{key} cut {cut}"
            );
        }
    }
    for subscribed in [None, Some(vec![name("orders.eu")])] {
        let r = ShareGroupHeartbeatRequest::default()
            .with_group_id(gid("g"))
            .with_member_id(StrBytes::from_static_str("m"))
            .with_rack_id(Some(StrBytes::from_static_str("r")))
            .with_subscribed_topic_names(subscribed);
        check(
            &walk::S_SHARE_GROUP_HEARTBEAT_REQ,
            76,
            encode(&r, 1).unwrap(),
        );
    }
    let batch = share_fetch_request::AcknowledgementBatch::default()
        .with_first_offset(1)
        .with_last_offset(4)
        .with_acknowledge_types(vec![1, 2]);
    let r = ShareFetchRequest::default()
        .with_group_id(Some(gid("g")))
        .with_member_id(Some(StrBytes::from_static_str("m")))
        .with_topics(vec![share_fetch_request::FetchTopic::default()
            .with_topic_id(uuid::Uuid::from_u128(1))
            .with_partitions(vec![
                share_fetch_request::FetchPartition::default()
                    .with_partition_index(2)
                    .with_acknowledgement_batches(vec![batch]),
            ])])
        .with_forgotten_topics_data(vec![share_fetch_request::ForgottenTopic::default()
            .with_topic_id(uuid::Uuid::from_u128(2))
            .with_partitions(vec![0])]);
    check(&walk::S_SHARE_FETCH_REQ, 78, encode(&r, 1).unwrap());
    let r = ShareAcknowledgeRequest::default()
        .with_group_id(Some(gid("g")))
        .with_topics(vec![share_acknowledge_request::AcknowledgeTopic::default()
            .with_topic_id(uuid::Uuid::from_u128(1))
            .with_partitions(vec![
                share_acknowledge_request::AcknowledgePartition::default()
                    .with_partition_index(2)
                    .with_acknowledgement_batches(vec![
                        share_acknowledge_request::AcknowledgementBatch::default()
                            .with_acknowledge_types(vec![1]),
                    ]),
            ])]);
    check(&walk::S_SHARE_ACKNOWLEDGE_REQ, 79, encode(&r, 1).unwrap());
}

/// Issue 11 point 3, share groups (KIP-932): ShareGroupHeartbeat checks the group and the
/// subscribed topics (consume); ShareGroupDescribe refuses another team's group per group;
/// ShareFetch and ShareAcknowledge check the group and every topic id (names learned from
/// Metadata; an unknown id is denied). A refused request never reaches the broker and the
/// client gets the API's response with Kafka's code.
#[test]
fn share_group_apis_check_group_and_topics() {
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "t", "action": "allow", "clientIds": ["team-a"], "operations": ["consume", "describe"], "topics": ["orders.*"]},
        {"name": "g", "action": "allow", "clientIds": ["team-a"], "groups": ["team-a-*"]}
    ]}}"#);
    let ids = std::collections::HashMap::from([
        ([1u8; 16], "orders.eu".to_string()),
        ([2u8; 16], "payments".to_string()),
    ]);
    for chunk in [1usize, 4, 4096] {
        let mut obs = Obs {
            ids: ids.clone(),
            ..Obs::default()
        };
        for (group, topics, want) in [
            ("team-b-share", vec!["orders.eu"], 30),
            ("team-a-share", vec!["orders.eu", "payments"], 29),
            ("team-a-share", vec!["orders.eu"], 0),
        ] {
            let req = ShareGroupHeartbeatRequest::default()
                .with_group_id(gid(group))
                .with_subscribed_topic_names(Some(topics.iter().map(|t| name(t)).collect()));
            let reqs = encode_request(&hdr(76, 1, 80, "team-a"), &req, 1);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            assert_eq!(seen[0].0 == 18, want != 0, "{group} {topics:?}");
            let (corr, r): (i32, ShareGroupHeartbeatResponse) = decode_resp(frames(&back)[0], 1);
            assert_eq!((corr, r.error_code), (80, want), "{group} {topics:?}");
        }
        let req = ShareGroupDescribeRequest::default()
            .with_group_ids(vec![gid("team-b-share"), gid("team-a-share")]);
        let reqs = encode_request(&hdr(77, 1, 81, "team-a"), &req, 1);
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
        let fwd = ShareGroupDescribeRequest::decode(&mut seen[0].3.clone(), 1).unwrap();
        assert_eq!(fwd.group_ids, vec![gid("team-a-share")]);
        let (_, r): (i32, ShareGroupDescribeResponse) = decode_resp(frames(&back)[0], 1);
        let mut got: Vec<(String, i16)> = r
            .groups
            .iter()
            .map(|g| (g.group_id.0.to_string(), g.error_code))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("team-a-share".into(), 0), ("team-b-share".into(), 30)]
        );
        for (group, topic, want) in [
            ("team-b-share", [1u8; 16], 30),
            ("team-a-share", [2u8; 16], 29),
            ("team-a-share", [9u8; 16], 29), // an id nobody named
            ("team-a-share", [1u8; 16], 0),
        ] {
            let id = uuid::Uuid::from_bytes(topic);
            let fetch = ShareFetchRequest::default()
                .with_group_id(Some(gid(group)))
                .with_member_id(Some(StrBytes::from_static_str("m")))
                .with_topics(vec![share_fetch_request::FetchTopic::default()
                    .with_topic_id(id)
                    .with_partitions(vec![
                        share_fetch_request::FetchPartition::default(),
                    ])]);
            let reqs = encode_request(&hdr(78, 1, 82, "team-a"), &fetch, 1);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            assert_eq!(seen[0].0 == 18, want != 0, "share fetch {group}");
            let (_, r): (i32, ShareFetchResponse) = decode_resp(frames(&back)[0], 1);
            assert_eq!(r.error_code, want, "share fetch {group} {topic:?}");
            let ack = ShareAcknowledgeRequest::default()
                .with_group_id(Some(gid(group)))
                .with_topics(vec![share_acknowledge_request::AcknowledgeTopic::default()
                    .with_topic_id(id)
                    .with_partitions(vec![
                        share_acknowledge_request::AcknowledgePartition::default(),
                    ])]);
            let reqs = encode_request(&hdr(79, 1, 83, "team-a"), &ack, 1);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            assert_eq!(seen[0].0 == 18, want != 0, "share ack {group}");
            let (_, r): (i32, ShareAcknowledgeResponse) = decode_resp(frames(&back)[0], 1);
            assert_eq!(r.error_code, want, "share ack {group} {topic:?}");
        }
    }
}

/// AddPartitionsToTxn (24), as Kafka answers it (KafkaApis.scala,
/// `handleAddPartitionsToTxnRequest`): v0-3 (clients) check WRITE on the transactional id
/// (every partition TRANSACTIONAL_ID_AUTHORIZATION_FAILED) and on each topic (produce here):
/// a denied topic fails TOPIC_AUTHORIZATION_FAILED and the others OPERATION_NOT_ATTEMPTED, and
/// nothing reaches the broker. v4+ batch transactions for brokers (CLUSTER_ACTION): refused
/// with CLUSTER_AUTHORIZATION_FAILED unless an `apiKeys` rule allows them.
#[test]
fn add_partitions_to_txn_checks_txn_id_and_topics() {
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "t", "action": "allow", "clientIds": ["team-a"], "operations": ["produce"], "topics": ["orders.*"]},
        {"name": "x", "action": "allow", "clientIds": ["team-a"], "transactionalIds": ["team-a-*"]},
        {"name": "brokers", "action": "allow", "clientIds": ["broker"], "apiKeys": ["AddPartitionsToTxn"]}
    ]}}"#);
    let topics = |ts: &[&str]| -> Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic> {
        ts.iter()
            .map(|t| {
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(name(t))
                    .with_partitions(vec![0, 1])
            })
            .collect()
    };
    for v in 0..=3i16 {
        for chunk in [1usize, 5, 4096] {
            for (txn, ts, want) in [
                ("team-b-tx", vec!["orders.eu"], vec![("orders.eu", 53)]),
                (
                    "team-a-tx",
                    vec!["orders.eu", "payments"],
                    vec![("orders.eu", 55), ("payments", 29)],
                ),
                (
                    "team-a-tx",
                    vec!["orders.eu", "orders.us"],
                    vec![("orders.eu", 0), ("orders.us", 0)],
                ),
            ] {
                let req = AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(StrBytes::from_string(txn.into()).into())
                    .with_v3_and_below_topics(topics(&ts));
                let reqs = encode_request(&hdr(24, v, 90, "team-a"), &req, v);
                let mut obs = Obs::default();
                let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
                let refused = want.iter().any(|w| w.1 != 0);
                assert_eq!(seen[0].0 == 18, refused, "v{v} {txn} {ts:?}");
                let (corr, r): (i32, AddPartitionsToTxnResponse) = decode_resp(frames(&back)[0], v);
                assert_eq!(corr, 90);
                let mut got: Vec<(String, i16)> = Vec::new();
                for t in &r.results_by_topic_v3_and_below {
                    assert_eq!(t.results_by_partition.len(), 2);
                    for p in &t.results_by_partition {
                        got.push((t.name.0.to_string(), p.partition_error_code));
                    }
                }
                got.sort();
                got.dedup();
                let want: Vec<(String, i16)> =
                    want.iter().map(|(t, c)| (t.to_string(), *c)).collect();
                assert_eq!(got, want, "v{v} {txn} chunk {chunk}");
            }
        }
    }
    // v4+: for brokers only.
    for v in 4..=5i16 {
        let req = AddPartitionsToTxnRequest::default().with_transactions(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                .with_transactional_id(StrBytes::from_static_str("team-a-tx").into())
                .with_topics(topics(&["orders.eu"])),
        ]);
        for (client, pass) in [("team-a", false), ("broker", true)] {
            let h = RequestHeader::default()
                .with_request_api_key(24)
                .with_request_api_version(v)
                .with_correlation_id(91)
                .with_client_id(Some(StrBytes::from_static_str(client)));
            let reqs = encode_request(&h, &req, v);
            let mut s = Session::new(c.clone());
            let mut obs = Obs::default();
            let p = pump(&mut s, Direction::Request, [&reqs[..]], false, &mut obs);
            assert!(!p.closed);
            if pass {
                assert_eq!(p.out, reqs, "v{v}: allowed explicitly, relayed unread");
                continue;
            }
            assert_eq!(i16::from_be_bytes([p.out[4], p.out[5]]), 18, "v{v}");
            let (resps, _) = broker(&p.out);
            let q = pump(&mut s, Direction::Response, [&resps[..]], false, &mut obs);
            let (corr, r): (i32, AddPartitionsToTxnResponse) = decode_resp(frames(&q.out)[0], v);
            assert_eq!((corr, r.error_code), (91, 31), "v{v}");
        }
    }
}

/// The classic group membership APIs, Heartbeat (12), LeaveGroup (13) and SyncGroup (14) (JoinGroup
/// is in `policy.rs`), every version: Kafka asks READ on the group (KafkaApis.scala,
/// `handleHeartbeatRequest`, `handleLeaveGroupRequest`, `handleSyncGroupRequest`); another
/// team's group never reaches the broker and the client gets GROUP_AUTHORIZATION_FAILED in
/// the API's own response; its own group goes through.
#[test]
fn heartbeat_leave_and_sync_group_check_the_group_every_version() {
    let c = cfg(TEAMS);
    for (key, max) in [(12i16, 4i16), (13, 5), (14, 5)] {
        for v in 0..=max {
            for (group, want) in [("team-b-billing", 30i16), ("team-a-orders", 0)] {
                let reqs = match key {
                    12 => encode_request(
                        &hdr(key, v, 95, "team-a"),
                        &HeartbeatRequest::default().with_group_id(gid(group)),
                        v,
                    ),
                    13 => encode_request(
                        &hdr(key, v, 95, "team-a"),
                        &LeaveGroupRequest::default().with_group_id(gid(group)),
                        v,
                    ),
                    _ => encode_request(
                        &hdr(key, v, 95, "team-a"),
                        &SyncGroupRequest::default().with_group_id(gid(group)),
                        v,
                    ),
                };
                let mut obs = Obs::default();
                let (seen, back) = roundtrip(&c, &mut obs, &reqs, 3);
                assert_eq!(seen[0].0 == 18, want != 0, "{key} v{v} {group}");
                let frame = frames(&back)[0];
                let (corr, code) = match key {
                    12 => {
                        let (c, r): (i32, HeartbeatResponse) = decode_resp(frame, v);
                        (c, r.error_code)
                    }
                    13 => {
                        let (c, r): (i32, LeaveGroupResponse) = decode_resp(frame, v);
                        (c, r.error_code)
                    }
                    _ => {
                        let (c, r): (i32, SyncGroupResponse) = decode_resp(frame, v);
                        (c, r.error_code)
                    }
                };
                assert_eq!((corr, code), (95, want), "{key} v{v} {group}");
            }
        }
    }
}

/// DeleteTopics (20), every version the policy reads (v1-6; v6 by name): Kafka asks DELETE on
/// each topic (KafkaApis.scala, `handleDeleteTopicsRequest`); a topic the client may not
/// delete never reaches the broker and answers TOPIC_AUTHORIZATION_FAILED, the others are
/// deleted.
#[test]
fn delete_topics_checks_each_topic_for_delete() {
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "d", "action": "allow", "clientIds": ["team-a"], "operations": ["delete"], "topics": ["orders.*"]}
    ]}}"#);
    for v in 1..=6i16 {
        let req = if v >= 6 {
            DeleteTopicsRequest::default().with_topics(
                ["orders.eu", "payments"]
                    .iter()
                    .map(|t| {
                        delete_topics_request::DeleteTopicState::default().with_name(Some(name(t)))
                    })
                    .collect(),
            )
        } else {
            DeleteTopicsRequest::default()
                .with_topic_names(vec![name("orders.eu"), name("payments")])
        };
        let reqs = encode_request(&hdr(20, v, 96, "team-a"), &req, v);
        let mut obs = Obs::default();
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, 2);
        let sent = format!(
            "{:?}",
            DeleteTopicsRequest::decode(&mut seen[0].3.clone(), v).unwrap()
        );
        assert!(
            sent.contains("orders.eu") && !sent.contains("payments"),
            "v{v}: {sent}"
        );
        let (_, r): (i32, DeleteTopicsResponse) = decode_resp(frames(&back)[0], v);
        let mut got: Vec<(String, i16)> = r
            .responses
            .iter()
            .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("orders.eu".into(), 0), ("payments".into(), 29)],
            "v{v}"
        );
    }
}

/// The share-group offset admin APIs (KIP-932): DescribeShareGroupOffsets checks every group
/// (GROUP_AUTHORIZATION_FAILED) and every topic for describe (TOPIC_AUTHORIZATION_FAILED
/// inside its group; an all-topics answer filtered); AlterShareGroupOffsets and
/// DeleteShareGroupOffsets refuse another team's group whole and each denied topic per topic.
/// Nothing denied reaches the broker. The schemas accept kafka-protocol's encodings and refuse
/// cut ones.
#[test]
fn share_group_offset_apis_check_group_and_topics() {
    use crate::codec::kp::encode;
    use crate::codec::walk::{self, walk_all};
    let c = cfg(r#"{"policy": {"defaultAction": "deny", "rules": [
        {"name": "t", "action": "allow", "clientIds": ["team-a"], "operations": ["consume", "describe"], "topics": ["orders.*"]},
        {"name": "g", "action": "allow", "clientIds": ["team-a"], "groups": ["team-a-*"]}
    ]}}"#);
    let topic = |t: &str| {
        describe_share_group_offsets_request::DescribeShareGroupOffsetsRequestTopic::default()
            .with_topic_name(name(t))
            .with_partitions(vec![0])
    };
    let group = |g: &str, ts: Option<Vec<&str>>| {
        describe_share_group_offsets_request::DescribeShareGroupOffsetsRequestGroup::default()
            .with_group_id(gid(g))
            .with_topics(ts.map(|ts| ts.into_iter().map(topic).collect()))
    };
    let req = DescribeShareGroupOffsetsRequest::default().with_groups(vec![
        group("team-b-share", None),
        group("team-a-named", Some(vec!["orders.eu", "payments"])),
        group("team-a-only-denied", Some(vec!["payments"])),
        group("team-a-all", None),
    ]);
    let body = encode(&req, 0).unwrap();
    walk_all(
        &walk::S_DESCRIBE_SHARE_GROUP_OFFSETS_REQ,
        0,
        true,
        &body,
        &mut |_| {},
    )
    .unwrap();
    assert!(walk_all(
        &walk::S_DESCRIBE_SHARE_GROUP_OFFSETS_REQ,
        0,
        true,
        &body[..body.len() - 1],
        &mut |_| {}
    )
    .is_err());
    for chunk in [1usize, 6, 4096] {
        let reqs = encode_request(&hdr(90, 0, 97, "team-a"), &req, 0);
        let mut obs = Obs::default();
        let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
        let fwd = DescribeShareGroupOffsetsRequest::decode(&mut seen[0].3.clone(), 0).unwrap();
        let sent = format!("{fwd:?}");
        assert!(
            !sent.contains("team-b-share")
                && !sent.contains("payments")
                && !sent.contains("only-denied"),
            "{sent}"
        );
        let (_, r): (i32, DescribeShareGroupOffsetsResponse) = decode_resp(frames(&back)[0], 0);
        let mut got: Vec<(String, String, i16, i64)> = Vec::new();
        for g in &r.groups {
            if g.error_code != 0 {
                got.push((g.group_id.0.to_string(), String::new(), g.error_code, -1));
            }
            for t in &g.topics {
                let p = &t.partitions[0];
                got.push((
                    g.group_id.0.to_string(),
                    t.topic_name.0.to_string(),
                    p.error_code,
                    p.start_offset,
                ));
            }
        }
        got.sort();
        let row = |g: &str, t: &str, e: i16, o: i64| (g.to_string(), t.to_string(), e, o);
        assert_eq!(
            got,
            vec![
                row("team-a-all", "orders.eu", 0, 5),
                row("team-a-named", "orders.eu", 0, 5),
                row("team-a-named", "payments", 29, -1),
                row("team-a-only-denied", "payments", 29, -1),
                row("team-b-share", "", 30, -1),
            ],
            "chunk {chunk}"
        );
    }
    // AlterShareGroupOffsets, DeleteShareGroupOffsets.
    for chunk in [1usize, 5, 4096] {
        for (g, want) in [
            ("team-b-share", vec![("".to_string(), 30i16)]),
            (
                "team-a-share",
                vec![("orders.eu".to_string(), 0), ("payments".to_string(), 29)],
            ),
        ] {
            let alter = AlterShareGroupOffsetsRequest::default()
                .with_group_id(gid(g))
                .with_topics(
                    ["orders.eu", "payments"]
                        .iter()
                        .map(|t| {
                            alter_share_group_offsets_request::AlterShareGroupOffsetsRequestTopic::default()
                                .with_topic_name(name(t))
                                .with_partitions(vec![
                                    alter_share_group_offsets_request::AlterShareGroupOffsetsRequestPartition::default(),
                                ])
                        })
                        .collect(),
                );
            let reqs = encode_request(&hdr(91, 0, 98, "team-a"), &alter, 0);
            let mut obs = Obs::default();
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            let (_, r): (i32, AlterShareGroupOffsetsResponse) = decode_resp(frames(&back)[0], 0);
            let mut got: Vec<(String, i16)> = r
                .responses
                .iter()
                .map(|t| (t.topic_name.0.to_string(), t.partitions[0].error_code))
                .collect();
            if r.error_code != 0 {
                assert_eq!(seen[0].0, 18);
                got.push((String::new(), r.error_code));
            } else {
                let fwd = AlterShareGroupOffsetsRequest::decode(&mut seen[0].3.clone(), 0).unwrap();
                assert_eq!(fwd.topics.len(), 1);
            }
            got.sort();
            assert_eq!(got, want, "alter {g} chunk {chunk}");
            let delete = DeleteShareGroupOffsetsRequest::default()
                .with_group_id(gid(g))
                .with_topics(
                    ["orders.eu", "payments"]
                        .iter()
                        .map(|t| {
                            delete_share_group_offsets_request::DeleteShareGroupOffsetsRequestTopic::default()
                                .with_topic_name(name(t))
                        })
                        .collect(),
                );
            let reqs = encode_request(&hdr(92, 0, 99, "team-a"), &delete, 0);
            let (seen, back) = roundtrip(&c, &mut obs, &reqs, chunk);
            let (_, r): (i32, DeleteShareGroupOffsetsResponse) = decode_resp(frames(&back)[0], 0);
            let mut got: Vec<(String, i16)> = r
                .responses
                .iter()
                .map(|t| (t.topic_name.0.to_string(), t.error_code))
                .collect();
            if r.error_code != 0 {
                assert_eq!(seen[0].0, 18);
                got.push((String::new(), r.error_code));
            } else {
                let fwd =
                    DeleteShareGroupOffsetsRequest::decode(&mut seen[0].3.clone(), 0).unwrap();
                assert_eq!(fwd.topics.len(), 1);
            }
            got.sort();
            assert_eq!(got, want, "delete {g} chunk {chunk}");
        }
    }
}
