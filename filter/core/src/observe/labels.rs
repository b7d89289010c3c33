//! Metric names with tags, bounded label values, and the topic-id map, shared across the
//! worker VMs of one Envoy process through proxy-wasm shared data.
//!
//! **Names.** Envoy puts every Wasm-defined metric in the `wasmcustom` stat namespace and
//! stores it under one flat name (envoyproxy/envoy `source/extensions/common/wasm/context.cc`,
//! `Context::defineMetric`; `stats_handler.h`, `CustomStatNamespace`). Labels come only from
//! tag extraction: each `stats_config.stats_tags` regex is searched in the full stat name, its
//! first capture group is cut out of the name and its second becomes the tag value
//! (`source/common/stats/tag_extractor_impl.cc`, `TagExtractorStdRegexImpl::extractTag`). We
//! therefore encode tags the way Istio's own stats did, `tag=.=value;.;` before the metric
//! name, which is exactly what Istio generates a regex for from `extraStatTags`
//! (istio/istio `tools/packaging/common/envoy_bootstrap.json`: `({tag}=\\.=(.*?);\\.;)`).
//! The Prometheus output then strips the namespace and shows
//! `kafka_mesh_produce_records_total{topic="orders"}`
//! (`source/server/admin/prometheus_stats.cc`).
//!
//! **Bounds.** Label values are admitted per kind (topic, client id, group, lag series) up to a
//! configured maximum for the whole process: the admitted set lives in shared data and is
//! updated with compare-and-swap, so every worker VM agrees. Past the bound, values fold into
//! [`OVERFLOW`] and the caller counts the overflow.
//!
//! **Insert-if-absent.** Shared data has no such operation: `set` on a key that does not exist
//! inserts whatever CAS token it is given, and CAS 0 on an existing key overwrites
//! (proxy-wasm/proxy-wasm-cpp-host `src/shared_data.cc`, `SharedData::set`). Two workers that
//! both find a key absent and both write would both believe they won, and the process-wide
//! bound would be exceeded. So every key that is updated (the admitted sets, the topic-id
//! counter) is created once, at `on_configure` ([`init_shared`]), and afterwards only ever
//! written with the CAS token of the value that was read. Envoy configures a *canary* VM on
//! the main thread before any worker VM exists (cpp-host `src/wasm.cc`, `createWasm` calls
//! `WasmHandleBase::canary`, which runs `start` + `configure` on a clone), so the keys exist
//! before any two VMs can race. Only a host without that canary, whose workers configure at
//! the same moment, leaves a window: between one worker's look and its creation of a key.

use std::collections::{HashMap, HashSet};

/// The label value that stands for every value past a bound.
pub const OVERFLOW: &str = "__overflow__";

/// The host's shared key-value store (`proxy_get_shared_data` / `proxy_set_shared_data`).
pub trait SharedStore {
    /// The value and its CAS token, `None` when the key is absent.
    fn get(&mut self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Set `key` if its CAS still equals `cas` (0: unconditionally). `false` on mismatch or
    /// host error.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool;
}

/// Words after (or before) which a dot in a tag value would let one of Istio's own stats_tags
/// match inside our stat name and add a label of its own: Istio's bootstrap runs these
/// regexes, unanchored, on every full stat name, ours included (istio/istio
/// `tools/packaging/common/envoy_bootstrap.json`: `(cache\.(.+?)\.)`, `(component\.(.+?)\.)`,
/// `(tag\.(.+?);\.)`, `(wasm_filter\.(.+?)\.)`, `rbac(\.(allowed|denied))`,
/// `(\.istio_dry_run_(allow|deny)_)`, `(\.shadow_(allowed|denied))`; Envoy searches each in
/// the original name, `source/common/stats/tag_producer_impl.cc`). Each is replaced by the
/// same word with the dot the regex needs made `_` (`orders.cache.v1` is labelled
/// `orders.cache_v1`), so the value can never trigger them. Every other value is unchanged.
const ISTIO_TRIGGERS: &[(&str, &str)] = &[
    ("cache.", "cache_"),
    ("component.", "component_"),
    ("tag.", "tag_"),
    ("wasm_filter.", "wasm_filter_"),
    ("rbac.allowed", "rbac_allowed"),
    ("rbac.denied", "rbac_denied"),
    (".istio_dry_run_allow_", "_istio_dry_run_allow_"),
    (".istio_dry_run_deny_", "_istio_dry_run_deny_"),
    (".shadow_allowed", "_shadow_allowed"),
    (".shadow_denied", "_shadow_denied"),
];

/// Break every [`ISTIO_TRIGGERS`] occurrence in an already cleaned (ASCII) value. One pass
/// is enough: a replacement only turns a dot into `_`, and no trigger can be completed by an
/// `_` standing where such a dot was.
fn defuse(mut s: String) -> String {
    for (word, safe) in ISTIO_TRIGGERS {
        if s.contains(word) {
            s = s.replace(word, safe);
        }
    }
    s
}

/// Characters kept in a tag value; everything else becomes `_` so a value can never contain
/// the `;.;` that ends a tag, nor a character Prometheus would have to escape; then the dots
/// that would let Istio's own tag extractors fire inside the name are defused.
fn clean(v: &str) -> String {
    let s: String = v
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".to_string()
    } else {
        defuse(s)
    }
}

