//! Envelopes: the signed, end-to-end encrypted messages the relay carries between twins.
//!
//! The relay routes an envelope by its `destination` and cannot read its body: the body is
//! encrypted with XChaCha20-Poly1305 under a key derived (HKDF-SHA256) from the x25519
//! agreement of the sender's and the receiver's twin keys, with a fresh random 24-byte nonce,
//! and the header as associated data. The sender signs the header and the hash of the
//! encrypted body with its ed25519 key, so nobody can alter or forge an envelope; receivers
//! refuse expired envelopes and remember ids until they expire, so none is accepted twice.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::TwinId;
use crate::identity::{Identity, PublicKey, Signature};
use crate::node_api::{ErrorKind, NodeError};

/// Largest envelope (JSON bytes) the relay and the peers accept.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// Longest time-to-live a sender may give an envelope.
pub const MAX_TTL_SECS: i64 = 600;
const INFO: &[u8] = b"zos-envelope-v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope expired at {expiration} (now {now})")]
    Expired { expiration: i64, now: i64 },
    #[error("envelope lives longer than {MAX_TTL_SECS} s")]
    TooLong,
    #[error("envelope signature does not match its sender's key")]
    BadSignature,
    #[error("envelope body cannot be decrypted with this twin's key")]
    Decrypt,
    #[error("envelope is malformed: {0}")]
    Malformed(String),
    #[error("envelope of {0} bytes is larger than {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("no randomness from the operating system")]
    Random,
}

/// A message between two twins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// 32 hex digits, random.
    pub id: String,
    pub source: TwinId,
    pub destination: TwinId,
    /// What is asked, for example `zos.deployment.get`; a reply repeats the request's command.
    pub command: String,
    /// For a reply: the id of the request it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Unix seconds after which the envelope is refused.
    pub expiration: i64,
    /// base64(nonce ‖ ciphertext).
    pub body: String,
    pub signature: Signature,
}

/// The plain body of a reply: `{"ok": <answer>}`, or `{"error": "<message>", "kind":
/// "<kind>"}` for a refusal (see [`crate::node_api::NodeError`]). A refusal without `kind`, as
/// nodes sent before the kinds, reads as [`ErrorKind::Internal`]; a kind this version does not
/// know reads as `Internal` too. Any other key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(serde_json::Value),
    Error(NodeError),
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Reply::Ok(v) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("ok", v)?;
                m.end()
            }
            Reply::Error(e) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("error", &e.message)?;
                m.serialize_entry("kind", e.kind.as_str())?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        if let Some(k) = m
            .keys()
            .find(|k| !["ok", "error", "kind"].contains(&k.as_str()))
        {
            return Err(D::Error::custom(format!("unknown field `{k}` in a reply")));
        }
        match (m.remove("ok"), m.remove("error"), m.remove("kind")) {
            (Some(v), None, None) => Ok(Reply::Ok(v)),
            (None, Some(serde_json::Value::String(message)), kind) => {
                let kind = match kind {
                    None => ErrorKind::Internal,
                    Some(serde_json::Value::String(k)) => ErrorKind::from_wire(&k),
                    Some(_) => return Err(D::Error::custom("a reply's `kind` must be a string")),
                };
                Ok(Reply::Error(NodeError { kind, message }))
            }
            _ => Err(D::Error::custom(
                "a reply holds either `ok`, or `error` (a string) and an optional `kind`",
            )),
        }
    }
}

fn header(
    id: &str,
    source: TwinId,
    destination: TwinId,
    command: &str,
    reply_to: Option<&str>,
    expiration: i64,
) -> Vec<u8> {
    format!(
        "zos-envelope-v1\n{id}\n{source}\n{destination}\n{command}\n{}\n{expiration}",
        reply_to.unwrap_or("")
    )
    .into_bytes()
}

fn cipher(me: &Identity, peer: &PublicKey) -> Result<XChaCha20Poly1305, EnvelopeError> {
    let their = peer
        .x25519()
        .map_err(|_| EnvelopeError::Malformed("peer key is not a valid ed25519 key".into()))?;
    let shared = me.x25519_secret().diffie_hellman(&their);
    let mut key = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(None, shared.as_bytes())
        .expand(INFO, &mut key)
        .expect("32 bytes is a valid HKDF output length");
    Ok(XChaCha20Poly1305::new((&key).into()))
}

/// A fresh random envelope id.
pub fn new_id() -> Result<String, EnvelopeError> {
    let mut raw = [0u8; 16];
    getrandom::getrandom(&mut raw).map_err(|_| EnvelopeError::Random)?;
    Ok(hex::encode(raw))
}

/// What to seal.
#[derive(Debug, Clone)]
pub struct Seal<'a> {
    pub source: TwinId,
    pub destination: TwinId,
    pub destination_key: &'a PublicKey,
    pub command: &'a str,
    pub reply_to: Option<&'a str>,
    pub expiration: i64,
}

