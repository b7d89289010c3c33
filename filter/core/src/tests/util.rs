//! Test helpers: real Kafka encodings from kafka-protocol, and an Envoy-faithful buffer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::observe::collect::{FactSink, TopicRef};
use crate::session::{Direction, HostBuffer, Observer, Session, Verdict};
use bytes::BytesMut;
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion};

/// A framed request (size prefix included), header version chosen by kafka-protocol.
pub fn encode_request<B: Encodable + HeaderVersion>(
    h: &RequestHeader,
    body: &B,
    v: i16,
) -> Vec<u8> {
    let mut buf = BytesMut::new();
    h.encode(&mut buf, B::header_version(v)).unwrap();
    body.encode(&mut buf, v).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

pub fn encode_response<B: Encodable + HeaderVersion>(corr: i32, body: &B, v: i16) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(corr)
        .encode(&mut buf, B::header_version(v))
        .unwrap();
    body.encode(&mut buf, v).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

/// Envoy's connection buffer as the filter sees it (`Buffer::copyFrom` / `copyTo` in
/// envoyproxy/envoy `source/extensions/common/wasm/context.cc`). Counts bytes copied out.
#[derive(Default)]
pub struct EnvoyBuf {
    pub data: Vec<u8>,
    pub copied: usize,
    /// Bytes written back into the host (`set_buffer_bytes`).
    pub written: usize,
}

impl HostBuffer for EnvoyBuf {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let start = start.min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        self.copied += end - start;
        Some(self.data[start..end].to_vec())
    }
    fn replace_front(&mut self, drain: usize, data: &[u8]) -> bool {
        self.written += data.len();
        let drain = drain.min(self.data.len());
        self.data.drain(..drain);
        self.data.splice(0..0, data.iter().copied());
        true
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pumped {
    pub out: Vec<u8>,
    pub closed: bool,
    pub pauses: usize,
    pub copied: usize,
}

/// Feed `chunks` into one direction as Envoy would: append, call, forward on Continue,
/// keep on Pause; finally an end-of-stream call with no new bytes if `eos`.
pub fn pump<'a>(
    s: &mut Session,
    dir: Direction,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    eos: bool,
    obs: &mut dyn Observer,
) -> Pumped {
    let mut buf = EnvoyBuf::default();
    let mut p = Pumped::default();
    let mut t = 0u64;
    for c in chunks {
        buf.data.extend_from_slice(c);
        t += 1000;
        match s.on_data(dir, &mut buf, false, t, obs) {
            Verdict::Continue => p.out.append(&mut buf.data),
            Verdict::Pause => p.pauses += 1,
            Verdict::Close => {
                p.closed = true;
                p.copied = buf.copied;
                return p;
            }
        }
    }
    if eos {
        match s.on_data(dir, &mut buf, true, t + 1, obs) {
            Verdict::Continue => p.out.append(&mut buf.data),
            Verdict::Pause => p.pauses += 1,
            Verdict::Close => p.closed = true,
        }
    }
    p.copied = buf.copied;
    p
}

/// Every way of cutting `bytes`: whole, byte by byte, fixed sizes, and each single split.
pub fn chunkings(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all: Vec<Vec<&[u8]>> = vec![
        vec![bytes],
        bytes.chunks(1).collect(),
        bytes.chunks(7).collect(),
    ];
    for at in 1..bytes.len() {
        all.push(vec![&bytes[..at], &bytes[at..]]);
    }
    all
}

/// A test observer that records every fact as one line, for exact assertions.
pub trait FactLines {
    fn lines(&mut self) -> &mut Vec<String>;
}

impl<T: FactLines> FactSink for T {
    fn produce_topic(&mut self, t: &TopicRef, batches: u64, records: u64, bytes: u64) {
        self.lines().push(format!(
            "produce {} b={batches} r={records} n={bytes}",
            t.label()
        ));
    }
    fn fetch_topic(&mut self, t: &TopicRef, records: u64, bytes: u64) {
        self.lines()
            .push(format!("fetch {} r={records} n={bytes}", t.label()));
    }
    fn error(&mut self, api: i16, t: Option<&TopicRef>, code: i16) {
        let t = t.map(TopicRef::label).unwrap_or_else(|| "-".into());
        self.lines().push(format!("error {api} {t} {code}"));
    }
    fn lag(&mut self, t: &TopicRef, p: i32, lag: i64) {
        self.lines().push(format!("lag {} {p} {lag}", t.label()));
    }
    fn group_request(&mut self, api: i16, g: &str) {
        self.lines().push(format!("group {api} {g}"));
    }
    fn topic_id(&mut self, id: [u8; 16], name: &str) {
        self.lines().push(format!(
            "topic_id {} {name}",
            crate::observe::collect::hex(&id)
        ));
    }
}

/// One callback of [`pump_traced`]: the verdict, the host buffer left behind (paused
/// bytes) and the bytes forwarded so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub verdict: Verdict,
    pub buffered: usize,
    pub out: usize,
}

/// [`pump`], recording every callback, for "nothing is held hostage" assertions.
pub fn pump_traced<'a>(
    s: &mut Session,
    dir: Direction,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    obs: &mut dyn Observer,
) -> (Pumped, Vec<Step>) {
    let mut buf = EnvoyBuf::default();
    let mut p = Pumped::default();
    let mut steps = Vec::new();
    let mut t = 0u64;
    for c in chunks {
        buf.data.extend_from_slice(c);
        t += 1000;
        let v = s.on_data(dir, &mut buf, false, t, obs);
        match v {
            Verdict::Continue => p.out.append(&mut buf.data),
            Verdict::Pause => p.pauses += 1,
            Verdict::Close => p.closed = true,
        }
        steps.push(Step {
            verdict: v,
            buffered: buf.data.len(),
            out: p.out.len(),
        });
        if p.closed {
            break;
        }
    }
    p.copied = buf.copied;
    (p, steps)
}

/// `frames` back to back, cut so that every callback but the last ends `lead` bytes into
/// the next frame (a pipelining client: the buffer never ends on a frame boundary).
pub fn pipelined_cuts(frames: &[Vec<u8>], lead: usize) -> Vec<Vec<u8>> {
    let stream: Vec<u8> = frames.concat();
    let mut cuts = Vec::new();
    let mut end = 0;
    for f in frames.iter().take(frames.len().saturating_sub(1)) {
        end += f.len();
        cuts.push(end + lead);
    }
    cuts.push(stream.len());
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in cuts {
        let c = c.min(stream.len());
        chunks.push(stream[at..c].to_vec());
        at = c;
    }
    chunks
}
