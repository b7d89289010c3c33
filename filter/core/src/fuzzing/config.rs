//! The `config` target: [`Config::from_json`], the `pluginConfig` parser and validator.
//!
//! Input: any bytes. They are parsed twice: as they are (raw bytes, so UTF-8 and JSON
//! errors are exercised), and as the seed of a generated, always well-formed JSON document
//! whose keys are the real config fields and whose values come from pools of valid and
//! invalid ones (so validation and policy/rewrite compilation are reached at every depth).
//!
//! Properties, for each of the two documents:
//!
//! 1. no panic, whatever the bytes;
//! 2. an error names a JSON path (starting with `.`) and a non-empty reason;
//! 3. an accepted config satisfies every documented bound (frame sizes, in-flight limit,
//!    label caps, unique families, sample rate in (0, 1]) and carries its compiled policy
//!    and rewriter exactly when it has a `policy` / `rewrite` section;
//! 4. an accepted config means the same when written differently: its canonical
//!    re-serialization (parsed into a JSON value and printed again) is accepted and
//!    compiles to an equal config;
//! 5. an accepted config builds a session that carries a short real conversation (every API
//!    the filter inspects, both directions) with the session target's properties 2 to 4.

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::{capped, session, Bytes};
use crate::config::Config;

/// The `config` target.
pub fn config(data: &[u8]) {
    let data = capped(data);
    check(data);
    let doc = generate(&mut Bytes::new(data));
    check(doc.to_string().as_bytes());
}

fn check(bytes: &[u8]) {
    let cfg = match Config::from_json(bytes) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                e.path.starts_with('.') && !e.reason.is_empty(),
                "property 2: an error without a path or reason: {e:?}"
            );
            let _ = e.to_string();
            return;
        }
    };
    bounds(&cfg);
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let strict = serde_json::from_slice::<Value>(bytes);
        if let Ok(v) = &strict {
            let again = Config::from_json(v.to_string().as_bytes());
            assert!(
                again.as_ref() == Ok(&cfg),
                "property 4: the canonical form of an accepted config is {again:?}"
            );
        }
        if super::pending::CONFIG_TRAILING_BYTES_FIXED {
            // The config parser must not accept what a strict JSON parser rejects.
            assert!(
                strict.is_ok(),
                "property 4: accepted a document that is not JSON ({:?})",
                strict.err()
            );
        }
    }
    session::converse(&Rc::new(cfg));
}

fn bounds(c: &Config) {
    assert!(
        (1024..=i32::MAX as u32).contains(&c.max_frame_bytes),
        "property 3: maxFrameBytes {}",
        c.max_frame_bytes
    );
    assert!(
        c.max_buffered_frame_bytes >= 1024 && c.max_buffered_frame_bytes <= c.max_frame_bytes,
        "property 3: maxBufferedFrameBytes {}",
        c.max_buffered_frame_bytes
    );
    assert!(
        (1..=1_000_000).contains(&c.max_inflight_requests),
        "property 3: maxInflightRequests {}",
        c.max_inflight_requests
    );
    let m = &c.metrics;
    for v in [
        m.max_topics,
        m.max_client_ids,
        m.max_groups,
        m.max_lag_partitions,
        m.max_topic_ids,
    ] {
        assert!((1..=100_000).contains(&v), "property 3: a label cap of {v}");
    }
    for (i, f) in m.families.iter().enumerate() {
        assert!(
            !m.families.iter().take(i).any(|g| g == f),
            "property 3: family {f:?} listed twice"
        );
    }
    let r = c.access_log.sample_rate;
    assert!(r > 0.0 && r <= 1.0, "property 3: sampleRate {r}");
    assert_eq!(
        c.policy.is_some(),
        c.compiled_policy.is_some(),
        "property 3: policy without its compiled form"
    );
    assert_eq!(
        c.rewrite.is_some(),
        c.compiled_rewrite.is_some(),
        "property 3: rewrite without its compiled form"
    );
}

// ---- The generated document -------------------------------------------------------------

fn pick(b: &mut Bytes<'_>, pool: &[&str]) -> Value {
    // One value in eight is a string made of the input's own bytes.
    if b.u8() & 7 == 0 {
        let n = b.below(24);
        return Value::from(String::from_utf8_lossy(b.take(n)).into_owned());
    }
    Value::from(pool.get(b.below(pool.len())).copied().unwrap_or(""))
}