impl Envelope {
    /// Encrypts `plain` to the destination and signs the envelope.
    pub fn seal(from: &Identity, s: &Seal<'_>, plain: &[u8]) -> Result<Self, EnvelopeError> {
        let id = new_id()?;
        let head = header(
            &id,
            s.source,
            s.destination,
            s.command,
            s.reply_to,
            s.expiration,
        );
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).map_err(|_| EnvelopeError::Random)?;
        let sealed = cipher(from, s.destination_key)?
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &head,
                },
            )
            .map_err(|_| EnvelopeError::Malformed("encryption failed".into()))?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        let body = base64::engine::general_purpose::STANDARD.encode(&raw);
        let signature = from.sign(&signed_bytes(&head, &body));
        Ok(Self {
            id,
            source: s.source,
            destination: s.destination,
            command: s.command.to_string(),
            reply_to: s.reply_to.map(str::to_string),
            expiration: s.expiration,
            body,
            signature,
        })
    }

    fn head(&self) -> Vec<u8> {
        header(
            &self.id,
            self.source,
            self.destination,
            &self.command,
            self.reply_to.as_deref(),
            self.expiration,
        )
    }

    /// Checks the shape, the expiry and the sender's signature. The relay does this too.
    pub fn verify(&self, sender_key: &PublicKey, now: i64) -> Result<(), EnvelopeError> {
        if self.id.len() != 32 || !self.id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(EnvelopeError::Malformed("id must be 32 hex digits".into()));
        }
        if self.command.is_empty()
            || self.command.len() > 128
            || self.command.chars().any(char::is_control)
        {
            return Err(EnvelopeError::Malformed(
                "command must be 1 to 128 printable characters".into(),
            ));
        }
        if now > self.expiration {
            return Err(EnvelopeError::Expired {
                expiration: self.expiration,
                now,
            });
        }
        if self.expiration - now > MAX_TTL_SECS {
            return Err(EnvelopeError::TooLong);
        }
        sender_key
            .verify(&signed_bytes(&self.head(), &self.body), &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// Decrypts the body; only the destination twin can.
    pub fn open(&self, me: &Identity, sender_key: &PublicKey) -> Result<Vec<u8>, EnvelopeError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .map_err(|_| EnvelopeError::Malformed("body is not base64".into()))?;
        if raw.len() < 24 + 16 {
            return Err(EnvelopeError::Malformed("body is too short".into()));
        }
        let (nonce, sealed) = raw.split_at(24);
        cipher(me, sender_key)?
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &self.head(),
                },
            )
            .map_err(|_| EnvelopeError::Decrypt)
    }

    /// Parses an envelope from JSON, refusing oversize input first.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }
}

fn signed_bytes(head: &[u8], body: &str) -> Vec<u8> {
    let mut m = head.to_vec();
    m.push(b'\n');
    m.extend_from_slice(hex::encode(Sha256::digest(body.as_bytes())).as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_api::NodeCommand;

    fn pair() -> (Identity, Identity) {
        (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]))
    }

    fn sealed(a: &Identity, b: &Identity) -> Envelope {
        let bk = b.public_key();
        let s = Seal {
            source: 1,
            destination: 2,
            destination_key: &bk,
            command: crate::node_api::Get::NAME,
            reply_to: None,
            expiration: 1100,
        };
        Envelope::seal(a, &s, br#"{"contract_id":5}"#).unwrap()
    }

    #[test]
    fn only_the_destination_reads_and_the_sender_is_proven() {
        let (a, b) = pair();
        let e = sealed(&a, &b);
        e.verify(&a.public_key(), 1000).unwrap();
        assert_eq!(
            e.open(&b, &a.public_key()).unwrap(),
            br#"{"contract_id":5}"#
        );
        let eve = Identity::from_seed([3; 32]);
        assert_eq!(e.open(&eve, &a.public_key()), Err(EnvelopeError::Decrypt));
        assert_eq!(
            e.verify(&eve.public_key(), 1000),
            Err(EnvelopeError::BadSignature)
        );
        assert!(!e.body.contains("contract_id"));
    }

    #[test]
    fn tampering_is_detected() {
        let (a, b) = pair();
        let e = sealed(&a, &b);
        let mut t = e.clone();
        t.command = crate::node_api::Deploy::NAME.into();
        assert_eq!(
            t.verify(&a.public_key(), 1000),
            Err(EnvelopeError::BadSignature)
        );
        assert!(t.open(&b, &a.public_key()).is_err());
        let mut t = e.clone();
        t.destination = 9;
        assert_eq!(
            t.verify(&a.public_key(), 1000),
            Err(EnvelopeError::BadSignature)
        );
        let mut t = e.clone();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&t.body)
            .unwrap();
        raw[30] ^= 1;
        t.body = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            t.verify(&a.public_key(), 1000),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(t.open(&b, &a.public_key()), Err(EnvelopeError::Decrypt));
    }

    #[test]
    fn expiry_and_limits() {
        let (a, b) = pair();
        let e = sealed(&a, &b);
        assert!(matches!(
            e.verify(&a.public_key(), 1101),
            Err(EnvelopeError::Expired { .. })
        ));
        assert_eq!(e.verify(&a.public_key(), 100), Err(EnvelopeError::TooLong));
        assert!(matches!(
            Envelope::from_json(&vec![b' '; MAX_ENVELOPE_BYTES + 1]),
            Err(EnvelopeError::TooLarge(_))
        ));
        assert!(matches!(
            Envelope::from_json(b"{}"),
            Err(EnvelopeError::Malformed(_))
        ));
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(Envelope::from_json(&json).unwrap(), e);
    }
}
