//! Fuzz harnesses (feature `fuzzing`): one function per cargo-fuzz target, each taking
//! arbitrary bytes. The same functions run under libFuzzer on nightly (`fuzz/`, see
//! `fuzz/README.md`) and, on stable, replay the committed corpus and regressions in
//! `cargo test` (`src/tests/fuzz_corpus.rs`).
//!
//! A harness never panics on its own input: every length and count it reads is checked and
//! malformed input is simply less interesting. It panics (through `assert!`) only to report
//! a broken property, and every property is named in the assertion message:
//!
//! - [`session()`]: a whole connection, both directions interleaved, every feature on.
//! - [`config()`]: the `pluginConfig` parser and validator.
//! - [`rewrite()`]: the broker-address rewriter on whole response bodies and Metadata heads.
//! - [`differential()`]: the streaming walk against kafka-protocol's decoder and encoder.
//!
//! The input formats are documented on each harness and in `fuzz/README.md`; the
//! `*_input` functions build them (the seed generator uses them, and so can a converter of
//! captured traffic). Properties and figures are in `docs/robustness.md`. Defects found and
//! not fixed yet are stepped around behind the flags of [`pending`] (their inputs are in
//! `fuzz/crashes-pending/`), so fuzzing goes on and the replay stays green.

mod config;
mod differential;
pub mod pending;
mod rewrite;
mod seeds;
mod session;

pub use config::config;
pub use differential::{differential, differential_input, DiffCase, DIFF_CASES, ENCODE_MODE};
pub use rewrite::{rewrite, rewrite_input, REWRITERS, REWRITE_APIS};
pub use seeds::{seeds, Seed};
pub use session::{session, session_input, Segment, SESSION_CONFIGS};

use std::collections::HashMap;

use crate::codec::api;
use crate::config::MalformedAction;
use crate::observe::collect::{FactSink, TopicRef};
use crate::policy::enforce::Note;
use crate::session::{AccessLog, Direction, Malformed, Observer};

/// The fuzz targets, by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[&str] = &["session", "config", "rewrite", "differential"];

/// The harness of a target, by name.
pub fn harness(target: &str) -> Option<fn(&[u8])> {
    match target {
        "session" => Some(session),
        "config" => Some(config),
        "rewrite" => Some(rewrite),
        "differential" => Some(differential),
        _ => None,
    }
}

/// The largest input a harness looks at; the rest is ignored. kafka-protocol sizes its
/// allocations by wire counts, so nothing reaches it unbounded; and a walked string is at
/// most [`crate::session::HEAD_MAX`] long, which this keeps every field below.
pub const MAX_INPUT: usize = 60 * 1024;

fn capped(data: &[u8]) -> &[u8] {
    data.get(..MAX_INPUT).unwrap_or(data)
}

/// One fact of the walk, as the observer receives it ([`FactSink`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Produce {
        topic: TopicRef,
        batches: u64,
        records: u64,
        bytes: u64,
    },
    Fetch {
        topic: TopicRef,
        records: u64,
        bytes: u64,
    },
    Error {
        api: i16,
        topic: Option<TopicRef>,
        code: i16,
    },
    Lag {
        topic: TopicRef,
        partition: i32,
        lag: i64,
    },
    Group {
        api: i16,
        group: String,
    },
    TopicId {
        id: [u8; 16],
        name: String,
    },
}

/// Topic ids remembered by [`Recorder`] (the glue's shared map is bounded the same way).
const RECORDER_IDS: usize = 256;

/// An observer that keeps what the session reports, and answers topic-id lookups from the
/// Metadata responses it has seen (as the glue's shared map does).
#[derive(Debug, Default)]
pub struct Recorder {
    pub facts: Vec<Fact>,
    pub malformed: Vec<String>,
    pub access: usize,
    pub notes: usize,
    names: HashMap<[u8; 16], String>,
}

impl FactSink for Recorder {
    fn produce_topic(&mut self, t: &TopicRef, batches: u64, records: u64, bytes: u64) {
        self.facts.push(Fact::Produce {
            topic: t.clone(),
            batches,
            records,
            bytes,
        });
    }
    fn fetch_topic(&mut self, t: &TopicRef, records: u64, bytes: u64) {
        self.facts.push(Fact::Fetch {
            topic: t.clone(),
            records,
            bytes,
        });
    }
    fn error(&mut self, api: i16, t: Option<&TopicRef>, code: i16) {
        self.facts.push(Fact::Error {
            api,
            topic: t.cloned(),
            code,
        });
    }
    fn lag(&mut self, t: &TopicRef, partition: i32, lag: i64) {
        self.facts.push(Fact::Lag {
            topic: t.clone(),
            partition,
            lag,
        });
    }
    fn group_request(&mut self, api: i16, group: &str) {
        self.facts.push(Fact::Group {
            api,
            group: group.to_string(),
        });
    }
    fn topic_id(&mut self, id: [u8; 16], name: &str) {
        if self.names.len() < RECORDER_IDS || self.names.contains_key(&id) {
            self.names.insert(id, name.to_string());
        }
        self.facts.push(Fact::TopicId {
            id,
            name: name.to_string(),
        });
    }
}

