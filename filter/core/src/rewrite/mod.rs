//! Broker address rewriting: every place a broker advertises a host and port, rewritten so
//! clients only ever connect to addresses that route through the mesh.
//!
//! Rules, most specific first: an explicit node-id map, a node-id template, an exact map of
//! advertised hosts (or host:port), then host regexes with capture groups. A target is a
//! template `HOST:PORT` in which `{nodeId}`, `{port}` (the advertised port),
//! `{BASE+nodeId}` (a port offset, e.g. `{9092+nodeId}`) and, for regex rules, `$1`..`$9`
//! are substituted. An address no rule matches is left alone, and a response in which nothing
//! changes is relayed byte-identical (it is never re-encoded).
//!
//! Where addresses travel (Kafka's message specs, `clients/src/main/resources/common/message`):
//! Metadata `Brokers`, FindCoordinator v0-3 (`NodeId`/`Host`/`Port`) and v4+ `Coordinators`,
//! DescribeCluster `Brokers`, and the KIP-951 `NodeEndpoints` tagged field of Produce v10+ and
//! Fetch v16+ responses. Kroxylicious rewrites the same set; Envoy's C++ filter misses the last.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::{
    DescribeClusterResponse, FetchResponse, FindCoordinatorResponse, MetadataResponse,
    ProduceResponse,
};
use kafka_protocol::protocol::StrBytes;
use serde::Deserialize;

use crate::codec::api;
use crate::codec::kp::{decode_checked, encode};
use crate::codec::reader::DecodeResult;
use crate::codec::walk;
use crate::config_error::ConfigError;

/// How Produce v10+ / Fetch v16+ `NodeEndpoints` are handled. In Fetch responses they come
/// after all record data, and a rewrite changes the frame length at the front of a frame that
/// is already on its way; so either those versions are not offered, or such responses are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum NodeEndpointsMode {
    /// Cap Produce at v9 and Fetch at v15 in ApiVersions responses: no NodeEndpoints ever
    /// reach the client, nothing is buffered. Clients lose KIP-951's faster leader discovery.
    #[default]
    CapVersions,
    /// Keep the versions; hold Produce v10+ and Fetch v16+ responses whole to rewrite them. A
    /// response larger than `maxBufferedFrameBytes` closes the connection.
    Rewrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPatternSpec {
    /// A regex searched in the advertised host.
    pub r#match: String,
    /// `HOST:PORT` template; `$1`..`$9` are the regex's capture groups.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RewriteSpec {
    /// Node id to `HOST:PORT` template.
    pub nodes: BTreeMap<String, String>,
    /// Template for every node id, e.g. `kafka-{nodeId}.kafka.svc.cluster.local:9092` or
    /// `gw.example.com:{9092+nodeId}`.
    pub node_template: Option<String>,
    /// Advertised `host` or `host:port` to `HOST:PORT` template.
    pub hosts: BTreeMap<String, String>,
    pub host_patterns: Vec<HostPatternSpec>,
    pub node_endpoints: NodeEndpointsMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    NodeId,
    Port,
    Group(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortExpr {
    Fixed(i32),
    Advertised,
    Offset(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: Vec<Part>,
    port: PortExpr,
}

fn parse_target(s: &str, groups: bool) -> Result<Target, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT".to_string())?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    let port = match port {
        "{port}" => PortExpr::Advertised,
        p if p.starts_with('{') && p.ends_with("+nodeId}") => {
            let base = p
                .trim_start_matches('{')
                .trim_end_matches("+nodeId}")
                .parse::<i32>()
                .map_err(|_| format!("bad port offset {p:?} (use {{9092+nodeId}})"))?;
            PortExpr::Offset(base)
        }
        p => {
            let n = p
                .parse::<i32>()
                .map_err(|_| format!("bad port {p:?} (a number, {{port}} or {{BASE+nodeId}})"))?;
            if !(1..=65535).contains(&n) {
                return Err(format!("port {n} out of range"));
            }
            PortExpr::Fixed(n)
        }
    };
    let mut parts = Vec::new();
    let mut rest = host;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{nodeId}") {
            parts.push(Part::NodeId);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{port}") {
            parts.push(Part::Port);
            rest = r;
        } else if groups && rest.starts_with('$') && rest.len() >= 2 {
            let d = rest.as_bytes().get(1).copied().unwrap_or(b'x');
            if d.is_ascii_digit() {
                parts.push(Part::Group(usize::from(d - b'0')));
                rest = rest.get(2..).unwrap_or("");
            } else {
                parts.push(Part::Lit("$".into()));
                rest = rest.get(1..).unwrap_or("");
            }
        } else {
            let next = rest
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == '{' || (groups && *c == '$'))
                .map_or(rest.len(), |(i, _)| i);
            let (lit, r) = rest.split_at(next);
            if lit.contains(['{', '}']) {
                return Err(format!("unknown placeholder in {lit:?}"));
            }
            parts.push(Part::Lit(lit.to_string()));
            rest = r;
        }
    }
    Ok(Target { host: parts, port })
}

