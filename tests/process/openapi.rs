//! The running binary against its own OpenAPI document, on each backend:
//! schemathesis (PyPI, `pip install schemathesis==4.32.5`) generates
//! requests from `/openapi.json` (valid and invalid ones, then sequences
//! that follow the grants it finds) and checks that no answer is a 5xx and
//! that every status, content type, header and body conforms to the
//! document. The database holds an approved ticket with its grant and a
//! checkpoint first, so the reads return real rows.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{Backend, Receiver, TestDb, ADMIN_TOKEN, INTROSPECTOR_TOKEN};
use crate::proc::{free_port, wait_for, write_config, Serve};

/// The checks that say "no 5xx, and every answer is what the document
/// says": the rest of `--checks all` judges API design (which statuses
/// valid or invalid input should get), not the document.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance";

/// Examples per operation and phase: enough to reach every documented
/// answer, few enough for well under two minutes per backend.
const MAX_EXAMPLES: &str = "30";

/// Whether schemathesis can run. With `WARRANT_TEST_PG` set (CI) a missing
/// one fails the test instead of skipping it.
fn schemathesis_available() -> bool {
    match std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => true,
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var_os("WARRANT_TEST_PG").is_some() {
                panic!(
                    "schemathesis is not installed but WARRANT_TEST_PG is set \
                     (pip install schemathesis==4.32.5): {why}"
                );
            }
            eprintln!("skipping: schemathesis is not installed ({why})");
            false
        }
    }
}

/// A checkpoint key, so `/v1/audit/checkpoint-key` and the checkpoint list
/// answer with rows.
fn checkpoint_config(dir: &Path) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let pem = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap()
        .to_string();
    std::fs::write(dir.join("checkpoint.pem"), pem).unwrap();
    format!(
        "[audit]\ncheckpoint_dir = \"{0}/cp\"\ncheckpoint_key_file = \"{0}/checkpoint.pem\"\ncheckpoint_interval = \"1s\"\n",
        dir.display()
    )
}

/// Runs schemathesis against the server with `token`; panics with its
/// report (and the server's log) when a check fails.
async fn schemathesis(serve: &Serve, dir: &Path, token: &str, only: Option<&str>) {
    let mut cmd = tokio::process::Command::new("schemathesis");
    cmd.current_dir(dir)
        .arg("run")
        .arg(format!("{}/openapi.json", serve.base))
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        // A fixed seed: a failure here is reproducible with the same run.
        .args(["--seed", "17"])
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(path) = only {
        cmd.args(["--include-path", path]);
    }
    let out = tokio::time::timeout(Duration::from_secs(150), cmd.output())
        .await
        .expect("schemathesis finished within 150 s")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Operations:"))
        .collect();
    eprintln!("schemathesis ({}): {summary:?}", only.unwrap_or("all"));
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join(format!("warrant.{}.log", serve.port)))
            .unwrap_or_default();
        panic!(
            "schemathesis found answers that are 5xx or do not conform to /openapi.json:\n{report}\n{}\n--- warrant's log ---\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn conforms(backend: Backend) {
    if !schemathesis_available() {
        return;
    }
    let Some(db) = TestDb::new(backend) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let provider = Receiver::start().await;
    let port = free_port();
    let config = write_config(
        dir.path(),
        "warrant.toml",
        &db.url,
        &provider.url,
        port,
        &checkpoint_config(dir.path()),
    );
    let serve = Serve::start(&config, port);
    serve.ready().await;
    serve.approved(1, "1h").await;
    wait_for(
        "the grant to be active",
        Duration::from_secs(30),
        || async { serve.grants().await.iter().any(|g| g["state"] == "active") },
    )
    .await;
    wait_for("a checkpoint", Duration::from_secs(30), || async {
        let (status, body) = serve.get("/v1/audit/checkpoints").await;
        status == 200
            && body["checkpoints"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
    })
    .await;
    schemathesis(&serve, dir.path(), ADMIN_TOKEN, None).await;
    // Introspection takes only the introspector's token.
    schemathesis(
        &serve,
        dir.path(),
        INTROSPECTOR_TOKEN,
        Some("/v1/introspect"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_nonconformance_sqlite() {
    conforms(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_nonconformance_postgres() {
    conforms(Backend::Postgres).await;
}
