//! The configuration the server under test runs with: the three sources,
//! 200 requesters and two approvers in `[[identities]]`, one policy, and
//! the `http` provider pointing at the bench's receiver.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::payloads::{
    github_login, jira_account, sn_user, ADMIN_TOKEN, APPROVERS, GH_SECRET, HOOKS_SECRET,
    JIRA_SECRET, SN_SECRET, SUBJECTS,
};

pub struct ServerSetup<'a> {
    pub db_url: &'a str,
    pub receiver_url: &'a str,
    pub pool_size: u32,
    pub writers: usize,
    pub job_concurrency: usize,
}

/// The secrets' environment, as the child process gets it.
pub fn env(name: &str) -> Option<String> {
    match name {
        "WARRANT_GITHUB_SECRET" => Some(GH_SECRET.into()),
        "WARRANT_JIRA_SECRET" => Some(JIRA_SECRET.into()),
        "WARRANT_SERVICENOW_SECRET" => Some(SN_SECRET.into()),
        "WARRANT_HOOKS_SECRET" => Some(HOOKS_SECRET.into()),
        _ => None,
    }
}

/// `warrant.toml` for a server on `port`.
pub fn text(port: u16, s: &ServerSetup) -> String {
    let token_hash = hex::encode(Sha256::digest(ADMIN_TOKEN.as_bytes()));
    let mut t = String::new();
    let _ = write!(
        t,
        r#"[server]
listen = "127.0.0.1:{port}"

[database]
url = "{db}"
pool_size = {pool}
writers = {writers}

[[api.tokens]]
name = "bench"
role = "admin"
sha256 = "{token_hash}"

[sources.github]
secret_env = "WARRANT_GITHUB_SECRET"
repositories = ["acme/access-requests"]
approval_label = "access-approved"

[sources.jira]
secret_env = "WARRANT_JIRA_SECRET"
projects = ["OPS"]
approved_statuses = ["Approved"]
closed_statuses = ["Rejected", "Cancelled"]
[sources.jira.fields]
resource = "customfield_10100"
duration = "customfield_10103"
subject = "reporter"

[sources.servicenow]
secret_env = "WARRANT_SERVICENOW_SECRET"
[sources.servicenow.fields]
resource = "u_access_resource"
subject = "assigned_to"

[[policies]]
name = "hooks"
resources = ["hooks/*"]
sources = ["github", "jira:OPS", "servicenow"]
subjects = ["*"]
approvers = ["alice", "bob"]
max_duration = "4h"
default_duration = "1h"

[providers.hooks]
kind = "http"
url = "{receiver}"
secret_env = "WARRANT_HOOKS_SECRET"
timeout = "5s"

[jobs]
concurrency = {jobs}
"#,
        db = s.db_url,
        pool = s.pool_size,
        writers = s.writers,
        receiver = s.receiver_url,
        jobs = s.job_concurrency,
    );
    let people = (0..SUBJECTS)
        .map(|i| (format!("user{i}"), i))
        .chain(APPROVERS.iter().map(|(n, i)| (n.to_string(), *i)));
    for (principal, i) in people {
        let _ = write!(
            t,
            "\n[[identities]]\nprincipal = \"{principal}\"\ngithub = \"{}\"\njira = \"{}\"\nservicenow = \"{}\"\n",
            github_login(i),
            jira_account(i),
            sn_user(i)
        );
    }
    t
}
