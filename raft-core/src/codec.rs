//! The one bincode decoder every stored and peer-sent value goes through.
//!
//! It reads the format `bincode::serialize` writes (fixed-width integers, little endian) but
//! refuses bytes left over after the value. A value of another shape (an entry or a peer
//! message from a build with a different format) then fails to decode, rather than decoding
//! as a prefix that happens to parse.

use bincode::Options;
use serde::de::DeserializeOwned;

/// Decodes one value that must take up all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> bincode::Result<T> {
    bincode::DefaultOptions::new().with_fixint_encoding().reject_trailing_bytes().deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_bincode_serialize_writes_and_refuses_leftovers() {
        let value = (7u64, "seven".to_string(), vec![1u32, 2, 3]);
        let mut bytes = bincode::serialize(&value).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u32>)>(&bytes).unwrap(), value);
        bytes.push(0);
        assert!(decode::<(u64, String, Vec<u32>)>(&bytes).is_err());
    }
}
