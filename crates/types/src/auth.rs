//! The signed-request scheme of the grid's HTTP API.
//!
//! Every request that changes state carries one header:
//!
//! ```text
//! Authorization: ZOS twin=<id>,ts=<unix seconds>,nonce=<16 hex>,sig=<hex>
//! Authorization: ZOS key=<hex public key>,ts=<unix seconds>,nonce=<16 hex>,sig=<hex>   (only to create a twin)
//! ```
//!
//! The signature covers `METHOD \n PATH?QUERY \n TIMESTAMP \n NONCE \n hex(sha256(body))`
//! (without the nonce line when a request carries none, as older clients sign), so it binds the
//! request's target, its time and its exact body. The nonce, random per request, makes the same
//! request sent twice in one second two requests rather than a replay. The receiver accepts timestamps within
//! [`MAX_SKEW_SECS`] of its own clock and remembers signatures it has seen inside that window, so
//! a captured request cannot be sent again.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::TwinId;
use crate::identity::{Identity, PublicKey, Signature};

/// The HTTP header that carries the signature.
pub const HEADER: &str = "authorization";
/// How far (seconds) a request's timestamp may be from the receiver's clock, both ways.
pub const MAX_SKEW_SECS: i64 = 60;

/// Who signed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signer {
    /// A registered twin, by id.
    Twin(TwinId),
    /// A key that is not registered yet: only valid to create the twin of that key.
    Key(PublicKey),
}

/// Problems with a request's signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header: sign the request with a twin key")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
    #[error(
        "request timestamp {ts} is more than {MAX_SKEW_SECS} s away from the server clock {now}: check the clock"
    )]
    Stale { ts: i64, now: i64 },
    #[error("signature does not match the request and the signer's key")]
    BadSignature,
    #[error("this request was already received: a signed request is accepted once")]
    Replay,
}

/// The bytes a request signature covers.
pub fn signing_message(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: Option<u64>,
    body: &[u8],
) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    signing_message_for_digest(method, path_and_query, timestamp, nonce, &digest)
}

/// [`signing_message`] of a body known by its SHA-256 (lowercase hex) alone: a receiver that
/// knows the digest a body must have (a content-addressed upload) checks the signature before
/// reading the body, then the body against the digest.
pub fn signing_message_for_digest(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: Option<u64>,
    digest: &str,
) -> Vec<u8> {
    let nonce = nonce.map(|n| format!("{n:016x}\n")).unwrap_or_default();
    format!(
        "{}\n{}\n{}\n{}{}",
        method.to_ascii_uppercase(),
        path_and_query,
        timestamp,
        nonce,
        digest
    )
    .into_bytes()
}

/// A parsed `Authorization: ZOS …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    pub signer: Signer,
    pub timestamp: i64,
    /// Random per request (absent from older clients' headers).
    pub nonce: Option<u64>,
    pub signature: Signature,
}

