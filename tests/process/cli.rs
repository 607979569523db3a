//! Exit codes and messages of the command line, and SIGTERM.

use std::time::Duration;

use crate::helpers::{Backend, Receiver, TestDb};
use crate::proc::{command, free_port, write_config, Serve};

fn run(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = command(config).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "server"),
        ("[server]\nmax_body_bytes = \"lots\"\n", "server.max_body_bytes"),
        ("[sources.github]\nsecret_env = \"UNSET_SECRET_VAR\"\nrepositories = [\"a/b\"]\n", "sources.github.secret_env"),
        ("[providers.h]\nkind = \"http\"\nurl = \"http://x\"\nsecret_env = \"HOOKS\"\ntimeout = \"5 minutes\"\n", "providers.h.timeout"),
        ("[providers.h]\nkind = \"ldap\"\n", "providers.h.kind"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run(&path, &["check-config"]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(key), "{text}: {err}");
        assert!(!err.contains("whsec_"), "no secret in errors");
    }
    let (code, _, err) = run(&dir.path().join("missing.toml"), &["check-config"]);
    assert_eq!(code, 2, "{err}");
    let out = std::process::Command::new(crate::proc::bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn audit_verify_exits_1_on_a_broken_chain() {
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "w.toml",
        &db.url,
        "http://127.0.0.1:9/x",
        free_port(),
        "",
    );
    let (code, out, err) = run(&config, &["migrate"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&config, &["audit", "verify"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"ok\":true"), "{out}");
    {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut c =
            diesel::sqlite::SqliteConnection::establish(db.url.trim_start_matches("sqlite://"))
                .unwrap();
        c.batch_execute("INSERT INTO audit_events (seq, at, type, actor, data, prev_hash, hash) VALUES (1, 0, 'forged', 'me', '{}', 'x', 'y')").unwrap();
    }
    let (code, out, _) = run(&config, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"first_bad\":1"), "{out}");
}

#[tokio::test]
async fn sigterm_stops_cleanly_with_exit_0() {
    let db = TestDb::new(Backend::Sqlite).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let port = free_port();
    let config = write_config(dir.path(), "w.toml", &db.url, &receiver.url, port, "");
    let mut serve = Serve::start(&config, port);
    serve.ready().await;
    serve.approved(1, "1h").await;
    serve.sigterm();
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `warrant simulate` parses a saved body through the source's own parser
/// (the `X-GitHub-Event` header given by `--event`) and decides it, for
/// each source; a body that is not JSON exits 1 saying so.
#[test]
fn simulate_parses_each_source_and_decides() {
    use crate::payloads::{github, jira, servicenow, Change, Issue, JiraIssue};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "w.toml",
        "sqlite://unused.db",
        "http://127.0.0.1:9/x",
        free_port(),
        "",
    );
    let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let file = dir.path().join("body.json");
    let simulate = |source: &str, body: &[u8], event: &str| {
        std::fs::write(&file, body).unwrap();
        let f = file.to_str().unwrap();
        run(
            &config,
            &[
                "simulate",
                "--source",
                source,
                "--file",
                f,
                "--event",
                event,
                "--at",
                "2026-12-01T10:00:00Z",
            ],
        )
    };
    let issue = Issue::new(7, at);
    let body = serde_json::to_vec(&github("opened", &issue, "dave-gh", None)).unwrap();
    let (code, out, err) = simulate("github", &body, "issues");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "accepted", "{out}");
    assert_eq!(v["ticket"], "github:acme/access-requests#7", "{out}");
    assert_eq!(v["decision"]["reason"], "not_approved", "{out}");

    let (code, out, err) = simulate("github", &body, "ping");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "ignored", "{out}");

    let body = serde_json::to_vec(&jira(
        "jira:issue_created",
        &JiraIssue::new("OPS-3"),
        "5b10ac8d82e05b22cc7d4ef5",
        at,
        None,
    ))
    .unwrap();
    let (code, out, err) = simulate("jira", &body, "issues");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["ticket"].as_str()),
        (Some("accepted"), Some("jira:OPS-3")),
        "{out}"
    );

    let change = Change {
        number: "CHG0030001",
        state: serde_json::json!("-2"),
        approval: "requested",
        approved_by: serde_json::Value::Null,
        assigned_to: "dave.jones",
        resource: "hooks/billing",
        start: at,
        end: at + chrono::Duration::hours(1),
        updated: at,
    };
    let body = serde_json::to_vec(&servicenow(&change)).unwrap();
    let (code, out, err) = simulate("servicenow", &body, "issues");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["ticket"].as_str()),
        (Some("accepted"), Some("servicenow:CHG0030001")),
        "{out}"
    );

    let (code, _, err) = simulate("jira", b"not json", "issues");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not JSON"), "{err}");
}
