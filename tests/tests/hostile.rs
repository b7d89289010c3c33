//! Hostile input through the built kafka_mesh_filter.wasm (issue 13 point 2): frames a client
//! or a broker could send on purpose, fed through the Envoy-faithful host at several chunkings.
//! For every case: the VM never traps, its linear memory stays within a stated budget above
//! what it needed before, the configured `onMalformed` action happens (close, or the bytes
//! relayed byte-identical under `passthrough`) with its `kafka_mesh_malformed_total{direction,
//! kind}` increment and a warn line (visible at an Istio sidecar's default level), and a
//! healthy connection on the same VM, open across the case, still relays a request and its
//! response byte-identical and counted.
//!
//! Memory is read from the module's exported linear memory ([`Vm::memory_bytes`]). Wasm
//! memory never shrinks, so a count-sized allocation (kafka-protocol 0.18 calls
//! `Vec::with_capacity(wire count)`, see `filter/core/src/codec/kp.rs`) would show as a
//! permanent jump of hundreds of MiB, or as a trap when the size overflows.
//!
//! Two tests are ignored because they fail on filter bugs (see their `ignore` reasons):
//! a NodeEndpoints count bomb in a Produce v10+ response under `nodeEndpoints: rewrite`
//! (trap, or hundreds of MiB), and bytes lost under `passthrough` when a held frame found
//! malformed had already partly moved into the VM.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{batch, feed, produce_to, req, resp, vm_with};
use kafka_mesh_testhost::host::{Dir, Peer, Process, Vm};
use kafka_protocol::messages::{
    produce_response, ApiVersionsRequest, DescribeClusterRequest, FetchRequest,
    FindCoordinatorRequest, MetadataRequest, MetadataResponse, ProduceResponse, RequestHeader,
    SaslAuthenticateResponse, SaslHandshakeResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

/// The kinds of `kafka_mesh_malformed_total` (README, Metrics, Reference), and `policy_close`
/// (`Malformed::PolicyClose`, which always closes).
const KINDS: [&str; 7] = [
    "frame_size",
    "decode",
    "unexpected_response",
    "correlation_mismatch",
    "inflight_overflow",
    "host_error",
    "policy_close",
];

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// `maxFrameBytes` of the configs below (1 MiB, so "oversized" is cheap to build).
const MAX_FRAME: i32 = 1 << 20;

/// Every decode path on: metrics and the access log walk bodies, the policy holds and decodes
/// Metadata / Fetch requests and guards Produce (deny rules by client id, SASL user and topic),
/// `rewrite` holds and re-encodes Metadata, FindCoordinator, DescribeCluster and (mode
/// `rewrite`) Produce v10+ responses with kafka-protocol, ApiVersions answers are clamped.
const FULL: &str = r#"{"onMalformed": "MODE", "maxFrameBytes": 1048576, "maxInflightRequests": 16,
    "accessLog": {"enabled": true},
    "rewrite": {"nodeTemplate": "gw:{19092+nodeId}", "nodeEndpoints": "rewrite"},
    "policy": {"defaultAction": "allow", "rules": [
      {"name": "evil-client", "action": "deny", "clientIds": ["evil*"], "topics": ["*"]},
      {"name": "evil-sasl", "action": "deny", "saslUsers": ["mallory*"], "topics": ["*"]},
      {"name": "no-secret", "action": "deny", "topics": ["secret*"]}]}}"#;

/// Framing only: no policy, no rewrite (bodies are still walked for the metrics).
const MINIMAL: &str =
    r#"{"onMalformed": "MODE", "maxFrameBytes": 1048576, "maxInflightRequests": 16}"#;

/// Linear memory a single hostile frame may add to a VM, over what it had after a warm-up:
/// a held frame of at most 12 KiB here and the allocator's slack (measured: none, the VM
/// stays at its 1152 KiB through every case). A count-sized allocation from any of the
/// "billions of elements" frames would be >= 4 GiB (or a trap); 1 MiB is about 20 000
/// NodeEndpoints' worth of kafka-protocol structs.
const CASE_BUDGET: usize = MIB;
/// And an absolute ceiling for a VM running these cases: the filter's own footprint is a few
/// MiB; 32 MiB is far below what Envoy allows a V8 isolate and far above what it needs.
const VM_CEILING: usize = 32 * MIB;

fn cfg(template: &str, mode: &str) -> String {
    template.replace("MODE", mode)
}

// ---- hand-written wire bytes -----------------------------------------------------------------

fn uv(mut n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// A frame: the size prefix, then the concatenated parts.
fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend(body);
    f
}

/// A request header v1 (`flexible` false) or v2: api key, version, correlation id, the
/// classic i16-length client id, then (v2) an empty tagged-field section.
fn rq(key: i16, v: i16, corr: i32, client_id: &[u8], flexible: bool) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(key.to_be_bytes());
    h.extend(v.to_be_bytes());
    h.extend(corr.to_be_bytes());
    h.extend((client_id.len() as i16).to_be_bytes());
    h.extend(client_id);
    if flexible {
        h.push(0);
    }
    h
}

/// A response header v0 or (flexible) v1.
fn rs(corr: i32, flexible: bool) -> Vec<u8> {
    let mut h = corr.to_be_bytes().to_vec();
    if flexible {
        h.push(0);
    }
    h
}

fn i16b(v: i16) -> [u8; 2] {
    v.to_be_bytes()
}

fn i32b(v: i32) -> [u8; 4] {
    v.to_be_bytes()
}

/// A compact string (uvarint length + 1).
fn cs(s: &[u8]) -> Vec<u8> {
    let mut out = uv(s.len() as u32 + 1);
    out.extend(s);
    out
}

/// A classic string (i16 length).
fn s16(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as i16).to_be_bytes().to_vec();
    out.extend(s);
    out
}

/// A compact array count of (nearly) 2^32 elements.
fn huge_compact() -> Vec<u8> {
    uv(u32::MAX)
}

/// A classic array count of 2^31 - 1 elements.
fn huge_classic() -> [u8; 4] {
    i32::MAX.to_be_bytes()
}

/// Produce v9 request up to its topics array: transactional id null, acks all, timeout.
fn produce9_head(corr: i32, client_id: &[u8]) -> Vec<u8> {
    [
        rq(0, 9, corr, client_id, true),
        vec![0],
        i16b(-1).to_vec(),
        i32b(30_000).to_vec(),
    ]
    .concat()
}

/// Produce v8 request up to its topics array.
fn produce8_head(corr: i32) -> Vec<u8> {
    [
        rq(0, 8, corr, b"it", false),
        i16b(-1).to_vec(),
        i16b(-1).to_vec(),
        i32b(30_000).to_vec(),
    ]
    .concat()
}