/// `tag1=.=v1;.;tag2=.=v2;.;family` — see the module docs.
pub fn stat_name(family: &str, tags: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in tags {
        out.push_str(k);
        out.push_str("=.=");
        out.push_str(&clean(v));
        out.push_str(";.;");
    }
    out.push_str(family);
    out
}

/// Kinds of bounded labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelKind {
    Topic,
    ClientId,
    Group,
    LagSeries,
}

impl LabelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::Topic => "topic",
            LabelKind::ClientId => "client_id",
            LabelKind::Group => "group",
            LabelKind::LagSeries => "lag_series",
        }
    }
    fn key(self) -> String {
        format!("kafka-mesh-filter.labels.{}", self.as_str())
    }
}

/// Local rejections remembered before asking shared data again.
const DENIED_CACHE: usize = 1024;
const CAS_RETRIES: usize = 8;

const ALL_KINDS: [LabelKind; 4] = [
    LabelKind::Topic,
    LabelKind::ClientId,
    LabelKind::Group,
    LabelKind::LagSeries,
];

/// Create every shared key that is later updated by compare-and-swap, each with its empty
/// value, unless it exists. Called from `on_configure`, which Envoy runs first in the canary
/// VM on the main thread, before any worker VM (see the module docs). A key that exists is
/// never written here: its content belongs to whoever admitted into it.
pub fn init_shared(store: &mut dyn SharedStore) {
    for kind in ALL_KINDS {
        create_if_absent(store, &kind.key(), b"");
    }
    create_if_absent(store, TOPIC_ID_COUNT, b"0");
}

/// The only write that does not carry the CAS token of a value read before it, and it writes
/// only the empty value of a key that nobody has written yet.
fn create_if_absent(store: &mut dyn SharedStore, key: &str, empty: &[u8]) {
    if store.get(key).is_none() {
        store.set(key, empty, 0);
    }
}

/// One VM's view of the process-wide admitted label values.
#[derive(Debug, Default)]
pub struct Labels {
    admitted: HashMap<LabelKind, HashSet<String>>,
    denied: HashMap<LabelKind, HashSet<String>>,
}

impl Labels {
    /// `Some(value)` when admitted (now or before), `None` when past the bound.
    pub fn admit(
        &mut self,
        store: &mut dyn SharedStore,
        kind: LabelKind,
        value: &str,
        max: u32,
    ) -> bool {
        if self.admitted.get(&kind).is_some_and(|s| s.contains(value)) {
            return true;
        }
        if self.denied.get(&kind).is_some_and(|s| s.contains(value)) {
            return false;
        }
        let key = kind.key();
        for _ in 0..CAS_RETRIES {
            // Never write a key we did not read (see the module docs): an absent key (a host
            // that skipped `on_configure`'s init) is created empty, then read again for its
            // CAS token.
            let Some((cur, cas)) = store.get(&key).filter(|(_, cas)| *cas != 0) else {
                create_if_absent(store, &key, b"");
                continue;
            };
            let text = String::from_utf8_lossy(&cur).into_owned();
            let values: Vec<&str> = text.split('\n').filter(|s| !s.is_empty()).collect();
            if values.contains(&value) {
                self.remember(kind, value, true, max);
                return true;
            }
            if values.len() >= max as usize {
                // Full: learn the whole admitted set so later lookups stay local.
                let set = self.admitted.entry(kind).or_default();
                set.extend(values.iter().map(|v| v.to_string()));
                self.remember(kind, value, false, max);
                return false;
            }
            let mut next = cur.clone();
            if !next.is_empty() {
                next.push(b'\n');
            }
            next.extend_from_slice(value.as_bytes());
            if store.set(&key, &next, cas) {
                self.remember(kind, value, true, max);
                return true;
            }
        }
        false // contention: try again on the next occurrence
    }

    fn remember(&mut self, kind: LabelKind, value: &str, ok: bool, max: u32) {
        if ok {
            let set = self.admitted.entry(kind).or_default();
            if set.len() < max as usize {
                set.insert(value.to_string());
            }
        } else {
            let set = self.denied.entry(kind).or_default();
            if set.len() >= DENIED_CACHE {
                set.clear();
            }
            set.insert(value.to_string());
        }
    }
}