impl Target {
    fn render(
        &self,
        node_id: i32,
        port: i32,
        caps: Option<&regex_lite::Captures<'_>>,
    ) -> (String, i32) {
        let mut h = String::new();
        for p in &self.host {
            match p {
                Part::Lit(s) => h.push_str(s),
                Part::NodeId => h.push_str(&node_id.to_string()),
                Part::Port => h.push_str(&port.to_string()),
                Part::Group(g) => {
                    if let Some(m) = caps.and_then(|c| c.get(*g)) {
                        h.push_str(m.as_str());
                    }
                }
            }
        }
        let p = match self.port {
            PortExpr::Fixed(n) => n,
            PortExpr::Advertised => port,
            PortExpr::Offset(b) => b.saturating_add(node_id),
        };
        (h, p)
    }
}

#[derive(Debug, Clone)]
pub struct Rewriter {
    nodes: HashMap<i32, Target>,
    template: Option<Target>,
    hosts: HashMap<String, Target>,
    patterns: Vec<(regex_lite::Regex, Target)>,
    pub node_endpoints: NodeEndpointsMode,
}

impl PartialEq for Rewriter {
    fn eq(&self, o: &Self) -> bool {
        self.nodes == o.nodes
            && self.template == o.template
            && self.hosts == o.hosts
            && self.node_endpoints == o.node_endpoints
            && self.patterns.len() == o.patterns.len()
            && self
                .patterns
                .iter()
                .zip(&o.patterns)
                .all(|(a, b)| a.0.as_str() == b.0.as_str() && a.1 == b.1)
    }
}
impl Eq for Rewriter {}

