//! The no-op proxy-wasm network filter: a root context that accepts any configuration and a
//! stream context per connection whose callbacks all return `Continue` without touching a
//! buffer, property or metric. Run through the same test host as kafka-mesh-filter, it is the
//! baseline that isolates the filter's own cost from the host's (relay, VM entry per callback).
//! Built with `cargo build --release -p kafka-mesh-noop-filter --target wasm32-wasip1`.

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        true
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Conn))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Conn;

impl Context for Conn {}

impl StreamContext for Conn {
    fn on_new_connection(&mut self) -> Action {
        Action::Continue
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_downstream_close(&mut self, _peer_type: PeerType) {}

    fn on_upstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_upstream_close(&mut self, _peer_type: PeerType) {}
}
