//! Request and response headers, and the few body fields the session needs up front.
//!
//! Request header (Kafka `RequestHeader.json`):
//! - v0: api_key i16, api_version i16, correlation_id i32
//! - v1: + client_id NULLABLE_STRING
//! - v2: + tagged fields. `client_id` stays a classic i16-length nullable string even in v2
//!   (its spec sets `flexibleVersions: "none"` for that field), a trap for hand-written parsers.
//!
//! Response header: v0 correlation_id i32; v1 adds tagged fields. Which one a response uses
//! depends on the request's (api key, version): see [`crate::codec::api::ApiInfo`].

use crate::codec::api::{self, ApiInfo};
use crate::codec::reader::{DecodeError, DecodeResult, Reader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader<'a> {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<&'a [u8]>,
    /// Table entry, `None` for API keys the filter does not know.
    pub api: Option<&'static ApiInfo>,
    /// The version is within what the filter can parse for this API.
    pub version_known: bool,
}

impl RequestHeader<'_> {
    pub fn is_flexible(&self) -> bool {
        self.api.is_some_and(|a| a.is_flexible(self.api_version))
    }
}

/// Parse a request header from the frame body (the bytes after the 4-byte size).
/// Returns the header and the reader positioned at the start of the request body. For unknown
/// API keys or versions the body position is not meaningful (tagged fields may follow).
pub fn parse_request_header(body: &[u8]) -> DecodeResult<(RequestHeader<'_>, Reader<'_>)> {
    let mut r = Reader::new(body);
    let api_key = r.i16("request_header.api_key")?;
    let api_version = r.i16("request_header.api_version")?;
    let correlation_id = r.i32("request_header.correlation_id")?;
    let api = api::api_info(api_key);
    let version_known = api.is_some_and(|a| a.supports(api_version));
    let header_version = match api {
        Some(a) => a.request_header_version(api_version),
        // Unknown API: every header version >= 1 starts with the same four fields.
        None => 1,
    };
    let client_id = if header_version >= 1 {
        r.nullable_string("request_header.client_id")?
    } else {
        None
    };
    if header_version >= 2 && version_known {
        r.skip_tagged_fields("request_header.tagged_fields")?;
    }
    Ok((
        RequestHeader {
            api_key,
            api_version,
            correlation_id,
            client_id,
            api,
            version_known,
        },
        r,
    ))
}

/// `acks` of a Produce request, read from the start of its body.
/// Produce v0-2: acks, timeout, ...; v3+: transactional_id (nullable, compact from v9), acks.
/// (Kafka `ProduceRequest.json`.)
pub fn produce_acks(header: &RequestHeader<'_>, mut body: Reader<'_>) -> DecodeResult<i16> {
    if header.api_version >= 3 {
        body.nullable_string_v(header.is_flexible(), "produce.transactional_id")?;
    }
    body.i16("produce.acks")
}

/// Correlation id of a response: the first field of every response header version.
pub fn response_correlation_id(body: &[u8]) -> DecodeResult<i32> {
    Reader::new(body).i32("response_header.correlation_id")
}

/// Skip a response header and return the reader at the response body.
pub fn skip_response_header<'a>(
    api: &ApiInfo,
    version: i16,
    body: &'a [u8],
) -> DecodeResult<Reader<'a>> {
    let mut r = Reader::new(body);
    r.i32("response_header.correlation_id")?;
    if api.response_header_version(version) >= 1 {
        r.skip_tagged_fields("response_header.tagged_fields")?;
    }
    Ok(r)
}

