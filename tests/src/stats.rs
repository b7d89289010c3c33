//! Process-wide stats store and its Prometheus rendering, as Envoy's admin shows Wasm metrics.
//!
//! - Envoy defines each Wasm metric in the `wasmcustom` stat namespace
//!   (envoyproxy/envoy `source/extensions/common/wasm/context.cc`, `Context::defineMetric`:
//!   `{wasm()->custom_stat_namespace_, stat_name}`), in one process-wide store: every worker
//!   VM that defines the same name updates the same stat.
//! - `/stats/prometheus` strips a registered custom namespace and does not add the `envoy_`
//!   prefix to such stats; other characters outside `[a-zA-Z0-9_]` become `_`
//!   (envoyproxy/envoy `source/server/admin/prometheus_stats.cc`, `metricName`).
//! - Histograms use Envoy's default bucket bounds (`source/common/stats/histogram_impl.h`,
//!   `HistogramSettingsImpl::defaultBuckets`).

use std::collections::BTreeMap;
use std::fmt::Write;

pub const CUSTOM_NAMESPACE: &str = "wasmcustom";

pub const DEFAULT_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    pub values: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, i64>,
    pub histograms: BTreeMap<String, Histogram>,
}

impl Stats {
    pub fn define(&mut self, kind: Kind, name: &str) {
        match kind {
            Kind::Counter => {
                self.counters.entry(name.to_string()).or_default();
            }
            Kind::Gauge => {
                self.gauges.entry(name.to_string()).or_default();
            }
            Kind::Histogram => {
                self.histograms.entry(name.to_string()).or_default();
            }
        }
    }

    /// Value of a counter by its name without the namespace.
    pub fn counter(&self, name: &str) -> u64 {
        self.counters
            .get(&format!("{CUSTOM_NAMESPACE}.{name}"))
            .copied()
            .unwrap_or(0)
    }

    pub fn gauge(&self, name: &str) -> i64 {
        self.gauges
            .get(&format!("{CUSTOM_NAMESPACE}.{name}"))
            .copied()
            .unwrap_or(0)
    }

    pub fn histogram_count(&self, name: &str) -> usize {
        self.histograms
            .get(&format!("{CUSTOM_NAMESPACE}.{name}"))
            .map_or(0, |h| h.values.len())
    }

    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, v) in &self.counters {
            let n = prom_name(name);
            let _ = writeln!(out, "# TYPE {n} counter\n{n}{{}} {v}");
        }
        for (name, v) in &self.gauges {
            let n = prom_name(name);
            let _ = writeln!(out, "# TYPE {n} gauge\n{n}{{}} {v}");
        }
        for (name, h) in &self.histograms {
            let n = prom_name(name);
            let _ = writeln!(out, "# TYPE {n} histogram");
            for b in DEFAULT_BUCKETS {
                let c = h.values.iter().filter(|&&v| (v as f64) <= *b).count();
                let _ = writeln!(out, "{n}_bucket{{le=\"{b}\"}} {c}");
            }
            let _ = writeln!(out, "{n}_bucket{{le=\"+Inf\"}} {}", h.values.len());
            let sum: u64 = h.values.iter().sum();
            let _ = writeln!(out, "{n}_sum{{}} {sum}\n{n}_count{{}} {}", h.values.len());
        }
        out
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn prom_name(stat: &str) -> String {
    match stat.strip_prefix(&format!("{CUSTOM_NAMESPACE}.")) {
        Some(rest) => sanitize(rest),
        None => format!("envoy_{}", sanitize(stat)),
    }
}
