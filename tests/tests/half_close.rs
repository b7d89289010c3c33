//! Half-close through the built kafka_mesh_filter.wasm, as Envoy's `tcp_proxy` runs it: it
//! enables half-close on both connections (envoyproxy/envoy `source/common/tcp_proxy/
//! tcp_proxy.cc`, `Filter::initialize` and `onPoolReady` call `enableHalfClose(true)`), so a
//! FIN from one peer is only an end of stream for one direction, and the other keeps flowing.
//!
//! What the filter sees, per envoyproxy/envoy `source/extensions/common/wasm/context.cc`:
//! - the client's FIN: `proxy_on_downstream_data(.., end_of_stream=1)` (`Context::onData`);
//! - the broker's FIN: `proxy_on_upstream_data(.., end_of_stream=1)` and right after it
//!   `proxy_on_upstream_connection_close(Unknown)` (`Context::onWrite`);
//! - the end of the downstream connection (both directions over, a close, an error):
//!   `proxy_on_downstream_connection_close(Local|Remote)` (`Context::onEvent`), then
//!   `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` once (`Context::onCloseTCP`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{req, resp, vm_with};
use kafka_mesh_testhost::host::{Dir, Peer, Process, Vm};
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, MetadataResponse};

fn vm(process: &Arc<Process>) -> Vm {
    vm_with("{}", process)
}

/// ApiVersions v3 (corr 1) and Metadata v12 (corr 2); the broker's answers; what the client
/// must get (the ApiVersions answer clamped to what the filter parses: Produce max 13).
fn exchange() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut reqs = req(18, 3, 1, &ApiVersionsRequest::default());
    reqs.extend(req(3, 12, 2, &MetadataRequest::default()));
    let av = |produce_max| {
        ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(0)
                .with_max_version(produce_max),
            ApiVersion::default().with_api_key(3).with_max_version(12),
        ])
    };
    let mut resps = resp(1, 3, &av(99));
    resps.extend(resp(2, 12, &MetadataResponse::default()));
    let mut expected = resp(1, 3, &av(13));
    expected.extend(resp(2, 12, &MetadataResponse::default()));
    (reqs, resps, expected)
}

fn calls(vm: &Vm, name: &str) -> u64 {
    vm.counters().callbacks.get(name).copied().unwrap_or(0)
}

/// How often each close-time callback has run: upstream close, downstream close, done, log,
/// delete.
fn closes(vm: &Vm) -> [u64; 5] {
    [
        calls(vm, "proxy_on_upstream_connection_close"),
        calls(vm, "proxy_on_downstream_connection_close"),
        calls(vm, "proxy_on_done"),
        calls(vm, "proxy_on_log"),
        calls(vm, "proxy_on_delete"),
    ]
}

fn active(process: &Process) -> i64 {
    process
        .stats
        .lock()
        .unwrap()
        .gauge("kafka_mesh_connections_active")
}

fn count(process: &Process, family: &str, api: &str) -> u64 {
    process
        .stats
        .lock()
        .unwrap()
        .counter_sum(family, &[("api", api)])
}

