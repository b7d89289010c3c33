//! Produce/consume policy: the config model, its validation, and the decision engine.
//!
//! **Model (first match).** Rules are tried in order. A rule *applies* to a question when its
//! `who` selectors all match the connection and request (within a selector list any entry may
//! match; an absent list matches anyone) and its `what` selectors match the resource asked
//! about. The first rule that applies decides allow or deny; if none applies, `defaultAction`
//! decides topic, group and transactional-id questions, and API keys are allowed (deny them
//! with a rule). First match was chosen over most-specific because it is what firewall and
//! Envoy RBAC users read top to bottom, and because config validation can then point at the
//! exact rule that shadows another.
//!
//! Questions: `Api(key)` for every request (answered only by rules with `apiKeys`, or by rules
//! with no `what` at all); `Topic(operation, name)`; `Group(name)` for group membership and
//! offset commits; `TransactionalId(id)` for transactional produce.

use std::net::IpAddr;

use serde::Deserialize;

use crate::codec::api;
use crate::config_error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Deny what the rules deny.
    #[default]
    Enforce,
    /// Log and count what would be denied; deny nothing.
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnDeny {
    /// Answer with the Kafka error a client understands; the connection stays usable.
    #[default]
    Error,
    /// Close the connection (what Envoy's C++ kafka filter does).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    Produce,
    Consume,
    Describe,
    Create,
    Delete,
    Alter,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Consume => "consume",
            Operation::Describe => "describe",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// Record batch attributes bits 0-2 (KIP-98 / KIP-110).
    pub fn from_attributes(attributes: i16) -> Option<Codec> {
        match attributes & 7 {
            0 => Some(Codec::None),
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Snappy),
            3 => Some(Codec::Lz4),
            4 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AcksValue {
    Num(i16),
    Name(AcksName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AcksName {
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProduceConstraints {
    /// Allowed `acks` values: `all` (= -1), 0, 1. Anything else gets INVALID_REQUIRED_ACKS.
    #[serde(default)]
    pub acks: Vec<AcksValue>,
    /// Largest record batch accepted (RECORD_LIST_TOO_LARGE past it).
    #[serde(default)]
    pub max_batch_bytes: Option<u32>,
    /// Allowed compression codecs, read from each batch header (UNSUPPORTED_COMPRESSION_TYPE).
    #[serde(default)]
    pub compression: Vec<Codec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ApiKeyRef {
    Key(i16),
    Name(String),
}

/// A rule as written in `pluginConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub action: Action,
    // who
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub client_ids: Vec<String>,
    #[serde(default)]
    pub sasl_users: Vec<String>,
    #[serde(default)]
    pub source_cidrs: Vec<String>,
    // what
    #[serde(default)]
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub transactional_ids: Vec<String>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyRef>,
    #[serde(default)]
    pub produce: Option<ProduceConstraints>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicySpec {
    pub mode: Mode,
    pub default_action: Action,
    pub on_deny: OnDeny,
    /// A topic id the filter cannot name (no Metadata seen yet): deny it when any deny could
    /// apply (the default), or allow it.
    pub unknown_topic_ids: Action,
    /// Drop from all-topics Metadata responses the topics the client may not describe (what
    /// Kafka's own authorizer does); `false` lists them with TOPIC_AUTHORIZATION_FAILED.
    pub hide_unauthorized_topics: bool,
    pub rules: Vec<RuleSpec>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        PolicySpec {
            mode: Mode::Enforce,
            default_action: Action::Allow,
            on_deny: OnDeny::Error,
            unknown_topic_ids: Action::Deny,
            hide_unauthorized_topics: true,
            rules: Vec::new(),
        }
    }
}

/// `*` (any run) and `?` (one character) globs; no other syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn parse(s: &str) -> Result<Glob, &'static str> {
        if s.is_empty() {
            return Err("empty pattern");
        }
        if s.contains(['[', ']', '{', '}', '\\']) {
            return Err("unsupported glob syntax: only * and ? are special");
        }
        Ok(Glob(s.to_string()))
    }

    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Iterative glob match with single-star backtracking: O(len(p) * len(t)) worst case, no
/// recursion, no allocation.
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    while p.get(pi) == Some(&b'*') {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, &'static str> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.parse::<u8>().map_err(|_| "bad prefix length")?,
            None => max,
        };
        if bits > max {
            return Err("prefix length too long for the address family");
        }
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let mut left = u32::from(bits);
    for (x, y) in a.iter().zip(b.iter()) {
        if left == 0 {
            return true;
        }
        let take = left.min(8);
        let mask: u8 = if take == 8 { 0xff } else { !(0xffu8 >> take) };
        if x & mask != y & mask {
            return false;
        }
        left -= take;
    }
    true
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    principals: Vec<Glob>,
    client_ids: Vec<Glob>,
    sasl_users: Vec<Glob>,
    source_cidrs: Vec<Cidr>,
    operations: Vec<Operation>,
    topics: Vec<Glob>,
    groups: Vec<Glob>,
    transactional_ids: Vec<Glob>,
    api_keys: Vec<i16>,
    pub produce: Option<ProduceConstraints>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub default_action: Action,
    pub on_deny: OnDeny,
    pub unknown_topic_ids: Action,
    pub hide_unauthorized_topics: bool,
    pub rules: Vec<Rule>,
}

/// Who is asking: per connection (principal, SASL user, source) and per request (client id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The mTLS peer's URI SAN (the SPIFFE id under Istio).
    pub principal: Option<String>,
    pub sasl_user: Option<String>,
    pub source: Option<IpAddr>,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question<'a> {
    Api(i16),
    Topic(Operation, &'a str),
    Group(&'a str),
    TransactionalId(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Index of the deciding rule; `None` for the default.
    pub rule: Option<usize>,
}

fn any_glob(list: &[Glob], v: Option<&str>) -> bool {
    list.is_empty() || v.is_some_and(|v| list.iter().any(|g| g.matches(v)))
}

impl Rule {
    pub fn has_transactional_ids(&self) -> bool {
        !self.transactional_ids.is_empty()
    }

    fn who(&self, id: &Identity) -> bool {
        any_glob(&self.principals, id.principal.as_deref())
            && any_glob(&self.client_ids, id.client_id.as_deref())
            && any_glob(&self.sasl_users, id.sasl_user.as_deref())
            && (self.source_cidrs.is_empty()
                || id
                    .source
                    .is_some_and(|ip| self.source_cidrs.iter().any(|c| c.contains(ip))))
    }

    fn has_what(&self) -> bool {
        !(self.operations.is_empty()
            && self.topics.is_empty()
            && self.groups.is_empty()
            && self.transactional_ids.is_empty()
            && self.api_keys.is_empty())
    }

    fn what(&self, q: Question<'_>) -> bool {
        if !self.has_what() {
            return true; // a rule about who only: everything
        }
        match q {
            Question::Api(k) => self.api_keys.contains(&k),
            Question::Topic(op, t) => {
                self.api_keys.is_empty()
                    && self.groups.is_empty()
                    && self.transactional_ids.is_empty()
                    && (self.operations.is_empty() || self.operations.contains(&op))
                    && any_glob(&self.topics, Some(t))
            }
            Question::Group(g) => {
                self.api_keys.is_empty()
                    && self.topics.is_empty()
                    && !self.groups.is_empty()
                    && self.groups.iter().any(|p| p.matches(g))
            }
            Question::TransactionalId(x) => {
                self.api_keys.is_empty()
                    && !self.transactional_ids.is_empty()
                    && self.transactional_ids.iter().any(|p| p.matches(x))
            }
        }
    }
}

impl Policy {
    pub fn decide(&self, id: &Identity, q: Question<'_>) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            if r.who(id) && r.what(q) {
                return Decision {
                    allow: r.action == Action::Allow,
                    rule: Some(i),
                };
            }
        }
        let allow = match q {
            Question::Api(_) => true,
            _ => self.default_action == Action::Allow,
        };
        Decision { allow, rule: None }
    }

    /// An API whose resources the filter does not check (see the README's per-API table):
    /// allowed only *explicitly*. The first rule whose who matches and that either names the
    /// API in `apiKeys` or is about who only (which the model defines as everything) decides.
    /// When no rule does, the API is refused if anything at all could be denied to this
    /// identity (the default is deny, or a deny rule about topics, groups or transactional
    /// ids matches it): the filter cannot tell whether the request touches what is denied,
    /// so unknown means refused (fail closed). Only a policy that denies this identity
    /// nothing but API keys lets such an API through without naming it.
    pub fn decide_unchecked_api(&self, id: &Identity, key: i16) -> Decision {
        for (i, r) in self.rules.iter().enumerate() {
            if r.who(id) && (r.api_keys.contains(&key) || !r.has_what()) {
                return Decision {
                    allow: r.action == Action::Allow,
                    rule: Some(i),
                };
            }
        }
        let could_deny = self.default_action == Action::Deny
            || self
                .rules
                .iter()
                .any(|r| r.who(id) && r.action == Action::Deny && r.api_keys.is_empty());
        Decision {
            allow: !could_deny,
            rule: None,
        }
    }

    /// Whether some rule or the default could deny `op` on some topic for this identity:
    /// when not, topic-level inspection (and holding frames) can be skipped.
    pub fn may_deny_topics(&self, id: &Identity, op: Operation) -> bool {
        for r in &self.rules {
            if !r.who(id) {
                continue;
            }
            let topical = r.api_keys.is_empty()
                && r.groups.is_empty()
                && r.transactional_ids.is_empty()
                && (r.operations.is_empty() || r.operations.contains(&op));
            if !topical {
                continue;
            }
            let all_topics = r.topics.is_empty() || r.topics.iter().any(|g| g.as_str() == "*");
            if r.action == Action::Deny || (op == Operation::Produce && r.produce.is_some()) {
                return true;
            }
            if all_topics {
                return false; // an allow for every topic shadows everything after it
            }
        }
        self.default_action == Action::Deny
    }

    pub fn rule_name(&self, d: Decision) -> &str {
        d.rule
            .and_then(|i| self.rules.get(i))
            .map_or("default", |r| r.name.as_str())
    }

    pub fn compile(spec: &PolicySpec, path: &str) -> Result<Policy, ConfigError> {
        let mut rules = Vec::new();
        for (i, r) in spec.rules.iter().enumerate() {
            let p = format!("{path}.rules[{i}]");
            let e = |field: &str, reason: String| ConfigError {
                path: format!("{p}.{field}"),
                reason,
            };
            if r.name.trim().is_empty() {
                return Err(e("name", "must not be empty".into()));
            }
            if let Some(j) = spec.rules.iter().take(i).position(|o| o.name == r.name) {
                return Err(e("name", format!("duplicate rule name (also rules[{j}])")));
            }
            let globs = |field: &str, list: &[String]| -> Result<Vec<Glob>, ConfigError> {
                list.iter()
                    .enumerate()
                    .map(|(k, s)| {
                        Glob::parse(s).map_err(|reason| ConfigError {
                            path: format!("{p}.{field}[{k}]"),
                            reason: format!("{reason}: {s:?}"),
                        })
                    })
                    .collect()
            };
            let cidrs = r
                .source_cidrs
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    Cidr::parse(s).map_err(|reason| ConfigError {
                        path: format!("{p}.sourceCidrs[{k}]"),
                        reason: format!("{reason}: {s:?}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut api_keys = Vec::new();
            for (k, a) in r.api_keys.iter().enumerate() {
                let key = match a {
                    ApiKeyRef::Key(n) => api::api_info(*n).map(|i| i.key),
                    ApiKeyRef::Name(n) => api_by_name(n),
                };
                match key {
                    Some(key) => api_keys.push(key),
                    None => {
                        return Err(e(
                            &format!("apiKeys[{k}]"),
                            "unknown API key (use a number or a name such as DeleteTopics or delete_topics)".into(),
                        ))
                    }
                }
            }
            let kinds = [
                !api_keys.is_empty(),
                !r.topics.is_empty() || !r.operations.is_empty(),
                !r.groups.is_empty(),
                !r.transactional_ids.is_empty(),
            ];
            if kinds.iter().filter(|k| **k).count() > 1 {
                return Err(ConfigError {
                    path: p.clone(),
                    reason: "a rule is about one kind of resource: apiKeys, topics/operations, groups or transactionalIds; split it".into(),
                });
            }
            if r.produce.is_some() {
                if r.action != Action::Allow {
                    return Err(e(
                        "produce",
                        "produce constraints belong on an allow rule".into(),
                    ));
                }
                if !(r.operations.is_empty() || r.operations.contains(&Operation::Produce)) {
                    return Err(e(
                        "produce",
                        "produce constraints on a rule whose operations exclude produce".into(),
                    ));
                }
            }
            if let Some(c) = &r.produce {
                for (k, a) in c.acks.iter().enumerate() {
                    if let AcksValue::Num(n) = a {
                        if !(-1..=1).contains(n) {
                            return Err(e(
                                &format!("produce.acks[{k}]"),
                                "acks is all, -1, 0 or 1".into(),
                            ));
                        }
                    }
                }
                if c.max_batch_bytes == Some(0) {
                    return Err(e("produce.maxBatchBytes", "must be positive".into()));
                }
            }
            rules.push(Rule {
                name: r.name.clone(),
                action: r.action,
                principals: globs("principals", &r.principals)?,
                client_ids: globs("clientIds", &r.client_ids)?,
                sasl_users: globs("saslUsers", &r.sasl_users)?,
                source_cidrs: cidrs,
                operations: r.operations.clone(),
                topics: globs("topics", &r.topics)?,
                groups: globs("groups", &r.groups)?,
                transactional_ids: globs("transactionalIds", &r.transactional_ids)?,
                api_keys,
                produce: r.produce.clone(),
            });
        }
        // Conflicts: a rule with the same who and what as an earlier one is unreachable; with
        // the opposite action it says the opposite of what it will do.
        for (i, r) in rules.iter().enumerate() {
            for (j, o) in rules.iter().enumerate().take(i) {
                let same = r.principals == o.principals
                    && r.client_ids == o.client_ids
                    && r.sasl_users == o.sasl_users
                    && r.source_cidrs == o.source_cidrs
                    && r.operations == o.operations
                    && r.topics == o.topics
                    && r.groups == o.groups
                    && r.transactional_ids == o.transactional_ids
                    && r.api_keys == o.api_keys;
                if same {
                    let how = if r.action == o.action {
                        "duplicates"
                    } else {
                        "conflicts with"
                    };
                    return Err(ConfigError {
                        path: format!("{path}.rules[{i}]"),
                        reason: format!(
                            "rule {:?} {how} rule {:?} (rules[{j}]), which matches first: it can never apply",
                            r.name, o.name
                        ),
                    });
                }
            }
        }
        Ok(Policy {
            mode: spec.mode,
            default_action: spec.default_action,
            on_deny: spec.on_deny,
            unknown_topic_ids: spec.unknown_topic_ids,
            hide_unauthorized_topics: spec.hide_unauthorized_topics,
            rules,
        })
    }
}

/// `DeleteTopics`, `delete_topics` or `deleteTopics` to an API key.
fn api_by_name(n: &str) -> Option<i16> {
    let norm: String = n
        .chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    api::APIS
        .iter()
        .find(|a| a.name.replace('_', "") == norm)
        .map(|a| a.key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<Policy, ConfigError> {
        let spec: PolicySpec = serde_json::from_str(json).unwrap();
        Policy::compile(&spec, ".policy")
    }

    fn who(client: &str) -> Identity {
        Identity {
            client_id: Some(client.into()),
            ..Identity::default()
        }
    }

    #[test]
    fn globs() {
        let g = |p: &str, t: &str| Glob::parse(p).unwrap().matches(t);
        assert!(g("orders.*", "orders.eu"));
        assert!(g("orders.*", "orders."));
        assert!(!g("orders.*", "orders"));
        assert!(g("*", ""));
        assert!(g("a*b*c", "aXXbYYc"));
        assert!(!g("a*b*c", "aXXbYY"));
        assert!(g("pay?ents", "payments"));
        assert!(g("payments", "payments"));
        assert!(!g("payments", "payments2"));
        assert!(g("*-*-*", "a-b-c-d"));
        assert!(Glob::parse("[abc]").is_err());
        assert!(Glob::parse("").is_err());
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.9.9".parse().unwrap()));
        let c = Cidr::parse("fd00::/8").unwrap();
        assert!(c.contains("fd12::1".parse().unwrap()));
        assert!(!c.contains("fe00::1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn first_match_and_defaults() {
        let p = policy(
            r#"{"defaultAction": "deny", "rules": [
                {"name": "no-payments", "action": "deny", "topics": ["payments"]},
                {"name": "orders", "action": "allow", "clientIds": ["orders-*"], "operations": ["produce"], "topics": ["orders.*", "payments"]},
                {"name": "read-all", "action": "allow", "operations": ["consume", "describe"]},
                {"name": "no-admin", "action": "deny", "apiKeys": ["DeleteTopics", 21]},
                {"name": "billing", "action": "allow", "groups": ["billing-*"]}
            ]}"#,
        )
        .unwrap();
        let o = who("orders-1");
        let d = p.decide(&o, Question::Topic(Operation::Produce, "orders.eu"));
        assert!(d.allow && p.rule_name(d) == "orders");
        let d = p.decide(&o, Question::Topic(Operation::Produce, "payments"));
        assert!(!d.allow && p.rule_name(d) == "no-payments");
        let d = p.decide(
            &who("other"),
            Question::Topic(Operation::Produce, "orders.eu"),
        );
        assert!(!d.allow && p.rule_name(d) == "default");
        assert!(p.decide(&o, Question::Topic(Operation::Consume, "x")).allow);
        assert!(!p.decide(&o, Question::Api(20)).allow);
        assert!(!p.decide(&o, Question::Api(21)).allow);
        assert!(
            p.decide(&o, Question::Api(0)).allow,
            "APIs are allowed unless denied"
        );
        assert!(p.decide(&o, Question::Group("billing-eu")).allow);
        assert!(!p.decide(&o, Question::Group("other")).allow);
        assert!(p.may_deny_topics(&o, Operation::Produce));
        assert!(
            p.may_deny_topics(&o, Operation::Consume),
            "no-payments denies consume too"
        );
    }

    #[test]
    fn who_selectors() {
        let p = policy(
            r#"{"defaultAction": "deny", "rules": [
                {"name": "mesh", "action": "allow", "principals": ["spiffe://cluster.local/ns/shop/*"], "sourceCidrs": ["10.0.0.0/8"]},
                {"name": "sasl", "action": "allow", "saslUsers": ["alice"]}
            ]}"#,
        )
        .unwrap();
        let q = Question::Topic(Operation::Produce, "t");
        let mut id = Identity {
            principal: Some("spiffe://cluster.local/ns/shop/sa/orders".into()),
            source: Some("10.2.3.4".parse().unwrap()),
            ..Identity::default()
        };
        assert!(p.decide(&id, q).allow);
        id.source = Some("192.168.1.1".parse().unwrap());
        assert!(!p.decide(&id, q).allow, "both selectors must match");
        let alice = Identity {
            sasl_user: Some("alice".into()),
            ..Identity::default()
        };
        assert!(p.decide(&alice, q).allow);
        assert!(!p.decide(&Identity::default(), q).allow);
        assert!(!p.may_deny_topics(&alice, Operation::Produce));
    }

    #[test]
    fn config_errors_name_the_path() {
        let e = policy(r#"{"rules": [{"name": "a", "action": "deny", "topics": ["[x]"]}]}"#)
            .unwrap_err();
        assert_eq!(e.path, ".policy.rules[0].topics[0]", "{e}");
        let e = policy(
            r#"{"rules": [{"name": "a", "action": "deny", "sourceCidrs": ["10.0.0.0/40"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, ".policy.rules[0].sourceCidrs[0]", "{e}");
        let e = policy(r#"{"rules": [{"name": "a", "action": "deny", "apiKeys": ["Nope"]}]}"#)
            .unwrap_err();
        assert_eq!(e.path, ".policy.rules[0].apiKeys[0]", "{e}");
        let e = policy(
            r#"{"rules": [{"name": "a", "action": "deny", "topics": ["t"]}, {"name": "b", "action": "allow", "topics": ["t"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, ".policy.rules[1]", "{e}");
        assert!(e.reason.contains("conflicts with"), "{e}");
        let e = policy(
            r#"{"rules": [{"name": "a", "action": "deny", "topics": ["t"], "groups": ["g"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path, ".policy.rules[0]", "{e}");
        let e =
            policy(r#"{"rules": [{"name": "a", "action": "deny", "produce": {}}]}"#).unwrap_err();
        assert_eq!(e.path, ".policy.rules[0].produce", "{e}");
        let e =
            policy(r#"{"rules": [{"name": "a", "action": "allow", "produce": {"acks": [2]}}]}"#)
                .unwrap_err();
        assert_eq!(e.path, ".policy.rules[0].produce.acks[0]", "{e}");
        let e = policy(r#"{"rules": [{"name": "a", "action": "allow"}, {"name": "a", "action": "allow", "topics": ["x"]}]}"#).unwrap_err();
        assert_eq!(e.path, ".policy.rules[1].name", "{e}");
        assert!(
            api_by_name("deleteTopics") == Some(20) && api_by_name("delete_topics") == Some(20)
        );
    }
}