const TOPIC_ID_PREFIX: &str = "kafka-mesh-filter.topic-id.";
const TOPIC_ID_COUNT: &str = "kafka-mesh-filter.topic-ids";

/// Topic id to name, learned from Metadata responses on any worker and shared through shared
/// data: one key per id (a lookup copies one short value, never the whole map) and a counter
/// key that bounds how many ids are stored. Ids are immutable in Kafka (a re-created topic gets
/// a new id), so an entry never needs changing; "refreshing" is learning new ones as Metadata
/// responses pass.
#[derive(Debug, Default)]
pub struct TopicIds {
    local: HashMap<[u8; 16], String>,
}

impl TopicIds {
    pub fn learn(&mut self, store: &mut dyn SharedStore, id: [u8; 16], name: &str, max: u32) {
        if self.local.get(&id).is_some_and(|n| n == name) {
            return;
        }
        let key = format!("{TOPIC_ID_PREFIX}{}", crate::observe::collect::hex(&id));
        if store.get(&key).is_none() {
            // Count first, so the number of stored ids never exceeds the bound.
            let mut counted = false;
            for _ in 0..CAS_RETRIES {
                let Some((cur, cas)) = store.get(TOPIC_ID_COUNT).filter(|(_, cas)| *cas != 0)
                else {
                    create_if_absent(store, TOPIC_ID_COUNT, b"0");
                    continue;
                };
                let n: u32 = std::str::from_utf8(&cur)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if n >= max {
                    break;
                }
                if store.set(TOPIC_ID_COUNT, (n + 1).to_string().as_bytes(), cas) {
                    counted = true;
                    break;
                }
            }
            if !counted {
                self.cache(id, name, max);
                return;
            }
        }
        store.set(&key, name.as_bytes(), 0);
        self.cache(id, name, max);
    }

    pub fn resolve(
        &mut self,
        store: &mut dyn SharedStore,
        id: &[u8; 16],
        max: u32,
    ) -> Option<String> {
        if let Some(n) = self.local.get(id) {
            return Some(n.clone());
        }
        let key = format!("{TOPIC_ID_PREFIX}{}", crate::observe::collect::hex(id));
        let (v, _) = store.get(&key)?;
        let name = String::from_utf8_lossy(&v).into_owned();
        self.cache(*id, &name, max);
        Some(name)
    }

    fn cache(&mut self, id: [u8; 16], name: &str, max: u32) {
        if self.local.len() >= max as usize {
            self.local.clear();
        }
        self.local.insert(id, name.to_string());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem {
        m: HashMap<String, (Vec<u8>, u32)>,
        next: u32,
        fail_sets: usize,
    }
    impl SharedStore for Mem {
        fn get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.m.get(key).cloned()
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
            if self.fail_sets > 0 {
                // another VM won the race: bump the CAS behind our back
                self.fail_sets -= 1;
                self.next += 1;
                let e = self.m.entry(key.to_string()).or_default();
                e.1 = self.next;
                return false;
            }
            if let Some((_, cur)) = self.m.get(key) {
                if cas != 0 && cas != *cur {
                    return false;
                }
            }
            self.next += 1;
            self.m.insert(key.to_string(), (value.to_vec(), self.next));
            true
        }
    }

    #[test]
    fn names_carry_tags_istio_style() {
        assert_eq!(
            stat_name(
                "kafka_mesh_produce_records_total",
                &[("topic", "orders.eu"), ("api", "produce")]
            ),
            "topic=.=orders.eu;.;api=.=produce;.;kafka_mesh_produce_records_total"
        );
        assert_eq!(
            stat_name("x", &[("client_id", "a;.;b c\"")]),
            "client_id=.=a_._b_c_;.;x"
        );
        assert_eq!(stat_name("x", &[("group", "")]), "group=.=_;.;x");
    }

    #[test]
    fn values_never_trigger_istio_tag_extractors() {
        for (raw, want) in [
            ("orders.cache.v1", "orders.cache_v1"),
            ("memcache.events", "memcache_events"),
            ("component.updates", "component_updates"),
            ("hashtag.stream", "hashtag_stream"),
            ("a.wasm_filter.b", "a.wasm_filter_b"),
            ("acl.rbac.allowed", "acl.rbac_allowed"),
            ("x.rbac.denied.y", "x.rbac_denied.y"),
            ("t.istio_dry_run_allow_x", "t_istio_dry_run_allow_x"),
            ("t.shadow_denied", "t_shadow_denied"),
            ("cache.tag.component.", "cache_tag_component_"),
            ("tag", "tag"),
            ("cache", "cache"),
            ("orders.eu", "orders.eu"),
            ("tags.v1", "tags.v1"),
        ] {
            assert_eq!(
                stat_name("f", &[("topic", raw)]),
                format!("topic=.={want};.;f"),
                "{raw}"
            );
        }
    }

