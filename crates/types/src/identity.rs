//! Ed25519 identities: every twin (user, farmer, node) is one.
//!
//! An identity is a 32-byte seed. People back it up as a 24-word BIP-39 mnemonic whose entropy is
//! the seed itself, so the words and the seed convert both ways without loss. The x25519 key used
//! to encrypt messages to a twin is derived from the same seed, so a twin publishes one key.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Errors about keys, seeds and signatures.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("a seed is 32 bytes, got {0}")]
    SeedLength(usize),
    #[error("invalid mnemonic")]
    Mnemonic(#[source] bip39::Error),
    #[error("a mnemonic must hold 32 bytes of entropy (24 words), got {0} bytes")]
    MnemonicLength(usize),
    #[error("invalid hex")]
    Hex(#[source] hex::FromHexError),
    #[error("a public key is 32 bytes, got {0}")]
    KeyLength(usize),
    #[error("a signature is 64 bytes, got {0}")]
    SignatureLength(usize),
    #[error("not a valid ed25519 public key")]
    InvalidKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("no randomness from the operating system")]
    Random(#[source] getrandom::Error),
    #[error("key file is not valid")]
    KeyFile(#[source] serde_json::Error),
    #[error("key file version {0} is not supported (this build reads version {KEY_FILE_VERSION})")]
    KeyFileVersion(u32),
}

/// A twin's key pair.
pub struct Identity {
    seed: Zeroizing<[u8; 32]>,
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self::from_seed(*self.seed)
    }
}

impl Identity {
    /// A new identity from the operating system's random source.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(IdentityError::Random)?;
        Ok(Self::from_seed(*seed))
    }

    /// The identity of a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        Self {
            seed: Zeroizing::new(seed),
            key,
        }
    }

    /// The identity of a seed given as a byte slice.
    pub fn from_seed_slice(seed: &[u8]) -> Result<Self, IdentityError> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| IdentityError::SeedLength(seed.len()))?;
        Ok(Self::from_seed(seed))
    }

    /// The identity backed up as a 24-word English BIP-39 mnemonic.
    pub fn from_mnemonic(words: &str) -> Result<Self, IdentityError> {
        let m = bip39::Mnemonic::parse_normalized(words.trim()).map_err(IdentityError::Mnemonic)?;
        let entropy = Zeroizing::new(m.to_entropy());
        Self::from_seed_slice(&entropy).map_err(|_| IdentityError::MnemonicLength(entropy.len()))
    }

    /// The 24-word mnemonic that restores this identity.
    pub fn mnemonic(&self) -> Zeroizing<String> {
        let m = bip39::Mnemonic::from_entropy(self.seed.as_ref())
            .expect("32 bytes is a valid BIP-39 entropy length");
        Zeroizing::new(m.to_string())
    }

    /// The raw seed. Handle with care.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.key.sign(message).to_bytes())
    }

    /// The x25519 secret used to decrypt messages sent to this twin.
    pub fn x25519_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.key.to_scalar_bytes())
    }

    /// The versioned key-file text that stores this identity.
    pub fn to_key_file(&self) -> Zeroizing<String> {
        let file = KeyFile {
            version: KEY_FILE_VERSION,
            seed: hex::encode(self.seed.as_ref()),
        };
        Zeroizing::new(serde_json::to_string(&file).expect("key file serializes") + "\n")
    }

    /// Reads an identity from key-file text written by [`Identity::to_key_file`].
    pub fn from_key_file(text: &str) -> Result<Self, IdentityError> {
        let file: KeyFile = serde_json::from_str(text).map_err(IdentityError::KeyFile)?;
        if file.version != KEY_FILE_VERSION {
            return Err(IdentityError::KeyFileVersion(file.version));
        }
        let seed = Zeroizing::new(hex::decode(&file.seed).map_err(IdentityError::Hex)?);
        Self::from_seed_slice(&seed)
    }
}

/// The key-file format version this build writes and reads.
pub const KEY_FILE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    seed: String,
}

/// An ed25519 public key, written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdentityError> {
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdentityError::KeyLength(bytes.len()))?;
        VerifyingKey::from_bytes(&raw).map_err(|_| IdentityError::InvalidKey)?;
        Ok(Self(raw))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `signature` over `message` (strict verification: no malleable signatures).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig)
            .map_err(|_| IdentityError::BadSignature)?;
        Ok(())
    }

    /// The x25519 public key that pairs with [`Identity::x25519_secret`].
    pub fn x25519(&self) -> Result<x25519_dalek::PublicKey, IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidKey)?;
        Ok(x25519_dalek::PublicKey::from(
            key.to_montgomery().to_bytes(),
        ))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_slice(&hex::decode(s).map_err(IdentityError::Hex)?)
    }
}

/// An ed25519 signature, written as 128 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = hex::decode(s).map_err(IdentityError::Hex)?;
        let bytes: [u8; 64] = raw
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::SignatureLength(raw.len()))?;
        Ok(Self(bytes))
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(PublicKey);
serde_as_string!(Signature);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnemonic_round_trip_restores_the_same_key() {
        let id = Identity::generate().unwrap();
        let words = id.mnemonic();
        assert_eq!(words.split_whitespace().count(), 24);
        let back = Identity::from_mnemonic(&words).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.seed(), id.seed());
    }

    #[test]
    fn short_mnemonic_is_refused() {
        let m = bip39::Mnemonic::from_entropy(&[7u8; 16])
            .unwrap()
            .to_string();
        assert!(matches!(
            Identity::from_mnemonic(&m),
            Err(IdentityError::MnemonicLength(16))
        ));
        assert!(Identity::from_mnemonic("abandon abandon zebra").is_err());
    }

    #[test]
    fn sign_and_verify() {
        let id = Identity::from_seed([1; 32]);
        let sig = id.sign(b"hello");
        id.public_key().verify(b"hello", &sig).unwrap();
        assert!(id.public_key().verify(b"hellO", &sig).is_err());
        let other = Identity::from_seed([2; 32]);
        assert!(other.public_key().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn x25519_keys_agree_from_both_sides() {
        let a = Identity::from_seed([3; 32]);
        let b = Identity::from_seed([4; 32]);
        let ab = a
            .x25519_secret()
            .diffie_hellman(&b.public_key().x25519().unwrap());
        let ba = b
            .x25519_secret()
            .diffie_hellman(&a.public_key().x25519().unwrap());
        assert_eq!(ab.as_bytes(), ba.as_bytes());
        assert_eq!(
            x25519_dalek::PublicKey::from(&a.x25519_secret()).as_bytes(),
            a.public_key().x25519().unwrap().as_bytes()
        );
    }

    #[test]
    fn key_file_round_trip_and_versions() {
        let id = Identity::from_seed([9; 32]);
        let text = id.to_key_file();
        assert_eq!(
            Identity::from_key_file(&text).unwrap().public_key(),
            id.public_key()
        );
        let future = text.replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            Identity::from_key_file(&future),
            Err(IdentityError::KeyFileVersion(2))
        ));
        assert!(Identity::from_key_file("{\"version\":1,\"seed\":\"00\"}").is_err());
        assert!(Identity::from_key_file("garbage").is_err());
    }

    #[test]
    fn keys_and_signatures_serialize_as_hex() {
        let id = Identity::from_seed([5; 32]);
        let pk = id.public_key();
        let json = serde_json::to_string(&pk).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), pk);
        assert!(serde_json::from_str::<PublicKey>("\"abcd\"").is_err());
        let sig = id.sign(b"x");
        let back: Signature = serde_json::from_str(&serde_json::to_string(&sig).unwrap()).unwrap();
        assert_eq!(back, sig);
    }
}
