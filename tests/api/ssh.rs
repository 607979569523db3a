//! The `ssh` provider end to end: a pipeline sends its public key with its
//! CI request and gets an OpenSSH certificate, which a real `sshd` (Debian's
//! openssh-server, started here on a loopback port with the CA served at
//! `GET /v1/ssh/ca.pub` as `TrustedUserCAKeys`) accepts inside the grant's
//! window and refuses once it has ended. Keys are made with `ssh-keygen`.
//!
//! sshd checks certificates against the real time, so warrant's clock is
//! set relative to it: a grant made with the clock two hours back carries a
//! certificate that has already ended.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use ssh_key::{Certificate, PublicKey};

use crate::ci::{ask, gh_claims, Issuer};
use crate::helpers::{Backend, TestApp, ADMIN_TOKEN};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};

const SSHD: &str = "/usr/sbin/sshd";
const KEY: &str = "github:acme/access-requests#77";
/// The account the pipeline's principal has on the `hosts` provider: the
/// certificate's principal.
const ACCOUNT: &str = "deployer";

/// Whether the OpenSSH tools are here. With `WARRANT_TEST_PG` set (CI),
/// missing tools fail the test instead of skipping it.
fn openssh_available() -> bool {
    let missing: Vec<&str> = [SSHD, "/usr/bin/ssh", "/usr/bin/ssh-keygen"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} missing; install with `apt-get install -y openssh-server openssh-client`",
        missing.join(", ")
    );
    if std::env::var_os("WARRANT_TEST_PG").is_some() {
        panic!("{msg} (WARRANT_TEST_PG is set, so the ssh tests must run)");
    }
    eprintln!("skipping: {msg}");
    false
}

/// Makes an unencrypted key pair at `path` (and `path.pub`).
fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let out = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            kind,
            "-N",
            passphrase,
            "-C",
            "warrant-test",
            "-f",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The configuration of an `ssh` provider `hosts` with the CA at `ca`,
/// the pipeline's account on it, a policy and a trust rule for `hosts/*`.
fn ssh_config(issuer: &Issuer, ca: &Path) -> String {
    format!(
        r#"{}
[[policies]]
name = "ssh-deploys"
resources = ["hosts/*"]
sources = ["github", "ci"]
subjects = ["ci:acme/app"]
approvers = ["alice"]
max_duration = "4h"

[providers.hosts]
kind = "ssh"
ca_key_file = "{}"
extensions = ["permit-pty", "permit-port-forwarding"]

[[identities]]
principal = "ci:acme/app"
accounts = {{ hosts = "{ACCOUNT}" }}

[[ci.trust]]
issuer = "github-actions"
principal = "ci:acme/app"
claims = {{ repository = "acme/app", environment = "production" }}
resources = ["hosts/*"]
max_duration = "30m"
"#,
        issuer.config(),
        ca.display()
    )
}

/// A real sshd on a loopback port, trusting `ca_pub` for user
/// certificates, letting principal `ACCOUNT` log in as the current user.
struct Sshd {
    port: u16,
    log: PathBuf,
    user: String,
    child: tokio::process::Child,
}

