//! Known defects found by fuzzing that await a fix outside the harnesses. Each has a flag:
//! while it is `false` the harnesses step around the defect (so fuzzing can go on and the
//! replay stays green); whoever fixes the defect sets the flag to `true`, which turns the
//! exemption into a check, and moves the crashing input from `fuzz/crashes-pending/` to
//! `fuzz/regressions/`. See `fuzz/crashes-pending/README.md`.

use crate::codec::api;
use crate::codec::reader::Reader;

/// `Config::from_json` accepts bytes after the JSON object (`{} x`): it deserializes one
/// value and never checks that the input ends there (`serde_json::Deserializer::end`).
pub const CONFIG_TRAILING_BYTES_FIXED: bool = true;

/// FindCoordinator v4+ responses: the walk reads each coordinator's `error_code` but the
/// collector reports errors only at the end of a topic or partition, so batched
/// coordinator errors are never counted (v0-3's single error is).
pub const FIND_COORDINATOR_V4_ERRORS_FIXED: bool = true;

/// Known tagged fields: `decode_checked` lets kafka-protocol decode a message once the walk
/// has accepted it, but the walk skips every tagged field by its declared size, while
/// kafka-protocol decodes the tags it knows by their layout, from the buffer, ignoring the
/// size. When the two disagree the decoder is out of step with what the walk checked, and
/// reads array counts no byte backs; it sizes `Vec::with_capacity(count)` by them, and a
/// count near 2^32 aborts the process (in Envoy: the Wasm VM, every connection on it). The
/// direct case is KIP-951 `NodeEndpoints` (tag 0 of Produce v10+ and Fetch v16+ responses:
/// a 10-byte field can hold a count of 2^32 - 1); the indirect one is any known tag whose
/// size lies (Fetch v12+ partition tags 0-2, Produce v10+ partition tag 0, Fetch request v12+
/// tags), after which every later count is read from the wrong place. Reached through
/// `rewrite_response` (Produce v10+ / Fetch v16+ responses under `nodeEndpoints: rewrite`)
/// and the policy's Fetch request rewrite (`decode_checked::<FetchRequest>`).
pub const KNOWN_TAGS_BOUNDED_FIXED: bool = true;

/// Tagged fields with a tag of 2^31 or more: kafka-protocol 0.18 keeps an unknown tag under
/// an `i32` key (`tag as i32`: negative), counts it when it writes the section
/// (`unknown_tagged_fields.len()`) but writes only the keys in `0..`
/// (`write_unknown_tagged_fields(buf, 0.., ..)`), so the re-encoded message announces one
/// tagged field more than it holds and every byte after it is read as something else. The
/// walk accepts such tags (a tag is any 32-bit varint), so every message the filter decodes
/// and re-encodes is affected: address rewrites (`rewrite_response`) and the policy's
/// request rewrites and synthesized responses (`policy::enforce`).
pub const TAGS_OVER_I32_FIXED: bool = true;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Not this message (the walk would refuse it too, or it is another API).
    Malformed,
    /// kafka-protocol would decode it out of step with the walk, or allocate by a count no
    /// byte backs.
    Unsafe,
}

type V = Result<(), Bad>;

fn m<T>(r: crate::codec::reader::DecodeResult<T>) -> Result<T, Bad> {
    r.map_err(|_| Bad::Malformed)
}

fn uv(r: &mut Reader<'_>) -> Result<usize, Bad> {
    Ok(m(r.uvarint("uvarint"))? as usize)
}

fn fixed(r: &mut Reader<'_>, n: usize) -> V {
    m(r.skip(n, "fixed"))
}

/// Compact (nullable) string or bytes.
fn cstr(r: &mut Reader<'_>) -> V {
    m(r.compact_nullable_string("string")).map(|_| ())
}

fn carr(r: &mut Reader<'_>, each: &mut dyn FnMut(&mut Reader<'_>) -> V) -> V {
    let n = uv(r)?.saturating_sub(1);
    for _ in 0..n {
        let at = r.position();
        each(r)?;
        if r.position() == at {
            return Err(Bad::Malformed);
        }
    }
    Ok(())
}

/// A tagged-field section; `known` decodes a tag kafka-protocol knows (as it does: from the
/// buffer, not bounded by the size) and returns `None` for the others, which are skipped.
fn tags(r: &mut Reader<'_>, known: &dyn Fn(u32, &mut Reader<'_>) -> Option<V>) -> V {
    let n = uv(r)?;
    for _ in 0..n {
        let tag = m(r.uvarint("tag"))?;
        let size = uv(r)?;
        let at = r.position();
        match known(tag, r) {
            None => fixed(r, size)?,
            Some(res) => {
                // out of step: a size that lies about a known tag
                res.map_err(|_| Bad::Unsafe)?;
                if r.position() - at != size {
                    return Err(Bad::Unsafe);
                }
            }
        }
    }
    Ok(())
}

fn no_tags(r: &mut Reader<'_>) -> V {
    tags(r, &|_, _| None)
}

fn node_endpoints(r: &mut Reader<'_>) -> V {
    let mut c = r.clone();
    if uv(&mut c)?.saturating_sub(1) > c.remaining() {
        return Err(Bad::Unsafe); // Vec::with_capacity(count) for a count no byte backs
    }
    carr(r, &mut |r| {
        fixed(r, 4)?;
        cstr(r)?;
        fixed(r, 4)?;
        cstr(r)?;
        no_tags(r)
    })
}

