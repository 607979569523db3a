//! The `github_team` provider: team membership through the GitHub REST API
//! at a configurable `api_url` (GitHub Enterprise too). Target is the team
//! slug; the account is the GitHub login.

use super::{Action, Call, ProviderError};
use crate::config::GithubTeamProvider;

pub async fn call(
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
    let fail = |text: &str| ProviderError::Call(crate::redact::redact(text, &[token.expose()]));
    let enc = crate::domain::path_segment;
    let url = format!(
        "{}/orgs/{}/teams/{}/memberships/{}",
        cfg.api_url.trim_end_matches('/'),
        enc(&cfg.org),
        enc(call.target),
        enc(call.account)
    );
    let req = match call.action {
        Action::Grant => client
            .put(&url)
            .json(&serde_json::json!({ "role": "member" })),
        Action::Revoke => client.delete(&url),
    };
    let resp = req
        .bearer_auth(token.expose())
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
