//! What the filter does in a real Istio sidecar, as the host models it: the proxy's log level,
//! label bounds under concurrent worker VMs, and (below) failure strategies and Istio's own
//! tag extractors.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Barrier};

use common::{feed, filter, produce_to, req, spec, vm_with};
use kafka_mesh_testhost::host::{Dir, Process, Vm};

/// Istio runs Envoy at `warning` (pilot-agent `--proxyLogLevel`): policy denials must still
/// be seen (they are at warn), while the access log and "configured" (info) appear only once
/// the pod raises the wasm component (`sidecar.istio.io/componentLogLevel: "wasm:info"`).
#[test]
fn logs_follow_the_istio_sidecar_level() {
    let cfg = r#"{"policy": {"rules": [{"name": "no-payments", "action": "deny", "topics": ["payments"]}]},
                  "accessLog": {"enabled": true}}"#;
    for info in [false, true] {
        let process = Process::new();
        if info {
            process.set_log_level(2);
        }
        let mut vm = vm_with(cfg, &process);
        let id = vm.new_connection(HashMap::new()).unwrap();
        // acks=0: the access-log line is written at once (no response comes).
        let produce = produce_to(&["orders", "payments"]).with_acks(0);
        let (_, _, closed) = feed(&mut vm, id, Dir::Downstream, &req(0, 9, 1, &produce), 4096);
        assert!(!closed);
        let denied = process.logs_containing("kafka-mesh-filter policy deny: produce payments");
        assert_eq!(denied.len(), 1, "the denial is logged at the default level");
        assert_eq!(denied[0].level, 3, "at warn");
        let access = process.logs_containing("kafka-mesh-filter access ");
        let configured = process.logs_containing("kafka-mesh-filter: configured");
        if info {
            assert_eq!(access.len(), 1);
            assert_eq!(access[0].level, 2);
            assert_eq!(configured.len(), 1);
        } else {
            assert!(
                access.is_empty(),
                "info lines are dropped at warning: {access:?}"
            );
            assert!(configured.is_empty());
        }
        // nothing below the level is kept
        let logs = process.logs.lock().unwrap();
        assert!(logs.iter().all(|l| l.level >= if info { 2 } else { 3 }));
    }
}

/// Distinct `topic` label values in the produce-records counters, the overflow fold apart.
fn topic_labels(process: &Process) -> (BTreeSet<String>, u64) {
    let st = process.stats.lock().unwrap();
    let mut seen = BTreeSet::new();
    for name in st.counters.keys() {
        let Some(rest) = name.strip_prefix("wasmcustom.topic=.=") else {
            continue;
        };
        if let Some((topic, "kafka_mesh_produce_records_total")) = rest.split_once(";.;") {
            seen.insert(topic.to_string());
        }
    }
    let overflow = st.counter_sum("kafka_mesh_label_overflow_total", &[("label", "topic")]);
    (
        seen.into_iter().filter(|t| t != "__overflow__").collect(),
        overflow,
    )
}

