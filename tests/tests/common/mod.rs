//! Helpers shared by the integration tests that drive the built filter through the host.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use kafka_mesh_testhost::host::{Dir, PluginSpec, Process, Vm};
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
use wasmtime::{Engine, Module};

pub fn wasm_path() -> PathBuf {
    std::env::var_os("KMF_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-wasip1/release/kafka_mesh_filter.wasm")
        })
}

/// The filter, compiled once per test binary (compiling the module is most of a test's time).
pub fn filter() -> (Engine, Module) {
    static COMPILED: OnceLock<(Engine, Module)> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            let engine = Engine::default();
            let bytes = std::fs::read(wasm_path()).unwrap_or_else(|e| {
                panic!("{}: {e}; run `make build` first", wasm_path().display())
            });
            let module = Module::new(&engine, bytes).unwrap();
            (engine, module)
        })
        .clone()
}

pub fn spec(config: &str) -> PluginSpec {
    PluginSpec {
        plugin_config: config.as_bytes().to_vec(),
        ..PluginSpec::default()
    }
}

pub fn vm_with(config: &str, process: &Arc<Process>) -> Vm {
    let (engine, module) = filter();
    Vm::start(&engine, &module, process.clone(), spec(config)).unwrap()
}

pub fn req<B: Encodable + HeaderVersion>(key: i16, v: i16, corr: i32, body: &B) -> Vec<u8> {
    let h = RequestHeader::default()
        .with_request_api_key(key)
        .with_request_api_version(v)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str("it")));
    kafka_mesh_core::testkit::encode_request(&h, body, v)
}

pub fn resp<B: Encodable + HeaderVersion>(corr: i32, v: i16, body: &B) -> Vec<u8> {
    kafka_mesh_core::testkit::encode_response(corr, body, v)
}

/// Feed `bytes` in `chunk`-sized callbacks; collect what the host forwarded, how many
/// callbacks paused, and whether the connection was closed.
pub fn feed(vm: &mut Vm, id: u32, dir: Dir, bytes: &[u8], chunk: usize) -> (Vec<u8>, usize, bool) {
    let mut out = Vec::new();
    let mut pauses = 0;
    for c in bytes.chunks(chunk.max(1)) {
        let r = vm.data(id, dir, c, false);
        out.extend(r.forwarded);
        pauses += usize::from(r.paused);
        if r.close {
            return (out, pauses, true);
        }
    }
    (out, pauses, false)
}

/// A v2 record batch header plus `payload` opaque bytes (the filter reads only the header).
pub fn batch(count: i32, payload: usize) -> Vec<u8> {
    kafka_mesh_core::testkit::record_batch(0, count, payload, 0)
}

/// A Produce v9 request (acks all) with one small batch for each of `topics`.
pub fn produce_to(topics: &[&str]) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::{produce_request, ProduceRequest, TopicName};
    ProduceRequest::default().with_acks(-1).with_topic_data(
        topics
            .iter()
            .map(|n| {
                produce_request::TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(n.to_string())))
                    .with_partition_data(vec![produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from(batch(2, 30))))])
            })
            .collect(),
    )
}