/// Fetch request v12 (`flexible`) or v11 up to its topics array.
fn fetch_head(v: i16, corr: i32) -> Vec<u8> {
    [
        rq(1, v, corr, b"it", v >= 12),
        i32b(-1).to_vec(),         // replica_id
        i32b(500).to_vec(),        // max_wait_ms
        i32b(1).to_vec(),          // min_bytes
        i32b(MIB as i32).to_vec(), // max_bytes
        vec![0],                   // isolation_level
        i32b(0).to_vec(),          // session_id
        i32b(-1).to_vec(),         // session_epoch
    ]
    .concat()
}

/// `Stats::counter_sum` without its regex tag extraction (slow in a debug build, and these
/// tests read counters thousands of times): the filter names its series
/// `tag1=.=v1;.;tag2=.=v2;.;family` (filter/core/src/observe/labels.rs) in Envoy's
/// `wasmcustom` namespace.
fn counter(process: &Process, family: &str, want: &[(&str, &str)]) -> u64 {
    let st = process.stats.lock().unwrap();
    st.counters
        .iter()
        .filter(|(name, _)| {
            let Some(rest) = name.strip_prefix("wasmcustom.") else {
                return false;
            };
            let mut parts: Vec<&str> = rest.split(";.;").collect();
            if parts.pop() != Some(family) {
                return false;
            }
            want.iter()
                .all(|(k, v)| parts.iter().any(|p| p.split_once("=.=") == Some((*k, *v))))
        })
        .map(|(_, v)| *v)
        .sum()
}

fn gauge(process: &Process, name: &str) -> i64 {
    process.stats.lock().unwrap().gauge(name)
}

/// `got == want`, reported by length and first difference rather than by dumping frames.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: not relayed byte-identical: {} bytes relayed of {} sent, first difference at {:?}",
            got.len(),
            want.len(),
            at.or(Some(got.len().min(want.len())))
        );
    }
}

// ---- the test bed ------------------------------------------------------------------------------

/// One VM, one healthy connection kept open across every case.
struct Bed {
    process: Arc<Process>,
    vm: Vm,
    healthy: u32,
    next_corr: i32,
    baseline: usize,
    peak: usize,
    passthrough: bool,
}

fn direction(dir: Dir) -> &'static str {
    match dir {
        Dir::Downstream => "request",
        Dir::Upstream => "response",
    }
}

impl Bed {
    fn new(template: &str, mode: &str) -> Bed {
        let process = Process::new();
        let mut vm = vm_with(&cfg(template, mode), &process);
        let healthy = vm.new_connection(HashMap::new()).unwrap();
        let mut bed = Bed {
            process,
            vm,
            healthy,
            next_corr: 1,
            baseline: 0,
            peak: 0,
            passthrough: mode == "passthrough",
        };
        // Warm up every path once (a held frame, a walked one, a rewrite), so the baseline is
        // the VM's working size rather than its size at start.
        bed.healthy_round_trip();
        let warm = bed.vm.new_connection(HashMap::new()).unwrap();
        let metadata = req(3, 12, 1, &MetadataRequest::default());
        let r = bed.vm.data(warm, Dir::Downstream, &metadata, false);
        assert!(!r.close);
        let r = bed.vm.data(
            warm,
            Dir::Upstream,
            &resp(1, 12, &MetadataResponse::default()),
            false,
        );
        assert!(!r.close);
        bed.vm.close(warm, false);
        bed.baseline = bed.vm.memory_bytes();
        bed.peak = bed.baseline;
        let labels = [("api", "produce")];
        let slow = bed
            .process
            .stats
            .lock()
            .unwrap()
            .counter_sum("kafka_mesh_requests_total", &labels);
        assert_eq!(bed.counter("kafka_mesh_requests_total", &labels), slow);
        assert_eq!(slow, 1);
        bed
    }

    fn counter(&self, family: &str, labels: &[(&str, &str)]) -> u64 {
        counter(&self.process, family, labels)
    }

    fn malformed(&self, dir: &str, kind: &str) -> u64 {
        self.counter(
            "kafka_mesh_malformed_total",
            &[("direction", dir), ("kind", kind)],
        )
    }

    /// Every (direction, kind) malformed counter now.
    fn kinds(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for dir in ["request", "response"] {
            for kind in KINDS {
                out.push((dir, kind, self.malformed(dir, kind)));
            }
        }
        out
    }

    fn malformed_all(&self) -> u64 {
        self.counter("kafka_mesh_malformed_total", &[])
    }

    /// A Produce v9 (acks all) to `orders` and its response through the healthy connection:
    /// both relayed byte-identical, both counted.
    fn healthy_round_trip(&mut self) {
        let corr = self.next_corr;
        self.next_corr += 1;
        let api = [("api", "produce")];
        let (reqs, resps) = (
            self.counter("kafka_mesh_requests_total", &api),
            self.counter("kafka_mesh_responses_total", &api),
        );
        let request = req(0, 9, corr, &produce_to(&["orders"]));
        let r = self.vm.data(self.healthy, Dir::Downstream, &request, false);
        assert!(!r.close, "the healthy connection was closed");
        assert_same(&r.forwarded, &request, "healthy request");
        let response = resp(
            corr,
            9,
            &ProduceResponse::default().with_responses(vec![
                produce_response::TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_responses(vec![
                        produce_response::PartitionProduceResponse::default()
                            .with_base_offset(i64::from(corr)),
                    ]),
            ]),
        );
        let r = self.vm.data(self.healthy, Dir::Upstream, &response, false);
        assert!(!r.close, "the healthy connection was closed");
        assert_eq!(
            r.forwarded, response,
            "healthy response not relayed as sent"
        );
        assert_eq!(self.counter("kafka_mesh_requests_total", &api), reqs + 1);
        assert_eq!(self.counter("kafka_mesh_responses_total", &api), resps + 1);
    }

    /// The VM is usable (no memory bound: for tests that state their own).
    fn check_vm_failed_only(&self, what: &str) {
        assert!(
            !self.vm.failed(),
            "{what}: the VM trapped: {:?}",
            self.vm.fail_reason
        );
    }

    /// The VM is usable and within its memory budget.
    fn check_vm(&mut self, what: &str) {
        assert!(
            !self.vm.failed(),
            "{what}: the VM trapped: {:?}",
            self.vm.fail_reason
        );
        let mem = self.vm.memory_bytes();
        self.peak = self.peak.max(mem);
        assert!(
            mem <= self.baseline + CASE_BUDGET && mem <= VM_CEILING,
            "{what}: linear memory {} KiB, baseline {} KiB, budget {} KiB",
            mem / KIB,
            self.baseline / KIB,
            CASE_BUDGET / KIB
        );
    }
}

/// One hostile input: `setup` requests go first (so a response has a request to answer), then
/// `hostile` in `dir`. `kind`: the malformed kind it must be counted as under the FULL config;
/// `None`: it is not malformed and is relayed as sent (or as `relayed` says).
struct Case {
    name: String,
    setup: Vec<u8>,
    dir: Dir,
    hostile: Vec<u8>,
    kind: Option<&'static str>,
    /// When not malformed: what must be relayed, if not the hostile bytes themselves.
    relayed: Option<Vec<u8>>,
}

