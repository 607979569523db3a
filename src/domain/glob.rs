//! Glob patterns, as the configuration writes them for resources, ticket
//! scopes, subjects, approvers and CI claims.
//!
//! Two flavours, because resources are paths and principals are names:
//! - `path`: `*` matches any run of characters within one `/`-separated
//!   segment and `**` any run across segments, so `hooks/*` never reaches
//!   `hooks/a/b` (write `hooks/**` for that); `a/**/b` also matches `a/b`.
//!   Used for resources (policies, `[[ci.trust]]`, a CI ticket's pattern)
//!   and for the project scope of a policy's `sources`.
//! - `name`: `*` (and `**`) match any run of characters, `/` included. Used
//!   for subjects, approvers and CI claims, whose values are names such as
//!   `ci:acme/app` or `repo:acme/app:ref:refs/heads/main`.
//!
//! Matching simulates the pattern as an automaton over the text: time is
//! proportional to pattern length times text length and memory to pattern
//! length, whatever the input, so a hostile pattern or value cannot make
//! it backtrack exponentially.

/// Matches a resource-like `text` against `pattern`: `*` stays within one
/// `/`-segment, `**` crosses segments.
pub fn path(pattern: &str, text: &str) -> bool {
    matches(pattern, text, true)
}

/// Matches a name against `pattern`: `*` matches any run of characters.
pub fn name(pattern: &str, text: &str) -> bool {
    matches(pattern, text, false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// Any run of characters other than `/`.
    Segment,
    /// Any run of characters.
    Any,
}

fn compile(pattern: &str, segments: bool) -> Vec<Tok> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '*' {
            out.push(Tok::Lit(c));
            continue;
        }
        let mut run = 1;
        while chars.peek() == Some(&'*') {
            chars.next();
            run += 1;
        }
        out.push(if segments && run == 1 {
            Tok::Segment
        } else {
            Tok::Any
        });
    }
    out
}

