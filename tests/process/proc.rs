//! Starting, waiting for and stopping `warrant serve` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use crate::helpers::{base_config, env, sign_github, ADMIN_TOKEN};
use crate::payloads::{self, Issue};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warrant")
}

/// Writes a configuration for a process listening on `port`.
pub fn write_config(
    dir: &Path,
    name: &str,
    db_url: &str,
    hooks_url: &str,
    port: u16,
    extra: &str,
) -> PathBuf {
    let text = base_config(db_url, hooks_url).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    path
}

pub fn command(config: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--config").arg(config);
    for var in [
        "GH",
        "JIRA",
        "SN",
        "HOOKS",
        "PROD_DB_URL",
        "WARRANT_KEYS_SECRET",
    ] {
        if let Some(v) = env(var) {
            cmd.env(var, v);
        }
    }
    cmd.env_remove("WARRANT_DATABASE_URL")
        .env_remove("WARRANT_CONFIG")
        .env("WARRANT_LOG", "warn");
    cmd
}

pub struct Serve {
    pub child: Child,
    pub port: u16,
    pub base: String,
}

impl Serve {
    pub fn start(config: &Path, port: u16) -> Serve {
        let log = std::fs::File::create(config.with_extension(format!("{port}.log"))).unwrap();
        let child = command(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Serve {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn ready(&self) {
        let client = reqwest::Client::new();
        wait_for("readyz", Duration::from_secs(30), || async {
            matches!(client.get(format!("{}/readyz", self.base)).send().await, Ok(r) if r.status() == 200)
        })
        .await;
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub async fn github(&self, event: &str, delivery: &str, body: &Value) -> reqwest::Response {
        let raw = serde_json::to_vec(body).unwrap();
        reqwest::Client::new()
            .post(format!("{}/webhooks/github", self.base))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sign_github(&raw))
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    /// Sends an approved request for issue `n` asking for `duration`.
    pub async fn approved(&self, n: u64, duration: &str) -> Issue<'static> {
        let mut issue = Issue::new(n, Utc::now());
        issue.body = payloads::form(&format!("hooks/svc-{n}"), duration, None);
        issue.labels = vec!["access-approved"];
        let r = self
            .github(
                "issues",
                &format!("approve-{n}"),
                &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
            )
            .await;
        assert_eq!(r.status(), 200);
        issue
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        match reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
        {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    pub async fn grants(&self) -> Vec<Value> {
        let (status, body) = self.get("/v1/grants?limit=5000").await;
        assert_eq!(status, 200, "{body}");
        body["grants"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds, failing the test at the deadline.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
