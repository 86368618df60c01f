//! HTTP-01 challenges being answered: the CA fetches `/.well-known/acme-challenge/TOKEN` on
//! port 80 while an order of [`crate::acme`] is pending.

use std::collections::HashMap;
use std::sync::RwLock;

/// The tokens of pending HTTP-01 challenges and their key authorizations.
#[derive(Debug, Default)]
pub struct Challenges(RwLock<HashMap<String, String>>);

/// The path prefix of HTTP-01 challenges.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

impl Challenges {
    pub fn get(&self, token: &str) -> Option<String> {
        self.0.read().unwrap().get(token).cloned()
    }

    pub(crate) fn put(&self, token: &str, key_authorization: &str) {
        self.0
            .write()
            .unwrap()
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub(crate) fn remove(&self, token: &str) {
        self.0.write().unwrap().remove(token);
    }
}
