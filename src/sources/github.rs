//! GitHub `issues` webhooks: which deliveries count, the ticket key
//! `github:OWNER/REPO#N`, the request written in the issue form's sections
//! (`### Resource`, `### Duration`, `### Start`), read as GitHub shows them
//! to the approver (see `form`), and approval by label; a comment
//! `/approve` on a labelled issue approves it again as it stands (how an
//! extension is approved).

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::source::{key_rest, note_answer, note_auth};
use super::{delivery_id, Inbound, IntakeError, TicketSource};
use crate::crypto::signature;
use crate::domain::TicketKey;

use super::{
    ignored, need_object, need_str, parse_object, parse_rfc3339, quote, same_name, ticket_key,
    Draft, Parsed, SourceError, YEARS,
};
use crate::config::GithubSource;
use crate::domain::Source;
use crate::ticket::{ApprovalSignal, TicketEvent, TicketStatus};

const WHAT: &str = "GitHub webhook payload";

/// The comment that approves a request again (an extension) while the
/// approval label stays on the issue.
const APPROVE: &str = "/approve";

/// What GitHub issue forms write for an optional field left empty.
const NO_RESPONSE: &str = "_No response_";

/// Parses one delivery; `event` is the `X-GitHub-Event` header.
pub fn parse(cfg: &GithubSource, event: &str, body: &[u8]) -> Result<Parsed, SourceError> {
    let root = parse_object(body, WHAT)?;
    let event = event.trim();
    if event.eq_ignore_ascii_case("ping") {
        return Ok(ignored("ping: GitHub is checking the webhook", None));
    }
    let comment = event.eq_ignore_ascii_case("issue_comment");
    if !event.eq_ignore_ascii_case("issues") && !comment {
        return Ok(ignored(
            format!("GitHub `{}` events carry no ticket change", quote(event)),
            None,
        ));
    }

    let repo = need_str(&root, &["repository", "full_name"], WHAT)?;
    if !cfg
        .repositories
        .iter()
        .any(|r| r.trim().eq_ignore_ascii_case(repo))
    {
        return Ok(ignored(
            format!(
                "repository `{}` is not in sources.github.repositories",
                quote(repo)
            ),
            None,
        ));
    }
    let action = need_str(&root, &["action"], WHAT)?;
    let issue = need_object(&root, &["issue"], WHAT)?;
    let number = issue
        .get("number")
        .and_then(Value::as_u64)
        .ok_or_else(|| super::missing(&["issue", "number"], "a number", WHAT))?;
    let key = ticket_key(format!("github:{repo}#{number}"), WHAT)?;
    let title = need_str(issue, &["title"], WHAT)?.to_string();
    let updated_text = need_str(issue, &["updated_at"], WHAT)?;
    let updated_at = parse_rfc3339(updated_text).ok_or_else(|| {
        SourceError::Malformed(format!(
            "{WHAT}: `issue.updated_at` `{}` is not an RFC 3339 time in the {YEARS}",
            quote(updated_text)
        ))
    })?;
    let state = need_str(issue, &["state"], WHAT)?;
    let author = need_str(issue, &["user", "login"], WHAT)?;

    let gone = matches!(action, "deleted" | "transferred");
    let status = if gone {
        TicketStatus::Deleted
    } else if state.eq_ignore_ascii_case("closed") {
        TicketStatus::Closed
    } else {
        TicketStatus::Open
    };
    let source_status = if gone { action } else { state }.to_string();

    let label = &cfg.approval_label;
    if comment {
        // A new comment `/approve` by an allowed approver approves the
        // request as it stands now (an extension's later end), on an issue
        // that keeps its approval label; any other comment changes nothing.
        let body = root
            .get("comment")
            .and_then(|c| c.get("body"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let approves = action == "created"
            && body.lines().find(|l| !l.trim().is_empty()).map(str::trim) == Some(APPROVE);
        if !approves {
            return Ok(ignored(
                "a comment other than `/approve` changes nothing",
                None,
            ));
        }
        // Anyone may comment on a public repository's issues; only the
        // repository's people may approve (the policy then checks who).
        let association = root
            .get("comment")
            .and_then(|c| c.get("author_association"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(association, "OWNER" | "MEMBER" | "COLLABORATOR") {
            return Ok(ignored(
                "`/approve` from outside the repository's owners, members and collaborators",
                None,
            ));
        }
        if !has_label(issue, label) || status != TicketStatus::Open {
            return Ok(ignored(
                "`/approve` counts only on an open issue that has the approval label",
                None,
            ));
        }
    }
    let event_label = need_label_name(&root, action)?;
    let approval = match (action, event_label) {
        _ if comment => {
            let by = need_str(&root, &["comment", "user", "login"], WHAT)?;
            ApprovalSignal::Given {
                by: vec![by.to_string()],
                at: updated_at,
            }
        }
        ("labeled", Some(name)) if same_name(name, label) => {
            // The sender is whoever added the label: the approver.
            let by = need_str(&root, &["sender", "login"], WHAT)?;
            ApprovalSignal::Given {
                by: vec![by.to_string()],
                at: updated_at,
            }
        }
        ("unlabeled", Some(name)) if same_name(name, label) => ApprovalSignal::Withdrawn,
        _ => ApprovalSignal::Carried {
            still: has_label(issue, label),
        },
    };

    let request = read_request(issue.get("body").and_then(Value::as_str), author, &title);

    Ok(Parsed::Ticket(TicketEvent {
        key,
        source: Source::Github,
        project: repo.to_string(),
        status,
        source_status,
        title,
        updated_at,
        request,
        approval,
    }))
}

/// The `label` of a `labeled`/`unlabeled` event; those events always carry
/// one, so its absence there means the payload is not GitHub's.
fn need_label_name<'a>(
    root: &'a Map<String, Value>,
    action: &str,
) -> Result<Option<&'a str>, SourceError> {
    if matches!(action, "labeled" | "unlabeled") {
        need_str(root, &["label", "name"], WHAT).map(Some)
    } else {
        Ok(None)
    }
}

fn has_label(issue: &Map<String, Value>, label: &str) -> bool {
    issue
        .get("labels")
        .and_then(Value::as_array)
        .is_some_and(|labels| {
            labels.iter().any(|l| {
                let name = l.get("name").and_then(Value::as_str).or_else(|| l.as_str());
                name.is_some_and(|n| same_name(n, label))
            })
        })
}

fn read_request(
    body: Option<&str>,
    author: &str,
    title: &str,
) -> Result<crate::ticket::Request, String> {
    let Some(body) = body.filter(|b| !b.trim().is_empty()) else {
        return Err("the issue body is empty: open the issue from the access request form".into());
    };
    let sections = form::sections(body)?;
    let resource = match section(&sections, "Resource")? {
        Some(r) => Ok(r.to_string()),
        None => Err("the issue form has no `### Resource` answer".to_string()),
    };
    let duration = section(&sections, "Duration").map(|d| d.map(str::to_string));
    let start = section(&sections, "Start").and_then(|s| match s {
        Some(s) => parse_rfc3339(s).map(Some).ok_or_else(|| {
            format!(
                "`### Start` `{}` is not an RFC 3339 time in the {YEARS} (write 2026-11-25T10:00:00Z)",
                quote(s)
            )
        }),
        None => Ok(None),
    });
    Draft {
        subject: Ok(author.to_string()),
        resource,
        start,
        end: Ok(None),
        duration,
        justification: title.to_string(),
    }
    .into_request()
}

/// The answer under one heading: `None` when absent or left empty. Two
/// sections of one name are refused, because the approver may have read the
/// other one.
fn section<'a>(sections: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, String> {
    let mut found = sections.iter().filter(|(h, _)| same_name(h, name));
    let first = found.next();
    if found.next().is_some() {
        return Err(format!(
            "the issue body has more than one `### {name}` section"
        ));
    }
    Ok(first
        .map(|(_, text)| text.as_str())
        .filter(|t| !t.is_empty() && *t != NO_RESPONSE))
}

/// Reads an issue form's body the way GitHub shows it to the approver, so
/// that nothing the approver cannot see fills a field: HTML comments and
/// fenced or indented code blocks are dropped, a section starts only at a
/// `### ` heading, and a heading's text is compared after NFKC with
/// format and zero-width characters removed. Anything else that reads like
/// a label (`## Resource`, `**Resource**`, `Reso&#117;rce`, a fullwidth
/// `＃＃＃`, a heading in a list or quote) makes the request unreadable
/// rather than guessing which one the approver took for the field.
///
/// This is not a Markdown renderer: where it errs, it errs towards hiding
/// text or refusing the body, never towards reading hidden text.
mod form {
    use unicode_normalization::UnicodeNormalization;

    /// The labels whose answers become the request.
    const LABELS: [&str; 3] = ["Resource", "Duration", "Start"];

    /// The `### Heading` sections, in order: the heading's normalized text
    /// and the trimmed visible text under it.
    pub(super) fn sections(body: &str) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for line in visible_lines(body) {
            let heading = atx_heading(&line);
            let is_label = |text: &str| {
                let name = normalize(text);
                LABELS.iter().any(|l| super::same_name(&name, l))
            };
            let exact = matches!(heading, Some((3, text)) if is_label(text));
            if !exact {
                if let Some(label) = looks_like_label(&line) {
                    return Err(format!(
                        "the issue body has a line `{}` that reads like the form label `### {label}` but is not one; edit the issue so that each field appears once, as the form wrote it",
                        super::quote(line.trim())
                    ));
                }
            }
            if let Some((_, text)) = heading {
                // Any heading ends the section before it; only a `### `
                // one that is a label names a field.
                if let Some((h, lines)) = current.take() {
                    out.push((h, lines.join("\n").trim().to_string()));
                }
                current = Some((normalize(text), Vec::new()));
                continue;
            }
            // Only a field's text is ever read: the rest of the body (most
            // of it, in a long justification) is not kept.
            if let Some((h, lines)) = current.as_mut() {
                if LABELS.iter().any(|l| super::same_name(h, l)) {
                    lines.push(line);
                }
            }
        }
        if let Some((h, lines)) = current {
            out.push((h, lines.join("\n").trim().to_string()));
        }
        Ok(out)
    }

    /// The body's lines as GitHub shows them: line endings as CommonMark
    /// reads them (`\r\n`, `\r`, `\n`), HTML comments cut out (also across
    /// lines), fenced code (```` ``` ```` or `~~~`, up to its closing fence
    /// or the end) and indented code (four columns, not inside a paragraph)
    /// dropped. Dropped lines leave a blank line behind.
    pub(super) fn visible_lines(body: &str) -> Vec<String> {
        let text = body.replace("\r\n", "\n").replace('\r', "\n");
        let mut out = Vec::new();
        let mut fence: Option<(char, usize)> = None;
        let mut in_comment = false;
        // Whether the previous line continues a paragraph, which an
        // indented line then continues too instead of starting code.
        let mut paragraph = false;
        for raw in text.split('\n') {
            if !in_comment {
                if let Some((c, n)) = fence {
                    if closes_fence(raw, c, n) {
                        fence = None;
                    }
                    out.push(String::new());
                    continue;
                }
                if raw.trim().is_empty() {
                    paragraph = false;
                    out.push(String::new());
                    continue;
                }
                if !paragraph && indent_columns(raw) >= 4 {
                    out.push(String::new());
                    continue;
                }
                if let Some(open) = opens_fence(raw) {
                    fence = Some(open);
                    paragraph = false;
                    out.push(String::new());
                    continue;
                }
            }
            let was_in_comment = in_comment;
            let (visible, had_comment) = strip_comments(raw, &mut in_comment);
            let shown = visible.trim();
            // What ends a paragraph: nothing shown, a comment that began
            // the line (an HTML block), a heading, a thematic break.
            let html_block =
                was_in_comment || (had_comment && raw.trim_start().starts_with("<!--"));
            paragraph = !(shown.is_empty()
                || html_block
                || atx_heading(&visible).is_some()
                || thematic_break(&visible));
            out.push(visible);
        }
        out
    }

    /// `raw` without its comments; `in_comment` carries an open comment
    /// to the next line. Also says whether any comment was cut.
    fn strip_comments(raw: &str, in_comment: &mut bool) -> (String, bool) {
        if !*in_comment && !raw.contains("<!--") {
            return (raw.to_string(), false);
        }
        let mut visible = String::new();
        let mut rest = raw;
        let mut cut = false;
        loop {
            if *in_comment {
                cut = true;
                match rest.find("-->") {
                    Some(i) => {
                        rest = &rest[i + 3..];
                        *in_comment = false;
                    }
                    None => return (visible, cut),
                }
            } else {
                match rest.find("<!--") {
                    Some(i) => {
                        visible.push_str(&rest[..i]);
                        // From the second dash, so `<!-->` ends where it starts.
                        rest = &rest[i + 2..];
                        *in_comment = true;
                    }
                    None => {
                        visible.push_str(rest);
                        return (visible, cut);
                    }
                }
            }
        }
    }

    fn indent_columns(line: &str) -> usize {
        let mut col = 0;
        for c in line.chars() {
            match c {
                ' ' => col += 1,
                '\t' => col += 4 - col % 4,
                _ => break,
            }
        }
        col
    }

    /// Up to three spaces, then the line's first non-space part.
    fn unindented(line: &str) -> Option<&str> {
        let spaces = line.len() - line.trim_start_matches(' ').len();
        (spaces <= 3).then(|| &line[spaces..])
    }

    /// A fence opener: its character and length.
    fn opens_fence(line: &str) -> Option<(char, usize)> {
        let s = unindented(line)?;
        let c = s.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let n = s.chars().take_while(|x| *x == c).count();
        if n < 3 {
            return None;
        }
        // A backtick fence's info string holds no backtick (else it is inline code).
        if c == '`' && s[n..].contains('`') {
            return None;
        }
        Some((c, n))
    }

    fn closes_fence(line: &str, c: char, n: usize) -> bool {
        let Some(s) = unindented(line) else {
            return false;
        };
        let run = s.chars().take_while(|x| *x == c).count();
        run >= n && s[run * c.len_utf8()..].trim().is_empty()
    }

    fn thematic_break(line: &str) -> bool {
        let Some(s) = unindented(line) else {
            return false;
        };
        let marks: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
        marks.len() >= 3
            && ['-', '*', '_'].contains(&marks[0])
            && marks.iter().all(|c| *c == marks[0])
    }

    /// An ATX heading: its level and its text without the closing `#`s.
    pub(super) fn atx_heading(line: &str) -> Option<(usize, &str)> {
        let s = unindented(line)?;
        let level = s.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&level) {
            return None;
        }
        let rest = &s[level..];
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
            return None;
        }
        let text = rest.trim();
        // A closing sequence is `#`s after a blank (or the whole text).
        let body = text.trim_end_matches('#');
        let text = if body.is_empty() || body.ends_with(' ') || body.ends_with('\t') {
            body.trim_end()
        } else {
            text
        };
        Some((level, text))
    }

    /// Characters that show as nothing: Unicode's format characters (Cf),
    /// variation selectors, the combining grapheme joiner and the Hangul
    /// fillers.
    pub(super) fn invisible(c: char) -> bool {
        matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        ) || c.is_control()
    }

    /// A heading's text as it compares with a label: NFKC, invisible
    /// characters removed, runs of blanks made one space, trimmed.
    pub(super) fn normalize(text: &str) -> String {
        let folded: String = text.nfkc().filter(|c| !invisible(*c)).collect();
        folded.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The label a line reads like, when it is not that label's heading:
    /// compared on its letters and digits alone, after HTML tags, entities,
    /// list and quote markers and look-alike letters are set aside.
    fn looks_like_label(line: &str) -> Option<&'static str> {
        let plain = line.is_ascii()
            && !line.contains(['<', '&'])
            && !line.bytes().any(|b| b.is_ascii_control() && b != b'\t');
        if plain {
            // Plain ASCII has no tags, entities, invisible characters,
            // compatibility forms or look-alike letters: the comparison
            // below, without allocating
            // (this runs for every line of every body).
            let letters = trim_markers(line)
                .bytes()
                .filter(u8::is_ascii_alphanumeric)
                .map(|b| b.to_ascii_lowercase());
            return LABELS.into_iter().find(|label| {
                letters
                    .clone()
                    .eq(label.bytes().map(|b| b.to_ascii_lowercase()))
            });
        }
        let loose = loose(line);
        if loose.is_empty() {
            return None;
        }
        LABELS
            .into_iter()
            .find(|label| loose == label.to_lowercase())
    }

    fn loose(line: &str) -> String {
        let mut text = String::new();
        let mut in_tag = false;
        for c in line.chars() {
            match (in_tag, c) {
                (false, '<') => in_tag = true,
                (true, '>') => in_tag = false,
                (false, c) => text.push(c),
                (true, _) => {}
            }
        }
        let text = decode_entities(&text);
        let text = normalize(&text);
        trim_markers(&text)
            .chars()
            .flat_map(char::to_lowercase)
            .map(latin_lookalike)
            .filter(|c| c.is_alphanumeric())
            .collect()
    }

    /// A line without its list, quote and heading markers and list numbers
    /// (`1.`), which are not part of what the line says.
    fn trim_markers(text: &str) -> &str {
        text.trim_start_matches(|c: char| {
            c.is_whitespace() || c.is_ascii_digit() || ".)#>-*+".contains(c)
        })
    }

    /// Numeric character references decoded; named ones dropped.
    fn decode_entities(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('&') {
            out.push_str(&rest[..i]);
            let tail = &rest[i + 1..];
            let end = tail
                .char_indices()
                .take(40)
                .find(|(_, c)| *c == ';')
                .map(|(j, _)| j);
            let Some(end) = end else {
                out.push('&');
                rest = tail;
                continue;
            };
            let name = &tail[..end];
            let code = if let Some(hex) = name
                .strip_prefix(['#'])
                .and_then(|n| n.strip_prefix(['x', 'X']))
            {
                u32::from_str_radix(hex, 16).ok()
            } else if let Some(dec) = name.strip_prefix('#') {
                dec.parse::<u32>().ok()
            } else if name.chars().all(|c| c.is_ascii_alphanumeric()) && !name.is_empty() {
                None
            } else {
                out.push('&');
                rest = tail;
                continue;
            };
            if let Some(c) = code.and_then(char::from_u32) {
                out.push(c);
            }
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Lower-case Cyrillic, Greek and Armenian letters that look like Latin ones.
    fn latin_lookalike(c: char) -> char {
        match c {
            'а' | 'α' => 'a',
            'в' | 'β' => 'b',
            'с' | 'ϲ' => 'c',
            'ԁ' => 'd',
            'е' | 'ε' | 'ё' => 'e',
            'һ' | 'н' => 'h',
            'і' | 'ι' | 'ї' => 'i',
            'ј' => 'j',
            'к' | 'κ' => 'k',
            'м' | 'μ' => 'm',
            'п' | 'η' | 'ո' => 'n',
            'о' | 'ο' | 'օ' => 'o',
            'р' | 'ρ' => 'p',
            'ԛ' => 'q',
            'г' => 'r',
            'ѕ' => 's',
            'т' | 'τ' => 't',
            'υ' | 'ս' => 'u',
            'ν' | 'ѵ' => 'v',
            'ԝ' | 'ω' => 'w',
            'х' | 'χ' => 'x',
            'у' | 'γ' => 'y',
            other => other,
        }
    }
}

/// GitHub: `X-Hub-Signature-256`, `X-GitHub-Delivery`, `X-GitHub-Event`,
/// and issue comments through the REST API at `api_url`.
impl TicketSource for GithubSource {
    fn verify(&self, d: &Inbound<'_>) -> Result<(), IntakeError> {
        let secret = self.secret.as_ref().ok_or(IntakeError::Misconfigured)?;
        signature::verify_hub(
            secret.expose_secret().as_bytes(),
            "X-Hub-Signature-256",
            d.header("x-hub-signature-256"),
            d.body,
        )?;
        Ok(())
    }

    fn delivery_id(&self, d: &Inbound<'_>) -> Result<String, IntakeError> {
        delivery_id(d.header("x-github-delivery"), "X-GitHub-Delivery")
    }

    fn parse(&self, d: &Inbound<'_>) -> Result<Parsed, IntakeError> {
        let event = d
            .header("x-github-event")
            .ok_or_else(|| IntakeError::BadHeader("header X-GitHub-Event is missing".into()))?;
        Ok(parse(self, event, d.body)?)
    }

    fn posts_notes(&self) -> bool {
        self.token.is_some()
    }

    fn post_note<'a>(
        &'a self,
        client: &'a reqwest::Client,
        key: &'a TicketKey,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let enc = crate::domain::path_segment;
            let token = self.token.as_ref().ok_or("no token")?;
            let (repo, number) = key_rest(key).rsplit_once('#').ok_or("bad key")?;
            let (owner, name) = repo.split_once('/').ok_or("bad key")?;
            let url = format!(
                "{}/repos/{}/{}/issues/{}/comments",
                self.api_url.trim_end_matches('/'),
                enc(owner),
                enc(name),
                enc(number)
            );
            let req = client
                .post(url)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .json(&serde_json::json!({ "body": text }));
            note_answer(note_auth(req, token).send().await, "GitHub API")
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> GithubSource {
        GithubSource {
            secret_env: None,
            secret_file: None,
            secret: None,
            repositories: vec!["acme/access-requests".into()],
            approval_label: "access-approved".into(),
            api_url: "https://api.github.com".into(),
            token_env: None,
            token: None,
        }
    }

    fn payload(action: &str, body: &str, labels: &[&str]) -> Value {
        json!({
            "action": action,
            "issue": {
                "number": 42,
                "title": "db access",
                "user": {"login": "dave-gh"},
                "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
                "state": "open",
                "updated_at": "2026-11-25T09:41:07Z",
                "body": body,
            },
            "repository": {"full_name": "Acme/Access-Requests"},
            "sender": {"login": "alice-gh"},
        })
    }

    fn event(v: &Value) -> TicketEvent {
        match parse(&cfg(), "issues", v.to_string().as_bytes()).unwrap() {
            Parsed::Ticket(ev) => ev,
            other => panic!("{other:?}"),
        }
    }

    const FORM: &str =
        "### Resource\n\nprod-db/readonly\n\n### Duration\n\n2h\n\n### Start\n\n_No response_";

    #[test]
    fn reads_the_form_in_any_order_and_line_ending() {
        let ev = event(&payload("opened", FORM, &[]));
        assert_eq!(ev.key.as_str(), "github:Acme/Access-Requests#42");
        let r = ev.request.unwrap();
        assert_eq!(
            (r.resource.as_str(), r.duration.as_deref(), r.start),
            ("prod-db/readonly", Some("2h"), None)
        );
        assert_eq!(r.subject, "dave-gh");

        let crlf = "### Start\r\n\r\n2026-11-25T10:00:00Z\r\n\r\n### Duration\r\n\r\n30m\r\n\r\n### Resource\r\n\r\nhooks/deploy\r\n";
        let r = event(&payload("edited", crlf, &[])).request.unwrap();
        assert_eq!(
            (r.resource.as_str(), r.duration.as_deref()),
            ("hooks/deploy", Some("30m"))
        );
        assert_eq!(
            r.start.map(|t| t.to_rfc3339()),
            Some("2026-11-25T10:00:00+00:00".into())
        );
    }

    #[test]
    fn bad_requests_are_events_not_errors() {
        for (body, needle) in [
            ("", "body is empty"),
            ("### Duration\n\n2h", "Resource"),
            ("### Resource\n\n_No response_", "Resource"),
            (
                "### Resource\n\nprod db\n\n### Duration\n\n2 hours",
                "not a duration",
            ),
            (
                "### Resource\n\nprod-db/ro\n\n### Start\n\nnext tuesday",
                "RFC 3339",
            ),
            (
                "### Resource\n\nprod-db/ro\n\n### Resource\n\nprod-db/admin",
                "more than one",
            ),
        ] {
            let err = event(&payload("opened", body, &[])).request.unwrap_err();
            assert!(err.contains(needle), "{body:?} gave {err}");
        }
        let mut v = payload("opened", FORM, &[]);
        v["issue"]["body"] = Value::Null;
        assert!(event(&v).request.is_err());
    }

    #[test]
    fn approval_follows_the_label() {
        let mut v = payload("labeled", FORM, &["access-approved"]);
        v["label"] = json!({"name": "Access-Approved"});
        let ev = event(&v);
        assert!(
            matches!(&ev.approval, ApprovalSignal::Given { by, .. } if by == &["alice-gh".to_string()])
        );

        v["action"] = json!("unlabeled");
        v["issue"]["labels"] = json!([]);
        assert_eq!(event(&v).approval, ApprovalSignal::Withdrawn);

        v["label"] = json!({"name": "bug"});
        v["action"] = json!("labeled");
        v["issue"]["labels"] = json!([{"name": "bug"}, {"name": "access-approved"}]);
        assert_eq!(event(&v).approval, ApprovalSignal::Carried { still: true });

        let ev = event(&payload("edited", FORM, &["bug"]));
        assert_eq!(ev.approval, ApprovalSignal::Carried { still: false });
    }

    #[test]
    fn status() {
        let mut v = payload("closed", FORM, &[]);
        v["issue"]["state"] = json!("closed");
        let ev = event(&v);
        assert_eq!(
            (ev.status, ev.source_status.as_str()),
            (TicketStatus::Closed, "closed")
        );
        for action in ["deleted", "transferred"] {
            let ev = event(&payload(action, FORM, &[]));
            assert_eq!(
                (ev.status, ev.source_status.as_str()),
                (TicketStatus::Deleted, action)
            );
        }
        assert_eq!(
            event(&payload("reopened", FORM, &[])).status,
            TicketStatus::Open
        );
    }

    #[test]
    fn what_is_ignored() {
        let body = payload("opened", FORM, &[]).to_string();
        let p = parse(&cfg(), "push", body.as_bytes()).unwrap();
        assert!(matches!(p, Parsed::Ignored { ticket: None, .. }));
        let mut other = payload("opened", FORM, &[]);
        other["repository"]["full_name"] = json!("evil/repo");
        let p = parse(&cfg(), "issues", other.to_string().as_bytes()).unwrap();
        assert!(
            matches!(p, Parsed::Ignored { ticket: None, ref why } if why.contains("evil/repo"))
        );
    }

    #[test]
    fn what_is_malformed() {
        assert!(matches!(
            parse(&cfg(), "issues", b"nope"),
            Err(SourceError::NotJson(_))
        ));
        for path in [
            &["issue", "number"][..],
            &["issue", "updated_at"],
            &["issue", "user"],
            &["action"],
        ] {
            let mut v = payload("opened", FORM, &[]);
            match path {
                [a] => v[*a] = Value::Null,
                [a, b] => v[*a][*b] = Value::Null,
                _ => unreachable!(),
            }
            let e = parse(&cfg(), "issues", v.to_string().as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(path[path.len() - 1]), "{e}");
        }
        let mut v = payload("labeled", FORM, &[]);
        v["label"] = Value::Null;
        assert!(parse(&cfg(), "issues", v.to_string().as_bytes()).is_err());
        let mut v = payload("opened", FORM, &[]);
        v["repository"]["full_name"] = json!("acme/access-requests");
        v["issue"]["number"] = json!(-1);
        assert!(parse(&cfg(), "issues", v.to_string().as_bytes()).is_err());
    }

    fn read(body: &str) -> Result<crate::ticket::Request, String> {
        event(&payload("edited", body, &[])).request
    }

    #[test]
    fn hidden_text_never_fills_a_field() {
        let visible = "### Resource\n\nhooks/a\n\n### Duration\n\n2h";
        for body in [
            format!("{visible}\n\n<!-- ### Resource\n\nhooks/b -->"),
            format!("<!--\n### Resource\n\nhooks/b\n\n-->\n{visible}"),
            "### Resource\n\n<!-- hooks/b -->hooks/a\n\n### Duration\n\n2h".to_string(),
            format!("{visible}\n\n```\n### Resource\n\nhooks/b\n```"),
            format!("{visible}\n\n~~~~ text\n### Resource\nhooks/b\n~~~~~"),
            format!("{visible}\n\n```\n### Resource\n\nhooks/b"),
            "### Resource\n\n    hooks/b\n\nhooks/a\n\n### Duration\n\n2h".to_string(),
            "### Resource\n\n\thooks/b\n\nhooks/a\n\n### Duration\n\n2h".to_string(),
            "### Resource\r\rhooks/a\r\r### Duration\r\r2h\r\r<!--\r### Resource\rhooks/b\r-->"
                .to_string(),
            format!("{visible}\n\n### Justification\n\n<!--> visible\n\n"),
        ] {
            let r = read(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
            assert_eq!(r.resource, "hooks/a", "{body:?}");
            assert_eq!(r.duration.as_deref(), Some("2h"), "{body:?}");
        }
        // A comment or fence that hides the only answer leaves no answer.
        for body in [
            "### Resource\n\n<!-- hooks/b -->\n\n### Duration\n\n2h",
            "### Resource\n\n```\nhooks/b\n```\n\n### Duration\n\n2h",
            "### Resource\n\n    hooks/b\n\n### Duration\n\n2h",
            "### Resource\n\n<!--\n\nhooks/b",
        ] {
            let e = read(body).unwrap_err();
            assert!(e.contains("no `### Resource` answer"), "{body:?}: {e}");
        }
        // An indented line that continues a paragraph is text, not code.
        let e = read("### Resource\n\nhooks/a\n    hooks/b\n\n### Duration\n\n2h").unwrap_err();
        assert!(e.contains("not a resource"), "{e}");
    }

    #[test]
    fn headings_compare_after_normalization() {
        // What normalises to a label is that label, so a copy is a duplicate.
        for second in [
            "### Reso\u{200b}urce",
            "### \u{feff}Resource",
            "### Ｒｅｓｏｕｒｃｅ",
            "###\tResource ###",
            "  ### RESOURCE",
        ] {
            let body =
                format!("### Resource\n\nhooks/a\n\n{second}\n\nhooks/b\n\n### Duration\n\n2h");
            let e = read(&body).unwrap_err();
            assert!(e.contains("more than one"), "{second:?}: {e}");
            let alone = format!("{second}\n\nhooks/b\n\n### Duration\n\n2h");
            assert_eq!(read(&alone).unwrap().resource, "hooks/b", "{second:?}");
        }
        // What only looks like a label is refused, never read as another field.
        for second in [
            "＃＃＃ Resource",
            "## Resource",
            "#### Resource",
            "### **Resource**",
            "### Reso&#117;rce",
            "### R&#x65;source",
            "### Rеsource",
            "- ### Resource",
            "> ### Resource",
            "<h3>Resource</h3>",
            "Resource",
            "**Duration**",
        ] {
            let body = format!("### Resource\n\nhooks/a\n\n### Justification\n\nwhy\n\n{second}\n\nhooks/b\n\n### Duration\n\n2h");
            let e = read(&body).unwrap_err();
            assert!(e.contains("reads like the form label"), "{second:?}: {e}");
        }
        // Other headings end a section and are not fields.
        let body = "### Resource\n\nhooks/a\n\n## Notes\n\nhooks/b\n\n### Duration\n\n2h\n\n### Resources needed\n\nnone";
        assert_eq!(read(body).unwrap().resource, "hooks/a");
        // Not a heading at all, but it reads like one.
        let e = read("### Resource\n\nhooks/a\n###Duration\n\n2h").unwrap_err();
        assert!(
            e.contains("reads like the form label `### Duration`"),
            "{e}"
        );
    }

    #[test]
    fn dates_out_of_range_are_refused() {
        for start in [
            "1969-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "1900-01-01T00:00:00+00:00",
        ] {
            let body =
                format!("### Resource\n\nhooks/a\n\n### Duration\n\n2h\n\n### Start\n\n{start}");
            let e = read(&body).unwrap_err();
            assert!(e.contains("1970 through 9999"), "{start}: {e}");
        }
        let body =
            "### Resource\n\nhooks/a\n\n### Duration\n\n2h\n\n### Start\n\n9999-12-31T23:00:00Z";
        assert!(read(body).is_ok());
        let mut v = payload("opened", FORM, &[]);
        v["issue"]["updated_at"] = json!("1969-12-31T23:59:59Z");
        let e = parse(&cfg(), "issues", v.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("1970 through 9999"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever is hidden where and however, the hidden resource is
        /// never read: the answer is the shown one or a refusal.
        #[test]
        fn hidden_resource_is_never_read(
            hide in proptest::sample::select(vec![
                "<!--\n{h}\n-->",
                "<!-- {h} -->",
                "```\n{h}\n```",
                "~~~\n{h}\n~~~",
                "````md\n{h}\n```\n````",
                "```\n{h}",
                "<!--\n{h}",
                "    {h}",
                "\t{h}",
            ]),
            heading in proptest::sample::select(vec![
                "### Resource", "### Reso\u{200b}urce", "## Resource", "###Resource",
                "＃＃＃ Resource", "### resource", "Resource", "### Ｒｅｓｏｕｒｃｅ",
            ]),
            at in 0usize..4,
            crlf in proptest::bool::ANY,
            noise in "[ -~\n]{0,40}",
        ) {
            let hidden = hide.replace("{h}", &format!("{heading}\n\nhooks/b"));
            let mut parts = vec![
                "### Resource\n\nhooks/a".to_string(),
                "### Duration\n\n2h".to_string(),
                format!("### Justification\n\n{noise}"),
            ];
            parts.insert(at.min(parts.len()), hidden);
            let mut body = parts.join("\n\n");
            if crlf {
                body = body.replace('\n', "\r\n");
            }
            match read(&body) {
                Ok(r) => proptest::prop_assert_eq!(r.resource, "hooks/a", "{:?}", body),
                Err(e) => proptest::prop_assert!(!e.is_empty()),
            }
        }

        #[test]
        fn any_body_reads_without_panic(body in "(###? ?|<!--|-->|```|~~~|    |\t|\r|\n|&#[0-9]{1,8};|[a-zA-Z/ ]{0,6}|\u{200b}|＃){0,40}") {
            let _ = form::sections(&body);
            let _ = read(&body);
        }
    }
}