fn case(name: impl Into<String>, dir: Dir, hostile: Vec<u8>, kind: &'static str) -> Case {
    Case {
        name: name.into(),
        setup: Vec::new(),
        dir,
        hostile,
        kind: Some(kind),
        relayed: None,
    }
}

fn answer(
    name: impl Into<String>,
    setup: Vec<u8>,
    hostile: Vec<u8>,
    kind: Option<&'static str>,
) -> Case {
    Case {
        name: name.into(),
        setup,
        dir: Dir::Upstream,
        hostile,
        kind,
        relayed: None,
    }
}

/// What a run of one case did.
struct Outcome {
    kind: Option<String>,
    closed: bool,
    forwarded: Vec<u8>,
}

impl Bed {
    /// Run `c` at `chunk` on a fresh connection and check what must hold whatever the config.
    /// Returns what happened for the caller's stricter expectations.
    fn run(&mut self, c: &Case, chunk: usize) -> Outcome {
        let what = format!("{} (chunk {chunk})", c.name);
        let id = self.vm.new_connection(HashMap::new()).unwrap();
        if !c.setup.is_empty() {
            let (out, _, closed) = feed(&mut self.vm, id, Dir::Downstream, &c.setup, usize::MAX);
            assert!(!closed, "{what}: setup closed");
            assert_eq!(out.len(), c.setup.len(), "{what}: setup not relayed");
        }
        let before = self.malformed_all();
        let kinds_before = self.kinds();
        let logs_before = self
            .process
            .logs_containing("kafka-mesh-filter: malformed")
            .len();
        let (forwarded, _, closed) = feed(&mut self.vm, id, c.dir, &c.hostile, chunk);
        let counted = self.malformed_all() - before;
        assert!(counted <= 1, "{what}: counted {counted} times");
        let dir = direction(c.dir);
        let changed: Vec<(&str, &str)> = self
            .kinds()
            .into_iter()
            .zip(kinds_before)
            .filter(|(a, b)| a.2 != b.2)
            .map(|(a, _)| (a.0, a.1))
            .collect();
        assert_eq!(changed.len() as u64, counted, "{what}: {changed:?}");
        if let Some((d, _)) = changed.first() {
            assert_eq!(*d, dir, "{what}: counted in the other direction");
        }
        let kind = changed.first().map(|(_, k)| k.to_string());
        self.check_vm(&what);
        if counted == 1 {
            let logs = self.process.logs_containing("kafka-mesh-filter: malformed");
            assert_eq!(logs.len(), logs_before + 1, "{what}: one log line");
            let line = logs.last().unwrap();
            assert_eq!(line.level, 3, "{what}: logged at warn");
            let act = if self.passthrough {
                "relaying the rest of the connection unparsed"
            } else {
                "closing the connection"
            };
            let named = format!("malformed {dir} ({})", kind.as_deref().unwrap_or(""));
            assert!(
                line.message.contains(&named) && line.message.contains(act),
                "{what}: {}",
                line.message
            );
            if self.passthrough {
                assert!(!closed, "{what}: closed under passthrough");
                assert_same(&forwarded, &c.hostile, &what);
                // The rest of the connection is relayed unparsed, byte-identical.
                let next = match c.dir {
                    Dir::Downstream => req(3, 12, 77, &MetadataRequest::default()),
                    Dir::Upstream => resp(77, 12, &MetadataResponse::default()),
                };
                let r = self.vm.data(id, c.dir, &next, false);
                assert!(!r.close && r.forwarded == next, "{what}: not bypassed");
                assert_eq!(self.malformed_all(), before + 1, "{what}");
            } else {
                assert!(closed, "{what}: not closed under close");
                assert!(
                    c.hostile.starts_with(&forwarded),
                    "{what}: forwarded bytes that were not sent"
                );
            }
        } else {
            assert!(!closed, "{what}: closed without a malformed count");
            match &c.relayed {
                Some(want) => assert_same(&forwarded, want, &what),
                // Not malformed: relayed as sent (or incomplete, held back, never altered).
                None => assert!(
                    c.hostile.starts_with(&forwarded),
                    "{what}: forwarded bytes that were not sent"
                ),
            }
        }
        if closed {
            self.vm.close_as(id, Peer::Local);
        } else {
            self.vm.close(id, false);
        }
        self.check_vm(&what);
        self.healthy_round_trip();
        self.check_vm(&what);
        Outcome {
            kind,
            closed,
            forwarded,
        }
    }
}

// ---- the cases -------------------------------------------------------------------------------

fn frame_size_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // Negative, zero, too small for a correlation id, over maxFrameBytes, 2 GiB-ish: in both
    // directions, with header-looking bytes after the size (relayed under passthrough).
    let sizes: [(i32, &str); 10] = [
        (-1, "0xFFFFFFFF"),
        (i32::MIN, "0x80000000"),
        (0, "zero"),
        (1, "1"),
        (2, "2"),
        (3, "3"),
        (MAX_FRAME + 1, "maxFrameBytes + 1"),
        (0x4000_0000, "1 GiB"),
        (0x7fff_fff0, "2 GiB - 16"),
        (i32::MAX, "2 GiB - 1"),
    ];
    for (size, name) in sizes {
        let mut b = size.to_be_bytes().to_vec();
        b.extend(rq(3, 12, 1, b"it", true));
        cases.push(case(
            format!("request size {name}"),
            Dir::Downstream,
            b.clone(),
            "frame_size",
        ));
        let mut b = size.to_be_bytes().to_vec();
        b.extend(rs(1, true));
        b.extend([0u8; 8]);
        cases.push(answer(
            format!("response size {name}"),
            req(3, 12, 1, &MetadataRequest::default()),
            b,
            Some("frame_size"),
        ));
    }
    // Sizes 4..7: room for a correlation id, not for a request header.
    for size in 4..8usize {
        let body: Vec<u8> = rq(3, 12, 1, b"it", true)[..size].to_vec();
        cases.push(case(
            format!("request of {size} bytes"),
            Dir::Downstream,
            frame(&[&body]),
            "decode",
        ));
        // A response that is a correlation id and 0..3 bytes, to a held (rewritten) Metadata.
        let mut body = rs(1, true);
        body.resize(size, 0);
        cases.push(answer(
            format!("metadata response of {size} bytes"),
            req(3, 12, 1, &MetadataRequest::default()),
            frame(&[&body]),
            Some("decode"),
        ));
    }
    cases
}

