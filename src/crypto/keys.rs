//! Asymmetric signing keys for the credentials warrant issues: a PKCS#8 PEM
//! private key (P-256 for ES256, Ed25519 for EdDSA) read or generated, its
//! public JWK and its key id (the RFC 7638 thumbprint). The private part
//! never prints.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A private signing key, its public JWK and its key id (the RFC 7638
/// thumbprint of the public key). Never printed.
#[derive(Clone)]
pub struct SigningKey {
    pub(crate) alg: Algorithm,
    pub(crate) kid: String,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
    pub(crate) jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key: P-256 (ES256) or Ed25519 (EdDSA).
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            let der = k
                .to_pkcs8_der()
                .map_err(|e| format!("cannot encode the key: {e}"))?;
            let point = k.public_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err("the P-256 public key has no coordinates".into());
            };
            let (x, y) = (b64(x), b64(y));
            let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            let kid = b64(&Sha256::digest(thumb.as_bytes()));
            let decoding = DecodingKey::from_ec_components(&x, &y)
                .map_err(|e| format!("cannot use the public key: {e}"))?;
            return Ok(SigningKey {
                alg: Algorithm::ES256,
                encoding: EncodingKey::from_ec_der(der.as_bytes()),
                decoding,
                jwk: json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig" }),
                kid,
            });
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            let der = k
                .to_pkcs8_der()
                .map_err(|e| format!("cannot encode the key: {e}"))?;
            let x = b64(k.verifying_key().as_bytes());
            let thumb = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
            let kid = b64(&Sha256::digest(thumb.as_bytes()));
            let decoding = DecodingKey::from_ed_components(&x)
                .map_err(|e| format!("cannot use the public key: {e}"))?;
            return Ok(SigningKey {
                alg: Algorithm::EdDSA,
                encoding: EncodingKey::from_ed_der(der.as_bytes()),
                decoding,
                jwk: json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig" }),
                kid,
            });
        }
        Err("not a PKCS#8 PEM private key for P-256 (ES256) or Ed25519 (EdDSA)".into())
    }

    /// A new P-256 key and its PKCS#8 PEM.
    pub fn generate() -> Result<(SigningKey, String), String> {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode the key: {e}"))?
            .to_string();
        Ok((SigningKey::from_pem(&pem)?, pem))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// The same key under the `kid` it was stored with.
    pub(crate) fn with_kid(mut self, kid: &str) -> SigningKey {
        kid.clone_into(&mut self.kid);
        self.jwk["kid"] = json!(kid);
        self
    }
}

/// The key-encryption key of `[keys]`: 32 random bytes, written base64.
pub fn key_encryption_key(secret: &secrecy::SecretString) -> Result<[u8; 32], String> {
    let text = secrecy::ExposeSecret::expose_secret(secret).trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| "is not base64 (make one with `openssl rand -base64 32`)".to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("is {} bytes; it must be 32", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation};

    #[test]
    fn keys_from_pem_sign_and_verify() {
        let (k, pem) = SigningKey::generate().unwrap();
        assert!(pem.contains("BEGIN PRIVATE KEY"));
        let again = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(k.kid(), again.kid(), "the kid is the key's thumbprint");
        assert_eq!(k.public_jwk()["alg"], "ES256");
        assert!(!format!("{k:?}").contains(&pem[40..60]));

        let mut h = Header::new(k.alg);
        h.kid = Some(k.kid.clone());
        let t = jsonwebtoken::encode(&h, &json!({ "sub": "x" }), &k.encoding).unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.public_jwk().clone()).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        let d =
            jsonwebtoken::decode::<Value>(&t, &DecodingKey::from_jwk(&jwk).unwrap(), &v).unwrap();
        assert_eq!(d.claims["sub"], "x");
    }

    #[test]
    fn ed25519_keys_sign_with_eddsa() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use p256::pkcs8::LineEnding;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let k = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(k.alg, Algorithm::EdDSA);
        assert_eq!(k.public_jwk()["crv"], "Ed25519");
        let mut h = Header::new(k.alg);
        h.kid = Some(k.kid.clone());
        let t = jsonwebtoken::encode(&h, &json!({ "sub": "y" }), &k.encoding).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.required_spec_claims.clear();
        let d = jsonwebtoken::decode::<Value>(&t, &k.decoding, &v).unwrap();
        assert_eq!(d.claims["sub"], "y");
    }

    #[test]
    fn other_pems_are_refused() {
        assert!(SigningKey::from_pem("not a key").is_err());
        assert!(SigningKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
    }
}
