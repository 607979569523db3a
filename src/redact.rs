//! Scrubs text that is about to leave the process in an error: provider and
//! back-link errors are written into the audit trail and shown by the API,
//! so they must never carry a URL's credentials (`user:pass@`), its query
//! string (where tokens travel), a `key=value` whose key names a secret, or
//! any configured secret itself. Pure text in, text out.

const REDACTED: &str = "[redacted]";

/// Keys whose values are secrets wherever they appear as `key=value`.
const SECRET_KEYS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "authorization",
    "signature",
];

/// `text` with URL credentials and query strings, secret-named `key=value`
/// pairs and every one of `secrets` replaced by `[redacted]`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = urls(text);
    out = pairs(&out);
    for s in secrets {
        // A very short secret would scrub ordinary words; such a secret is
        // refused at configuration load anyway.
        if s.len() >= 4 {
            out = out.replace(s, REDACTED);
        }
    }
    out
}

/// A URL fit to show: scheme, host, port and path, without credentials,
/// query or fragment. Text that is not a URL is scrubbed like any other.
pub fn url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => redact(u, &[]),
    }
}

fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']' | '}' | ',')
}

/// Every `scheme://…` in `text` with its userinfo and query replaced.
fn urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let mut end = after.find(ends_url).unwrap_or(after.len());
        // Punctuation that ends a sentence is not part of the URL.
        while end > 0 && matches!(after.as_bytes()[end - 1], b':' | b'.' | b';') {
            end -= 1;
        }
        let (u, tail) = after.split_at(end);
        // Authority runs to the first `/`, `?` or `#`; its userinfo to the
        // last `@` inside it.
        let auth_end = u.find(['/', '?', '#']).unwrap_or(u.len());
        let (authority, path) = u.split_at(auth_end);
        match authority.rfind('@') {
            Some(i) => {
                out.push_str(REDACTED);
                out.push_str(&authority[i..]);
            }
            None => out.push_str(authority),
        }
        match path.find(['?', '#']) {
            Some(q) => {
                out.push_str(&path[..q]);
                out.push_str(&path[q..q + 1]);
                out.push_str(REDACTED);
            }
            None => out.push_str(path),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `key=value` and `key: value` pairs whose key names a secret.
fn pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut word_start: Option<usize> = None;
    while let Some((i, c)) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            word_start.get_or_insert(i);
            out.push(c);
            continue;
        }
        let word = word_start.take().map(|s| &text[s..i]);
        out.push(c);
        let secret_key =
            word.is_some_and(|w| SECRET_KEYS.iter().any(|k| w.eq_ignore_ascii_case(k)));
        if secret_key && (c == '=' || c == ':') {
            // Skip spaces after `:`, then the value up to a separator.
            while let Some(&(_, ' ')) = chars.peek() {
                out.push(' ');
                chars.next();
            }
            let mut skipped = false;
            while let Some(&(_, v)) = chars.peek() {
                if v.is_whitespace() || matches!(v, '&' | ';' | ',' | '"' | '\'' | ')' | '#') {
                    break;
                }
                skipped = true;
                chars.next();
            }
            if skipped {
                out.push_str(REDACTED);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_and_queries_go() {
        let e = redact(
            "POST http://user:s3cr3t@127.0.0.1:9/x?token=abc&b=1: connection failed",
            &[],
        );
        assert_eq!(
            e,
            "POST http://[redacted]@127.0.0.1:9/x?[redacted]: connection failed"
        );
        assert_eq!(
            redact(
                "see https://h.example/a#frag and (postgres://u:p@db/x)",
                &[]
            ),
            "see https://h.example/a#[redacted] and (postgres://[redacted]@db/x)"
        );
        assert_eq!(
            url("http://user:s3cr3t@127.0.0.1:9/x?token=abc"),
            "http://127.0.0.1:9/x"
        );
    }

    #[test]
    fn secret_pairs_and_values_go() {
        assert_eq!(
            redact("failed: password=hunter22; Token: ghp_xyz, user=bob", &[]),
            "failed: password=[redacted]; Token: [redacted], user=bob"
        );
        assert_eq!(
            redact("bad key whsec_abcdef in reply", &["whsec_abcdef", "", "ab"]),
            "bad key [redacted] in reply"
        );
    }

    #[test]
    fn plain_text_is_unchanged() {
        for t in [
            "GitHub API answered 404",
            "timed out",
            "PostgreSQL: role \"x\" does not exist",
            "",
            "a://",
            "é://@?",
        ] {
            let scrubbed = redact(t, &[]);
            if !t.contains("://") {
                assert_eq!(scrubbed, t);
            }
        }
    }
}