fn count_bomb_cases() -> Vec<Case> {
    let big = huge_compact();
    let classic = huge_classic();
    let orders = cs(b"orders");
    let mut cases = vec![
        // ---- requests
        case(
            "produce v9 topics: 2^32 (compact)",
            Dir::Downstream,
            frame(&[&produce9_head(1, b"it"), &big]),
            "decode",
        ),
        case(
            "produce v9 partitions: 2^32",
            Dir::Downstream,
            frame(&[&produce9_head(1, b"it"), &uv(2), &orders, &big]),
            "decode",
        ),
        case(
            "produce v9 records: 4 GiB of bytes",
            Dir::Downstream,
            frame(&[
                &produce9_head(1, b"it"),
                &uv(2),
                &orders,
                &uv(2),
                &i32b(0),
                &big,
            ]),
            "decode",
        ),
        case(
            "produce v8 topics: 2^31 (classic)",
            Dir::Downstream,
            frame(&[&produce8_head(1), &classic]),
            "decode",
        ),
        case(
            "produce v8 records: 2 GiB of bytes",
            Dir::Downstream,
            frame(&[
                &produce8_head(1),
                &i32b(1),
                &s16(b"orders"),
                &i32b(1),
                &i32b(0),
                &classic,
            ]),
            "decode",
        ),
        case(
            "metadata v12 topics: 2^32 (held by the policy)",
            Dir::Downstream,
            frame(&[&rq(3, 12, 1, b"it", true), &big, &[1, 0, 0]]),
            "decode",
        ),
        case(
            "metadata v4 topics: 2^31 (held by the policy)",
            Dir::Downstream,
            frame(&[&rq(3, 4, 1, b"it", false), &classic, &[1]]),
            "decode",
        ),
        case(
            "fetch v12 topics: 2^32 (held by the policy)",
            Dir::Downstream,
            frame(&[&fetch_head(12, 1), &big]),
            "decode",
        ),
        case(
            "fetch v11 topics: 2^31 (held by the policy)",
            Dir::Downstream,
            frame(&[&fetch_head(11, 1), &classic]),
            "decode",
        ),
        case(
            "client id of 32767 bytes in a 20-byte frame",
            Dir::Downstream,
            frame(&[&rq(3, 12, 1, b"it", true)[..8], &i16b(i16::MAX), b"it"]),
            "decode",
        ),
    ];
    // ---- responses, each to its request
    let md12 = || req(3, 12, 1, &MetadataRequest::default());
    let md8 = || req(3, 8, 1, &MetadataRequest::default());
    cases.extend([
        answer(
            "metadata v12 response brokers: 2^32 (rewritten)",
            md12(),
            frame(&[&rs(1, true), &i32b(0), &big]),
            Some("decode"),
        ),
        answer(
            "metadata v12 response topics: 2^32 (rewritten)",
            md12(),
            frame(&[&rs(1, true), &i32b(0), &uv(1), &uv(0), &i32b(0), &big]),
            Some("decode"),
        ),
        answer(
            "metadata v8 response brokers: 2^31 (classic)",
            md8(),
            frame(&[&rs(1, false), &i32b(0), &classic]),
            Some("decode"),
        ),
        answer(
            "find_coordinator v4 response coordinators: 2^32",
            req(
                10,
                4,
                1,
                &FindCoordinatorRequest::default()
                    .with_coordinator_keys(vec![StrBytes::from_static_str("g")]),
            ),
            frame(&[&rs(1, true), &i32b(0), &big]),
            Some("decode"),
        ),
        answer(
            "find_coordinator v2 response host: 32767 bytes",
            req(
                10,
                2,
                1,
                &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g")),
            ),
            frame(&[
                &rs(1, false),
                &i32b(0),
                &i16b(0),
                &i16b(-1),
                &i32b(0),
                &i16b(i16::MAX),
                b"kafka",
            ]),
            Some("decode"),
        ),
        answer(
            "describe_cluster v0 response brokers: 2^32",
            req(60, 0, 1, &DescribeClusterRequest::default()),
            frame(&[
                &rs(1, true),
                &i32b(0),
                &i16b(0),
                &uv(0),
                &cs(b"c"),
                &i32b(0),
                &big,
            ]),
            Some("decode"),
        ),
        answer(
            "api_versions v3 response api_keys: 2^32 (clamped)",
            req(18, 3, 1, &ApiVersionsRequest::default()),
            frame(&[&rs(1, false), &i16b(0), &big]),
            Some("decode"),
        ),
        answer(
            "api_versions v0 response api_keys: 2^31 (classic)",
            req(18, 0, 1, &ApiVersionsRequest::default()),
            frame(&[&rs(1, false), &i16b(0), &classic]),
            Some("decode"),
        ),
        answer(
            "fetch v12 response responses: 2^32",
            req(1, 12, 1, &FetchRequest::default()),
            frame(&[&rs(1, true), &i32b(0), &i16b(0), &i32b(0), &big]),
            Some("decode"),
        ),
        answer(
            "fetch v11 response responses: 2^31",
            req(1, 11, 1, &FetchRequest::default()),
            frame(&[&rs(1, false), &i32b(0), &i16b(0), &i32b(0), &classic]),
            Some("decode"),
        ),
        answer(
            "produce v9 response responses: 2^32",
            req(0, 9, 1, &produce_to(&["orders"])),
            frame(&[&rs(1, true), &big]),
            Some("decode"),
        ),
        answer(
            "produce v8 response responses: 2^31",
            req(0, 8, 1, &produce_to(&["orders"])),
            frame(&[&rs(1, false), &classic]),
            Some("decode"),
        ),
    ]);
    cases
}