impl Rewriter {
    pub fn compile(spec: &RewriteSpec, path: &str) -> Result<Rewriter, ConfigError> {
        let err = |p: String, reason: String| ConfigError { path: p, reason };
        let mut nodes = HashMap::new();
        for (k, v) in &spec.nodes {
            let id: i32 = k.parse().map_err(|_| {
                err(
                    format!("{path}.nodes.{k}"),
                    "node id must be an integer".into(),
                )
            })?;
            let t = parse_target(v, false).map_err(|r| err(format!("{path}.nodes.{k}"), r))?;
            nodes.insert(id, t);
        }
        let template = match &spec.node_template {
            Some(t) => {
                Some(parse_target(t, false).map_err(|r| err(format!("{path}.nodeTemplate"), r))?)
            }
            None => None,
        };
        let mut hosts = HashMap::new();
        for (k, v) in &spec.hosts {
            let t = parse_target(v, false).map_err(|r| err(format!("{path}.hosts.{k}"), r))?;
            hosts.insert(k.clone(), t);
        }
        let mut patterns = Vec::new();
        for (i, p) in spec.host_patterns.iter().enumerate() {
            let re = regex_lite::Regex::new(&p.r#match).map_err(|e| {
                err(
                    format!("{path}.hostPatterns[{i}].match"),
                    format!("bad regex: {e}"),
                )
            })?;
            let t = parse_target(&p.target, true)
                .map_err(|r| err(format!("{path}.hostPatterns[{i}].target"), r))?;
            for part in &t.host {
                if let Part::Group(g) = part {
                    if *g >= re.captures_len() {
                        return Err(err(
                            format!("{path}.hostPatterns[{i}].target"),
                            format!("${g} but the regex has {} groups", re.captures_len() - 1),
                        ));
                    }
                }
            }
            patterns.push((re, t));
        }
        Ok(Rewriter {
            nodes,
            template,
            hosts,
            patterns,
            node_endpoints: spec.node_endpoints,
        })
    }

    /// The address a client should see for broker `node_id` advertised at `host:port`, or
    /// `None` to leave it as it is.
    pub fn map(&self, node_id: i32, host: &str, port: i32) -> Option<(String, i32)> {
        let out = if let Some(t) = self.nodes.get(&node_id) {
            t.render(node_id, port, None)
        } else if let Some(t) = &self.template {
            t.render(node_id, port, None)
        } else if let Some(t) = self
            .hosts
            .get(&format!("{host}:{port}"))
            .or_else(|| self.hosts.get(host))
        {
            t.render(node_id, port, None)
        } else {
            let (re, t) = self.patterns.iter().find(|(re, _)| re.is_match(host))?;
            let caps = re.captures(host);
            t.render(node_id, port, caps.as_ref())
        };
        (out.0 != host || out.1 != port).then_some(out)
    }

    /// Highest versions offered while rewriting in [`NodeEndpointsMode::CapVersions`].
    pub fn version_cap(&self, api_key: i16) -> Option<i16> {
        match (self.node_endpoints, api_key) {
            (NodeEndpointsMode::CapVersions, api::PRODUCE) => Some(9),
            (NodeEndpointsMode::CapVersions, api::FETCH) => Some(15),
            _ => None,
        }
    }

    /// Whether responses of (api, version) carry broker addresses to rewrite.
    pub fn applies(&self, api_key: i16, version: i16) -> bool {
        match api_key {
            api::METADATA | FIND_COORDINATOR | DESCRIBE_CLUSTER => true,
            // In CapVersions mode these versions are never offered; a client that uses them
            // without negotiating gets its NodeEndpoints unmodified (documented).
            api::PRODUCE => version >= 10 && self.node_endpoints == NodeEndpointsMode::Rewrite,
            api::FETCH => version >= 16 && self.node_endpoints == NodeEndpointsMode::Rewrite,
            _ => false,
        }
    }
}

pub const FIND_COORDINATOR: i16 = 10;
pub const DESCRIBE_CLUSTER: i16 = 60;

/// Rewrite the addresses in a complete response body (after the response header). `Ok(None)`
/// when nothing changes: the caller relays the original bytes.
pub fn rewrite_response(
    rw: &Rewriter,
    api_key: i16,
    version: i16,
    body: &[u8],
) -> DecodeResult<Option<Vec<u8>>> {
    let flexible = api::api_info(api_key).is_some_and(|a| a.is_flexible(version));
    let mut changed = false;
    let mut swap = |node: i32, host: &mut StrBytes, port: &mut i32| {
        if let Some((h, p)) = rw.map(node, host, *port) {
            *host = StrBytes::from_string(h);
            *port = p;
            changed = true;
        }
    };
    let out = match api_key {
        api::METADATA => {
            let mut r: MetadataResponse =
                decode_checked(&walk::S_METADATA_RESP_FULL, version, flexible, body)?;
            for br in &mut r.brokers {
                swap(br.node_id.0, &mut br.host, &mut br.port);
            }
            encode(&r, version)?
        }
        FIND_COORDINATOR => {
            let mut r: FindCoordinatorResponse =
                decode_checked(&walk::S_FIND_COORDINATOR_RESP_FULL, version, flexible, body)?;
            if version <= 3 {
                if r.node_id.0 >= 0 {
                    swap(r.node_id.0, &mut r.host, &mut r.port);
                }
            } else {
                for c in &mut r.coordinators {
                    if c.node_id.0 >= 0 {
                        swap(c.node_id.0, &mut c.host, &mut c.port);
                    }
                }
            }
            encode(&r, version)?
        }
        DESCRIBE_CLUSTER => {
            let mut r: DescribeClusterResponse =
                decode_checked(&walk::S_DESCRIBE_CLUSTER_RESP, version, flexible, body)?;
            for br in &mut r.brokers {
                swap(br.broker_id.0, &mut br.host, &mut br.port);
            }
            encode(&r, version)?
        }
        api::PRODUCE => {
            let mut r: ProduceResponse =
                decode_checked(&walk::S_PRODUCE_RESP_FULL, version, flexible, body)?;
            for n in &mut r.node_endpoints {
                swap(n.node_id.0, &mut n.host, &mut n.port);
            }
            encode(&r, version)?
        }
        api::FETCH => {
            let mut r: FetchResponse =
                decode_checked(&walk::S_FETCH_RESP_FULL, version, flexible, body)?;
            for n in &mut r.node_endpoints {
                swap(n.node_id.0, &mut n.host, &mut n.port);
            }
            encode(&r, version)?
        }
        _ => return Ok(None),
    };
    Ok(changed.then_some(out))
}

