//! A bounded, non-panicking reader over a byte slice.
//!
//! Modelled on rustls' `codec::Reader` (rustls/rustls `rustls/src/msgs/codec.rs`): every read is
//! checked against the bytes actually present, and [`Reader::sub`] hands nested parsing a reader
//! that cannot run past its own length prefix. Errors name the field that was being read, so a
//! malformed frame can be logged with something a person can act on.
//!
//! Kafka encodings (see Kafka's `clients/src/main/resources/common/message/README.md`):
//! - `STRING` / `NULLABLE_STRING`: i16 length (-1 = null) then bytes;
//! - `COMPACT_STRING` / `COMPACT_NULLABLE_STRING`: unsigned varint N+1 (0 = null) then N bytes;
//! - `ARRAY`: i32 count (-1 = null); `COMPACT_ARRAY`: unsigned varint N+1 (0 = null);
//! - tagged fields: unsigned varint count, then (uvarint tag, uvarint size, bytes) each.

use core::fmt;

/// What went wrong while decoding. `field` names the field being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ended before the field did. While collecting a frame head this means
    /// "wait for more bytes"; inside a complete frame it means the frame is malformed.
    Truncated { field: &'static str },
    /// The bytes are present but cannot be valid (negative length, overlong varint, ...).
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl DecodeError {
    pub fn is_truncated(&self) -> bool {
        matches!(self, DecodeError::Truncated { .. })
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { field } => write!(f, "truncated while reading {field}"),
            DecodeError::Invalid { field, reason } => write!(f, "invalid {field}: {reason}"),
        }
    }
}

pub type DecodeResult<T> = Result<T, DecodeError>;