fn matches(pattern: &str, text: &str, segments: bool) -> bool {
    if !pattern.contains('*') {
        return pattern == text;
    }
    let toks = compile(pattern, segments);
    let n = toks.len();
    // `**/` standing for a whole segment may also stand for none at all.
    let skips_segment = |i: usize| {
        segments
            && toks[i] == Tok::Any
            && (i == 0 || toks[i - 1] == Tok::Lit('/'))
            && toks.get(i + 1) == Some(&Tok::Lit('/'))
    };
    // A state is `on` when some way through the pattern reaches it, and
    // `fresh` when one of those ways did not just loop on a star, which is
    // what lets `**/` stand for no segment: only at a segment's start.
    // `close` follows the moves that read nothing; they only go forward,
    // so one ascending pass reaches every state.
    let close = |on: &mut [bool], fresh: &mut [bool]| {
        for i in 0..n {
            if !on[i] {
                continue;
            }
            if matches!(toks[i], Tok::Segment | Tok::Any) {
                on[i + 1] = true;
                fresh[i + 1] = true;
            }
            if fresh[i] && skips_segment(i) {
                on[i + 2] = true;
                fresh[i + 2] = true;
            }
        }
    };
    let (mut on, mut fresh) = (vec![false; n + 1], vec![false; n + 1]);
    let (mut next_on, mut next_fresh) = (vec![false; n + 1], vec![false; n + 1]);
    on[0] = true;
    fresh[0] = true;
    close(&mut on, &mut fresh);
    for c in text.chars() {
        next_on.iter_mut().for_each(|s| *s = false);
        next_fresh.iter_mut().for_each(|s| *s = false);
        let mut any = false;
        for i in 0..n {
            if !on[i] {
                continue;
            }
            match toks[i] {
                Tok::Lit(l) if l == c => {
                    next_on[i + 1] = true;
                    next_fresh[i + 1] = true;
                    any = true;
                }
                Tok::Lit(_) => {}
                Tok::Segment if c == '/' => {}
                Tok::Segment | Tok::Any => {
                    next_on[i] = true;
                    any = true;
                }
            }
        }
        if !any {
            return false;
        }
        close(&mut next_on, &mut next_fresh);
        std::mem::swap(&mut on, &mut next_on);
        std::mem::swap(&mut fresh, &mut next_fresh);
    }
    on[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases `config::glob_match` was tested with before it moved here.
    #[test]
    fn globs() {
        for glob_match in [path, name] {
            assert!(glob_match("hooks/*", "hooks/a"));
            assert!(glob_match("*", ""));
            assert!(glob_match(
                "repo:acme/*:environment:prod*",
                "repo:acme/app:environment:production"
            ));
            assert!(!glob_match("hooks/*", "hook/a"));
            assert!(!glob_match("a*b", "acbd"));
        }
    }

    #[test]
    fn star_stays_within_a_segment() {
        assert!(path("hooks/*", "hooks/a"));
        assert!(!path("hooks/*", "hooks/a/b"));
        assert!(!path("hooks/*", "hook/a"));
        assert!(path("hooks/*/x", "hooks/a/x"));
        assert!(!path("hooks/*/x", "hooks/a/b/x"));
        assert!(path("hooks/a*", "hooks/abc"));
        assert!(!path("hooks/a*", "hooks/a/bc"));
        assert!(path("*/readonly", "prod-db/readonly"));
        assert!(!path("*", "prod-db/readonly"));
        assert!(path("*", ""));
        assert!(!path("a*b", "acbd"));
        assert!(path("a*b*c", "aXbYc"));
        assert!(!path("a*b*c", "aXb/Yc"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(path("hooks/**", "hooks/a"));
        assert!(path("hooks/**", "hooks/a/b/c"));
        assert!(path("**", "prod-db/readonly"));
        assert!(path("hooks/**/x", "hooks/a/b/x"));
        assert!(
            path("hooks/**/x", "hooks/x"),
            "`**/` may stand for no segment"
        );
        assert!(path("**/x", "x"));
        assert!(!path("hooks/**/x", "hooks/ax"));
        assert!(!path("hooks/**/x", "hooks/a/bx"));
        assert!(path("hooks/**/x/**/y", "hooks/x/y"));
        assert!(path("hooks/**/x/**/y", "hooks/a/x/b/c/y"));
        assert!(
            !path("hooks/a**/x", "hooks/x"),
            "only a whole `**` segment may vanish"
        );
        assert!(path("hooks/a**", "hooks/a/b"));
        assert!(
            path("hooks/***", "hooks/a/b"),
            "a longer run of stars is `**`"
        );
        assert!(!path("hooks/**", "other/a"));
    }

    #[test]
    fn names_match_across_slashes() {
        assert!(name("ci:*", "ci:acme/app"));
        assert!(name("*", "anyone"));
        assert!(name(
            "repo:acme/other:*",
            "repo:acme/other:ref:refs/heads/main"
        ));
        assert!(name(
            "repo:acme/*:environment:prod*",
            "repo:acme/app:environment:production"
        ));
        assert!(path(
            "repo:acme/*:environment:prod*",
            "repo:acme/app:environment:production"
        ));
        assert!(!name("repo:acme/*", "repo:evil/acme/x"));
        assert!(!name("alice", "alice2"));
        assert!(name("alice", "alice"));
    }

    #[test]
    fn exact_text_and_special_characters() {
        assert!(path("hooks/a.b", "hooks/a.b"));
        assert!(!path("hooks/a.b", "hooks/aXb"), "`.` is not a wildcard");
        assert!(!path("hooks/?", "hooks/a"), "`?` is not a wildcard");
        assert!(path("hooks/[a]", "hooks/[a]"));
        assert!(path("h*ks/é*", "hooks/éa"));
    }

    #[test]
    fn hostile_inputs_take_linear_time() {
        // A backtracking matcher takes exponential time on these.
        let pattern = format!("{}b", "a*".repeat(300));
        let text = "a".repeat(5_000);
        let started = std::time::Instant::now();
        assert!(!path(&pattern, &text));
        assert!(!name(&pattern, &text));
        let pattern = format!("{}b", "**/a".repeat(200));
        let text = "a/".repeat(2_500);
        assert!(!path(&pattern, &text));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}
