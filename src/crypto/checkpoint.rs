//! Signed checkpoints of the audit chain: `{seq, hash, at, prev}` in one
//! canonical text, signed with an Ed25519 key kept outside the database.
//! `prev` is the previous checkpoint's own hash (SHA-256 of its canonical
//! text), so checkpoints form a chain of their own: one edited, removed or
//! reordered breaks it. This file knows nothing of where checkpoints are
//! kept; `evidence::checkpoint` writes and reads them.

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev` of the first checkpoint.
pub const FIRST_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a checkpoint says: the chain had `seq` events, the last with
/// `hash`, at `at`; `prev` names the checkpoint before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub seq: i64,
    pub hash: String,
    pub at: String,
    pub prev: String,
}

impl Statement {
    /// The bytes that are signed and hashed: the four fields in this order,
    /// as JSON with no spaces.
    pub fn canonical(&self) -> String {
        serde_json::json!({ "seq": self.seq, "hash": self.hash, "at": self.at, "prev": self.prev })
            .to_string()
    }

    /// The checkpoint's own hash, which the next one names as `prev`.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.canonical().as_bytes()))
    }
}

/// A checkpoint as it is written to its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub at: String,
    pub prev: String,
    /// The key that signed it (`key_id`).
    pub key_id: String,
    /// Ed25519 over `Statement::canonical`, base64.
    pub signature: String,
}

impl Checkpoint {
    pub fn statement(&self) -> Statement {
        Statement {
            seq: self.seq,
            hash: self.hash.clone(),
            at: self.at.clone(),
            prev: self.prev.clone(),
        }
    }
}

/// The checkpoint signing key. Never printed.
#[derive(Clone)]
pub struct CheckpointKey {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("key_id", &key_id(&self.key.verifying_key()))
            .finish_non_exhaustive()
    }
}

/// Reads the Ed25519 private key (PKCS#8 PEM) that signs checkpoints.
pub fn signing_key_from_pem(pem: &str) -> Result<CheckpointKey, String> {
    SigningKey::from_pkcs8_pem(pem)
        .map(|key| CheckpointKey { key })
        .map_err(|_| "not a PKCS#8 PEM Ed25519 private key".to_string())
}

/// Reads a public key: a PEM `PUBLIC KEY` (SPKI) or a private key's PEM.
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, String> {
    if let Ok(k) = VerifyingKey::from_public_key_pem(pem) {
        return Ok(k);
    }
    signing_key_from_pem(pem)
        .map(|k| k.key.verifying_key())
        .map_err(|_| "not a PEM Ed25519 public key (or private key)".to_string())
}

/// A key's id: the first 16 bytes of the SHA-256 of its raw public key, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

/// The public key as PEM (SPKI), for `TrustedKeys`-style distribution.
pub fn public_pem(key: &VerifyingKey) -> Result<String, String> {
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| format!("cannot encode the public key: {e}"))
}

impl CheckpointKey {
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, s: &Statement) -> Checkpoint {
        let signature = self.key.sign(s.canonical().as_bytes());
        Checkpoint {
            seq: s.seq,
            hash: s.hash.clone(),
            at: s.at.clone(),
            prev: s.prev.clone(),
            key_id: key_id(&self.public()),
            signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        }
    }
}

/// Whether `c` was signed by `key` over exactly its fields.
pub fn verify(key: &VerifyingKey, c: &Checkpoint) -> Result<(), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(c.signature.trim())
        .map_err(|_| "its signature is not base64".to_string())?;
    let signature =
        Signature::from_slice(&bytes).map_err(|_| "its signature is not Ed25519".to_string())?;
    key.verify(c.statement().canonical().as_bytes(), &signature)
        .map_err(|_| "its signature does not verify".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;

    fn key(seed: u8) -> CheckpointKey {
        let pem = SigningKey::from_bytes(&[seed; 32])
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map(|p| p.to_string())
            .unwrap_or_default();
        signing_key_from_pem(&pem).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn checkpoints_sign_verify_and_chain() {
        let k = key(3);
        let first = Statement {
            seq: 10,
            hash: "ab".repeat(32),
            at: "2026-12-02T10:00:00Z".into(),
            prev: FIRST_PREV.into(),
        };
        let c = k.sign(&first);
        assert_eq!(verify(&k.public(), &c), Ok(()));
        let mut edited = c.clone();
        edited.seq = 11;
        assert!(verify(&k.public(), &edited).is_err());
        assert!(verify(&key(4).public(), &c).is_err());
        let pem = public_pem(&k.public()).unwrap_or_default();
        assert_eq!(public_key_from_pem(&pem), Ok(k.public()));
        assert_ne!(first.digest(), FIRST_PREV);
        assert!(signing_key_from_pem("nope").is_err());
        assert!(!format!("{k:?}").contains("key:"));
    }
}