impl Sshd {
    async fn start(dir: &Path, ca_pub: &str) -> Sshd {
        // Debian's sshd refuses to start without its privilege separation
        // directory, which a fresh container lacks.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_key");
        keygen(&host_key, "ed25519", "");
        let ca_file = dir.join("trusted_user_ca.pub");
        std::fs::write(&ca_file, ca_pub).unwrap();
        let principals = dir.join("principals");
        std::fs::write(&principals, format!("{ACCOUNT}\n")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 TrustedUserCAKeys {}\nAuthorizedPrincipalsFile {}\nAuthorizedKeysFile none\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.join("sshd.pid").display(),
                ca_file.display(),
                principals.display(),
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let user = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        // Waits for the listener, not for a timer of warrant's.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Sshd {
                    port,
                    user,
                    child,
                    log: dir.join("sshd.log"),
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("sshd did not listen on 127.0.0.1:{port}");
    }

    /// Runs `true` over ssh with `key` and its certificate `cert`: whether
    /// the login succeeded, and the client's messages.
    async fn login(&self, key: &Path, cert: &Path) -> (bool, String) {
        let out = tokio::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(key)
            .arg("-o")
            .arg(format!("CertificateFile={}", cert.display()))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-v",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Sshd {
    /// Waits until sshd's log says `what`: its monitor process writes what
    /// the connection's process reports, a moment after the client hears.
    async fn logged(&self, what: &str) {
        let mut said = String::new();
        for _ in 0..100 {
            said = std::fs::read_to_string(&self.log).unwrap_or_default();
            if said.contains(what) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("sshd never logged {what:?}: {said}");
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The real time, to whole seconds.
fn real_now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap()
}

/// Opens issue 77 at `at` asking for `hosts/production` for four hours,
/// and alice approves it.
async fn ssh_ticket(app: &TestApp, at: DateTime<Utc>) {
    let mut issue = Issue::new(77, at);
    issue.body = payloads::form("hosts/production", "4h", None);
    let r = app
        .post_github(
            "issues",
            "open-77",
            &payloads::github("opened", &issue, "dave-gh", None),
        )
        .await;
    assert_eq!(r.status(), 200);
    issue.labels = vec!["access-approved"];
    issue.updated_at = at + Duration::seconds(1);
    let r = app
        .post_github(
            "issues",
            "label-77",
            &payloads::github("labeled", &issue, "alice-gh", Some("access-approved")),
        )
        .await;
    assert_eq!(r.status(), 200);
}

async fn ca_pub(app: &TestApp, query: &str) -> (u16, String, String) {
    let resp = app
        .client
        .get(format!("{}/v1/ssh/ca.pub{query}", app.addr))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// A CI request of run 4242, `attempt`, for `hosts/production`.
fn hosts(public_key: Option<&str>) -> Value {
    let mut body = json!({ "ticket": KEY, "resource": "hosts/production", "duration": "15m" });
    if let Some(k) = public_key {
        body["public_key"] = json!(k);
    }
    body
}

fn token(app: &TestApp, issuer: &Issuer, attempt: &str) -> String {
    let mut claims = gh_claims(app);
    claims["run_attempt"] = json!(attempt);
    issuer.sign(&claims)
}

fn write_cert(dir: &Path, name: &str, body: &Value) -> (Certificate, PathBuf) {
    let text = body["credential"]
        .as_str()
        .unwrap_or_else(|| panic!("a certificate: {body}"));
    let cert = Certificate::from_openssh(text).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    (cert, path)
}

async fn a_certificate_logs_in_during_its_window_only(backend: Backend) {
    if !openssh_available() {
        return;
    }
    let issuer = Issuer::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    keygen(&ca, "ed25519", "");
    let user_key = dir.path().join("id_ed25519");
    keygen(&user_key, "ed25519", "");
    let public_key = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
    let app = app!(backend, &ssh_config(&issuer, &ca));

    // The CA's public key, as hosts fetch it for TrustedUserCAKeys.
    let (status, ct, ca_line) = ca_pub(&app, "").await;
    assert_eq!(status, 200, "{ca_line}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    let ca_key = PublicKey::from_openssh(ca_line.trim()).unwrap();
    let on_disk = PublicKey::read_openssh_file(&dir.path().join("ca.pub")).unwrap();
    assert_eq!(ca_key.key_data(), on_disk.key_data());
    assert_eq!(ca_pub(&app, "?provider=hosts").await.2, ca_line);
    assert_eq!(ca_pub(&app, "?provider=deploy").await.0, 404);
    let sshd = Sshd::start(dir.path(), &ca_line).await;

    // The ticket was approved three hours ago for four hours.
    let now = real_now();
    app.clock.set(now - Duration::hours(3));
    ssh_ticket(&app, now - Duration::hours(3)).await;

    // What a request brings for its credential is checked before anything
    // is stored.
    let t1 = token(&app, &issuer, "1");
    let (status, body) = ask(&app, &t1, &hosts(None)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("public_key"),
        "{body}"
    );
    for bad in [
        "ssh-ed25519 AAAAnotbase64!",
        "hello",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
    ] {
        let (status, body) = ask(&app, &t1, &hosts(Some(bad))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("OpenSSH public key"),
            "{body}"
        );
    }
    let mut other = crate::ci::deploy();
    other["public_key"] = json!(public_key);
    let (status, body) = ask(&app, &t1, &other).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("only for ssh resources"),
        "{body}"
    );
    assert!(app.grants_of(KEY).await.is_empty());
    let requests = |events: &[Value]| events.iter().filter(|e| e["type"] == "ci.request").count();
    assert_eq!(requests(&app.events_of(KEY).await), 0);

    // A grant made two hours ago: its certificate has ended.
    app.clock.set(now - Duration::hours(2));
    let (status, body) = ask(&app, &token(&app, &issuer, "1"), &hosts(Some(&public_key))).await;
    assert_eq!(status, 201, "{body}");
    let (old, old_path) = write_cert(dir.path(), "old-cert.pub", &body);
    assert_eq!(
        old.valid_before(),
        (now - Duration::hours(2) + Duration::minutes(15)).timestamp() as u64
    );
    let (ok, log) = sshd.login(&user_key, &old_path).await;
    assert!(!ok, "an ended certificate logs in: {log}");
    assert!(log.contains("Permission denied"), "{log}");
    sshd.logged("Certificate invalid: expired").await;

    // A grant made now: its certificate logs in.
    app.clock.set(now);
    let t2 = token(&app, &issuer, "2");
    let (status, body) = ask(&app, &t2, &hosts(Some(&public_key))).await;
    assert_eq!(status, 201, "{body}");
    let g = body["grant"].clone();
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["account"], ACCOUNT, "{g}");
    let (cert, cert_path) = write_cert(dir.path(), "id_ed25519-cert.pub", &body);
    assert_eq!(cert.key_id(), id);
    assert_eq!(cert.valid_principals(), [ACCOUNT.to_string()]);
    assert_eq!(cert.cert_type(), ssh_key::certificate::CertType::User);
    assert_eq!(cert.valid_after(), now.timestamp() as u64);
    assert_eq!(
        cert.valid_before(),
        (now + Duration::minutes(15)).timestamp() as u64
    );
    assert_ne!(cert.serial(), 0);
    assert_ne!(cert.serial(), old.serial());
    let extensions: Vec<&str> = cert.extensions().keys().map(String::as_str).collect();
    assert_eq!(extensions, ["permit-port-forwarding", "permit-pty"]);
    assert!(cert.critical_options().is_empty());
    assert_eq!(cert.signature_key(), ca_key.key_data());
    assert_eq!(
        cert.public_key(),
        PublicKey::from_openssh(public_key.trim())
            .unwrap()
            .key_data()
    );
    let (ok, log) = sshd.login(&user_key, &cert_path).await;
    assert!(ok, "the certificate does not log in: {log}");

    // The same run asking again: the same grant, a fresh certificate for
    // the same window.
    let (status, again) = ask(&app, &t2, &hosts(Some(&public_key))).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["grant"]["id"], id.as_str());
    let (fresh, _) = write_cert(dir.path(), "again-cert.pub", &again);
    assert_ne!(fresh.serial(), cert.serial());
    assert_eq!(
        (fresh.valid_after(), fresh.valid_before(), fresh.key_id()),
        (cert.valid_after(), cert.valid_before(), cert.key_id())
    );

    // Nothing is called outside warrant: the job marks the grant active,
    // and revokes it at its end.
    app.run_jobs().await;
    let (_, grant) = app.get_json(&format!("/v1/grants/{id}"), ADMIN_TOKEN).await;
    assert_eq!(grant["state"], "active", "{grant}");
    assert!(app.receiver.calls().is_empty());

    // The audit trail keeps the key's fingerprint beside each request.
    let events = app.events_of(KEY).await;
    let fingerprint = PublicKey::from_openssh(public_key.trim())
        .unwrap()
        .fingerprint(Default::default())
        .to_string();
    let asked: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "ci.request")
        .collect();
    assert_eq!(asked.len(), 3, "{events:?}");
    assert!(asked
        .iter()
        .all(|e| e["data"]["public_key"] == fingerprint.as_str()));
    assert!(!format!("{events:?}").contains("BEGIN OPENSSH"));

    app.advance(Duration::minutes(15));
    app.run_jobs().await;
    let (_, grant) = app.get_json(&format!("/v1/grants/{id}"), ADMIN_TOKEN).await;
    assert_eq!(
        (grant["state"].clone(), grant["revoke_reason"].clone()),
        (json!("revoked"), json!("expired"))
    );
}

/// With two ssh providers, `ca.pub` must be told which CA to serve.
async fn several_providers_serve_their_own_ca(backend: Backend) {
    if !openssh_available() {
        return;
    }
    let issuer = Issuer::new();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ca-a"), dir.path().join("ca-b"));
    keygen(&a, "ed25519", "");
    keygen(&b, "ed25519", "");
    let extra = format!(
        "{}\n[providers.bastion]\nkind = \"ssh\"\nca_key_file = \"{}\"\n",
        ssh_config(&issuer, &a),
        b.display()
    );
    let app = app!(backend, &extra);
    let (status, _, body) = ca_pub(&app, "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bastion, hosts"), "{body}");
    for (name, path) in [("hosts", &a), ("bastion", &b)] {
        let (status, _, line) = ca_pub(&app, &format!("?provider={name}")).await;
        assert_eq!(status, 200, "{line}");
        let on_disk = PublicKey::read_openssh_file(&path.with_extension("pub")).unwrap();
        assert_eq!(
            PublicKey::from_openssh(line.trim()).unwrap().key_data(),
            on_disk.key_data()
        );
    }
    assert_eq!(ca_pub(&app, "?provider=nope").await.0, 404);
}

/// A CA key warrant cannot sign with stops the load, naming the key.
#[test]
fn unusable_ca_keys_are_refused_at_load() {
    if !openssh_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ecdsa = dir.path().join("ca-ecdsa");
    keygen(&ecdsa, "ecdsa", "");
    let locked = dir.path().join("ca-locked");
    keygen(&locked, "ed25519", "correct horse");
    let public = dir.path().join("ca-ecdsa.pub");
    let missing = dir.path().join("nope");
    for (path, why) in [
        (&ecdsa, "Ed25519"),
        (&locked, "encrypted"),
        (&public, "not an OpenSSH private key"),
        (&missing, "cannot read"),
    ] {
        let text = format!(
            "[providers.hosts]\nkind = \"ssh\"\nca_key_file = \"{}\"\n",
            path.display()
        );
        let err = warrant::config::Config::from_toml(&text, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("providers.hosts.ca_key_file") && err.contains(why),
            "{path:?}: {err}"
        );
        assert!(!err.contains("BEGIN OPENSSH"), "{err}");
    }
}

backend_tests!(
    a_certificate_logs_in_during_its_window_only,
    several_providers_serve_their_own_ca,
);

/// `deploy/ssh/warrant-ssh.toml` loads beside the test configuration, with
/// a CA key made here in place of its path.
#[test]
fn the_deploy_fragment_loads() {
    if !openssh_available() {
        return;
    }
    let issuer = Issuer::new();
    let ca = issuer.dir.path().join("hosts-ca");
    keygen(&ca, "ed25519", "");
    let fragment = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ssh/warrant-ssh.toml"),
    )
    .unwrap()
    .replace("/etc/warrant/ssh/hosts-ca", &ca.display().to_string());
    let text = format!(
        "{}\n{}\n{fragment}",
        crate::helpers::base_config("sqlite://unused.db", "http://127.0.0.1:9/access"),
        issuer.config()
    );
    let config = warrant::config::Config::from_toml(&text, &crate::helpers::env).unwrap();
    assert_eq!(config.providers["hosts"].kind(), "ssh");
    assert_eq!(config.account_on("ci:acme/app", "hosts"), "deploy-acme-app");
}
