//! Keyed state, scoped to the pipeline and the partition being processed, committed with
//! the batch's rows and offset (the WIT's `state` interface).
//!
//! A batch reads what the earlier batches of its partition committed plus its own writes.
//! The raw calls ([`get`], [`put`], [`delete`], [`scan`]) take keys and values as bytes;
//! every key argument is `impl AsRef<[u8]>`, so a `&str` or `String` key is its UTF-8
//! bytes. [`load`] and [`save`] store typed values through [`Codec`].
//!
//! State is available while a batch is processed, not in [`Processor::new`](crate::Processor::new)
//! (`init` has no partition). Natively, [`crate::testing`] provides it.
//!
//! # Encoding of typed values ([`Codec`])
//!
//! Numbers are fixed-size little-endian, so a value's bytes are easy to read elsewhere
//! (the host's tests decode `weir_state.value`):
//!
//! | type | bytes |
//! | --- | --- |
//! | `i64`, `u64`, `f64` | 8, little-endian (`f64` as its IEEE 754 bits) |
//! | `i32`, `u32`, `f32` | 4, little-endian |
//! | `u8`, `i8` | 1 |
//! | `bool` | 1: `0` or `1` |
//! | `String`, `Vec<u8>` on their own | the UTF-8 text or the bytes, as they are |
//! | `String`, `Vec<u8>` inside a tuple, array or option | a `u32` little-endian length, then the bytes |
//! | `(A, B)`, `(A, B, C)`, … (up to 6) and `[T; N]` | the elements' encodings, one after the other |
//! | `Option<T>` | `0`, or `1` then `T` |
//!
//! So `(i64, f64, i64)` is 24 bytes: the three numbers, little-endian, in order. Decoding
//! refuses bytes left over or missing ([`StateError::Undecodable`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// One stored entry: key and value.
pub use crate::bindings::weir::processor::state::Entry;

/// A state call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The host refused a write (a key, a value or the batch's writes over the bound the
    /// pipeline's config sets); nothing changed. The message is the host's, saying which.
    Refused(String),
    /// A stored value does not decode as the type asked for.
    Undecodable {
        /// The key.
        key: Vec<u8>,
        /// How many bytes are stored.
        len: usize,
        /// The type asked for ([`Codec::NAME`]).
        expected: &'static str,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Refused(message) => f.write_str(message),
            StateError::Undecodable { key, len, expected } => {
                write!(f, "state value under key ")?;
                match core::str::from_utf8(key) {
                    Ok(k) => write!(f, "{k:?}")?,
                    Err(_) => write!(f, "{key:?}")?,
                }
                write!(f, " ({len} bytes) does not decode as {expected}")
            }
        }
    }
}

/// The value stored under `key`, if any.
pub fn get(key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
    crate::host::state_get(key.as_ref())
}

/// Stores `value` under `key`, replacing what was there.
pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StateError> {
    crate::host::state_put(key.as_ref(), value.as_ref()).map_err(StateError::Refused)
}

/// Removes `key` (nothing happens if it is not stored).
pub fn delete(key: impl AsRef<[u8]>) -> Result<(), StateError> {
    crate::host::state_delete(key.as_ref()).map_err(StateError::Refused)
}

/// Up to `limit` entries whose keys start with `prefix`, in ascending byte order of key,
/// starting after the key `after` when given (to page through).
pub fn scan(prefix: impl AsRef<[u8]>, after: Option<&[u8]>, limit: u32) -> Vec<Entry> {
    crate::host::state_scan(prefix.as_ref(), after, limit)
}

