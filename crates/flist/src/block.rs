//! Blocks: the unit of file content in an FL flist.
//!
//! A file is cut into [`BLOCK_SIZE`] pieces (the last one shorter). Each piece is encoded the
//! way rfs does it, so stores and flists are shared with the original tooling:
//!
//! ```text
//! key = BLAKE2b-256(plain)
//! ct  = AES-256-GCM(key, nonce = key[0..12], snappy_raw(plain))
//! id  = BLAKE2b-256(ct)            the store keeps ct under id; the flist keeps (id, key)
//! ```
//!
//! Unlike rfs, [`decode`] checks both hashes: a block whose cipher text does not hash to its id,
//! or whose plain text does not hash to its key, is rejected.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};

/// Size of every block but the last of a file (512 KiB), as rfs and its FUSE mount assume.
pub const BLOCK_SIZE: usize = 512 * 1024;

/// Largest cipher text a store may hand back for one block: the worst snappy expansion of a
/// full block plus the GCM tag. Anything larger is refused before it is read whole.
pub const MAX_ENCODED_SIZE: usize = 32 + BLOCK_SIZE + BLOCK_SIZE / 6 + 16;

fn blake2b_256(data: &[u8]) -> [u8; 32] {
    let hash = blake2b_simd::Params::new().hash_length(32).hash(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_bytes());
    out
}

macro_rules! hash32 {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The 32-byte ", $what, " of a block.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// From exactly 32 bytes.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| format!("{s:?} is not 64 hex characters"))?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hash32!(BlockId, "store id (BLAKE2b-256 of the cipher text)");
hash32!(
    BlockKey,
    "key (BLAKE2b-256 of the plain text, also the AES key)"
);

/// Where a block lives and how to open it: one row of the flist's `block` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct BlockRef {
    /// Store id.
    pub id: BlockId,
    /// Decryption key and plain-text hash.
    pub key: BlockKey,
}

/// A block ready for a store.
#[derive(Debug, Clone)]
pub struct EncodedBlock {
    /// Its id and key.
    pub block: BlockRef,
    /// The cipher text, to be stored under `block.id`.
    pub data: Vec<u8>,
}

/// Why a block read back from a store was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block {id}: cipher text does not hash to the block id")]
    IdMismatch { id: BlockId },
    #[error("block {id}: decryption with the flist key failed")]
    Decrypt { id: BlockId },
    #[error("block {id}: snappy data is corrupt")]
    Decompress { id: BlockId },
    #[error("block {id}: plain text is larger than {BLOCK_SIZE} bytes")]
    TooLarge { id: BlockId },
    #[error("block {id}: plain text does not hash to the block key")]
    KeyMismatch { id: BlockId },
}

/// Encodes one piece of plain text (at most [`BLOCK_SIZE`] bytes).
pub fn encode(plain: &[u8]) -> EncodedBlock {
    debug_assert!(plain.len() <= BLOCK_SIZE);
    let key = blake2b_256(plain);
    let compressed = snap::raw::Encoder::new()
        .compress_vec(plain)
        .expect("snappy compresses any input of at most 4 GiB");
    let cipher = Aes256Gcm::new_from_slice(&key).expect("32-byte key");
    let data = cipher
        .encrypt(Nonce::from_slice(&key[..12]), compressed.as_slice())
        .expect("AES-GCM encrypts any input of this size");
    let id = blake2b_256(&data);
    EncodedBlock {
        block: BlockRef {
            id: BlockId(id),
            key: BlockKey(key),
        },
        data,
    }
}

/// Checks that `data` hashes to the block's id.
pub fn verify_id(block: &BlockRef, data: &[u8]) -> Result<(), BlockError> {
    if blake2b_256(data) != block.id.0 {
        return Err(BlockError::IdMismatch { id: block.id });
    }
    Ok(())
}

/// Decodes and verifies a block fetched from a store: the cipher text must hash to the id,
/// decrypt with the key, decompress to at most [`BLOCK_SIZE`] bytes, and hash to the key.
pub fn decode(block: &BlockRef, data: &[u8]) -> Result<Vec<u8>, BlockError> {
    let id = block.id;
    verify_id(block, data)?;
    let cipher = Aes256Gcm::new_from_slice(&block.key.0).expect("32-byte key");
    let compressed = cipher
        .decrypt(Nonce::from_slice(&block.key.0[..12]), data)
        .map_err(|_| BlockError::Decrypt { id })?;
    let len = snap::raw::decompress_len(&compressed).map_err(|_| BlockError::Decompress { id })?;
    if len > BLOCK_SIZE {
        return Err(BlockError::TooLarge { id });
    }
    let plain = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .map_err(|_| BlockError::Decompress { id })?;
    if blake2b_256(&plain) != block.key.0 {
        return Err(BlockError::KeyMismatch { id });
    }
    Ok(plain)
}

/// The BLAKE2b-256 of some bytes (the hash behind block keys and ids).
pub fn hash(data: &[u8]) -> [u8; 32] {
    blake2b_256(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_determinism() {
        let plain: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        let a = encode(&plain);
        let b = encode(&plain);
        assert_eq!(a.block, b.block, "convergent encryption is deterministic");
        assert_eq!(a.data, b.data);
        assert_eq!(decode(&a.block, &a.data).unwrap(), plain);
        assert_eq!(a.block.key.0, hash(&plain));
        assert_eq!(a.block.id.0, hash(&a.data));
    }

    #[test]
    fn empty_block() {
        let e = encode(b"");
        assert_eq!(decode(&e.block, &e.data).unwrap(), b"");
    }

    #[test]
    fn known_vector() {
        // BLAKE2b-256 of the empty string, a published test vector.
        assert_eq!(
            hex::encode(hash(b"")),
            "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"
        );
    }

    #[test]
    fn tampering_is_detected() {
        let e = encode(b"hello world, this is a block");
        let mut bad = e.data.clone();
        bad[3] ^= 1;
        assert_eq!(
            decode(&e.block, &bad),
            Err(BlockError::IdMismatch { id: e.block.id })
        );

        // A forged block: valid cipher text under its own id, but the flist's key is another.
        let other = encode(b"something else");
        let forged = BlockRef {
            id: other.block.id,
            key: e.block.key,
        };
        assert_eq!(
            decode(&forged, &other.data),
            Err(BlockError::Decrypt { id: other.block.id })
        );

        // Cipher text that decrypts (the attacker knows the key) but holds other plain text.
        let key = e.block.key;
        let compressed = snap::raw::Encoder::new().compress_vec(b"evil").unwrap();
        let ct = Aes256Gcm::new_from_slice(&key.0)
            .unwrap()
            .encrypt(Nonce::from_slice(&key.0[..12]), compressed.as_slice())
            .unwrap();
        let evil = BlockRef {
            id: BlockId(hash(&ct)),
            key,
        };
        assert_eq!(
            decode(&evil, &ct),
            Err(BlockError::KeyMismatch { id: evil.id })
        );
    }

    #[test]
    fn hex_parse() {
        let id: BlockId = "00".repeat(32).parse().unwrap();
        assert_eq!(id.0, [0; 32]);
        assert!("zz".parse::<BlockId>().is_err());
    }
}
