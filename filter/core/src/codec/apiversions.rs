//! Clamp the versions a broker advertises in ApiVersions responses to what the filter parses.
//!
//! A client picks, per API, the highest version both it and the broker support (librdkafka
//! `rd_kafka_ApiVersion_check`, Java `NodeApiVersions.latestUsableVersion`). Lowering the
//! broker's advertised `max_version` to [`crate::codec::api`]'s table therefore guarantees that
//! clients never send a version the filter cannot read. The patch keeps the frame length
//! (two bytes replaced by two bytes), so no re-framing is needed.
//!
//! Layout (Kafka `ApiVersionsResponse.json`): error_code i16; api_keys [api_key i16,
//! min_version i16, max_version i16 (+ tagged fields v3+)] (compact array v3+);
//! throttle_time_ms i32 (v1+); tagged fields (v3+). When the broker does not support the
//! request's version it answers UNSUPPORTED_VERSION in the v0 layout (KIP-511), so that case
//! is parsed as v0.

use crate::codec::api;
use crate::codec::reader::{DecodeResult, Reader};

pub const UNSUPPORTED_VERSION: i16 = 35;

/// One advertised entry whose max version was lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamp {
    pub api_key: i16,
    pub broker_max: i16,
    pub new_max: i16,
    /// Offset of the max_version field within the response body.
    offset: usize,
}

/// Find the entries to clamp in an ApiVersions response body (after the response header,
/// which is always v0 for this API). Nothing is allocated per wire element beyond the clamps
/// themselves, whose number is bounded by the entries actually present.
pub fn plan_clamps(version: i16, body: &[u8]) -> DecodeResult<Vec<Clamp>> {
    plan_clamps_with(version, body, &|info| info.max_version)
}

/// The highest version of `api_key` the filter lets clients use: the parse table's, lowered
/// under a policy for the APIs whose newer versions the policy does not rewrite yet: OffsetFetch
/// v10 and OffsetCommit v10 name topics by id only (KIP-848). OffsetFetch v8-9 (groups
/// batched) are enforced; capping them at v7 made clients that can batch (kafka-python 3)
/// fall back to v7, whose all-offsets answer tansu 0.6 writes without its `topics` array.
pub fn effective_max(info: &api::ApiInfo, policy: bool) -> i16 {
    match (policy, info.key) {
        (true, 8) => info.max_version.min(9),
        (true, 9) => info.max_version.min(9),
        _ => info.max_version,
    }
}

/// [`plan_clamps`] with the highest version per API given by `max` (the parse table lowered
/// by the policy's and the address rewriter's limits).
pub fn plan_clamps_with(
    version: i16,
    body: &[u8],
    max: &dyn Fn(&api::ApiInfo) -> i16,
) -> DecodeResult<Vec<Clamp>> {
    let mut r = Reader::new(body);
    let error_code = r.i16("api_versions.error_code")?;
    let version = if error_code == UNSUPPORTED_VERSION {
        0
    } else {
        version
    };
    let flexible = version >= 3;
    // Each entry is at least 6 bytes (+1 for its tagged-field count when flexible).
    let min_entry = if flexible { 7 } else { 6 };
    let n = r.array_len(flexible, min_entry, "api_versions.api_keys")?;
    let mut clamps = Vec::new();
    for _ in 0..n {
        let api_key = r.i16("api_versions.api_keys.api_key")?;
        let min_version = r.i16("api_versions.api_keys.min_version")?;
        let offset = r.position();
        let broker_max = r.i16("api_versions.api_keys.max_version")?;
        if flexible {
            r.skip_tagged_fields("api_versions.api_keys.tagged_fields")?;
        }
        if let Some(info) = api::api_info(api_key) {
            // If even the broker's minimum is beyond what we parse there is no common
            // version; leave the entry alone (the request will be counted as unknown).
            let max = max(info);
            if broker_max > max && min_version <= max {
                clamps.push(Clamp {
                    api_key,
                    broker_max,
                    new_max: max,
                    offset,
                });
            }
        }
    }
    if version >= 1 {
        r.i32("api_versions.throttle_time_ms")?;
    }
    if flexible {
        r.skip_tagged_fields("api_versions.tagged_fields")?;
    }
    Ok(clamps)
}

/// Apply clamps to a copy of the response body. Offsets come from [`plan_clamps`] on the same
/// bytes; a clamp whose offset does not fit is skipped rather than trusted.
pub fn apply_clamps(body: &mut [u8], clamps: &[Clamp]) -> usize {
    let mut applied = 0;
    for c in clamps {
        if let Some(slot) = c
            .offset
            .checked_add(2)
            .and_then(|end| body.get_mut(c.offset..end))
        {
            slot.copy_from_slice(&c.new_max.to_be_bytes());
            applied += 1;
        }
    }
    applied
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
    use kafka_protocol::protocol::{Decodable, Encodable};

    fn response(entries: &[(i16, i16, i16)]) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            entries
                .iter()
                .map(|&(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(k)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
    }

    #[test]
    fn clamps_every_version_and_keeps_everything_else() {
        for v in 0..=4i16 {
            let resp = response(&[(0, 0, 99), (1, 4, 17), (18, 0, 4), (3, 0, 50), (1000, 0, 9)])
                .with_throttle_time_ms(12);
            let mut buf = BytesMut::new();
            resp.encode(&mut buf, v).unwrap();
            let clamps = plan_clamps(v, &buf).unwrap();
            let keys: Vec<i16> = clamps.iter().map(|c| c.api_key).collect();
            assert_eq!(keys, vec![0, 3], "v{v}");
            let mut patched = buf.to_vec();
            assert_eq!(apply_clamps(&mut patched, &clamps), 2);
            assert_eq!(patched.len(), buf.len());
            let decoded = ApiVersionsResponse::decode(&mut bytes::Bytes::from(patched), v).unwrap();
            let expect = response(&[
                (0, 0, api::api_info(0).unwrap().max_version),
                (1, 4, 17),
                (18, 0, 4),
                (3, 0, api::api_info(3).unwrap().max_version),
                (1000, 0, 9),
            ])
            .with_throttle_time_ms(if v >= 1 { 12 } else { 0 });
            assert_eq!(decoded, expect, "v{v}");
        }
    }

    #[test]
    fn unsupported_version_answer_is_read_as_v0() {
        let resp = response(&[(18, 0, 3)]).with_error_code(UNSUPPORTED_VERSION);
        let mut buf = BytesMut::new();
        resp.encode(&mut buf, 0).unwrap();
        // the client asked with v4 but the broker answered in the v0 layout
        assert_eq!(plan_clamps(4, &buf).unwrap(), vec![]);
    }

    #[test]
    fn broker_min_beyond_our_max_is_left_alone() {
        let mut buf = BytesMut::new();
        response(&[(0, 50, 60)]).encode(&mut buf, 2).unwrap();
        assert!(plan_clamps(2, &buf).unwrap().is_empty());
    }

    #[test]
    fn huge_count_is_rejected_not_allocated() {
        // error 0, array count 0x7fffffff, nothing else
        let body = [0, 0, 0x7f, 0xff, 0xff, 0xff];
        assert!(plan_clamps(2, &body).is_err());
        // every truncation of a valid body is an error, never a panic
        let mut buf = BytesMut::new();
        response(&[(0, 0, 99), (3, 0, 50)])
            .encode(&mut buf, 3)
            .unwrap();
        for cut in 0..buf.len() {
            assert!(plan_clamps(3, &buf[..cut]).is_err(), "cut {cut}");
        }
    }
}