fn tag_bomb_cases() -> Vec<Case> {
    let md12 = || req(3, 12, 1, &MetadataRequest::default());
    let huge_tags = uv(u32::MAX);
    // one tag 0 declaring 2 GiB
    let huge_tag: Vec<u8> = [uv(1), uv(0), uv(i32::MAX as u32)].concat();
    let mut rq_many = rq(3, 12, 1, b"it", false); // header v2 written by hand below
    rq_many.extend(&huge_tags);
    let mut rq_big = rq(3, 12, 1, b"it", false);
    rq_big.extend(&huge_tag);
    vec![
        case(
            "metadata v12 request header: 2^32 tagged fields",
            Dir::Downstream,
            frame(&[&rq_many, &uv(0), &[1, 0, 0]]),
            "decode",
        ),
        case(
            "metadata v12 request header: a 2 GiB tagged field",
            Dir::Downstream,
            frame(&[&rq_big, &uv(0), &[1, 0, 0]]),
            "decode",
        ),
        case(
            "metadata v12 request body: 2^32 tagged fields",
            Dir::Downstream,
            frame(&[&rq(3, 12, 1, b"it", true), &uv(0), &[1, 0], &huge_tags]),
            "decode",
        ),
        case(
            "produce v9 request header: 2^32 tagged fields",
            Dir::Downstream,
            frame(&[&rq(0, 9, 1, b"it", false), &huge_tags, &[0, 0xff, 0xff]]),
            "decode",
        ),
        answer(
            "metadata v12 response header: 2^32 tagged fields",
            md12(),
            frame(&[&i32b(1), &huge_tags, &i32b(0), &uv(1)]),
            Some("decode"),
        ),
        answer(
            "metadata v12 response header: a 2 GiB tagged field",
            md12(),
            frame(&[&i32b(1), &huge_tag, &i32b(0), &uv(1)]),
            Some("decode"),
        ),
        answer(
            "metadata v12 response body: a 2 GiB tagged field",
            md12(),
            frame(&[
                &rs(1, true),
                &i32b(0),
                &uv(1),
                &uv(0),
                &i32b(0),
                &uv(1),
                &huge_tag,
            ]),
            Some("decode"),
        ),
        answer(
            "api_versions v3 response body: 2^32 tagged fields",
            req(18, 3, 1, &ApiVersionsRequest::default()),
            frame(&[&rs(1, false), &i16b(0), &uv(1), &i32b(0), &huge_tags]),
            Some("decode"),
        ),
        answer(
            "api_versions v3 response body: a 2 GiB tagged field",
            req(18, 3, 1, &ApiVersionsRequest::default()),
            frame(&[&rs(1, false), &i16b(0), &uv(1), &i32b(0), &huge_tag]),
            Some("decode"),
        ),
        answer(
            "produce v9 response body: a 2 GiB tagged field",
            req(0, 9, 1, &produce_to(&["orders"])),
            frame(&[&rs(1, true), &uv(1), &i32b(0), &huge_tag]),
            Some("decode"),
        ),
        answer(
            "fetch v12 response header: 2^32 tagged fields",
            req(1, 12, 1, &FetchRequest::default()),
            frame(&[&i32b(1), &huge_tags, &i32b(0)]),
            Some("decode"),
        ),
        // NodeEndpoints with counts the walk can check: the tag's declared size runs past
        // the frame, or a count of 3 in one byte (kafka-protocol then runs out of bytes).
        answer(
            "produce v10 response: a NodeEndpoints tag of 2 GiB",
            req(0, 10, 1, &produce_to(&["orders"])),
            frame(&[&rs(1, true), &uv(1), &i32b(0), &huge_tag]),
            Some("decode"),
        ),
        node_endpoints_bomb(3),
        // A Fetch response streams: its NodeEndpoints tag is renamed (hidden), never decoded.
        {
            let f = frame(&[
                &rs(1, true),
                &i32b(0),
                &i16b(0),
                &i32b(0),
                &uv(1),
                &uv(1),
                &uv(0),
                &uv(5),
                &huge_tags,
            ]);
            let mut hidden = f.clone();
            hidden[21] = 0x7f; // guard::HIDDEN_TAG
            Case {
                relayed: Some(hidden),
                ..answer(
                    "fetch v16 response: a NodeEndpoints tag declaring 2^32 endpoints (streamed, hidden)",
                    req(1, 16, 1, &FetchRequest::default()),
                    f,
                    None,
                )
            }
        },
        case(
            "fetch v12 request body: 2^32 tagged fields (held by the policy)",
            Dir::Downstream,
            frame(&[&fetch_head(12, 1), &uv(1), &uv(1), &cs(b""), &huge_tags]),
            "decode",
        ),
    ]
}

/// Responses nobody asked for, the wrong correlation id, garbage between frames, too many
/// requests in flight.
fn sequence_cases() -> Vec<Case> {
    let md = req(3, 12, 5, &MetadataRequest::default());
    let md_resp = resp(5, 12, &MetadataResponse::default());
    let mut garbage_reqs = md.clone();
    garbage_reqs.extend(b"\x00GARBAGE-GARBAGE");
    garbage_reqs.extend(req(3, 12, 6, &MetadataRequest::default()));
    let mut small_garbage = md.clone();
    small_garbage.extend([0, 0, 0, 6, 1, 2, 3, 4, 5, 6]);
    small_garbage.extend(req(3, 12, 6, &MetadataRequest::default()));
    let mut garbage_resps = md_resp.clone();
    garbage_resps.extend(b"\xff\xfe garbage \x00\x01");
    let mut overflow = Vec::new();
    for corr in 0..17 {
        overflow.extend(req(18, 3, corr, &ApiVersionsRequest::default()));
    }
    vec![
        answer(
            "a response with no request",
            Vec::new(),
            md_resp.clone(),
            Some("unexpected_response"),
        ),
        answer(
            "a second response to one request",
            md.clone(),
            [md_resp.clone(), md_resp.clone()].concat(),
            Some("unexpected_response"),
        ),
        answer(
            "a response with the wrong correlation id",
            md.clone(),
            resp(6, 12, &MetadataResponse::default()),
            Some("correlation_mismatch"),
        ),
        answer(
            "a produce response answering a metadata request",
            md.clone(),
            resp(
                7,
                9,
                &ProduceResponse::default()
                    .with_responses(vec![produce_response::TopicProduceResponse::default()]),
            ),
            Some("correlation_mismatch"),
        ),
        case(
            "garbage between requests (a size over maxFrameBytes)",
            Dir::Downstream,
            garbage_reqs,
            "frame_size",
        ),
        case(
            "garbage between requests (a small sane size)",
            Dir::Downstream,
            small_garbage,
            "decode",
        ),
        answer(
            "garbage after a response",
            md.clone(),
            garbage_resps,
            Some("frame_size"),
        ),
        case(
            "17 requests in flight (maxInflightRequests 16)",
            Dir::Downstream,
            overflow,
            "inflight_overflow",
        ),
    ]
}

/// Frames larger than the 4 KiB the filter leaves in Envoy's buffer while it waits: a held
/// frame fed in pieces moves into the VM, so under `passthrough` the bytes already taken must
/// be given back when the frame turns out malformed.
fn large_held_cases() -> Vec<Case> {
    use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::BrokerId;
    // One element too many declared (the counts below take two varint bytes either way).
    let bump = |mut f: Vec<u8>, at: usize, n: u32| {
        assert_eq!(f[at..at + 2], uv(n + 1)[..]);
        f[at..at + 2].copy_from_slice(&uv(n + 2));
        f
    };
    let av = ApiVersionsResponse::default().with_api_keys(
        (0..1000)
            .map(|k| ApiVersion::default().with_api_key(k).with_max_version(3))
            .collect(),
    );
    let md = MetadataResponse::default().with_brokers(
        (0..300)
            .map(|n| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(n))
                    .with_host(StrBytes::from(format!("broker-{n}.kafka.internal")))
                    .with_port(9092)
            })
            .collect(),
    );
    let mreq = MetadataRequest::default().with_topics(Some(
        (0..400)
            .map(|n| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from(format!("topic-{n:05}")))))
            })
            .collect(),
    ));
    // size 4 + correlation id 4 (+ header tags 1) + error code 2 / throttle 4; request header
    // v2 with client id "it" is 13 bytes.
    vec![
        answer(
            "api_versions v3 response of 7 KiB declaring one key too many (held, clamped)",
            req(18, 3, 1, &ApiVersionsRequest::default()),
            bump(resp(1, 3, &av), 10, 1000),
            Some("decode"),
        ),
        answer(
            "metadata v12 response of 10 KiB declaring one broker too many (held, rewritten)",
            req(3, 12, 1, &MetadataRequest::default()),
            bump(resp(1, 12, &md), 13, 300),
            Some("decode"),
        ),
        case(
            "metadata v12 request of 9 KiB declaring one topic too many (held by the policy)",
            Dir::Downstream,
            bump(req(3, 12, 1, &mreq), 17, 400),
            "decode",
        ),
    ]
}

