//! The real `warrant serve` as a child process: its configuration file,
//! start-up until `/readyz`, its memory and CPU from /proc, and its end.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::Client;
use crate::stats::proc_status_kb;

pub const BIN: &str = env!("CARGO_BIN_EXE_warrant");

pub use crate::config::ServerSetup;

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Writes `warrant.toml` into `dir` for a server on `port`.
pub fn write_config(dir: &Path, port: u16, s: &ServerSetup) -> PathBuf {
    let path = dir.join("warrant.toml");
    std::fs::write(&path, crate::config::text(port, s)).expect("write the configuration");
    path
}

fn command(config: &Path, log: &Path) -> Command {
    let mut c = Command::new(BIN);
    let log = std::fs::File::create(log).expect("create the server log");
    let log2 = log.try_clone().expect("clone the log handle");
    for name in [
        "WARRANT_GITHUB_SECRET",
        "WARRANT_JIRA_SECRET",
        "WARRANT_SERVICENOW_SECRET",
        "WARRANT_HOOKS_SECRET",
    ] {
        c.env(name, crate::config::env(name).unwrap_or_default());
    }
    c.arg("--config")
        .arg(config)
        .env_remove("WARRANT_CONFIG")
        .env_remove("WARRANT_DATABASE_URL")
        .env_remove("WARRANT_SERVER_LISTEN")
        .env(
            "WARRANT_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    c
}

/// `warrant migrate`: the schema, before seeding rows into it.
pub fn migrate(config: &Path, dir: &Path) {
    let status = command(config, &dir.join("migrate.log"))
        .arg("migrate")
        .status()
        .expect("run warrant migrate");
    assert!(status.success(), "warrant migrate failed: see {dir:?}");
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Spawns `warrant serve` and waits until `/readyz` answers 200.
    pub async fn start(config: &Path, port: u16, dir: &Path, name: &str) -> Server {
        let log = dir.join(format!("{name}.log"));
        let child = command(config, &log)
            .arg("serve")
            .spawn()
            .expect("spawn warrant serve");
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "warrant serve exited with {status} during start-up:\n{}",
                    server.log_tail()
                );
            }
            let mut c = Client::new(server.addr);
            if let Ok(r) = c.get("/readyz", None).await {
                if r.status == 200 {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "warrant serve not ready after 120 s:\n{}",
                server.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_mb(&self) -> f64 {
        proc_status_kb(self.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0
    }

    pub fn hwm_mb(&self) -> f64 {
        proc_status_kb(self.pid(), "VmHWM").unwrap_or(0) as f64 / 1024.0
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Log lines at WARN or ERROR, counted.
    pub fn warnings(&self) -> (usize, Option<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        (bad.len(), bad.first().map(|s| s.to_string()))
    }

    /// SIGKILL: nothing acknowledged may depend on a clean shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
