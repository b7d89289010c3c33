//! kafka-protocol, for whole-message decode and encode where that is the simple and correct
//! choice (small responses that are rewritten, synthesized error responses). kafka-protocol
//! 0.18 sizes allocations by wire counts, so nothing reaches it before [`walk::walk_all`] has
//! proved every count and length fits the bytes present.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::codec::reader::{DecodeError, DecodeResult};
use crate::codec::walk;

pub fn kp_err(_e: impl std::fmt::Debug) -> DecodeError {
    DecodeError::Invalid {
        field: "message",
        reason: "rejected by the kafka-protocol decoder",
    }
}

pub fn encode<T: Encodable>(v: &T, version: i16) -> DecodeResult<Vec<u8>> {
    let mut b = BytesMut::new();
    v.encode(&mut b, version)
        .map_err(|_| DecodeError::Invalid {
            field: "message",
            reason: "cannot encode the rewritten message",
        })?;
    Ok(b.to_vec())
}

/// Decode a whole message with kafka-protocol, which sizes allocations by wire counts, only
/// after [`walk::walk_all`] has proved every count and length in it fits the bytes present.
pub fn decode_checked<T: Decodable>(
    schema: &'static walk::Schema,
    version: i16,
    flexible: bool,
    body: &[u8],
) -> DecodeResult<T> {
    walk::walk_all(schema, version, flexible, body, &mut |_| {})?;
    T::decode(&mut Bytes::copy_from_slice(body), version).map_err(kp_err)
}