fn all_cases() -> Vec<Case> {
    let mut cases = frame_size_cases();
    cases.extend(count_bomb_cases());
    cases.extend(tag_bomb_cases());
    cases.extend(sequence_cases());
    cases
}

/// Every case under the FULL config, both actions, whole and in 1- and 3-byte callbacks: the
/// counted kind is the expected one and the action is the configured one.
#[test]
fn hostile_frames_get_the_configured_action_and_leave_the_vm_and_other_connections_intact() {
    for mode in ["close", "passthrough"] {
        let mut bed = Bed::new(FULL, mode);
        for c in all_cases() {
            for chunk in [usize::MAX, 1, 3] {
                let o = bed.run(&c, chunk);
                assert_eq!(
                    o.kind.as_deref(),
                    c.kind,
                    "{mode}: {} (chunk {chunk}): closed {}, forwarded {} of {} bytes",
                    c.name,
                    o.closed,
                    o.forwarded.len(),
                    c.hostile.len()
                );
            }
        }
        eprintln!(
            "FULL/{mode}: {} cases, linear memory baseline {} KiB, peak {} KiB",
            all_cases().len(),
            bed.baseline / KIB,
            bed.peak / KIB
        );
    }
}

/// The same frames with no policy and no rewrite: fewer bodies are decoded, so some are
/// relayed unread; whatever happens is one of the two allowed outcomes, and the framing
/// cases are malformed whatever the config.
#[test]
fn hostile_frames_under_a_minimal_config() {
    for mode in ["close", "passthrough"] {
        let mut bed = Bed::new(MINIMAL, mode);
        for mut c in all_cases() {
            c.relayed = None; // nothing is rewritten without `rewrite`
            for chunk in [usize::MAX, 7] {
                let o = bed.run(&c, chunk);
                if matches!(
                    c.kind,
                    Some("frame_size" | "unexpected_response" | "correlation_mismatch")
                ) || c.name.starts_with("request of")
                {
                    assert_eq!(o.kind.as_deref(), c.kind, "{mode}: {}", c.name);
                }
            }
        }
        eprintln!(
            "MINIMAL/{mode}: linear memory baseline {} KiB, peak {} KiB",
            bed.baseline / KIB,
            bed.peak / KIB
        );
    }
}

/// Held frames larger than what the filter leaves in Envoy's buffer, malformed once whole.
/// Fed whole they are malformed with either action; under `close` also when fed in 5000- and
/// 1000-byte callbacks (part of the frame has moved into the VM when the verdict comes).
#[test]
fn large_held_frames_found_malformed_once_whole() {
    for (mode, chunks) in [
        ("close", &[usize::MAX, 5000, 1000][..]),
        ("passthrough", &[usize::MAX][..]),
    ] {
        let mut bed = Bed::new(FULL, mode);
        for c in large_held_cases() {
            for &chunk in chunks {
                let o = bed.run(&c, chunk);
                assert_eq!(
                    o.kind.as_deref(),
                    c.kind,
                    "{mode}: {} (chunk {chunk})",
                    c.name
                );
            }
        }
    }
}

/// The same under `passthrough` in pieces: the part of the held frame already moved into
/// the VM must be relayed too. (Found here: `Session::rewrite` dropped the bytes it had taken
/// from `DirState::held`, and `give_up` never put them back: 2017 of a 7017-byte ApiVersions
/// response were relayed.)
#[test]
fn large_held_frames_found_malformed_in_pieces_are_relayed_whole_under_passthrough() {
    let mut bed = Bed::new(FULL, "passthrough");
    for c in large_held_cases() {
        for chunk in [5000, 1000] {
            let o = bed.run(&c, chunk);
            assert_eq!(o.kind.as_deref(), c.kind, "{} (chunk {chunk})", c.name);
        }
    }
}

/// ProduceResponse v10+ carries KIP-951 NodeEndpoints in tagged field 0; in
/// `nodeEndpoints: rewrite` mode the filter holds the response and decodes it with
/// kafka-protocol to rewrite them. The tag's size covers only the count's varint bytes.
fn node_endpoints_bomb(count: u32) -> Case {
    let inner = uv(count);
    answer(
        format!("produce v10 response: a NodeEndpoints tag declaring {count} endpoints"),
        req(0, 10, 1, &produce_to(&["orders"])),
        frame(&[
            &rs(1, true),
            &uv(1), // no topics
            &i32b(0),
            &uv(1), // one tagged field
            &uv(0), // tag 0: NodeEndpoints
            &uv(inner.len() as u32),
            &inner,
        ]),
        Some("decode"),
    )
}

/// A 22-byte broker response must not trap the VM nor grow it by hundreds of MiB. (Found
/// here and by fuzz/: kafka-protocol read the NodeEndpoints count inside tag 0 unchecked and
/// called `Vec::with_capacity(count)`; the walk now checks known tagged fields' layouts,
/// codec::walk::KP_KNOWN_TAGS.)
#[test]
fn node_endpoints_count_bomb_in_a_rewritten_produce_response() {
    for mode in ["close", "passthrough"] {
        for count in [u32::MAX, 40_000_000, 1_000_000] {
            let mut bed = Bed::new(FULL, mode);
            let c = node_endpoints_bomb(count);
            let o = bed.run(&c, usize::MAX);
            assert_eq!(o.kind.as_deref(), c.kind, "{mode}: {}", c.name);
        }
    }
}

// ---- invalid UTF-8 under a policy that matches by client id, SASL user and topic -------------

/// A request from raw `client_id` bytes: encoded with a placeholder of the same length, which
/// is then overwritten (the client id starts after size, api key, version, correlation id and
/// its own i16 length).
fn req_as<B: Encodable + HeaderVersion>(
    key: i16,
    v: i16,
    corr: i32,
    client_id: &[u8],
    body: &B,
) -> Vec<u8> {
    let h = RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from("A".repeat(client_id.len()))));
    let mut f = kafka_mesh_core::testkit::encode_request(&h, body, v);
    f[14..14 + client_id.len()].copy_from_slice(client_id);
    f
}