/// Every entry whose key starts with `prefix`, in key order, fetched `page` entries per
/// host call until a call returns none (the host may return fewer than asked for before
/// the end).
pub fn scan_all(prefix: impl AsRef<[u8]>, page: u32) -> Vec<Entry> {
    let prefix = prefix.as_ref();
    let page = page.max(1);
    let mut out: Vec<Entry> = Vec::new();
    loop {
        let after = out.last().map(|e| e.key.as_slice());
        let batch = scan(prefix, after, page);
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// The value under `key`, decoded as `T` (see the [module docs](self) for the encoding).
pub fn load<T: Codec>(key: impl AsRef<[u8]>) -> Result<Option<T>, StateError> {
    let key = key.as_ref();
    match get(key) {
        None => Ok(None),
        Some(bytes) => match decode::<T>(&bytes) {
            Some(v) => Ok(Some(v)),
            None => Err(StateError::Undecodable {
                key: key.to_vec(),
                len: bytes.len(),
                expected: T::NAME,
            }),
        },
    }
}

/// Stores `value` under `key`, encoded (see the [module docs](self)).
pub fn save<T: Codec + ?Sized>(key: impl AsRef<[u8]>, value: &T) -> Result<(), StateError> {
    put(key, encode(value))
}

/// The bytes [`save`] stores for `value`.
pub fn encode<T: Codec + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    value.encode_whole(&mut out);
    out
}

/// The value [`load`] reads from `bytes`, if they decode as `T`.
pub fn decode<T: Codec>(bytes: &[u8]) -> Option<T> {
    T::decode_whole(bytes)
}

/// A value with a byte encoding for state: fixed-size little-endian numbers, composed by
/// tuples (see the [module docs](self)).
pub trait Codec {
    /// The type's name, for [`StateError::Undecodable`].
    const NAME: &'static str;

    /// Appends the encoding of `self` as part of a larger value.
    fn encode(&self, out: &mut Vec<u8>);

    /// Reads a value from the front of `input`, advancing it.
    fn decode(input: &mut &[u8]) -> Option<Self>
    where
        Self: Sized;

    /// Appends the encoding of `self` as a whole value (the same as [`Codec::encode`]
    /// except for text and bytes, stored without a length).
    fn encode_whole(&self, out: &mut Vec<u8>) {
        self.encode(out);
    }

    /// Reads a whole value: `bytes` must hold exactly one.
    fn decode_whole(bytes: &[u8]) -> Option<Self>
    where
        Self: Sized,
    {
        let mut input = bytes;
        let v = Self::decode(&mut input)?;
        input.is_empty().then_some(v)
    }
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

macro_rules! fixed {
    ($($t:ty => $n:literal),* $(,)?) => {$(
        impl Codec for $t {
            const NAME: &'static str = stringify!($t);
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(input: &mut &[u8]) -> Option<Self> {
                let bytes = take(input, $n)?;
                Some(<$t>::from_le_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}

fixed!(i64 => 8, u64 => 8, f64 => 8, i32 => 4, u32 => 4, f32 => 4, u8 => 1, i8 => 1);

impl Codec for bool {
    const NAME: &'static str = "bool";
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        match take(input, 1)? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

fn encode_len(len: usize, out: &mut Vec<u8>) {
    let len = u32::try_from(len).expect("a state value part over 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
}

impl Codec for [u8] {
    const NAME: &'static str = "bytes";
    fn encode(&self, out: &mut Vec<u8>) {
        encode_len(self.len(), out);
        out.extend_from_slice(self);
    }
    fn encode_whole(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl Codec for str {
    const NAME: &'static str = "text";
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_bytes().encode(out);
    }
    fn encode_whole(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl Codec for Vec<u8> {
    const NAME: &'static str = "bytes";
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_slice().encode(out);
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        let len = u32::decode(input)? as usize;
        Some(take(input, len)?.to_vec())
    }
    fn encode_whole(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode_whole(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl Codec for String {
    const NAME: &'static str = "text";
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_str().encode(out);
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        String::from_utf8(Vec::<u8>::decode(input)?).ok()
    }
    fn encode_whole(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode_whole(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl<T: Codec> Codec for Option<T> {
    const NAME: &'static str = "an option";
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        match take(input, 1)? {
            [0] => Some(None),
            [1] => Some(Some(T::decode(input)?)),
            _ => None,
        }
    }
}

impl<T: Codec, const N: usize> Codec for [T; N] {
    const NAME: &'static str = "an array";
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            v.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        let mut items: Vec<T> = Vec::with_capacity(N);
        for _ in 0..N {
            items.push(T::decode(input)?);
        }
        items.try_into().ok()
    }
}

macro_rules! tuple {
    ($($name:ident)+) => {
        impl<$($name: Codec),+> Codec for ($($name,)+) {
            const NAME: &'static str = "a tuple";
            #[allow(non_snake_case)]
            fn encode(&self, out: &mut Vec<u8>) {
                let ($($name,)+) = self;
                $($name.encode(out);)+
            }
            fn decode(input: &mut &[u8]) -> Option<Self> {
                Some(($($name::decode(input)?,)+))
            }
        }
    };
}

tuple!(A);
tuple!(A B);
tuple!(A B C);
tuple!(A B C D);
tuple!(A B C D E);
tuple!(A B C D E F);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn numbers_are_little_endian_and_fixed_size() {
        assert_eq!(encode(&1i64), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&-2i32), [0xfe, 0xff, 0xff, 0xff]);
        assert_eq!(encode(&1.5f64), 1.5f64.to_le_bytes());
        assert_eq!(encode(&true), [1]);
        let stats = (3i64, 187.25f64, 1200i64);
        let bytes = encode(&stats);
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[..8], 3i64.to_le_bytes());
        assert_eq!(&bytes[8..16], 187.25f64.to_le_bytes());
        assert_eq!(&bytes[16..], 1200i64.to_le_bytes());
        assert_eq!(decode::<(i64, f64, i64)>(&bytes), Some(stats));
        assert_eq!(decode::<(i64, f64)>(&bytes), None, "bytes left over");
        assert_eq!(decode::<i64>(&bytes[..7]), None, "bytes missing");
        assert_eq!(decode::<bool>(&[2]), None);
    }

    #[test]
    fn text_and_bytes() {
        assert_eq!(encode("AAPL"), b"AAPL");
        assert_eq!(encode(&"AAPL".to_string()), b"AAPL");
        assert_eq!(decode::<String>(b"AAPL").as_deref(), Some("AAPL"));
        assert_eq!(decode::<String>(&[0xff]), None);
        assert_eq!(decode::<Vec<u8>>(&[1, 2]), Some(vec![1, 2]));
        let v = (String::from("ab"), vec![9u8], 7u32);
        let bytes = encode(&v);
        assert_eq!(bytes, [2, 0, 0, 0, b'a', b'b', 1, 0, 0, 0, 9, 7, 0, 0, 0]);
        assert_eq!(decode(&bytes), Some(v));
        let o: Option<i64> = Some(5);
        assert_eq!(encode(&o), [1, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode::<Option<i64>>(&[0]), Some(None));
        assert_eq!(decode::<[u32; 2]>(&encode(&[1u32, 2])), Some([1, 2]));
    }

    #[test]
    fn errors_say_what() {
        let e = StateError::Undecodable {
            key: b"AAPL".to_vec(),
            len: 3,
            expected: <(i64, f64, i64)>::NAME,
        };
        assert_eq!(
            e.to_string(),
            "state value under key \"AAPL\" (3 bytes) does not decode as a tuple"
        );
        assert_eq!(StateError::Refused("too big".into()).to_string(), "too big");
    }
}