/// Worker VMs admitting their first label values at the same moment must not both win: the
/// shared-data CAS with token 0 inserts or overwrites (cpp-host `SharedData::set`), so the
/// filter creates the keys at configure time and only ever writes with a token it read.
#[test]
fn concurrent_vms_never_exceed_the_process_wide_label_bound() {
    const WORKERS: usize = 4;
    const ROUNDS: usize = 25;
    let cfg = r#"{"metrics": {"maxTopics": 2}}"#;
    let (engine, module) = filter();
    for round in 0..ROUNDS {
        let process = Process::new();
        // Envoy configures a canary clone on the main thread first, then the workers.
        drop(Vm::start(&engine, &module, process.clone(), spec(cfg)).unwrap());
        let barrier = Arc::new(Barrier::new(WORKERS));
        let threads: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (engine, module, process, barrier) = (
                    engine.clone(),
                    module.clone(),
                    process.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    let mut vm = Vm::start(&engine, &module, process, spec(cfg)).unwrap();
                    let id = vm.new_connection(HashMap::new()).unwrap();
                    let names: Vec<String> = (0..3).map(|i| format!("w{w}-t{i}")).collect();
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let frame = req(0, 9, 1, &produce_to(&names));
                    barrier.wait();
                    let r = vm.data(id, Dir::Downstream, &frame, false);
                    assert!(!r.close);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (seen, overflow) = topic_labels(&process);
        assert_eq!(
            seen.len(),
            2,
            "round {round}: the bound of 2 topics holds across {WORKERS} VMs: {seen:?}"
        );
        assert_eq!(overflow, (WORKERS * 3 - 2) as u64, "round {round}");
    }
}

/// In an Istio sidecar, Istio's own stats_tags run on our stat names too, unanchored
/// (`(cache\.(.+?)\.)`, `(tag\.(.+?);\.)`, ...): topic, group and client-id values containing
/// those words must keep exactly our labels. And Istio's default stats inclusion (prefix
/// `wasm`) must already keep every series: no `proxyStatsMatcher` is needed.
#[test]
fn istio_tag_extractors_and_inclusion_keep_our_labels() {
    use kafka_mesh_testhost::stats::our_tag_names;
    use kafka_protocol::messages::{HeartbeatRequest, RequestHeader};
    use kafka_protocol::protocol::StrBytes;

    let process = Process::new();
    let ours = our_tag_names().unwrap();
    process.stats.lock().unwrap().as_istio_sidecar().unwrap();
    let mut vm = vm_with("{}", &process);
    let id = vm.new_connection(HashMap::new()).unwrap();
    let header = |key: i16, v: i16, corr: i32, client: &'static str| {
        RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(v)
            .with_correlation_id(corr)
            .with_client_id(Some(StrBytes::from_static_str(client)))
    };
    let topics = [
        "orders.cache.v1",
        "hashtag.stream",
        "component.updates",
        "acl.rbac.allowed",
        "a.wasm_filter.b",
        "t.shadow_denied",
    ];
    let mut frames = kafka_mesh_core::testkit::encode_request(
        &header(0, 9, 1, "svc.tag.v1"),
        &produce_to(&topics).with_acks(0),
        9,
    );
    frames.extend(kafka_mesh_core::testkit::encode_request(
        &header(12, 4, 2, "cache.client"),
        &HeartbeatRequest::default()
            .with_group_id(StrBytes::from_static_str("team.component.x").into())
            .with_generation_id(1)
            .with_member_id(StrBytes::from_static_str("m")),
        4,
    ));
    let (out, _, closed) = feed(&mut vm, id, Dir::Downstream, &frames, 4096);
    assert!(!closed && out == frames);

    let prom = process.stats.lock().unwrap().render_prometheus();
    for line in [
        "kafka_mesh_produce_records_total{topic=\"orders.cache_v1\"} 2",
        "kafka_mesh_produce_records_total{topic=\"hashtag_stream\"} 2",
        "kafka_mesh_produce_records_total{topic=\"component_updates\"} 2",
        "kafka_mesh_produce_records_total{topic=\"acl.rbac_allowed\"} 2",
        "kafka_mesh_produce_records_total{topic=\"a.wasm_filter_b\"} 2",
        "kafka_mesh_produce_records_total{topic=\"t_shadow_denied\"} 2",
        "kafka_mesh_client_requests_total{client_id=\"svc.tag_v1\"} 1",
        "kafka_mesh_client_requests_total{client_id=\"cache_client\"} 1",
        "kafka_mesh_group_requests_total{api=\"heartbeat\",group=\"team.component_x\"} 1",
        "kafka_mesh_connections_total{} 1",
    ] {
        assert!(
            prom.lines().any(|l| l == line),
            "missing {line:?} in\n{prom}"
        );
    }
    // Only our labels, on every series; and nothing of ours was left out by the inclusion.
    let ours_set: BTreeSet<&str> = ours.iter().map(String::as_str).collect();
    let mut families = BTreeSet::new();
    for l in prom.lines().filter(|l| l.starts_with("kafka_mesh_")) {
        let (name, rest) = l.split_once('{').unwrap();
        families.insert(name.to_string());
        for label in rest.split("\",").filter(|p| p.contains("=\"")) {
            let key = label.split_once("=\"").unwrap().0;
            assert!(
                ours_set.contains(key) || key == "le",
                "foreign label {key:?} in {l:?}"
            );
        }
    }
    let st = process.stats.lock().unwrap();
    let inclusion = st.inclusion.clone().unwrap();
    assert!(st.counters.keys().all(|n| inclusion.includes(n)));
    assert!(st.gauges.keys().all(|n| inclusion.includes(n)));
    assert!(families.contains("kafka_mesh_produce_records_total"));
    assert!(!inclusion.includes("cluster.outbound|9092||kafka.svc.upstream_cx_total"));
}

