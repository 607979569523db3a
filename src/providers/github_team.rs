//! The `github_team` provider: team membership through the GitHub REST API
//! at a configurable `api_url` (GitHub Enterprise too). Target is the team
//! slug; the account is the GitHub login.
//!
//! Every value put into the URL's path is one segment of `[A-Za-z0-9_.-]`,
//! not `.` or `..`, and is percent-encoded, so no target, account or
//! organisation can reach another API path (URL parsers resolve `..`, and
//! `%2e%2e`, as a step up).

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;

use super::{Action, Call, Deps, Provider, ProviderError};
use crate::config::secrets::load_secret;
use crate::config::{ConfigDuration, ConfigError, GithubTeamProvider, ProviderSection};
use crate::domain::TargetRule;

/// The longest team slug, login or organisation accepted.
const MAX_SEGMENT: usize = 100;

/// One URL path segment as GitHub names teams, logins and organisations.
fn check_segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_SEGMENT {
        return Err(format!("a {what} is 1 to {MAX_SEGMENT} characters"));
    }
    if s == "." || s == ".." {
        return Err(format!("a {what} is not `.` or `..`"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "a {what} is ASCII letters, digits, `_`, `.` and `-`, in one segment"
        ));
    }
    Ok(())
}

/// The `github_team` provider's target rule: one team slug.
pub fn check_target(target: &str) -> Result<(), String> {
    check_segment("team slug", target)
}

impl TargetRule for GithubTeamProvider {
    fn check_target(&self, target: &str) -> Result<(), String> {
        check_target(target)
    }
}

impl ProviderSection for GithubTeamProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        Some(self.timeout)
    }

    fn load_secrets(
        &mut self,
        at: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.token = Some(load_secret(
            at,
            "token",
            &self.token_env,
            &self.token_file,
            env,
        )?);
        Ok(())
    }

    fn build(&self, _name: &str, deps: &Deps) -> Box<dyn Provider> {
        Box::new(GithubTeam::new(self, deps))
    }
}

/// The `github_team` provider, with the outbound client.
pub struct GithubTeam {
    cfg: GithubTeamProvider,
    client: reqwest::Client,
}

impl GithubTeam {
    pub fn new(cfg: &GithubTeamProvider, deps: &Deps) -> GithubTeam {
        GithubTeam {
            cfg: cfg.clone(),
            client: deps.http.clone(),
        }
    }
}

impl Provider for GithubTeam {
    fn apply<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(call(&self.client, &self.cfg, c))
    }

    fn remove<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(call(&self.client, &self.cfg, c))
    }
}

/// The membership URL, every path segment checked and encoded.
pub fn membership_url(
    cfg: &GithubTeamProvider,
    team: &str,
    account: &str,
) -> Result<String, ProviderError> {
    check_target(team).map_err(ProviderError::Refused)?;
    check_segment("GitHub login", account)
        .map_err(|m| ProviderError::Refused(format!("account: {m}")))?;
    check_segment("GitHub organisation", &cfg.org)
        .map_err(|m| ProviderError::Refused(format!("org: {m}")))?;
    let enc = crate::domain::path_segment;
    Ok(format!(
        "{}/orgs/{}/teams/{}/memberships/{}",
        cfg.api_url.trim_end_matches('/'),
        enc(&cfg.org),
        enc(team),
        enc(account)
    ))
}

async fn call(
    client: &reqwest::Client,
    cfg: &GithubTeamProvider,
    call: &Call<'_>,
) -> Result<(), ProviderError> {
    let token = cfg
        .token
        .as_ref()
        .ok_or_else(|| ProviderError::Call("no token".into()))?;
    // Errors go into the audit trail: whatever they come to say, the token
    // is scrubbed from them.
    let fail =
        |text: &str| ProviderError::Call(crate::redact::redact(text, &[token.expose_secret()]));
    let url = membership_url(cfg, call.target, call.account)?;
    let req = match call.action {
        Action::Grant => client
            .put(&url)
            .json(&serde_json::json!({ "role": "member" })),
        Action::Revoke => client.delete(&url),
    };
    let resp = req
        .bearer_auth(token.expose_secret())
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .send()
        .await
        .map_err(|e| {
            fail(&format!(
                "GitHub API: {}",
                if e.is_timeout() {
                    "timed out"
                } else {
                    "request failed"
                }
            ))
        })?;
    let status = resp.status();
    if status.is_success() || (call.action == Action::Revoke && status.as_u16() == 404) {
        Ok(())
    } else {
        Err(fail(&format!("GitHub API answered {}", status.as_u16())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Read as the configuration would be, so new keys with defaults do
    // not break it.
    fn cfg(org: &str) -> GithubTeamProvider {
        toml::from_str(&format!(
            "api_url = \"https://api.github.example/\"\norg = {}",
            toml::Value::String(org.into())
        ))
        .unwrap()
    }

    #[test]
    fn every_path_segment_is_one_segment() {
        assert_eq!(
            membership_url(&cfg("acme"), "on-call.v2", "dave_gh").unwrap(),
            "https://api.github.example/orgs/acme/teams/on-call.v2/memberships/dave_gh"
        );
        for (team, account, org) in [
            ("..", "dave", "acme"),
            (".", "dave", "acme"),
            ("a/b", "dave", "acme"),
            ("a%2Fb", "dave", "acme"),
            ("a?x=1", "dave", "acme"),
            ("a#x", "dave", "acme"),
            ("", "dave", "acme"),
            ("team", "..", "acme"),
            ("team", "a/../../x", "acme"),
            ("team", "dave", ".."),
            ("team", "dave", "acme/x"),
        ] {
            assert!(
                matches!(
                    membership_url(&cfg(org), team, account),
                    Err(ProviderError::Refused(_))
                ),
                "{team} {account} {org}"
            );
        }
        assert!(check_target("admins").is_ok());
        assert!(
            check_target("a:b").is_err(),
            "a contract target, not a slug"
        );
    }
}
