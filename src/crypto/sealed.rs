//! Secrets kept in the database, sealed under the key-encryption key of
//! `[keys]`: XChaCha20-Poly1305 with a fresh random 24-byte nonce per
//! seal, stored as `sealed:v1:BASE64(nonce || ciphertext)`. The associated
//! data names what the secret is for (a signing key's id), so a sealed
//! value copied into another row does not open there.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// What every sealed value starts with, whatever its version.
pub const MARK: &str = "sealed:";

/// This version's prefix; the version lets a later format (another cipher,
/// a KEK id) be told apart from this one.
const PREFIX: &str = "sealed:v1:";

const NONCE_LEN: usize = 24;

/// The key-encryption key: 32 bytes, wiped on drop, never printed.
pub struct Kek(SecretBox<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

impl Kek {
    /// The `[keys]` secret (32 random bytes, base64) as a key.
    pub fn from_secret(secret: &SecretString) -> Result<Kek, String> {
        super::keys::key_encryption_key(secret).map(|k| Kek(SecretBox::new(Box::new(k))))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(self.0.expose_secret()))
    }
}

/// Why a stored value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Plain text, as warrant wrote before it sealed keys.
    #[error("is not sealed")]
    NotSealed,
    #[error("is not a sealed value of a format this version reads")]
    Malformed,
    /// The tag did not verify: another key-encryption key, a value moved
    /// from another row, or an altered one. AEAD cannot tell these apart.
    #[error("does not open with this key-encryption key (another key sealed it, or it was altered or moved from another row)")]
    Rejected,
}

/// Whether `stored` is a sealed value (of any version), not plain text.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(MARK)
}

/// Seals `secret` for the row `id`.
pub fn seal(kek: &Kek, id: &str, secret: &[u8]) -> Result<String, String> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = kek
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: id.as_bytes(),
            },
        )
        .map_err(|_| "cannot seal the secret".to_string())?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    ))
}

/// Opens a value `seal` made for the row `id`.
pub fn open(kek: &Kek, id: &str, stored: &str) -> Result<SecretBox<Vec<u8>>, OpenError> {
    if !is_sealed(stored) {
        return Err(OpenError::NotSealed);
    }
    let body = stored.strip_prefix(PREFIX).ok_or(OpenError::Malformed)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| OpenError::Malformed)?;
    // A nonce and at least the 16-byte tag.
    if raw.len() < NONCE_LEN + 16 {
        return Err(OpenError::Malformed);
    }
    let (nonce, sealed) = raw.split_at(NONCE_LEN);
    kek.cipher()
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: id.as_bytes(),
            },
        )
        .map(|v| SecretBox::new(Box::new(v)))
        .map_err(|_| OpenError::Rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> Kek {
        let text = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        Kek::from_secret(&SecretString::from(text)).unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_row() {
        let k = kek(1);
        let s = seal(&k, "kid-a", b"the private key").unwrap();
        assert!(s.starts_with("sealed:v1:"), "{s}");
        assert!(!s.contains("the private key"));
        assert_eq!(
            open(&k, "kid-a", &s).unwrap().expose_secret().as_slice(),
            b"the private key"
        );
        // Each seal takes a fresh nonce.
        assert_ne!(s, seal(&k, "kid-a", b"the private key").unwrap());
        assert_eq!(open(&kek(2), "kid-a", &s).err(), Some(OpenError::Rejected));
        assert_eq!(open(&k, "kid-b", &s).err(), Some(OpenError::Rejected));
        let mut flipped = s.clone().into_bytes();
        // A character in the middle: near the end, a changed character can
        // make the base64 itself invalid (its last bits must be zero), which
        // is `Malformed`, not the tampering this checks.
        let mid = flipped.len() / 2;
        flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(open(&k, "kid-a", &flipped).err(), Some(OpenError::Rejected));
    }

    #[test]
    fn other_text_is_refused_without_a_panic() {
        let k = kek(1);
        let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert_eq!(open(&k, "x", pem).err(), Some(OpenError::NotSealed));
        for bad in [
            "sealed:v1:",
            "sealed:v1:!!",
            "sealed:v1:AAAA",
            "sealed:v2:AAAA",
        ] {
            assert_eq!(
                open(&k, "x", bad).err(),
                Some(OpenError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(format!("{k:?}"), "Kek([redacted])");
        assert!(Kek::from_secret(&SecretString::from("short")).is_err());
    }
}