/// Human-readable error for a frame-level problem.
pub fn describe(e: &DecodeError) -> String {
    e.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::testkit::encode_request;
    use kafka_protocol::messages::{
        produce_request::ProduceRequest, ApiVersionsRequest, FetchRequest, MetadataRequest,
        RequestHeader as KpHeader,
    };
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn parses_headers_of_every_version_like_kafka_protocol() {
        for v in 0..=13i16 {
            let h = KpHeader::default()
                .with_request_api_key(3)
                .with_request_api_version(v)
                .with_correlation_id(1000 + i32::from(v))
                .with_client_id(Some(StrBytes::from_static_str("client-é")));
            let frame = encode_request(&h, &MetadataRequest::default(), v);
            let (hdr, rest) = parse_request_header(&frame[4..]).unwrap();
            assert_eq!(hdr.api_key, 3);
            assert_eq!(hdr.api_version, v);
            assert_eq!(hdr.correlation_id, 1000 + i32::from(v));
            assert_eq!(hdr.client_id, Some("client-é".as_bytes()));
            // the body left is exactly what kafka-protocol encoded for the body
            let mut expect = bytes::BytesMut::new();
            kafka_protocol::protocol::Encodable::encode(
                &MetadataRequest::default(),
                &mut expect,
                v,
            )
            .unwrap();
            assert_eq!(rest.rest(), &expect[..], "v{v}");
        }
    }

    #[test]
    fn null_client_id_and_flexible_apiversions() {
        let h = KpHeader::default()
            .with_request_api_key(18)
            .with_request_api_version(3)
            .with_correlation_id(7)
            .with_client_id(None);
        let frame = encode_request(&h, &ApiVersionsRequest::default(), 3);
        let (hdr, _) = parse_request_header(&frame[4..]).unwrap();
        assert_eq!(hdr.client_id, None);
        assert!(hdr.is_flexible());
    }

    #[test]
    fn produce_acks_all_versions() {
        for v in 3..=13i16 {
            for acks in [0i16, 1, -1] {
                let h = KpHeader::default()
                    .with_request_api_key(0)
                    .with_request_api_version(v)
                    .with_correlation_id(1);
                let body = ProduceRequest::default()
                    .with_acks(acks)
                    .with_transactional_id(Some(StrBytes::from_static_str("tx-1").into()));
                let frame = encode_request(&h, &body, v);
                let (hdr, rest) = parse_request_header(&frame[4..]).unwrap();
                assert_eq!(produce_acks(&hdr, rest).unwrap(), acks, "v{v}");
            }
        }
        // v0-2 (no transactional id): hand-built body
        for v in 0..=2i16 {
            let mut f = vec![0, 0, 0, 0, 0, 0, 0, v as u8, 0, 0, 0, 9, 0xff, 0xff];
            f.extend_from_slice(&0i16.to_be_bytes());
            let (hdr, rest) = parse_request_header(&f[4..]).unwrap();
            assert_eq!(produce_acks(&hdr, rest).unwrap(), 0);
        }
    }

    #[test]
    fn unknown_api_still_yields_correlation_and_client() {
        let mut f = vec![0x7f, 0x00, 0, 1, 0, 0, 0, 42, 0, 2, b'c', b'x', 1, 2, 3];
        let (hdr, _) = parse_request_header(&f).unwrap();
        assert!(hdr.api.is_none());
        assert_eq!(hdr.correlation_id, 42);
        assert_eq!(hdr.client_id, Some(&b"cx"[..]));
        f.truncate(9);
        assert!(parse_request_header(&f).unwrap_err().is_truncated());
    }

    #[test]
    fn fetch_header_v12_has_tagged_fields() {
        let h = KpHeader::default()
            .with_request_api_key(1)
            .with_request_api_version(12)
            .with_correlation_id(5)
            .with_client_id(Some(StrBytes::from_static_str("c")));
        let frame = encode_request(&h, &FetchRequest::default(), 12);
        let (hdr, rest) = parse_request_header(&frame[4..]).unwrap();
        assert!(hdr.is_flexible());
        let mut expect = bytes::BytesMut::new();
        kafka_protocol::protocol::Encodable::encode(&FetchRequest::default(), &mut expect, 12)
            .unwrap();
        assert_eq!(rest.rest(), &expect[..]);
    }
}