/// Istio's `failStrategy` as Envoy applies it (host `worker.rs`): what the connection that was
/// on the VM when it failed gets, and what a new connection gets afterwards.
#[test]
fn failure_strategies_as_envoy_applies_them() {
    use kafka_mesh_testhost::host::FailurePolicy::{FailClosed, FailOpen, FailReload};
    use kafka_mesh_testhost::worker::{Admission, Worker};
    use std::time::{Duration, Instant};

    let (engine, module) = filter();
    // (failure_policy, legacy fail_open bool, existing connection relayed?, new connection)
    for (policy, legacy, relayed, later) in [
        (FailClosed, false, false, "closed"),
        (FailOpen, false, false, "unfiltered"), // what Istio's FAIL_OPEN gives
        (FailOpen, true, true, "unfiltered"),   // plain Envoy with the deprecated bool
        (FailReload, false, false, "filtered"),
    ] {
        let process = Process::new();
        let mut s = spec("{}");
        s.failure_policy = policy;
        s.fail_open = legacy;
        let t0 = Instant::now();
        let mut w = Worker::start(&engine, &module, process.clone(), s, t0).unwrap();
        let Admission::Filtered { vm, id } = w
            .new_connection(t0, HashMap::new(), HashMap::new())
            .unwrap()
        else {
            panic!("a healthy VM filters")
        };
        let frame = req(0, 9, 1, &produce_to(&["orders"]).with_acks(0));
        assert_eq!(
            vm.borrow_mut()
                .data(id, Dir::Downstream, &frame, false)
                .forwarded,
            frame
        );
        vm.borrow_mut().fail_next_call();
        let r = vm.borrow_mut().data(id, Dir::Downstream, &frame, false);
        assert!(vm.borrow().failed());
        assert_eq!(r.close, !relayed, "{policy:?} legacy={legacy}");
        assert_eq!(r.forwarded.is_empty(), !relayed);
        let got = match w
            .new_connection(t0 + Duration::from_secs(5), HashMap::new(), HashMap::new())
            .unwrap()
        {
            Admission::Filtered { vm: v2, .. } => {
                assert!(!Rc::ptr_eq(&v2, &vm), "a new VM");
                "filtered"
            }
            Admission::Unfiltered => "unfiltered",
            Admission::Closed => "closed",
        };
        assert_eq!(got, later, "{policy:?} legacy={legacy}");
    }
}