/// `frame` with the first `from` replaced by `to` (same length).
fn patch(mut frame: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = frame
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in frame");
    frame[at..at + to.len()].copy_from_slice(to);
    frame
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl Bed {
    fn decisions(&self, rule: &str, decision: &str) -> u64 {
        self.counter(
            "kafka_mesh_policy_decisions_total",
            &[("rule", rule), ("decision", decision)],
        )
    }

    /// Feed whole frames in `dir` on `id`; the connection must stay open.
    fn send(&mut self, id: u32, dir: Dir, bytes: &[u8], what: &str) -> Vec<u8> {
        let r = self.vm.data(id, dir, bytes, false);
        assert!(
            !r.close,
            "{what}: closed: {:?}",
            self.process.logs.lock().unwrap().last()
        );
        self.check_vm(what);
        r.forwarded
    }

    /// A Produce must reach the broker with `name` neutralised in place: same length, the
    /// name gone, and `rule` counted as the deny.
    fn assert_denied(&mut self, fwd: &[u8], sent: &[u8], name: &[u8], rule: &str, before: u64) {
        assert_eq!(fwd.len(), sent.len(), "{rule}: same length");
        assert!(
            !contains(fwd, name),
            "{rule}: the denied name reached the broker"
        );
        assert_eq!(
            self.decisions(rule, "deny"),
            before + 1,
            "{rule}: deny counted"
        );
    }
}

/// Invalid UTF-8 where the policy matches: the request header's client id, topic names,
/// the SaslHandshake mechanism and SaslAuthenticate's PLAIN bytes. Nothing traps or grows;
/// the policy reads names with invalid bytes as U+FFFD (`from_utf8_lossy`, as Java's UTF-8
/// decoder in the broker does), so a broken byte after the part a deny rule matches does not
/// slip past it; where kafka-protocol decodes the name (a held Metadata request) invalid UTF-8
/// is malformed.
#[test]
fn invalid_utf8_in_client_ids_topic_names_and_sasl_names() {
    for mode in ["close", "passthrough"] {
        let mut bed = Bed::new(FULL, mode);
        let produce =
            |corr, client: &[u8], topic: &str| req_as(0, 9, corr, client, &produce_to(&[topic]));
        let deny_logs = |bed: &Bed| {
            bed.process
                .logs_containing("kafka-mesh-filter policy deny")
                .len()
        };
        let malformed = bed.malformed_all();

        // client id "evil\xff\xfe": read as "evil\u{FFFD}\u{FFFD}", denied by `evil*`
        let id = bed.vm.new_connection(HashMap::new()).unwrap();
        let (before, logs) = (bed.decisions("evil-client", "deny"), deny_logs(&bed));
        let sent = produce(1, b"evil\xff\xfe", "orders");
        let fwd = bed.send(id, Dir::Downstream, &sent, "evil client id");
        bed.assert_denied(&fwd, &sent, b"orders", "evil-client", before);
        assert_eq!(deny_logs(&bed), logs + 1, "the denial is logged");
        let line = bed.process.logs_containing("kafka-mesh-filter policy deny");
        assert_eq!(line.last().unwrap().level, 3, "at warn");
        // a client id that is nothing but invalid bytes matches no rule: relayed as sent
        let sent = produce(2, b"\xff\xfe\xfd\x80", "orders");
        let fwd = bed.send(id, Dir::Downstream, &sent, "invalid client id");
        assert_same(&fwd, &sent, "invalid client id");
        bed.vm.close(id, false);

        // topic "secret\xff": read as "secret\u{FFFD}", denied by `secret*`; "orders\xff"
        // matches no deny rule and goes on as sent
        let id = bed.vm.new_connection(HashMap::new()).unwrap();
        let before = bed.decisions("no-secret", "deny");
        let sent = patch(produce(3, b"it", "secretX"), b"secretX", b"secret\xff");
        let fwd = bed.send(id, Dir::Downstream, &sent, "invalid topic name");
        bed.assert_denied(&fwd, &sent, b"secret\xff", "no-secret", before);
        let sent = patch(produce(4, b"it", "ordersX"), b"ordersX", b"orders\xff");
        let fwd = bed.send(id, Dir::Downstream, &sent, "invalid topic name");
        assert_same(&fwd, &sent, "allowed invalid topic name");
        bed.vm.close(id, false);

        // A topic name in a request the policy holds and decodes with kafka-protocol, which
        // rejects invalid UTF-8: malformed (decode), closed or relayed unparsed per config.
        // The client id is read as above: an all-topics Metadata from "evil\xff" goes on (its
        // answer is what the policy filters).
        let secret = kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("secretX"))));
        let metadata = req(
            3,
            12,
            5,
            &MetadataRequest::default().with_topics(Some(vec![secret])),
        );
        for c in [
            case(
                "metadata v12 naming secret\\xff",
                Dir::Downstream,
                patch(metadata, b"secretX", b"secret\xff"),
                "decode",
            ),
            Case {
                kind: None,
                ..case(
                    "metadata v12 from client evil\\xff",
                    Dir::Downstream,
                    req_as(3, 12, 5, b"evil\xff", &MetadataRequest::default()),
                    "",
                )
            },
        ] {
            for chunk in [usize::MAX, 1] {
                let o = bed.run(&c, chunk);
                assert_eq!(o.kind.as_deref(), c.kind, "{mode}: {}", c.name);
            }
        }

        // SASL/PLAIN: a username with an invalid byte is learned as the broker will see it
        // ("mallory\u{FFFD}") once the broker accepts it, and `mallory*` denies its produce.
        let id = bed.vm.new_connection(HashMap::new()).unwrap();
        let sasl = |bed: &mut Bed, id: u32, mechanism: &[u8], auth: &[u8], v: i16| {
            let hs = frame(&[&rq(17, 1, 10, b"it", false), &s16(mechanism)]);
            assert_same(
                &bed.send(id, Dir::Downstream, &hs, "handshake"),
                &hs,
                "handshake",
            );
            let ok = resp(
                10,
                1,
                &SaslHandshakeResponse::default()
                    .with_mechanisms(vec![StrBytes::from_static_str("PLAIN")]),
            );
            assert_same(
                &bed.send(id, Dir::Upstream, &ok, "handshake"),
                &ok,
                "handshake response",
            );
            let au = if v >= 2 {
                let mut b = uv(auth.len() as u32 + 1);
                b.extend(auth);
                frame(&[&rq(36, v, 11, b"it", true), &b, &uv(0)])
            } else {
                frame(&[&rq(36, v, 11, b"it", false), &i32b(auth.len() as i32), auth])
            };
            assert_same(
                &bed.send(id, Dir::Downstream, &au, "authenticate"),
                &au,
                "authenticate",
            );
            let ok = resp(11, v, &SaslAuthenticateResponse::default());
            assert_same(
                &bed.send(id, Dir::Upstream, &ok, "authenticate"),
                &ok,
                "authenticate response",
            );
        };
        let before = bed.decisions("evil-sasl", "deny");
        sasl(&mut bed, id, b"PLAIN", b"\0mallory\xff\0pw", 2);
        let sent = produce(12, b"it", "orders");
        let fwd = bed.send(id, Dir::Downstream, &sent, "produce as mallory");
        bed.assert_denied(&fwd, &sent, b"orders", "evil-sasl", before);
        bed.vm.close(id, false);
        // An invalid mechanism is not PLAIN: the username is not learned, nothing is denied.
        // Nor is a PLAIN token that is only invalid bytes (no NUL separators).
        for (mechanism, auth, v) in [
            (&b"PL\xffIN"[..], &b"\0mallory\0pw"[..], 2),
            (&b"PLAIN"[..], &b"\xff\xfe\xfd\xfc"[..], 0),
            (&b"\xc3\x28"[..], &b"\0\xff\0\xff"[..], 1),
        ] {
            let id = bed.vm.new_connection(HashMap::new()).unwrap();
            sasl(&mut bed, id, mechanism, auth, v);
            let sent = produce(12, b"it", "orders");
            let fwd = bed.send(id, Dir::Downstream, &sent, "produce after bad SASL names");
            assert_same(&fwd, &sent, "produce after bad SASL names");
            bed.vm.close(id, false);
        }
        assert_eq!(
            bed.malformed_all(),
            malformed + 2,
            "{mode}: only the Metadata naming secret\\xff (at two chunkings) is malformed"
        );
        bed.healthy_round_trip();
        bed.check_vm("invalid UTF-8");
    }
}