fn num(b: &mut Bytes<'_>) -> Value {
    match b.below(12) {
        0 => json!(0),
        1 => json!(1),
        2 => json!(1023),
        3 => json!(1024),
        4 => json!(4096),
        5 => json!(65_536),
        6 => json!(104_857_600),
        7 => json!(2_147_483_647u64),
        8 => json!(2_147_483_648u64),
        9 => json!(-1),
        10 => json!(1.5),
        _ => json!(u32::from(b.u16()) * 16),
    }
}

fn list(b: &mut Bytes<'_>, pool: &[&str]) -> Value {
    let n = b.below(4);
    Value::Array((0..n).map(|_| pick(b, pool)).collect())
}

const GLOBS: &[&str] = &[
    "orders.*",
    "*",
    "?",
    "",
    "a[b",
    "secret-?",
    "spiffe://cluster.local/ns/*",
    "\\",
    "{x}",
    "tx-*",
];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "::1/128",
    "192.168.0.0/33",
    "10.0.0.1",
    "fe80::/10",
    "nope",
    "10.0.0.0/x",
    "::ffff:10.0.0.0/104",
];
const OPERATIONS: &[&str] = &[
    "produce", "consume", "describe", "create", "delete", "alter", "fly",
];
const FAMILIES: &[&str] = &[
    "api", "produce", "fetch", "errors", "lag", "groups", "clients", "bogus",
];
const CODECS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd", "brotli"];
const TARGETS: &[&str] = &[
    "gw:{19092+nodeId}",
    "h-{nodeId}:9092",
    "x:{port}",
    "$1.mesh:{port}",
    "k-$1-$2:9092",
    ":9092",
    "h:",
    "h:70000",
    "h:{9092+nodeId",
    "{bogus}:1",
    "a$9:1",
    "h:{-5+nodeId}",
    "h{port}:{2147483647+nodeId}",
];
const REGEXES: &[&str] = &[
    "^broker-([0-9]+)\\.internal$",
    "(.*)",
    "broker-(\\d+)",
    "[",
    "x{2,1}",
    "(a)(b)?",
    "",
];
const NODE_IDS: &[&str] = &["0", "1", "-1", "x", "2147483648", " 1", "007"];
const HOSTS: &[&str] = &[
    "broker-0.internal",
    "broker-1.internal:9092",
    "",
    ":",
    "h:p",
];
const MODES: &[&str] = &["enforce", "audit", "dry"];
const ACTIONS: &[&str] = &["allow", "deny", "maybe"];

fn api_keys(b: &mut Bytes<'_>) -> Value {
    let n = b.below(4);
    Value::Array(
        (0..n)
            .map(|_| match b.below(8) {
                0 => json!("Produce"),
                1 => json!("DeleteTopics"),
                2 => json!("delete_topics"),
                3 => json!("NoSuchApi"),
                4 => json!(-1),
                5 => json!(93),
                6 => json!(i16::MAX),
                _ => json!(b.below(93)),
            })
            .collect(),
    )
}

fn rule(b: &mut Bytes<'_>) -> Value {
    let mut r = Map::new();
    if b.below(16) != 0 {
        r.insert("name".into(), pick(b, &["r", "orders", "", "deny-all"]));
    }
    if b.below(16) != 0 {
        r.insert("action".into(), pick(b, ACTIONS));
    }
    let flags = b.u16();
    let on = |bit: u16| flags & (1 << bit) != 0;
    if on(0) {
        r.insert("principals".into(), list(b, GLOBS));
    }
    if on(1) {
        r.insert("clientIds".into(), list(b, GLOBS));
    }
    if on(2) {
        r.insert("saslUsers".into(), list(b, GLOBS));
    }
    if on(3) {
        r.insert("sourceCidrs".into(), list(b, CIDRS));
    }
    if on(4) {
        r.insert("operations".into(), list(b, OPERATIONS));
    }
    if on(5) {
        r.insert("topics".into(), list(b, GLOBS));
    }
    if on(6) {
        r.insert("groups".into(), list(b, GLOBS));
    }
    if on(7) {
        r.insert("transactionalIds".into(), list(b, GLOBS));
    }
    if on(8) {
        r.insert("apiKeys".into(), api_keys(b));
    }
    if on(9) {
        let mut p = Map::new();
        if b.bool() {
            let n = b.below(4);
            let acks: Vec<Value> = (0..n)
                .map(|_| match b.below(5) {
                    0 => json!("all"),
                    1 => json!(0),
                    2 => json!(1),
                    3 => json!(-1),
                    _ => json!("none"),
                })
                .collect();
            p.insert("acks".into(), Value::Array(acks));
        }
        if b.bool() {
            p.insert("maxBatchBytes".into(), num(b));
        }
        if b.bool() {
            p.insert("compression".into(), list(b, CODECS));
        }
        r.insert("produce".into(), Value::Object(p));
    }
    if on(10) {
        r.insert("unknownField".into(), json!(true));
    }
    Value::Object(r)
}