impl RequestAuth {
    /// Signs a request, with a fresh random nonce.
    pub fn sign(
        identity: &Identity,
        signer: Signer,
        method: &str,
        path_and_query: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Self {
        let mut b = [0u8; 8];
        // The OS's generator only fails on systems zos does not run on; a nonce of zero is then
        // still a valid (if repeatable) request.
        let _ = getrandom::getrandom(&mut b);
        let nonce = Some(u64::from_le_bytes(b));
        let msg = signing_message(method, path_and_query, timestamp, nonce, body);
        Self {
            signer,
            timestamp,
            nonce,
            signature: identity.sign(&msg),
        }
    }

    /// Parses the header value.
    pub fn parse(value: &str) -> Result<Self, AuthError> {
        let bad = |m: &str| AuthError::Malformed(m.to_string());
        let rest = value
            .strip_prefix("ZOS ")
            .ok_or_else(|| bad("expected the ZOS scheme"))?;
        let (mut signer, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for part in rest.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            let slot_taken = match k {
                "twin" => signer
                    .replace(Signer::Twin(
                        v.parse().map_err(|_| bad("twin is not a number"))?,
                    ))
                    .is_some(),
                "key" => signer
                    .replace(Signer::Key(
                        v.parse().map_err(|_| bad("key is not a public key"))?,
                    ))
                    .is_some(),
                "ts" => ts
                    .replace(v.parse::<i64>().map_err(|_| bad("ts is not a number"))?)
                    .is_some(),
                "nonce" if v.len() == 16 => nonce
                    .replace(
                        u64::from_str_radix(v, 16)
                            .map_err(|_| bad("nonce is not 16 hex digits"))?,
                    )
                    .is_some(),
                "nonce" => return Err(bad("nonce is not 16 hex digits")),
                "sig" => sig
                    .replace(
                        v.parse::<Signature>()
                            .map_err(|_| bad("sig is not a signature"))?,
                    )
                    .is_some(),
                other => return Err(AuthError::Malformed(format!("unknown field {other:?}"))),
            };
            if slot_taken {
                return Err(AuthError::Malformed(format!("field {k:?} given twice")));
            }
        }
        Ok(Self {
            signer: signer.ok_or_else(|| bad("twin or key is required"))?,
            timestamp: ts.ok_or_else(|| bad("ts is required"))?,
            nonce,
            signature: sig.ok_or_else(|| bad("sig is required"))?,
        })
    }

    /// Checks the time window and the signature against the signer's key.
    pub fn verify(
        &self,
        key: &PublicKey,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthError> {
        if self.timestamp.abs_diff(now) > MAX_SKEW_SECS.unsigned_abs() {
            return Err(AuthError::Stale {
                ts: self.timestamp,
                now,
            });
        }
        let msg = signing_message(method, path_and_query, self.timestamp, self.nonce, body);
        key.verify(&msg, &self.signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

impl RequestAuth {
    /// [`RequestAuth::verify`] for a body known by its SHA-256 (lowercase hex): the body must
    /// then be checked against `digest` by the caller.
    pub fn verify_digest(
        &self,
        key: &PublicKey,
        method: &str,
        path_and_query: &str,
        digest: &str,
        now: i64,
    ) -> Result<(), AuthError> {
        if self.timestamp.abs_diff(now) > MAX_SKEW_SECS.unsigned_abs() {
            return Err(AuthError::Stale {
                ts: self.timestamp,
                now,
            });
        }
        let msg =
            signing_message_for_digest(method, path_and_query, self.timestamp, self.nonce, digest);
        key.verify(&msg, &self.signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

impl fmt::Display for RequestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signer {
            Signer::Twin(id) => write!(f, "ZOS twin={id}")?,
            Signer::Key(k) => write!(f, "ZOS key={k}")?,
        }
        write!(f, ",ts={}", self.timestamp)?;
        if let Some(n) = self.nonce {
            write!(f, ",nonce={n:016x}")?;
        }
        write!(f, ",sig={}", self.signature)
    }
}

/// Seconds since the Unix epoch, by the system clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(body: &[u8]) -> (Identity, RequestAuth) {
        let id = Identity::from_seed([7; 32]);
        let auth = RequestAuth::sign(
            &id,
            Signer::Twin(3),
            "post",
            "/api/v1/farms?x=1",
            1000,
            body,
        );
        (id, auth)
    }

    #[test]
    fn header_round_trip_and_verify() {
        let (id, auth) = signed(b"{}");
        let parsed = RequestAuth::parse(&auth.to_string()).unwrap();
        assert_eq!(parsed, auth);
        parsed
            .verify(&id.public_key(), "POST", "/api/v1/farms?x=1", b"{}", 1030)
            .unwrap();
    }

    #[test]
    fn the_same_request_signed_twice_in_one_second_is_two_requests() {
        let (id, a) = signed(b"{}");
        let (_, b) = signed(b"{}");
        assert_eq!(a.timestamp, b.timestamp);
        assert_ne!(
            a.signature, b.signature,
            "a replay cache would refuse the second"
        );
        for auth in [&a, &b] {
            let parsed = RequestAuth::parse(&auth.to_string()).unwrap();
            parsed
                .verify(&id.public_key(), "POST", "/api/v1/farms?x=1", b"{}", 1000)
                .unwrap();
        }
        // The nonce is signed: another one breaks the signature.
        let mut other = a.clone();
        other.nonce = a.nonce.map(|n| n ^ 1);
        assert_eq!(
            other.verify(&id.public_key(), "POST", "/api/v1/farms?x=1", b"{}", 1000),
            Err(AuthError::BadSignature)
        );
        // A header without a nonce (an older client) is signed without one.
        let bare = RequestAuth {
            nonce: None,
            signature: id.sign(&signing_message("POST", "/p", 1000, None, b"")),
            ..a.clone()
        };
        let parsed = RequestAuth::parse(&bare.to_string()).unwrap();
        assert_eq!(parsed.nonce, None);
        parsed
            .verify(&id.public_key(), "POST", "/p", b"", 1000)
            .unwrap();
        for bad in ["12", "zzzzzzzzzzzzzzzz", "00000000000000001"] {
            let h = format!("ZOS twin=3,ts=1000,nonce={bad},sig={}", a.signature);
            assert!(RequestAuth::parse(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let (id, auth) = signed(b"{}");
        let pk = id.public_key();
        let bad = |r: Result<(), AuthError>| assert_eq!(r, Err(AuthError::BadSignature));
        bad(auth.verify(&pk, "PUT", "/api/v1/farms?x=1", b"{}", 1000));
        bad(auth.verify(&pk, "POST", "/api/v1/farms?x=2", b"{}", 1000));
        bad(auth.verify(&pk, "POST", "/api/v1/farms?x=1", b"{ }", 1000));
        let mut later = auth.clone();
        later.timestamp += 1;
        bad(later.verify(&pk, "POST", "/api/v1/farms?x=1", b"{}", 1000));
        let other = Identity::from_seed([8; 32]).public_key();
        bad(auth.verify(&other, "POST", "/api/v1/farms?x=1", b"{}", 1000));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let (id, auth) = signed(b"");
        let pk = id.public_key();
        assert!(matches!(
            auth.verify(&pk, "POST", "/api/v1/farms?x=1", b"", 1061),
            Err(AuthError::Stale { .. })
        ));
        assert!(matches!(
            auth.verify(&pk, "POST", "/api/v1/farms?x=1", b"", 939),
            Err(AuthError::Stale { .. })
        ));
        for extreme in [i64::MIN, i64::MAX] {
            let mut odd = auth.clone();
            odd.timestamp = extreme;
            assert!(matches!(
                odd.verify(&pk, "POST", "/api/v1/farms?x=1", b"", 1000),
                Err(AuthError::Stale { .. })
            ));
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for h in [
            "",
            "Bearer abc",
            "ZOS twin=1,ts=2",
            "ZOS twin=x,ts=2,sig=00",
            "ZOS twin=1,twin=2,ts=2,sig=00",
            "ZOS twin=1,ts=2,sig=zz",
            "ZOS key=1234,ts=2,sig=00",
            "ZOS twin=1,ts=2,sig=00,extra=1",
        ] {
            assert!(
                matches!(RequestAuth::parse(h), Err(AuthError::Malformed(_))),
                "{h}"
            );
        }
    }
}