// ---- thousands of connections, each holding part of a frame ----------------------------------

/// A Produce v9 (acks all) to `orders` of exactly `total` bytes, one record batch.
fn produce_of(total: usize) -> Vec<u8> {
    use kafka_protocol::messages::{produce_request, ProduceRequest};
    let make = |payload: usize| {
        let p = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from(batch(100, payload)))),
                ])]);
        req(0, 9, 1, &p)
    };
    let guess = total - make(0).len();
    let f = make(guess - (make(guess).len() - total));
    assert_eq!(f.len(), total);
    f
}

/// A Metadata v12 request naming `topics` topics: under the policy it is held whole.
fn metadata_naming(topics: usize) -> Vec<u8> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    req(
        3,
        12,
        1,
        &MetadataRequest::default().with_topics(Some(
            (0..topics)
                .map(|n| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from(format!("topic-{n:05}")))))
                })
                .collect(),
        )),
    )
}

/// Thousands of connections each holding part of a frame, one fresh VM per wave: what the
/// VM needs stays within a per-connection bound (4 KiB of connection state where nothing is
/// held, plus the buffer of the bytes held where the policy holds the frame, which is bounded
/// by `maxBufferedFrameBytes` and grows by doubling), closing them gives it back to the allocator (a second wave of the
/// same size does not grow the VM), `kafka_mesh_connections_active` returns to 1 (the healthy
/// connection), and new connections work.
#[test]
fn thousands_of_connections_each_holding_part_of_a_frame() {
    let held_max = 64 * KIB;
    let template = FULL.replace(
        r#""maxInflightRequests": 16"#,
        &format!(r#""maxInflightRequests": 16, "maxBufferedFrameBytes": {held_max}"#),
    );
    let produce = produce_of(MIB);
    let metadata = metadata_naming(2000);
    assert!(metadata.len() > 56 * KIB && metadata.len() <= held_max);
    let state = 4 * KIB;
    // (what, connections, bytes each gets, callback size, bytes the VM holds of them)
    let waves: [(&str, usize, &[u8], usize, usize); 3] = [
        ("the first 3 bytes of a size", 5000, &produce[..3], 3, 0),
        (
            "the first half of a 1 MiB Produce",
            2000,
            &produce[..MIB / 2],
            64 * KIB,
            0,
        ),
        (
            "the first half of a 58 KiB Metadata the policy holds",
            2000,
            &metadata[..metadata.len() / 2],
            16 * KIB,
            metadata.len() / 2,
        ),
    ];
    for (what, n, part, chunk, held) in waves {
        let mut bed = Bed::new(&template, "close");
        let active = |bed: &Bed| gauge(&bed.process, "kafka_mesh_connections_active");
        assert_eq!(active(&bed), 1);
        let malformed = bed.malformed_all();
        let start = bed.vm.memory_bytes();
        // A held frame grows a Vec by doubling: up to the next power of two of what it holds.
        let per_conn = state
            + if held > 0 {
                held.next_power_of_two()
            } else {
                0
            };
        let mut first_peak = 0;
        for round in 0..2 {
            let ids: Vec<u32> = (0..n)
                .map(|_| {
                    let id = bed.vm.new_connection(HashMap::new()).unwrap();
                    let (out, _, closed) = feed(&mut bed.vm, id, Dir::Downstream, part, chunk);
                    assert!(!closed, "{what}: closed");
                    assert!(part.starts_with(&out), "{what}: relayed what was not sent");
                    if held > 0 {
                        assert!(out.is_empty(), "{what}: a held frame went on early");
                    }
                    id
                })
                .collect();
            bed.check_vm_failed_only(what);
            assert_eq!(active(&bed), n as i64 + 1, "{what}");
            let peak = bed.vm.memory_bytes();
            let grown = peak.saturating_sub(start);
            eprintln!(
                "{what}: {n} connections, round {round}: linear memory {} KiB -> {} KiB ({} bytes per connection, budget {per_conn})",
                start / KIB,
                peak / KIB,
                grown / n
            );
            assert!(
                grown <= n * per_conn,
                "{what}: grew {grown} bytes for {n} connections (budget {per_conn} each)"
            );
            if round == 0 {
                first_peak = peak;
            } else {
                assert!(
                    peak <= first_peak + MIB,
                    "{what}: a second wave grew the VM from {first_peak} to {peak}: not reused"
                );
            }
            // the healthy connection is served with all of them open
            bed.healthy_round_trip();
            // the clients give up mid-frame
            for id in ids {
                bed.vm.close(id, false);
            }
            assert_eq!(active(&bed), 1, "{what}: connections_active back to 1");
            bed.check_vm_failed_only(what);
        }
        assert_eq!(bed.malformed_all(), malformed, "{what}: not malformed");
        // New connections work: the whole frames, relayed byte-identical.
        for (frame, chunk) in [(&produce, 64 * KIB), (&metadata, 16 * KIB)] {
            let id = bed.vm.new_connection(HashMap::new()).unwrap();
            let (out, _, closed) = feed(&mut bed.vm, id, Dir::Downstream, frame, chunk);
            assert!(!closed, "{what}: a new connection was closed");
            assert_same(&out, frame, "a new connection");
            bed.vm.close(id, false);
        }
        bed.healthy_round_trip();
        assert_eq!(active(&bed), 1);
        assert!(bed.vm.memory_bytes() <= first_peak + MIB, "{what}");
    }
}
