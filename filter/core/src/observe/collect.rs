//! Turns the walk events of one frame into facts for the observer: per-topic produce and
//! fetch totals, error codes with their topic, consumer lag, group activity, and the
//! topic-id map learned from Metadata.
//!
//! Per-frame state is a handful of scalars and the current topic; the only per-connection
//! state is the fetch-offset table that Fetch requests fill and Fetch responses read (lag is
//! "high watermark minus fetch offset", and the response carries no fetch offset).

use std::collections::HashMap;

use crate::codec::api;
use crate::codec::walk::{Event, F};

/// A topic as the wire names it: by name, or by id (Fetch v13+, Produce v13+).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicRef {
    Name(String),
    Id([u8; 16]),
}

impl TopicRef {
    /// The id in Kafka's usual base64url-without-padding text form is what `kafka-topics`
    /// prints, but Prometheus labels read better in hex; we use lowercase hex.
    pub fn label(&self) -> String {
        match self {
            TopicRef::Name(n) => n.clone(),
            TopicRef::Id(id) => hex(id),
        }
    }
}

pub fn hex(id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(32);
    for b in id {
        for nibble in [b >> 4, b & 15] {
            s.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}
const HEX: [u8; 16] = *b"0123456789abcdef";

/// Facts, in the order they are seen. Label bounding and metric naming happen in the sink.
pub trait FactSink {
    fn produce_topic(&mut self, _topic: &TopicRef, _batches: u64, _records: u64, _bytes: u64) {}
    fn fetch_topic(&mut self, _topic: &TopicRef, _records: u64, _bytes: u64) {}
    /// A non-zero error code in a response of `api_key`, with its topic when it has one.
    fn error(&mut self, _api_key: i16, _topic: Option<&TopicRef>, _code: i16) {}
    fn lag(&mut self, _topic: &TopicRef, _partition: i32, _lag: i64) {}
    fn group_request(&mut self, _api_key: i16, _group: &str) {}
    fn topic_id(&mut self, _id: [u8; 16], _name: &str) {}
}

/// Per-connection table of the last fetch offset per (topic, partition), bounded.
#[derive(Debug, Default)]
pub struct FetchOffsets {
    map: HashMap<(TopicRef, i32), i64>,
}

impl FetchOffsets {
    fn set(&mut self, key: (TopicRef, i32), offset: i64, cap: usize) {
        if self.map.len() >= cap && !self.map.contains_key(&key) {
            return; // bounded: partitions past the cap get no lag gauge on this connection
        }
        self.map.insert(key, offset);
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Access-log material gathered while a request and its response are walked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AccessTopics {
    /// As the wire named them; ids are resolved to names when the line is written, the way
    /// metric labels are (the glue's shared topic-id map), so the log and the metrics agree.
    pub topics: Vec<TopicRef>,
    /// Topics past [`ACCESS_TOPICS_MAX`], counted only.
    pub more: u32,
}
pub const ACCESS_TOPICS_MAX: usize = 8;

#[derive(Debug)]
pub struct Collector {
    api_key: i16,
    request: bool,
    topic_name: Option<String>,
    topic_id: Option<[u8; 16]>,
    in_partition: bool,
    partition: i32,
    error: i16,
    hw: i64,
    batches: u64,
    records: u64,
    bytes: u64,
    p_records: u64,
    p_bytes: u64,
    /// First non-zero error code of the frame (access log).
    pub first_error: i16,
    /// Topics named by a request (access log), when asked for.
    pub access: Option<AccessTopics>,
}

impl Collector {
    pub fn new(api_key: i16, request: bool, access: bool) -> Self {
        Collector {
            api_key,
            request,
            topic_name: None,
            topic_id: None,
            in_partition: false,
            partition: -1,
            error: 0,
            hw: -1,
            batches: 0,
            records: 0,
            bytes: 0,
            p_records: 0,
            p_bytes: 0,
            first_error: 0,
            access: access.then(AccessTopics::default),
        }
    }

    pub fn api_key(&self) -> i16 {
        self.api_key
    }

    fn topic(&self) -> Option<TopicRef> {
        match (&self.topic_name, self.topic_id) {
            (Some(n), _) => Some(TopicRef::Name(n.clone())),
            (None, Some(id)) => Some(TopicRef::Id(id)),
            (None, None) => None,
        }
    }

    pub fn on(
        &mut self,
        ev: Event<'_>,
        offsets: &mut FetchOffsets,
        offsets_cap: usize,
        sink: &mut dyn FactSink,
    ) {
        match ev {
            Event::Begin(F::Topics) => {
                self.topic_name = None;
                self.topic_id = None;
                self.error = 0;
                self.batches = 0;
                self.records = 0;
                self.bytes = 0;
            }
            Event::Str(F::Topic, Some(name)) => {
                let name = String::from_utf8_lossy(name).into_owned();
                if let Some(a) = self.access.as_mut() {
                    if a.topics.len() < ACCESS_TOPICS_MAX {
                        a.topics.push(TopicRef::Name(name.clone()));
                    } else {
                        a.more = a.more.saturating_add(1);
                    }
                }
                self.topic_name = Some(name);
            }
            Event::Uuid(F::TopicId, id) => {
                if let Some(a) = self.access.as_mut() {
                    if self.topic_name.is_none() {
                        if a.topics.len() < ACCESS_TOPICS_MAX {
                            a.topics.push(TopicRef::Id(id));
                        } else {
                            a.more = a.more.saturating_add(1);
                        }
                    }
                }
                self.topic_id = Some(id);
            }
            Event::Begin(F::Partitions) => {
                self.in_partition = true;
                self.partition = -1;
                self.error = 0;
                self.hw = -1;
                self.p_records = 0;
                self.p_bytes = 0;
            }
            Event::Int(F::Partition, v) => self.partition = i32::try_from(v).unwrap_or(-1),
            Event::Int(F::ErrorCode, v) => self.error = i16::try_from(v).unwrap_or(-1),
            Event::Int(F::TopErrorCode, v) => {
                let code = i16::try_from(v).unwrap_or(-1);
                self.report_error(None, code, sink);
            }
            Event::Int(F::HighWatermark, v) => self.hw = v,
            Event::Int(F::FetchOffset, v) => {
                if let Some(t) = self.topic() {
                    offsets.set((t, self.partition), v, offsets_cap);
                }
            }
            Event::Int(F::Records, len) => {
                let len = u64::try_from(len).unwrap_or(0);
                self.bytes = self.bytes.saturating_add(len);
                self.p_bytes = self.p_bytes.saturating_add(len);
            }
            Event::Batch(b) => {
                self.batches += 1;
                if b.complete {
                    self.records = self.records.saturating_add(u64::from(b.records));
                    self.p_records = self.p_records.saturating_add(u64::from(b.records));
                }
            }
            Event::End(F::Partitions) => {
                self.in_partition = false;
                let topic = self.topic();
                if self.error != 0 {
                    let code = self.error;
                    self.error = 0;
                    self.report_error(topic.as_ref(), code, sink);
                }
                if self.api_key == api::FETCH && !self.request && self.hw >= 0 {
                    if let Some(t) = topic {
                        let key = (t, self.partition);
                        if let Some(off) = offsets.map.get(&key).copied() {
                            sink.lag(&key.0, key.1, self.hw.saturating_sub(off).max(0));
                        }
                    }
                }
            }
            // FindCoordinator v4+: each coordinator has its own error code
            Event::End(F::Coordinators) if self.error != 0 => {
                let code = self.error;
                self.error = 0;
                self.report_error(None, code, sink);
            }
            Event::End(F::Topics) => {
                let topic = self.topic();
                if self.error != 0 {
                    let code = self.error;
                    self.error = 0;
                    self.report_error(topic.as_ref(), code, sink);
                }
                match (self.api_key, self.request) {
                    (api::PRODUCE, true) => {
                        if let Some(t) = &topic {
                            sink.produce_topic(t, self.batches, self.records, self.bytes);
                        }
                    }
                    (api::FETCH, false) => {
                        if let Some(t) = &topic {
                            sink.fetch_topic(t, self.records, self.bytes);
                        }
                    }
                    (api::METADATA, false) => {
                        if let (Some(n), Some(id)) = (&self.topic_name, self.topic_id) {
                            if id != [0; 16] {
                                sink.topic_id(id, n);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Str(F::GroupId, Some(g)) => {
                sink.group_request(self.api_key, &String::from_utf8_lossy(g));
            }
            _ => {}
        }
    }

    fn report_error(&mut self, topic: Option<&TopicRef>, code: i16, sink: &mut dyn FactSink) {
        if code == 0 {
            return;
        }
        if self.first_error == 0 {
            self.first_error = code;
        }
        sink.error(self.api_key, topic, code);
    }
}