    #[test]
    fn labels_are_bounded_across_vms() {
        let mut store = Mem::default();
        let mut vm1 = Labels::default();
        let mut vm2 = Labels::default();
        assert!(vm1.admit(&mut store, LabelKind::Topic, "a", 2));
        assert!(vm2.admit(&mut store, LabelKind::Topic, "b", 2));
        // the bound is process-wide: vm1 cannot add a third even though it saw only one
        assert!(!vm1.admit(&mut store, LabelKind::Topic, "c", 2));
        assert!(vm1.admit(&mut store, LabelKind::Topic, "b", 2));
        assert!(!vm2.admit(&mut store, LabelKind::Topic, "c", 2));
        // other kinds have their own budget
        assert!(vm2.admit(&mut store, LabelKind::Group, "c", 2));
        // CAS contention is retried
        store.fail_sets = 3;
        assert!(vm1.admit(&mut store, LabelKind::ClientId, "x", 5));
        assert_eq!(
            store.get("kafka-mesh-filter.labels.client_id").unwrap().0,
            b"x".to_vec()
        );
    }

    /// A store that, just before the first write reaches it, lets "another VM" run to
    /// completion on the same data: the interleaving of a real race between two workers
    /// (VM 1 reads, VM 2 reads and writes, VM 1 writes), deterministic.
    type OtherVm<'a> = Box<dyn FnOnce(&mut Mem) + 'a>;
    struct Racing<'a> {
        inner: Mem,
        other: Option<OtherVm<'a>>,
    }
    impl SharedStore for Racing<'_> {
        fn get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
            if let Some(other) = self.other.take() {
                other(&mut self.inner);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn racing_first_admissions_never_exceed_the_bound() {
        for kind in ALL_KINDS {
            let mut inner = Mem::default();
            init_shared(&mut inner); // on_configure, in Envoy's canary VM
            let mut vm2 = Labels::default();
            let won2 = std::cell::Cell::new(false);
            let mut store = Racing {
                inner,
                other: Some(Box::new(|m: &mut Mem| {
                    won2.set(vm2.admit(m, kind, "b", 1));
                })),
            };
            let mut vm1 = Labels::default();
            let won1 = vm1.admit(&mut store, kind, "a", 1);
            assert!(won2.get(), "the first writer wins");
            assert!(
                !won1,
                "{kind:?}: both VMs believed they admitted a first value"
            );
            assert_eq!(store.get(&kind.key()).unwrap().0, b"b".to_vec());
        }
    }

    #[test]
    fn racing_topic_ids_never_exceed_the_bound() {
        let mut inner = Mem::default();
        init_shared(&mut inner);
        let mut vm2 = TopicIds::default();
        let mut store = Racing {
            inner,
            other: Some(Box::new(|m: &mut Mem| vm2.learn(m, [2; 16], "payments", 1))),
        };
        TopicIds::default().learn(&mut store, [1; 16], "orders", 1);
        assert_eq!(store.get(TOPIC_ID_COUNT).unwrap().0, b"1".to_vec());
        assert!(store
            .get("kafka-mesh-filter.topic-id.01010101010101010101010101010101")
            .is_none());
        assert_eq!(
            TopicIds::default()
                .resolve(&mut store, &[2; 16], 1)
                .as_deref(),
            Some("payments")
        );
    }

    #[test]
    fn init_never_overwrites_what_was_admitted() {
        let mut store = Mem::default();
        init_shared(&mut store);
        assert!(Labels::default().admit(&mut store, LabelKind::Topic, "a", 5));
        init_shared(&mut store); // a worker VM configured later, or after FAIL_RELOAD
        assert_eq!(store.get(&LabelKind::Topic.key()).unwrap().0, b"a".to_vec());
        assert_eq!(store.get(TOPIC_ID_COUNT).unwrap().0, b"0".to_vec());
    }

    #[test]
    fn topic_ids_are_shared_and_bounded() {
        let mut store = Mem::default();
        let mut vm1 = TopicIds::default();
        let mut vm2 = TopicIds::default();
        vm1.learn(&mut store, [1; 16], "orders", 2);
        assert_eq!(
            vm2.resolve(&mut store, &[1; 16], 2).as_deref(),
            Some("orders")
        );
        vm1.learn(&mut store, [1; 16], "orders", 2); // known: not counted twice
        vm2.learn(&mut store, [2; 16], "payments", 2);
        vm2.learn(&mut store, [3; 16], "third", 2); // past the bound: local only
        assert_eq!(
            vm1.resolve(&mut store, &[2; 16], 2).as_deref(),
            Some("payments")
        );
        assert_eq!(vm1.resolve(&mut store, &[3; 16], 2), None);
        assert_eq!(store.get(TOPIC_ID_COUNT).unwrap().0, b"2".to_vec());
    }
}