#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The unread rest of the input.
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// Take exactly `n` bytes, or fail without consuming anything.
    pub fn take(&mut self, n: usize, field: &'static str) -> DecodeResult<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Invalid {
            field,
            reason: "length overflows",
        })?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated { field })?;
        self.pos = end;
        Ok(out)
    }

    pub fn skip(&mut self, n: usize, field: &'static str) -> DecodeResult<()> {
        self.take(n, field).map(|_| ())
    }

    /// A reader over the next `n` bytes; `self` moves past them. Nested parsing through the
    /// returned reader can never read beyond those `n` bytes.
    pub fn sub(&mut self, n: usize, field: &'static str) -> DecodeResult<Reader<'a>> {
        self.take(n, field).map(Reader::new)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> DecodeResult<[u8; N]> {
        let s = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub fn i8(&mut self, field: &'static str) -> DecodeResult<i8> {
        Ok(i8::from_be_bytes(self.array::<1>(field)?))
    }

    pub fn i16(&mut self, field: &'static str) -> DecodeResult<i16> {
        Ok(i16::from_be_bytes(self.array::<2>(field)?))
    }

    pub fn i32(&mut self, field: &'static str) -> DecodeResult<i32> {
        Ok(i32::from_be_bytes(self.array::<4>(field)?))
    }

    pub fn i64(&mut self, field: &'static str) -> DecodeResult<i64> {
        Ok(i64::from_be_bytes(self.array::<8>(field)?))
    }

    pub fn uuid(&mut self, field: &'static str) -> DecodeResult<[u8; 16]> {
        self.array::<16>(field)
    }

    /// Unsigned LEB128 varint, at most 5 bytes (Kafka's `ByteUtils.readUnsignedVarint`).
    pub fn uvarint(&mut self, field: &'static str) -> DecodeResult<u32> {
        let mut value: u32 = 0;
        for i in 0..5u32 {
            let b = self.array::<1>(field)?[0];
            let bits = u32::from(b & 0x7f);
            if i == 4 && bits > 0x0f {
                return Err(DecodeError::Invalid {
                    field,
                    reason: "varint overflows 32 bits",
                });
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid {
            field,
            reason: "varint longer than 5 bytes",
        })
    }

    /// Zig-zag signed varint (record-level fields).
    pub fn varint(&mut self, field: &'static str) -> DecodeResult<i32> {
        let u = self.uvarint(field)?;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }

    /// `NULLABLE_STRING` / `STRING`: i16 length, -1 = null.
    pub fn nullable_string(&mut self, field: &'static str) -> DecodeResult<Option<&'a [u8]>> {
        let len = self.i16(field)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| DecodeError::Invalid {
            field,
            reason: "negative string length",
        })?;
        self.take(len, field).map(Some)
    }

    pub fn string(&mut self, field: &'static str) -> DecodeResult<&'a [u8]> {
        self.nullable_string(field)?.ok_or(DecodeError::Invalid {
            field,
            reason: "null in a non-nullable string",
        })
    }

    /// `COMPACT_NULLABLE_STRING`: uvarint N+1, 0 = null.
    pub fn compact_nullable_string(
        &mut self,
        field: &'static str,
    ) -> DecodeResult<Option<&'a [u8]>> {
        let n = self.uvarint(field)?;
        match n.checked_sub(1) {
            None => Ok(None),
            Some(len) => self.take(len as usize, field).map(Some),
        }
    }

    pub fn compact_string(&mut self, field: &'static str) -> DecodeResult<&'a [u8]> {
        self.compact_nullable_string(field)?
            .ok_or(DecodeError::Invalid {
                field,
                reason: "null in a non-nullable string",
            })
    }

    /// Classic or compact string by the message's flexibility.
    pub fn string_v(&mut self, flexible: bool, field: &'static str) -> DecodeResult<&'a [u8]> {
        if flexible {
            self.compact_string(field)
        } else {
            self.string(field)
        }
    }

    pub fn nullable_string_v(
        &mut self,
        flexible: bool,
        field: &'static str,
    ) -> DecodeResult<Option<&'a [u8]>> {
        if flexible {
            self.compact_nullable_string(field)
        } else {
            self.nullable_string(field)
        }
    }

    /// An array count, classic (i32) or compact (uvarint N+1). Null arrays read as 0.
    ///
    /// The count is checked against the bytes present: every element takes at least
    /// `min_elem_size` bytes, so a count the rest of the frame cannot hold is rejected here,
    /// before any caller can size an allocation by it.
    pub fn array_len(
        &mut self,
        flexible: bool,
        min_elem_size: usize,
        field: &'static str,
    ) -> DecodeResult<usize> {
        let n: usize = if flexible {
            match self.uvarint(field)?.checked_sub(1) {
                None => 0,
                Some(n) => n as usize,
            }
        } else {
            let n = self.i32(field)?;
            if n == -1 {
                0
            } else {
                usize::try_from(n).map_err(|_| DecodeError::Invalid {
                    field,
                    reason: "negative array length",
                })?
            }
        };
        let need = n.saturating_mul(min_elem_size.max(1));
        if need > self.remaining() {
            return Err(DecodeError::Invalid {
                field,
                reason: "array count exceeds the bytes present",
            });
        }
        Ok(n)
    }

    /// Skip a tagged-field section (flexible versions only).
    pub fn skip_tagged_fields(&mut self, field: &'static str) -> DecodeResult<()> {
        let count = self.uvarint(field)?;
        for _ in 0..count {
            check_tag(self.uvarint(field)?, field)?;
            let size = self.uvarint(field)?;
            self.skip(size as usize, field)?;
        }
        Ok(())
    }
}

/// Tags above `i32::MAX` are refused. Kafka reads a tag as an unsigned varint into an `int`,
/// but kafka-protocol 0.18 keeps unknown tagged fields under an `i32` key and, re-encoding,
/// writes the count of all of them but only the fields with keys in `0..`
/// (`protocol/mod.rs`, `write_unknown_tagged_fields(buf, 0.., ..)`): a message the filter
/// decodes and re-encodes (policy, rewrite) would come out one field short of its count, and
/// the reader after it out of step (found by `fuzz/`, the rewrite and session targets).
pub fn check_tag(tag: u32, field: &'static str) -> DecodeResult<()> {
    if tag > i32::MAX as u32 {
        return Err(DecodeError::Invalid {
            field,
            reason: "tag above 2^31-1",
        });
    }
    Ok(())
}

/// Encode an unsigned varint (used by writers that re-encode compact fields).
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_and_truncation() {
        let mut r = Reader::new(&[0, 1, 0, 0, 0, 2, 9]);
        assert_eq!(r.i16("a").unwrap(), 1);
        assert_eq!(r.i32("b").unwrap(), 2);
        assert_eq!(r.i16("c"), Err(DecodeError::Truncated { field: "c" }));
        // a failed read consumes nothing
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.i8("d").unwrap(), 9);
    }

    #[test]
    fn sub_cannot_run_past_its_length() {
        let mut r = Reader::new(&[1, 2, 3, 4, 5]);
        let mut s = r.sub(2, "s").unwrap();
        assert_eq!(s.i16("x").unwrap(), 0x0102);
        assert!(s.i8("y").unwrap_err().is_truncated());
        assert_eq!(r.rest(), &[3, 4, 5]);
    }

    #[test]
    fn uvarint_roundtrip_and_limits() {
        for v in [0u32, 1, 127, 128, 300, 16383, 16384, u32::MAX] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(Reader::new(&out).uvarint("v").unwrap(), v);
        }
        // 6-byte varint
        let bad = [0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(matches!(
            Reader::new(&bad).uvarint("v"),
            Err(DecodeError::Invalid { .. })
        ));
        // overflowing 5th byte
        let bad = [0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            Reader::new(&bad).uvarint("v"),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(Reader::new(&[0x80])
            .uvarint("v")
            .unwrap_err()
            .is_truncated());
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(&[0xff, 0xff, 0, 2, b'h', b'i', 0, 3, b'o', b'k', b'!']);
        assert_eq!(r.nullable_string("a").unwrap(), None);
        assert_eq!(r.string("b").unwrap(), b"hi");
        assert_eq!(r.compact_nullable_string("c").unwrap(), None);
        assert_eq!(r.compact_string("d").unwrap(), b"ok");
        let mut r = Reader::new(&[0x80, 0x00]);
        assert!(matches!(
            r.nullable_string("neg"),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn array_count_is_bounded_by_bytes_present() {
        // i32 count of 1 billion with 4 bytes following: rejected before anyone allocates
        let mut r = Reader::new(&[0x3b, 0x9a, 0xca, 0x00, 0, 0, 0, 0]);
        assert!(matches!(
            r.array_len(false, 4, "arr"),
            Err(DecodeError::Invalid { .. })
        ));
        let mut r = Reader::new(&[0, 0, 0, 1, 0, 0, 0, 7]);
        assert_eq!(r.array_len(false, 4, "arr").unwrap(), 1);
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.array_len(false, 4, "arr").unwrap(), 0);
        let mut r = Reader::new(&[3, 1, 2]);
        assert_eq!(r.array_len(true, 1, "arr").unwrap(), 2);
    }

    #[test]
    fn tagged_fields() {
        let mut r = Reader::new(&[2, 0, 1, 0xaa, 5, 2, 1, 2, 0x77]);
        r.skip_tagged_fields("tags").unwrap();
        assert_eq!(r.rest(), &[0x77]);
        let mut r = Reader::new(&[1, 0, 9, 0xaa]);
        assert!(r.skip_tagged_fields("tags").unwrap_err().is_truncated());
    }
}
