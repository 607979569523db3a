//! Webhook signatures: the `sha256=HEX` hub signatures of GitHub and Jira,
//! and Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,BASE64`), checked on ServiceNow's deliveries and
//! made on the `http` provider's calls, with their `whsec_` secrets. Every
//! comparison of a MAC is constant-time, and no error ever carries a secret
//! or a computed MAC.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Header names of the Standard Webhooks spec.
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Header names of the hub signatures.
pub const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
pub const JIRA_SIGNATURE: &str = "X-Hub-Signature";

/// Longest header value worth looking at; real ones are far below this, and a
/// bound keeps a hostile header from costing more than a glance.
const MAX_HEADER_LEN: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the {0} header is malformed")]
    MalformedHeader(&'static str),
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the webhook timestamp is outside the allowed tolerance")]
    TimestampOutOfTolerance,
}

/// HMAC-SHA256 over the concatenated parts. `None` only if the MAC refuses the
/// key, which HMAC never does (it takes keys of every length); callers treat
/// it as a failed check rather than trusting an unreachable branch.
fn mac_of(key: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for p in parts {
        mac.update(p);
    }
    Some(mac.finalize().into_bytes().into())
}

/// Checks `sha256=HEX` (GitHub's `X-Hub-Signature-256`, Jira's
/// `X-Hub-Signature`): HMAC-SHA256 of the raw body with the shared secret.
pub fn verify_hub(
    secret: &[u8],
    header_name: &'static str,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::MissingHeader(header_name))?;
    let header = header.trim();
    if header.is_empty() {
        return Err(SignatureError::MissingHeader(header_name));
    }
    let malformed = SignatureError::MalformedHeader(header_name);
    if header.len() > MAX_HEADER_LEN {
        return Err(malformed);
    }
    let (algo, hex_mac) = header.split_once('=').ok_or(malformed)?;
    if !algo.trim().eq_ignore_ascii_case("sha256") {
        return Err(malformed);
    }
    let given = hex::decode(hex_mac.trim()).map_err(|_| malformed)?;
    if given.len() != 32 {
        return Err(malformed);
    }
    let expected = mac_of(secret, &[body]).ok_or(SignatureError::Mismatch)?;
    if bool::from(expected.as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `sha256=HEX` of the body, as GitHub and Jira send it.
pub fn sign_hub(secret: &[u8], body: &[u8]) -> String {
    match mac_of(secret, &[body]) {
        Some(mac) => format!("sha256={}", hex::encode(mac)),
        // Unreachable (see `mac_of`); an empty MAC verifies nothing.
        None => "sha256=".to_string(),
    }
}

/// Senders differ on base64 padding; the MAC is what matters, not the `=`.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Checks a Standard Webhooks signature. `key` is the decoded `whsec_` secret.
/// The timestamp (integer Unix seconds) must lie within `tolerance` of `now`
/// in either direction, so a captured delivery cannot be replayed later.
/// `signature` may hold several space-separated `v1,BASE64` entries (secret
/// rotation): any one v1 match passes, entries of other versions are ignored.
pub fn verify_standard(
    key: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: chrono::Duration,
) -> Result<(), SignatureError> {
    let id = present(id, WEBHOOK_ID)?;
    let timestamp = present(timestamp, WEBHOOK_TIMESTAMP)?;
    let signature = present(signature, WEBHOOK_SIGNATURE)?;

    // The spec asks that ids hold no `.`: the signed content is delimited by
    // dots, so one in the id would blur where the id ends and the timestamp
    // begins.
    if id.contains('.') || id.chars().any(char::is_control) {
        return Err(SignatureError::MalformedHeader(WEBHOOK_ID));
    }
    let ts =
        parse_unix_seconds(timestamp).ok_or(SignatureError::MalformedHeader(WEBHOOK_TIMESTAMP))?;
    let skew = i128::from(now.timestamp()) - i128::from(ts);
    if skew.abs() > i128::from(tolerance.num_seconds()) {
        return Err(SignatureError::TimestampOutOfTolerance);
    }

    let candidates: Vec<Vec<u8>> = signature
        .split_ascii_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, b64)| LENIENT_B64.decode(b64).ok())
        .filter(|mac| mac.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::MalformedHeader(WEBHOOK_SIGNATURE));
    }

    let expected = mac_of(
        key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    )
    .ok_or(SignatureError::Mismatch)?;
    // Every candidate is compared, so timing says nothing about which matched.
    let matched = candidates.iter().fold(subtle::Choice::from(0), |acc, c| {
        acc | expected.as_slice().ct_eq(c)
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `v1,BASE64` for one delivery, as a Standard Webhooks sender writes it.
pub fn sign_standard(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    match mac_of(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]) {
        Some(mac) => format!("v1,{}", STANDARD.encode(mac)),
        // Unreachable (see `mac_of`); an empty MAC verifies nothing.
        None => "v1,".to_string(),
    }
}

fn present<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, SignatureError> {
    let v = value.map(str::trim).unwrap_or_default();
    if v.is_empty() {
        Err(SignatureError::MissingHeader(name))
    } else if v.len() > MAX_HEADER_LEN {
        Err(SignatureError::MalformedHeader(name))
    } else {
        Ok(v)
    }
}

/// Digits only: `i64::from_str` would also take a sign, and the MAC is over
/// the header text, so two spellings of one instant must not both pass.
fn parse_unix_seconds(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decodes a Standard Webhooks secret `whsec_BASE64` into its key bytes.
pub fn whsec_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("a Standard Webhooks secret starts with `whsec_`")?;
    let key = STANDARD
        .decode(b64)
        .map_err(|_| "the part after `whsec_` is not base64".to_string())?;
    if key.len() < 16 {
        return Err("the secret is shorter than 16 bytes".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    const HUB_SECRET: &[u8] = b"It's a Secret to Everybody";
    const HUB_BODY: &[u8] = b"Hello, World!";
    /// GitHub's documented example for validating webhook deliveries.
    const HUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn whsec(s: &str) -> Vec<u8> {
        whsec_key(s).unwrap()
    }

    #[test]
    fn hub_matches_githubs_documented_example() {
        assert_eq!(sign_hub(HUB_SECRET, HUB_BODY), HUB_SIGNATURE);
        assert_eq!(
            verify_hub(HUB_SECRET, GITHUB_SIGNATURE, Some(HUB_SIGNATURE), HUB_BODY),
            Ok(())
        );
        let upper = format!(
            "sha256={}",
            HUB_SIGNATURE.trim_start_matches("sha256=").to_uppercase()
        );
        assert_eq!(
            verify_hub(HUB_SECRET, GITHUB_SIGNATURE, Some(&upper), HUB_BODY),
            Ok(())
        );
    }

    #[test]
    fn hub_rejects_what_it_should() {
        let v = |h: Option<&str>, body: &[u8]| verify_hub(HUB_SECRET, JIRA_SIGNATURE, h, body);
        assert_eq!(
            v(None, HUB_BODY),
            Err(SignatureError::MissingHeader(JIRA_SIGNATURE))
        );
        assert_eq!(
            v(Some("  "), HUB_BODY),
            Err(SignatureError::MissingHeader(JIRA_SIGNATURE))
        );
        assert_eq!(
            v(Some(HUB_SIGNATURE), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_hub(
                b"wrong secret",
                JIRA_SIGNATURE,
                Some(HUB_SIGNATURE),
                HUB_BODY
            ),
            Err(SignatureError::Mismatch)
        );
        let truncated = &HUB_SIGNATURE[..HUB_SIGNATURE.len() - 2];
        let odd = &HUB_SIGNATURE[..HUB_SIGNATURE.len() - 1];
        let non_hex = HUB_SIGNATURE.replace('7', "g");
        let sha1 = HUB_SIGNATURE.replace("sha256", "sha1");
        let bare = HUB_SIGNATURE.trim_start_matches("sha256=");
        for bad in [
            truncated,
            odd,
            non_hex.as_str(),
            sha1.as_str(),
            bare,
            "sha256=",
            "=",
        ] {
            assert_eq!(
                v(Some(bad), HUB_BODY),
                Err(SignatureError::MalformedHeader(JIRA_SIGNATURE)),
                "{bad}"
            );
        }
        let long = format!("sha256={}", "0".repeat(MAX_HEADER_LEN));
        assert_eq!(
            v(Some(&long), HUB_BODY),
            Err(SignatureError::MalformedHeader(JIRA_SIGNATURE))
        );
    }

    #[test]
    fn errors_never_show_the_mac() {
        let expected = sign_hub(HUB_SECRET, b"other");
        let err =
            verify_hub(HUB_SECRET, GITHUB_SIGNATURE, Some(HUB_SIGNATURE), b"other").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains(&expected[7..15]) && !text.contains("757107ea"),
            "{text}"
        );
    }

    /// The vector the Standard Webhooks reference libraries (and Svix) test against.
    #[test]
    fn standard_matches_the_published_vector() {
        let key = whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(sign_standard(&key, id, 1_614_265_330, body), expected);
        let now = at(1_614_265_330);
        let ok = verify_standard(
            &key,
            Some(id),
            Some("1614265330"),
            Some(expected),
            body,
            now,
            Duration::seconds(300),
        );
        assert_eq!(ok, Ok(()));
    }

    /// The Rust reference library's own `test_sign` vector.
    #[test]
    fn standard_matches_the_reference_librarys_vector() {
        let key = whsec("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            sign_standard(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1_649_367_553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    fn check(key: &[u8], sig: &str, ts: &str, now: i64) -> Result<(), SignatureError> {
        verify_standard(
            key,
            Some("msg_1"),
            Some(ts),
            Some(sig),
            b"{}",
            at(now),
            Duration::seconds(300),
        )
    }

    #[test]
    fn standard_rotation_wrong_secret_and_versions() {
        let key = whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let old = whsec("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let now = 1_700_000_000;
        let good = sign_standard(&key, "msg_1", now, b"{}");
        let stale = sign_standard(&old, "msg_1", now, b"{}");
        let ts = now.to_string();
        assert_eq!(check(&key, &good, &ts, now), Ok(()));
        assert_eq!(check(&old, &good, &ts, now), Err(SignatureError::Mismatch));
        // Rotation: old and new secrets side by side, in either order.
        assert_eq!(check(&key, &format!("{stale} {good}"), &ts, now), Ok(()));
        assert_eq!(check(&key, &format!("{good} {stale}"), &ts, now), Ok(()));
        assert_eq!(check(&old, &format!("{good}  {stale}"), &ts, now), Ok(()));
        // Entries of other versions are ignored, not failed on.
        let v1a = good.replace("v1,", "v1a,");
        assert_eq!(check(&key, &format!("v1a,AAAA {good}"), &ts, now), Ok(()));
        assert_eq!(
            check(&key, &v1a, &ts, now),
            Err(SignatureError::MalformedHeader(WEBHOOK_SIGNATURE))
        );
        // Unpadded base64 is the same MAC.
        assert_eq!(check(&key, good.trim_end_matches('='), &ts, now), Ok(()));
        // The MAC covers id, timestamp and body.
        let r = verify_standard(
            &key,
            Some("msg_2"),
            Some(&ts),
            Some(&good),
            b"{}",
            at(now),
            Duration::seconds(300),
        );
        assert_eq!(r, Err(SignatureError::Mismatch));
        let r = verify_standard(
            &key,
            Some("msg_1"),
            Some(&ts),
            Some(&good),
            b"{ }",
            at(now),
            Duration::seconds(300),
        );
        assert_eq!(r, Err(SignatureError::Mismatch));
        let later = (now + 1).to_string();
        assert_eq!(
            check(&key, &good, &later, now),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn standard_timestamps() {
        let key = whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sent = 1_700_000_000;
        let sig = sign_standard(&key, "msg_1", sent, b"{}");
        let ts = sent.to_string();
        assert_eq!(check(&key, &sig, &ts, sent + 300), Ok(()), "at the edge");
        assert_eq!(check(&key, &sig, &ts, sent - 300), Ok(()), "at the edge");
        assert_eq!(
            check(&key, &sig, &ts, sent + 301),
            Err(SignatureError::TimestampOutOfTolerance),
            "stale"
        );
        assert_eq!(
            check(&key, &sig, &ts, sent - 301),
            Err(SignatureError::TimestampOutOfTolerance),
            "future"
        );
        for bad in [
            "",
            "abc",
            "-1700000000",
            "+1700000000",
            "1.7e9",
            "1700000000.0",
            "99999999999999999999",
        ] {
            let want = if bad.is_empty() {
                SignatureError::MissingHeader(WEBHOOK_TIMESTAMP)
            } else {
                SignatureError::MalformedHeader(WEBHOOK_TIMESTAMP)
            };
            assert_eq!(check(&key, &sig, bad, sent), Err(want), "{bad}");
        }
        // Far-off values must not overflow the skew arithmetic.
        assert_eq!(
            check(&key, &sig, "999999999999999999", sent),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        assert_eq!(
            check(&key, &sig, "0", sent),
            Err(SignatureError::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn standard_missing_and_malformed_headers() {
        let key = whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let now = 1_700_000_000;
        let ts = now.to_string();
        let sig = sign_standard(&key, "msg_1", now, b"{}");
        let tol = Duration::seconds(300);
        let v = |id: Option<&str>, ts: Option<&str>, sig: Option<&str>| {
            verify_standard(&key, id, ts, sig, b"{}", at(now), tol)
        };
        assert_eq!(
            v(None, Some(&ts), Some(&sig)),
            Err(SignatureError::MissingHeader(WEBHOOK_ID))
        );
        assert_eq!(
            v(Some("msg_1"), None, Some(&sig)),
            Err(SignatureError::MissingHeader(WEBHOOK_TIMESTAMP))
        );
        assert_eq!(
            v(Some("msg_1"), Some(&ts), None),
            Err(SignatureError::MissingHeader(WEBHOOK_SIGNATURE))
        );
        assert_eq!(
            v(Some("msg.1"), Some(&ts), Some(&sig)),
            Err(SignatureError::MalformedHeader(WEBHOOK_ID))
        );
        for bad in ["v1", "v1,", "v1,!!!!", "v1,AAAA", "garbage", "v1 ,abc", ","] {
            assert_eq!(
                v(Some("msg_1"), Some(&ts), Some(bad)),
                Err(SignatureError::MalformedHeader(WEBHOOK_SIGNATURE)),
                "{bad}"
            );
        }
        // A wrong but well-formed MAC is a mismatch, not a malformed header.
        let wrong = format!("v1,{}", STANDARD.encode([0u8; 32]));
        assert_eq!(
            v(Some("msg_1"), Some(&ts), Some(&wrong)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn messages_name_the_header() {
        assert_eq!(
            SignatureError::MissingHeader(GITHUB_SIGNATURE).to_string(),
            "the X-Hub-Signature-256 header is missing"
        );
        assert_eq!(
            SignatureError::MalformedHeader(WEBHOOK_TIMESTAMP).to_string(),
            "the webhook-timestamp header is malformed"
        );
    }
}
