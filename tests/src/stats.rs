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

/// One `stats_config.stats_tags` entry: a tag name, its regex, and the literal prefix Envoy
/// derives from it.
#[derive(Debug, Clone)]
pub struct TagSpec {
    pub name: String,
    /// `None` only for a regex this host's engine cannot compile (Istio's
    /// `^listener(?=\.)...` uses a look-ahead); allowed only with a prefix, so it can never
    /// run on a `wasmcustom.` name, the only kind this host stores.
    pub regex: Option<regex::Regex>,
    /// [`regex_prefix`]: the extractor runs only on names whose first token is this.
    pub prefix: Option<String>,
}

impl TagSpec {
    pub fn new(name: &str, re: &str) -> anyhow::Result<TagSpec> {
        let prefix = regex_prefix(re);
        let regex = match regex::Regex::new(re) {
            Ok(r) => Some(r),
            Err(_) if prefix.is_some() => None,
            Err(e) => return Err(anyhow::anyhow!("stats_tags {name}: {e}")),
        };
        Ok(TagSpec {
            name: name.to_string(),
            regex,
            prefix,
        })
    }
}

/// Envoy's `TagExtractorImplBase::extractRegexPrefix` (envoyproxy/envoy
/// `source/common/stats/tag_extractor_impl.cc`): a regex `^word\.`, `^word(?=\.)` or `^word$`
/// has the prefix `word`; any other regex has none.
pub fn regex_prefix(re: &str) -> Option<String> {
    let rest = re.strip_prefix('^')?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    let tail = &rest[end..];
    let dot = tail.starts_with("\\.") || tail.starts_with("(?=\\.)");
    (dot || tail == "$").then(|| rest[..end].to_string())
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
        out.push(TagSpec::new(name, re)?);
    }
    Ok(out)
}

/// Istio's bootstrap `stats_config`, vendored from istio/istio (see the file's `_source`).
pub const ISTIO_BOOTSTRAP_STATS: &str = include_str!("istio/bootstrap_stats.json");

/// The `stats_tags` an Istio sidecar runs: Istio's own entries around one
/// `({tag}=\.=(.*?);\.;)` per `extraStatTags` entry, in the bootstrap template's order.
pub fn istio_stats_tags(extra_stat_tags: &[String]) -> anyhow::Result<Vec<TagSpec>> {
    let v: serde_json::Value = serde_json::from_str(ISTIO_BOOTSTRAP_STATS)?;
    let entries = |k: &str| -> anyhow::Result<Vec<TagSpec>> {
        v.get(k)
            .and_then(|a| a.as_array())
            .ok_or_else(|| anyhow::anyhow!("{k} missing"))?
            .iter()
            .map(|t| {
                TagSpec::new(
                    t.get("tag_name").and_then(|n| n.as_str()).unwrap_or(""),
                    t.get("regex").and_then(|n| n.as_str()).unwrap_or(""),
                )
            })
            .collect()
    };
    let mut out = entries("stats_tags_before_extra")?;
    for tag in extra_stat_tags {
        out.push(TagSpec::new(tag, &format!("({tag}=\\.=(.*?);\\.;)"))?);
    }
    out.extend(entries("stats_tags_after_extra")?);
    Ok(out)
}

/// The tag names of the `stats_tags` we ship: the `extraStatTags` of
/// `wasm-plugin-manifests/istio/proxy-config-patch.yaml` (tests/manifests checks they agree).
pub fn our_tag_names() -> anyhow::Result<Vec<String>> {
    Ok(parse_stats_config(OUR_STATS_CONFIG)?
        .into_iter()
        .map(|t| t.name)
        .collect())
}

/// Istio's default stats inclusion (`stats_matcher.inclusion_list`): the required prefixes,
/// suffixes and regexes every sidecar gets, whatever `proxyStatsMatcher` adds
/// (istio/istio `pkg/bootstrap/config.go`, `requiredEnvoyStatsMatcherInclusionPrefixes`).
#[derive(Debug, Clone)]
pub struct Inclusion {
    prefixes: Vec<String>,
    suffixes: Vec<String>,
    regexes: Vec<regex::Regex>,
}

impl Inclusion {
    pub fn istio_default() -> anyhow::Result<Inclusion> {
        let v: serde_json::Value = serde_json::from_str(ISTIO_BOOTSTRAP_STATS)?;
        let strs = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Inclusion {
            prefixes: strs("inclusion_prefixes"),
            suffixes: strs("inclusion_suffixes"),
            regexes: strs("inclusion_regexes")
                .iter()
                .map(|r| regex::Regex::new(&format!("^(?:{r})$")))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Envoy's `StatsMatcherImpl` on the full stat name (namespace included): a prefix is a
    /// plain string prefix (`wasm` is not dot-terminated, so it matches `wasmcustom.`), a
    /// regex must match the whole name (`safe_regex` is a full match).
    pub fn includes(&self, full: &str) -> bool {
        self.prefixes.iter().any(|p| full.starts_with(p.as_str()))
            || self.suffixes.iter().any(|p| full.ends_with(p.as_str()))
            || self.regexes.iter().any(|r| r.is_match(full))
    }
}

/// Envoy's tag extraction (envoyproxy/envoy `source/common/stats/tag_producer_impl.cc`,
/// `TagProducerImpl::produceTags` / `forEachExtractorMatching`, and `tag_extractor_impl.cc`,
/// `TagExtractorStdRegexImpl::extractTag`):
/// - extractors without a prefix run first, in config order, then those whose prefix is the
///   name's first token (the text before the first `.`);
/// - every extractor searches the *original* full name; the removed ranges are merged and cut
///   out once at the end;
/// - on a match with at least one group, group 1 is removed and group 2 (group 1 when the
///   regex has only one) is the tag value;
/// - of several extractors with the same tag name, only the first that matches adds it.
pub fn extract_tags(specs: &[TagSpec], full: &str) -> (String, Vec<(String, String)>) {
    let mut remove: Vec<(usize, usize)> = Vec::new();
    let mut tags: Vec<(String, String)> = Vec::new();
    let first_token = full.split_once('.').map(|(t, _)| t);
    let order = specs.iter().filter(|s| s.prefix.is_none()).chain(
        specs
            .iter()
            .filter(|s| s.prefix.as_deref().is_some_and(|p| Some(p) == first_token)),
    );
    for spec in order {
        if tags.iter().any(|(n, _)| *n == spec.name) {
            continue;
        }
        let Some(re) = spec.regex.as_ref() else {
            continue;
        };
        let Some(c) = re.captures(full) else {
            continue;
        };
        let Some(g1) = c.get(1) else { continue };
        let value = if re.captures_len() > 2 {
            c.get(2).map_or("", |m| m.as_str())
        } else {
            g1.as_str()
        };
        tags.push((spec.name.clone(), value.to_string()));
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
    /// `stats_config.stats_matcher`: a stat it does not include is never created in Envoy,
    /// so it never shows. `None`: everything (Envoy's default).
    pub inclusion: Option<Inclusion>,
}

impl Stats {
    /// Extract and include as an Istio sidecar whose proxy config has our `extraStatTags`:
    /// Istio's whole bootstrap `stats_tags` around them, and its stats inclusion.
    pub fn as_istio_sidecar(&mut self) -> anyhow::Result<()> {
        self.tag_specs = istio_stats_tags(&our_tag_names()?)?;
        self.inclusion = Some(Inclusion::istio_default()?);
        Ok(())
    }

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
                if self.inclusion.as_ref().is_some_and(|i| !i.includes(n)) {
                    continue;
                }
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