/// FAIL_RELOAD: connections in the backoff are failed closed; the first after it gets a
/// fresh VM whose caches start empty (metric ids, topic-id cache, admitted labels), and the
/// metrics go on correctly from what the process (stats, shared data) kept.
#[test]
fn fail_reload_recovers_with_correct_metrics() {
    use kafka_mesh_testhost::host::FailurePolicy;
    use kafka_mesh_testhost::worker::{Admission, Worker};
    use kafka_protocol::messages::{
        fetch_request, fetch_response, metadata_response, FetchRequest, FetchResponse,
        MetadataRequest, MetadataResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use std::time::{Duration, Instant};

    let (engine, module) = filter();
    let process = Process::new();
    let mut s = spec(r#"{"metrics": {"maxTopics": 2}}"#);
    s.failure_policy = FailurePolicy::FailReload;
    let t0 = Instant::now();
    let mut w = Worker::start(&engine, &module, process.clone(), s, t0).unwrap();
    let filtered = |a: Admission| match a {
        Admission::Filtered { vm, id } => (vm, id),
        _ => panic!("not filtered"),
    };
    let topic_id = uuid::Uuid::from_bytes([7; 16]);

    // VM 1 learns orders' topic id and counts 2 records.
    let (vm1, a) = filtered(
        w.new_connection(t0, HashMap::new(), HashMap::new())
            .unwrap(),
    );
    let md_req = common::req(3, 12, 1, &MetadataRequest::default());
    vm1.borrow_mut().data(a, Dir::Downstream, &md_req, false);
    let md = MetadataResponse::default().with_topics(vec![
        metadata_response::MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
            .with_topic_id(topic_id),
    ]);
    vm1.borrow_mut()
        .data(a, Dir::Upstream, &common::resp(1, 12, &md), false);
    let p = req(0, 9, 2, &produce_to(&["orders"]).with_acks(0));
    vm1.borrow_mut().data(a, Dir::Downstream, &p, false);

    // VM 1 traps; its connection is closed.
    vm1.borrow_mut().fail_next_call();
    assert!(vm1.borrow_mut().data(a, Dir::Downstream, &p, false).close);

    // In the backoff (at least 1 s after the last load): failed closed, no reload.
    let during = w
        .new_connection(
            t0 + Duration::from_millis(500),
            HashMap::new(),
            HashMap::new(),
        )
        .unwrap();
    assert!(matches!(during, Admission::Closed));
    assert_eq!((w.reloads.success, w.reloads.backoff), (0, 1));

    // After it (1.5 s is the longest backoff): a fresh VM.
    let (vm2, c) = filtered(
        w.new_connection(
            t0 + Duration::from_millis(1600),
            HashMap::new(),
            HashMap::new(),
        )
        .unwrap(),
    );
    assert_eq!(w.reloads.success, 1);
    assert!(!Rc::ptr_eq(&vm1, &vm2) && !vm2.borrow().failed());
    let p = req(
        0,
        9,
        3,
        &produce_to(&["orders", "payments", "third"]).with_acks(0),
    );
    let r = vm2.borrow_mut().data(c, Dir::Downstream, &p, false);
    assert_eq!(r.forwarded, p);
    // Fetch by topic id: VM 2's own cache is empty; the name comes from shared data.
    let f = FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
        .with_topic_id(topic_id)
        .with_partitions(vec![fetch_request::FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(0)])]);
    vm2.borrow_mut()
        .data(c, Dir::Downstream, &common::req(1, 13, 4, &f), false);
    let fr = FetchResponse::default().with_responses(vec![
        fetch_response::FetchableTopicResponse::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![fetch_response::PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(3)
                .with_records(Some(bytes::Bytes::from(common::batch(3, 50))))]),
    ]);
    let out = vm2
        .borrow_mut()
        .data(c, Dir::Upstream, &common::resp(4, 13, &fr), false);
    assert_eq!(out.forwarded, common::resp(4, 13, &fr));

    let st = process.stats.lock().unwrap();
    let records = |t: &str| st.counter_sum("kafka_mesh_produce_records_total", &[("topic", t)]);
    assert_eq!(records("orders"), 4, "2 before the failure, 2 after");
    assert_eq!(records("payments"), 2);
    assert_eq!(
        records("third"),
        0,
        "maxTopics=2 still holds across the reload"
    );
    assert_eq!(records("__overflow__"), 2);
    assert_eq!(
        st.counter_sum("kafka_mesh_fetch_records_total", &[("topic", "orders")]),
        3
    );
    assert_eq!(st.counter("kafka_mesh_connections_total"), 2);
    // The connection VM 1 had never got its close callbacks (Envoy skips them on a failed
    // VM), so the filter's gauge still counts it: documented in the README.
    assert_eq!(st.gauge("kafka_mesh_connections_active"), 2);
    drop(st);
    vm2.borrow_mut()
        .close_as(c, kafka_mesh_testhost::host::Peer::Remote);
    assert_eq!(
        process
            .stats
            .lock()
            .unwrap()
            .gauge("kafka_mesh_connections_active"),
        1
    );
}