/// The head of a Metadata response too large to hold whole: its `brokers` array comes first
/// (after `throttle_time_ms`, v3+), so only that prefix is rewritten and the topics stream
/// on. `head` is the response body from its start; `Ok(None)` when it does not reach the end
/// of the brokers array yet; `Ok(Some((old_len, new_prefix)))` otherwise, where `new_prefix`
/// replaces the first `old_len` bytes (it is the same bytes when nothing changes). Layout:
/// Kafka's `MetadataResponse.json` (`Brokers`: NodeId, Host, Port, Rack v1+, tagged fields
/// in flexible versions v9+).
pub fn rewrite_metadata_head(
    rw: &Rewriter,
    version: i16,
    head: &[u8],
) -> DecodeResult<Option<(usize, Vec<u8>)>> {
    let flexible = api::api_info(api::METADATA).is_some_and(|a| a.is_flexible(version));
    let mut r = crate::codec::reader::Reader::new(head);
    let mut out = Vec::new();
    let parsed = (|| -> DecodeResult<()> {
        if version >= 3 {
            out.extend_from_slice(r.take(4, "throttle_time_ms")?);
        }
        let n = if flexible {
            let n = r.uvarint("brokers")?;
            crate::codec::reader::put_uvarint(&mut out, n);
            n.saturating_sub(1)
        } else {
            let n = r.i32("brokers")?;
            out.extend_from_slice(&n.to_be_bytes());
            u32::try_from(n.max(0)).unwrap_or(0)
        };
        for _ in 0..n {
            let node = r.i32("brokers.node_id")?;
            let host = r.string_v(flexible, "brokers.host")?;
            let port = r.i32("brokers.port")?;
            let host = String::from_utf8_lossy(host).into_owned();
            let (h, p) = rw.map(node, &host, port).unwrap_or((host, port));
            out.extend_from_slice(&node.to_be_bytes());
            put_string(&mut out, flexible, h.as_bytes());
            out.extend_from_slice(&p.to_be_bytes());
            let before = r.position();
            if version >= 1 {
                r.nullable_string_v(flexible, "brokers.rack")?;
            }
            if flexible {
                r.skip_tagged_fields("brokers.tagged_fields")?;
            }
            out.extend_from_slice(head.get(before..r.position()).unwrap_or(&[]));
        }
        Ok(())
    })();
    match parsed {
        Ok(()) => Ok(Some((r.position(), out))),
        Err(e) if e.is_truncated() => Ok(None),
        Err(e) => Err(e),
    }
}

fn put_string(out: &mut Vec<u8>, flexible: bool, s: &[u8]) {
    if flexible {
        crate::codec::reader::put_uvarint(
            out,
            u32::try_from(s.len()).unwrap_or(0).saturating_add(1),
        );
    } else {
        out.extend_from_slice(&i16::try_from(s.len()).unwrap_or(i16::MAX).to_be_bytes());
    }
    out.extend_from_slice(s);
}