fn topic_ref(r: &mut Reader<'_>, v: i16) -> V {
    if v <= 12 {
        cstr(r)
    } else {
        fixed(r, 16)
    }
}

fn fetch_response(r: &mut Reader<'_>, v: i16) -> V {
    fixed(r, 4 + 2 + 4)?;
    carr(r, &mut |r| {
        topic_ref(r, v)?;
        carr(r, &mut |r| {
            fixed(r, 4 + 2 + 8 + 8 + 8)?;
            carr(r, &mut |r| {
                fixed(r, 16)?;
                no_tags(r)
            })?;
            fixed(r, 4)?;
            cstr(r)?; // records
            tags(r, &|t, r| {
                let n = match t {
                    0 | 2 => 12, // EpochEndOffset, SnapshotId
                    1 => 8,      // LeaderIdAndEpoch
                    _ => return None,
                };
                Some(fixed(r, n).and_then(|()| no_tags(r)))
            })
        })?;
        no_tags(r)
    })?;
    tags(r, &|t, r| (t == 0 && v >= 16).then(|| node_endpoints(r)))
}

fn produce_response(r: &mut Reader<'_>, v: i16) -> V {
    carr(r, &mut |r| {
        topic_ref(r, v)?;
        carr(r, &mut |r| {
            fixed(r, 4 + 2 + 8 + 8 + 8)?;
            carr(r, &mut |r| {
                fixed(r, 4)?;
                cstr(r)?;
                no_tags(r)
            })?;
            cstr(r)?;
            tags(r, &|t, r| {
                (t == 0 && v >= 10).then(|| fixed(r, 8).and_then(|()| no_tags(r)))
            })
        })?;
        no_tags(r)
    })?;
    fixed(r, 4)?;
    tags(r, &|t, r| (t == 0 && v >= 10).then(|| node_endpoints(r)))
}

fn fetch_request(r: &mut Reader<'_>, v: i16) -> V {
    fixed(r, if v <= 14 { 4 } else { 0 } + 4 + 4 + 4 + 1 + 4 + 4)?;
    carr(r, &mut |r| {
        topic_ref(r, v)?;
        carr(r, &mut |r| {
            fixed(r, 4 + 4 + 8 + 4 + 8 + 4)?;
            tags(r, &|t, r| match t {
                0 if v >= 17 => Some(fixed(r, 16)),
                1 if v >= 18 => Some(fixed(r, 8)),
                _ => None,
            })
        })?;
        no_tags(r)
    })?;
    carr(r, &mut |r| {
        topic_ref(r, v)?;
        let n = uv(r)?.saturating_sub(1);
        fixed(r, n.saturating_mul(4))?;
        no_tags(r)
    })?;
    cstr(r)?;
    tags(r, &|t, r| match t {
        0 => Some(cstr(r)),
        1 if v >= 15 => Some(fixed(r, 12).and_then(|()| no_tags(r))),
        _ => None,
    })
}

/// Whether kafka-protocol would decode `body` (of `api_key` v`version`, a request or a
/// response) out of step with the walk or by an unbacked count. Conservative: a body that
/// does not parse as that message at all counts as unsafe too.
pub fn kp_tags_unsafe(api_key: i16, request: bool, version: i16, body: &[u8]) -> bool {
    outcome(api_key, request, version, body).is_err()
}

fn outcome(api_key: i16, request: bool, version: i16, body: &[u8]) -> V {
    let mut r = Reader::new(body);
    match (api_key, request) {
        (api::FETCH, false) if version >= 12 => fetch_response(&mut r, version),
        (api::PRODUCE, false) if version >= 9 => produce_response(&mut r, version),
        (api::FETCH, true) if version >= 12 => fetch_request(&mut r, version),
        _ => Ok(()),
    }
}

/// Whether a session input may reach the defect: a request frame that is a Fetch v12+
/// request kafka-protocol would decode out of step, or a response frame that is such a
/// Produce v10+ / Fetch v16+ response (the session target does not know which request a
/// response answers before the session does, so every version is tried; only a frame that
/// parses as one and is unsafe counts).
pub fn session_may_reach(requests: &[u8], responses: &[u8]) -> bool {
    frames(requests).any(|f| {
        let mut r = Reader::new(f);
        let (Ok(key), Ok(v), Ok(_corr)) = (r.i16("key"), r.i16("version"), r.i32("corr")) else {
            return false;
        };
        if key != api::FETCH || v < 12 {
            return false;
        }
        if r.nullable_string("client_id").is_err() || r.skip_tagged_fields("tags").is_err() {
            return false;
        }
        outcome(key, true, v, r.rest()) == Err(Bad::Unsafe)
    }) || frames(responses).any(|f| {
        let mut r = Reader::new(f);
        if r.i32("corr").is_err() || r.skip_tagged_fields("tags").is_err() {
            return false;
        }
        let body = r.rest();
        (10..=13).any(|v| outcome(api::PRODUCE, false, v, body) == Err(Bad::Unsafe))
            || (16..=18).any(|v| outcome(api::FETCH, false, v, body) == Err(Bad::Unsafe))
    })
}

/// The frames of a stream, by their size prefixes; the last one may be cut short.
fn frames(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut r = Reader::new(stream);
    std::iter::from_fn(move || {
        let size = usize::try_from(r.i32("size").ok()?).ok()?;
        let n = size.min(r.remaining());
        r.take(n, "frame").ok()
    })
}