fn policy(b: &mut Bytes<'_>) -> Value {
    let mut p = Map::new();
    let flags = b.u8();
    let on = |bit: u8| flags & (1 << bit) != 0;
    if on(0) {
        p.insert("mode".into(), pick(b, MODES));
    }
    if on(1) {
        p.insert("defaultAction".into(), pick(b, ACTIONS));
    }
    if on(2) {
        p.insert("onDeny".into(), pick(b, &["error", "close", "drop"]));
    }
    if on(3) {
        p.insert("unknownTopicIds".into(), pick(b, ACTIONS));
    }
    if on(4) {
        p.insert("hideUnauthorizedTopics".into(), json!(b.bool()));
    }
    let n = b.below(5);
    p.insert(
        "rules".into(),
        Value::Array((0..n).map(|_| rule(b)).collect()),
    );
    Value::Object(p)
}

fn rewrite(b: &mut Bytes<'_>) -> Value {
    let mut r = Map::new();
    let flags = b.u8();
    let on = |bit: u8| flags & (1 << bit) != 0;
    if on(0) {
        let mut m = Map::new();
        for _ in 0..b.below(4) {
            if let (Value::String(k), v) = (pick(b, NODE_IDS), pick(b, TARGETS)) {
                m.insert(k, v);
            }
        }
        r.insert("nodes".into(), Value::Object(m));
    }
    if on(1) {
        r.insert("nodeTemplate".into(), pick(b, TARGETS));
    }
    if on(2) {
        let mut m = Map::new();
        for _ in 0..b.below(4) {
            if let (Value::String(k), v) = (pick(b, HOSTS), pick(b, TARGETS)) {
                m.insert(k, v);
            }
        }
        r.insert("hosts".into(), Value::Object(m));
    }
    if on(3) {
        let n = b.below(4);
        let pats: Vec<Value> = (0..n)
            .map(|_| json!({"match": pick(b, REGEXES), "target": pick(b, TARGETS)}))
            .collect();
        r.insert("hostPatterns".into(), Value::Array(pats));
    }
    if on(4) {
        r.insert(
            "nodeEndpoints".into(),
            pick(b, &["capVersions", "rewrite", "hide"]),
        );
    }
    Value::Object(r)
}

fn generate(b: &mut Bytes<'_>) -> Value {
    let mut c = Map::new();
    let flags = b.u16();
    let on = |bit: u16| flags & (1 << bit) != 0;
    if on(0) {
        c.insert("maxFrameBytes".into(), num(b));
    }
    if on(1) {
        c.insert("maxBufferedFrameBytes".into(), num(b));
    }
    if on(2) {
        c.insert("maxInflightRequests".into(), num(b));
    }
    if on(3) {
        c.insert(
            "onMalformed".into(),
            pick(b, &["close", "passthrough", "explode"]),
        );
    }
    if on(4) {
        c.insert("clampApiVersions".into(), json!(b.bool()));
    }
    if on(5) {
        let mut m = Map::new();
        if b.bool() {
            m.insert("families".into(), list(b, FAMILIES));
        }
        for k in [
            "maxTopics",
            "maxClientIds",
            "maxGroups",
            "maxLagPartitions",
            "maxTopicIds",
        ] {
            if b.below(4) == 0 {
                m.insert(k.into(), num(b));
            }
        }
        c.insert("metrics".into(), Value::Object(m));
    }
    if on(6) {
        let rate = match b.below(6) {
            0 => json!(0),
            1 => json!(0.5),
            2 => json!(1),
            3 => json!(1.5),
            4 => json!(-0.1),
            _ => json!(1e-9),
        };
        c.insert(
            "accessLog".into(),
            json!({"enabled": b.bool(), "sampleRate": rate}),
        );
    }
    if on(7) {
        c.insert("policy".into(), policy(b));
    }
    if on(8) {
        c.insert("rewrite".into(), rewrite(b));
    }
    if on(9) {
        c.insert("bogus".into(), json!(1));
    }
    Value::Object(c)
}