impl Observer for Recorder {
    fn malformed(&mut self, dir: Direction, what: &Malformed, _action: MalformedAction) {
        self.malformed.push(format!("{}: {what}", dir.as_str()));
    }
    fn access_log(&mut self, entry: &AccessLog) {
        // Building the line is part of what the filter does with every entry.
        let names = &self.names;
        let line = entry.to_json(&mut |id| names.get(id).cloned());
        assert!(
            serde_json::from_str::<serde_json::Value>(&line).is_ok_and(|v| v.is_object()),
            "property: an access-log line is one JSON object: {line}"
        );
        self.access += 1;
    }
    fn policy_note(&mut self, _note: &Note) {
        self.notes += 1;
    }
    fn topic_name(&mut self, id: &[u8; 16]) -> Option<String> {
        self.names.get(id).cloned()
    }
}

/// Reads an input from the front; past its end every read is zero, so any input is valid.
#[derive(Debug, Clone)]
pub(crate) struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }
    pub(crate) fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        if n <= 256 {
            usize::from(self.u8()) % n
        } else {
            usize::from(self.u16()) % n
        }
    }
    pub(crate) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        self.data.get(start..end).unwrap_or(&[])
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        self.data.get(start..).unwrap_or(&[])
    }
    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// A request frame (size prefix included) around `body`, with the header the API's version
/// uses (v1: client id; v2: client id and tagged fields).
pub fn request_frame(api_key: i16, version: i16, corr: i32, client: &str, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 32);
    f.extend_from_slice(&api_key.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&corr.to_be_bytes());
    let hv = api::api_info(api_key).map_or(1, |a| a.request_header_version(version));
    if hv >= 1 {
        let c = client.as_bytes();
        let n = i16::try_from(c.len()).unwrap_or(0);
        f.extend_from_slice(&n.to_be_bytes());
        f.extend_from_slice(c.get(..usize::try_from(n).unwrap_or(0)).unwrap_or(&[]));
    }
    if hv >= 2 {
        f.push(0); // no tagged fields
    }
    f.extend_from_slice(body);
    framed(f)
}

/// A response frame (size prefix included) around `body`: correlation id, then the empty
/// tagged-field section of response header v1 when the API's version is flexible.
pub fn response_frame(api_key: i16, version: i16, corr: i32, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 8);
    f.extend_from_slice(&corr.to_be_bytes());
    if api::api_info(api_key).is_some_and(|a| a.response_header_version(version) >= 1) {
        f.push(0);
    }
    f.extend_from_slice(body);
    framed(f)
}

fn framed(f: Vec<u8>) -> Vec<u8> {
    let n = i32::try_from(f.len()).unwrap_or(i32::MAX);
    let mut out = Vec::with_capacity(f.len() + 4);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&f);
    out
}

/// Whether `SESSION_CONFIGS[i]` compiles (checked by the replay test).
pub fn session_config_compiles(i: usize) -> bool {
    session::config_of(i).is_some()
}

/// Whether encode mode builds a message of `case` v`version` from the seed patterns or
/// from an empty input (checked by the replay test for every case and version).
pub fn generates(case: DiffCase, version: i16) -> bool {
    seeds::PATTERNS
        .iter()
        .chain([&[][..]].iter())
        .all(|p| differential::generate_body(case, version, p).is_some())
}

/// The request the differential target's session pass sends before a response of `api_key`
/// v`version` (checked by the replay test).
pub fn session_request(api_key: i16, version: i16) -> Option<Vec<u8>> {
    differential::request_body(api_key, version)
}

/// The body encode mode builds for `case` v`version` from `pattern`.
pub fn encode_case(case: DiffCase, version: i16, pattern: &[u8]) -> Option<Vec<u8>> {
    differential::generate_body(case, version, pattern)
}

/// The generator patterns of the seeds.
pub fn seed_patterns() -> &'static [&'static [u8]] {
    seeds::PATTERNS
}