/// The client sends two requests and its FIN in one read (Envoy's raw socket reads up to EOF,
/// so bytes and end_stream come in one `onData`); the broker answers both, then FINs. The
/// answers still pass, rewritten and counted, and the connection ends only at the final close.
#[test]
fn responses_to_requests_sent_before_the_clients_fin_are_relayed_and_counted() {
    for chunk in [usize::MAX, 7, 1] {
        let process = Process::new();
        let mut vm = vm(&process);
        let id = vm.new_connection(HashMap::new()).unwrap();
        let (reqs, resps, expected) = exchange();

        let r = vm.data(id, Dir::Downstream, &reqs, true);
        assert!(!r.close && !r.paused, "chunk {chunk}: {r:?}");
        assert_eq!(r.forwarded, reqs, "chunk {chunk}");
        // A FIN is not a close: nothing close-related has run, the connection is active.
        assert_eq!(closes(&vm), [0; 5], "chunk {chunk}");
        assert_eq!(active(&process), 1);

        // The answers, the last piece with the broker's FIN.
        let mut out = Vec::new();
        let pieces: Vec<&[u8]> = resps.chunks(chunk.min(resps.len())).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let r = vm.data(id, Dir::Upstream, piece, i + 1 == pieces.len());
            assert!(!r.close, "chunk {chunk}: {r:?}");
            out.extend(r.forwarded);
        }
        assert_eq!(out, expected, "chunk {chunk}");
        assert_eq!(vm.buffered(id, Dir::Upstream), 0);
        vm.upstream_end_of_stream(id);
        assert_eq!(closes(&vm), [1, 0, 0, 0, 0], "chunk {chunk}");
        assert_eq!(active(&process), 1);

        {
            let st = process.stats.lock().unwrap();
            assert_eq!(st.counter_sum("kafka_mesh_requests_total", &[]), 2);
            assert_eq!(st.counter_sum("kafka_mesh_responses_total", &[]), 2);
            assert_eq!(st.counter("kafka_mesh_api_versions_clamped_total"), 1);
            assert_eq!(
                st.histogram_count_of("kafka_mesh_request_latency_ms", &[]),
                2
            );
            assert_eq!(st.counter_sum("kafka_mesh_malformed_total", &[]), 0);
        }
        assert_eq!(count(&process, "kafka_mesh_responses_total", "metadata"), 1);
        assert_eq!(
            count(&process, "kafka_mesh_response_bytes_total", "api_versions"),
            resp(
                1,
                3,
                &ApiVersionsResponse::default().with_api_keys(vec![
                    ApiVersion::default().with_api_key(0).with_max_version(13),
                    ApiVersion::default().with_api_key(3).with_max_version(12),
                ])
            )
            .len() as u64
        );

        // Both directions are over: the downstream connection closes (our FIN to the client
        // was the last write: LocalClose), and done/log/delete run once.
        vm.close_as(id, Peer::Local);
        assert_eq!(closes(&vm), [1, 1, 1, 1, 1], "chunk {chunk}");
        assert_eq!(active(&process), 0);
        // A second close of the same connection is a no-op (`tcp_connection_closed_`).
        vm.close_as(id, Peer::Remote);
        vm.close(id, true);
        assert_eq!(closes(&vm), [1, 1, 1, 1, 1], "chunk {chunk}");
        assert_eq!(active(&process), 0);
    }
}

/// The broker FINs first, after answering: the client still gets the answer and can still send
/// (the upstream's write side is open); its later FIN ends the connection.
#[test]
fn after_the_brokers_fin_the_client_direction_still_flows() {
    let process = Process::new();
    let mut vm = vm(&process);
    let id = vm.new_connection(HashMap::new()).unwrap();
    let meta = req(3, 12, 1, &MetadataRequest::default());
    assert_eq!(vm.data(id, Dir::Downstream, &meta, false).forwarded, meta);
    let answer = resp(1, 12, &MetadataResponse::default());
    let r = vm.data(id, Dir::Upstream, &answer, true);
    assert_eq!(r.forwarded, answer);
    vm.upstream_end_of_stream(id);
    assert_eq!(closes(&vm), [1, 0, 0, 0, 0]);
    assert_eq!(active(&process), 1);

    let more = req(3, 12, 2, &MetadataRequest::default());
    let r = vm.data(id, Dir::Downstream, &more, false);
    assert!(!r.close);
    assert_eq!(r.forwarded, more);
    let r = vm.data(id, Dir::Downstream, &[], true);
    assert!(!r.close && r.forwarded.is_empty());
    assert_eq!(closes(&vm), [1, 0, 0, 0, 0]);

    // The client's FIN was the last event: RemoteClose. The upstream close callback, already
    // delivered at the broker's FIN, is not repeated.
    vm.close(id, true);
    assert_eq!(closes(&vm), [1, 1, 1, 1, 1]);
    assert_eq!(active(&process), 0);
    assert_eq!(count(&process, "kafka_mesh_requests_total", "metadata"), 2);
    assert_eq!(count(&process, "kafka_mesh_responses_total", "metadata"), 1);
}

/// A partial request cut short by the client's FIN goes on as it came (the broker decides what
/// to do with it); nothing stays in the host buffer and nothing is taken for malformed.
#[test]
fn a_request_cut_short_by_the_fin_is_forwarded_whole() {
    let process = Process::new();
    let mut vm = vm(&process);
    let id = vm.new_connection(HashMap::new()).unwrap();
    let meta = req(3, 12, 1, &MetadataRequest::default());
    let cut = &meta[..meta.len() - 3];
    let r = vm.data(id, Dir::Downstream, cut, true);
    assert!(!r.close, "{r:?}");
    assert_eq!(r.forwarded, cut);
    assert_eq!(vm.buffered(id, Dir::Downstream), 0);
    let r = vm.data(id, Dir::Upstream, &[], true);
    assert!(!r.close && r.forwarded.is_empty());
    vm.upstream_end_of_stream(id);
    vm.close_as(id, Peer::Local);
    assert_eq!(closes(&vm), [1, 1, 1, 1, 1]);
    assert_eq!(active(&process), 0);
    assert_eq!(
        process
            .stats
            .lock()
            .unwrap()
            .counter_sum("kafka_mesh_malformed_total", &[]),
        0
    );
}
