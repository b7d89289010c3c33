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

/// One `stats_config.stats_tags` entry: a tag name and its regex.
#[derive(Debug, Clone)]
pub struct TagSpec {
    pub name: String,
    pub regex: regex::Regex,
}

/// Parse the `stats_config` fragment of an Envoy bootstrap (`{"stats_tags": [{"tag_name",
/// "regex"}, ...]}`), as shipped in `wasm-plugin-manifests/envoy/stats_config.json`.
pub fn parse_stats_config(json: &str) -> anyhow::Result<Vec<TagSpec>> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let mut out = Vec::new();
    for t in v
        .get("stats_tags")
        .and_then(|t| t.as_array())
        .ok_or_else(|| anyhow::anyhow!("stats_config has no stats_tags array"))?
    {
        let name = t
            .get("tag_name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| anyhow::anyhow!("stats_tags entry without tag_name"))?;
        let re = t
            .get("regex")
            .and_then(|n| n.as_str())
            .ok_or_else(|| anyhow::anyhow!("stats_tags entry {name} without regex"))?;
        out.push(TagSpec {
            name: name.to_string(),
            regex: regex::Regex::new(re)?,
        });
    }
    Ok(out)
}

/// Envoy's tag extraction (envoyproxy/envoy `source/common/stats/tag_producer_impl.cc` and
/// `tag_extractor_impl.cc`, `TagExtractorStdRegexImpl::extractTag`): every extractor searches
/// the full stat name; on a match with at least one group, group 1 is removed from the name
/// and group 2 (or group 1) is the tag value. Tags come out in extractor order.
pub fn extract_tags(specs: &[TagSpec], full: &str) -> (String, Vec<(String, String)>) {
    let mut remove: Vec<(usize, usize)> = Vec::new();
    let mut tags = Vec::new();
    for spec in specs {
        let Some(c) = spec.regex.captures(full) else {
            continue;
        };
        let Some(g1) = c.get(1) else { continue };
        let value = c.get(2).unwrap_or(g1).as_str().to_string();
        tags.push((spec.name.clone(), value));
        remove.push((g1.start(), g1.end()));
    }
    let mut name = String::with_capacity(full.len());
    for (i, ch) in full.char_indices() {
        if !remove.iter().any(|&(a, b)| i >= a && i < b) {
            name.push(ch);
        }
    }
    (name, tags)
}

#[derive(Debug, Default)]
pub struct Stats {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, i64>,
    pub histograms: BTreeMap<String, Histogram>,
    pub tag_specs: Vec<TagSpec>,
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

    /// Sum of the counters of one family (the metric name with tags removed, as Envoy's tag
    /// extraction with this project's `stats_tags` yields) whose tags include `want`.
    pub fn counter_sum(&self, family: &str, want: &[(&str, &str)]) -> u64 {
        let specs = ours();
        self.counters
            .iter()
            .filter(|(n, _)| family_matches(&specs, n, family, want))
            .map(|(_, v)| *v)
            .sum()
    }

    pub fn gauge_of(&self, family: &str, want: &[(&str, &str)]) -> Option<i64> {
        let specs = ours();
        self.gauges
            .iter()
            .find(|(n, _)| family_matches(&specs, n, family, want))
            .map(|(_, v)| *v)
    }

    pub fn histogram_count_of(&self, family: &str, want: &[(&str, &str)]) -> usize {
        let specs = ours();
        self.histograms
            .iter()
            .filter(|(n, _)| family_matches(&specs, n, family, want))
            .map(|(_, h)| h.values.len())
            .sum()
    }

    /// `/stats/prometheus` as Envoy renders it (`source/server/admin/prometheus_stats.cc`):
    /// stats grouped by tag-extracted name, one `# TYPE` line per group, tags as labels in
    /// extraction order, label values escaped, histograms with cumulative buckets.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let group = |names: Vec<&String>| {
            let mut g: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
            for n in names {
                let (ext, tags) = extract_tags(&self.tag_specs, n);
                g.entry(prom_name(&ext))
                    .or_default()
                    .push((n.clone(), labels(&tags)));
            }
            g
        };
        for (pn, members) in group(self.counters.keys().collect()) {
            let _ = writeln!(out, "# TYPE {pn} counter");
            for (full, l) in members {
                let v = self.counters.get(&full).copied().unwrap_or(0);
                let _ = writeln!(out, "{pn}{{{l}}} {v}");
            }
        }
        for (pn, members) in group(self.gauges.keys().collect()) {
            let _ = writeln!(out, "# TYPE {pn} gauge");
            for (full, l) in members {
                let v = self.gauges.get(&full).copied().unwrap_or(0);
                let _ = writeln!(out, "{pn}{{{l}}} {v}");
            }
        }
        for (pn, members) in group(self.histograms.keys().collect()) {
            let _ = writeln!(out, "# TYPE {pn} histogram");
            for (full, l) in members {
                let Some(h) = self.histograms.get(&full) else {
                    continue;
                };
                let sep = if l.is_empty() { "" } else { "," };
                for b in DEFAULT_BUCKETS {
                    let c = h.values.iter().filter(|&&v| (v as f64) <= *b).count();
                    let _ = writeln!(out, "{pn}_bucket{{{l}{sep}le=\"{b}\"}} {c}");
                }
                let n = h.values.len();
                let _ = writeln!(out, "{pn}_bucket{{{l}{sep}le=\"+Inf\"}} {n}");
                let sum: u64 = h.values.iter().sum();
                let _ = writeln!(out, "{pn}_sum{{{l}}} {sum}\n{pn}_count{{{l}}} {n}");
            }
        }
        out
    }
}

/// The stats_tags this project ships, for the test helpers above.
fn ours() -> Vec<TagSpec> {
    parse_stats_config(OUR_STATS_CONFIG).unwrap_or_default()
}

pub const OUR_STATS_CONFIG: &str =
    include_str!("../../wasm-plugin-manifests/envoy/stats_config.json");

fn family_matches(specs: &[TagSpec], full: &str, family: &str, want: &[(&str, &str)]) -> bool {
    let (ext, tags) = extract_tags(specs, full);
    ext.strip_prefix(&format!("{CUSTOM_NAMESPACE}.")) == Some(family)
        && want
            .iter()
            .all(|(k, v)| tags.iter().any(|(tk, tv)| tk == k && tv == v))
}

/// Envoy's `PrometheusStatsFormatter::formattedTags` with `sanitizeValue`.
fn labels(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{}=\"{}\"", sanitize(k), v)
        })
        .collect::<Vec<_>>()
        .join(",")
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
