//! One Envoy worker thread's handle on the plugin: which VM a new connection is filtered by,
//! and what a connection gets once that VM has failed. As envoyproxy/envoy
//! `source/extensions/common/wasm/wasm.cc`, `PluginConfig::createContext` and
//! `PluginConfig::maybeReloadHandleIfNeeded`, called for every new connection by the network
//! filter's factory (`source/extensions/filters/network/wasm/config.cc`):
//!
//! - **FAIL_CLOSED** (and UNSPECIFIED): a new connection gets a context with no VM, which fails
//!   the stream at `onNewConnection` (cpp-host `CHECK_FAIL_NET` -> `failStream`: the
//!   connection is closed, nothing reaches the broker). Until Envoy restarts or the plugin
//!   is re-pushed.
//! - **FAIL_OPEN**: `createContext` returns no filter, so the connection goes on through
//!   tcp_proxy unfiltered: no metrics, no policy, no rewriting.
//! - **FAIL_RELOAD**: the next new connection after the backoff (Envoy's
//!   `JitteredLowerBoundBackOffStrategy`: a random wait in [base, 1.5 base), base 1 s by
//!   default, measured from the last load) gets a freshly cloned VM: `on_vm_start` and
//!   `on_configure` run again, so everything the VM kept (metric ids, the topic-id cache,
//!   admitted labels) starts empty, while stats and shared data, which belong to the process,
//!   stay. A connection during the backoff, or after a reload that failed, is failed closed.
//!   Only a runtime failure (a trap) is reloaded.
//!
//! Connections that were already on the VM when it failed keep it, whatever the policy: on
//! their next callback cpp-host's `CHECK_FAIL` closes them, or relays them unfiltered only
//! when the deprecated `fail_open` bool is set ([`PluginSpec::fail_open`]); its close
//! callbacks never run, so the filter's own `kafka_mesh_connections_active` keeps counting
//! them (Envoy's `downstream_cx_active` does not).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use wasmtime::{Engine, Module};

use crate::host::{FailurePolicy, PluginSpec, Process, Vm};

/// What a new connection gets from its worker.
pub enum Admission {
    /// Filtered by `vm` as connection `id` (`proxy_on_new_connection` has run).
    Filtered { vm: Rc<RefCell<Vm>>, id: u32 },
    /// FAIL_OPEN with a failed VM: no filter on this connection.
    Unfiltered,
    /// A failed VM under FAIL_CLOSED, or FAIL_RELOAD in its backoff: the connection is closed.
    Closed,
}

/// Counters of FAIL_RELOAD's attempts (Envoy's `VmReloadSuccess` / `VmReloadBackoff` /
/// `VmReloadFailure` events).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reloads {
    pub success: u64,
    pub backoff: u64,
    pub failure: u64,
}

pub struct Worker {
    engine: Engine,
    module: Module,
    process: Arc<Process>,
    spec: PluginSpec,
    vm: Rc<RefCell<Vm>>,
    last_load: Instant,
    rng: u64,
    pub reloads: Reloads,
}

impl Worker {
    /// The worker's first VM (cloned from the base VM and configured on the worker thread).
    pub fn start(
        engine: &Engine,
        module: &Module,
        process: Arc<Process>,
        spec: PluginSpec,
        now: Instant,
    ) -> Result<Worker> {
        let vm = Vm::start(engine, module, process.clone(), spec.clone())?;
        Ok(Worker {
            engine: engine.clone(),
            module: module.clone(),
            process,
            spec,
            vm: Rc::new(RefCell::new(vm)),
            last_load: now,
            rng: 0x9e37_79b9_7f4a_7c15,
            reloads: Reloads::default(),
        })
    }

    /// The VM new connections get now.
    pub fn vm(&self) -> Rc<RefCell<Vm>> {
        self.vm.clone()
    }

    /// A new downstream connection at `now` (`props`, `after_handshake`: see
    /// [`Vm::new_connection_tls`]).
    pub fn new_connection(
        &mut self,
        now: Instant,
        props: HashMap<String, Vec<u8>>,
        after_handshake: HashMap<String, Vec<u8>>,
    ) -> Result<Admission> {
        self.maybe_reload(now);
        if self.vm.borrow().failed() {
            return Ok(match self.spec.effective_policy() {
                FailurePolicy::FailOpen => Admission::Unfiltered,
                FailurePolicy::FailClosed | FailurePolicy::FailReload => Admission::Closed,
            });
        }
        let id = self
            .vm
            .borrow_mut()
            .new_connection_tls(props, after_handshake)?;
        Ok(Admission::Filtered {
            vm: self.vm.clone(),
            id,
        })
    }

    /// [envoy] `maybeReloadHandleIfNeeded`: only a failed VM, only under FAIL_RELOAD, only once
    /// the backoff since the last load has passed.
    fn maybe_reload(&mut self, now: Instant) {
        if !self.vm.borrow().failed() || self.spec.effective_policy() != FailurePolicy::FailReload {
            return;
        }
        let wait = Duration::from_millis(self.next_backoff_ms());
        if now.saturating_duration_since(self.last_load) < wait {
            self.reloads.backoff += 1;
            return;
        }
        self.last_load = now;
        match Vm::start(
            &self.engine,
            &self.module,
            self.process.clone(),
            self.spec.clone(),
        ) {
            Ok(vm) => {
                self.vm = Rc::new(RefCell::new(vm));
                self.reloads.success += 1;
            }
            Err(_) => self.reloads.failure += 1,
        }
    }

    /// envoyproxy/envoy `source/common/common/backoff_strategy.cc`,
    /// `JitteredLowerBoundBackOffStrategy::nextBackOffMs`: `random % (min >> 1) + min`, drawn
    /// anew at every check (its max interval is not used).
    fn next_backoff_ms(&mut self) -> u64 {
        let base = self.spec.reload_base_ms.max(2);
        // xorshift64: any uniform-enough source will do for a jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % (base >> 1) + base
    }
}
