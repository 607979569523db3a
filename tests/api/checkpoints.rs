//! Checkpoints anchor the chain outside the database. Each tamper is done
//! with SQL (or on the files) while nothing else writes: a tail cut with
//! the head moved back and a chain rewritten consistently both still pass
//! the chain's own verification, and are found only by the checkpoints; an
//! edited checkpoint file and one deleted from the middle are found by
//! their signatures and `prev` links. Replicas share one sequence.

use std::path::{Path, PathBuf};

use chrono::Duration;
use diesel::connection::SimpleConnection;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use serde_json::Value;

use crate::helpers::{t0, Backend, TestApp, AUDITOR_TOKEN};
use crate::payloads::{self, Issue};
use crate::{app, backend_tests};
use warrant::evidence::checkpoint;

fn exec(app: &TestApp, sql: &str) {
    use diesel::Connection;
    match app.backend {
        Backend::Sqlite => {
            let path = app.db.url.trim_start_matches("sqlite://");
            let mut c = diesel::sqlite::SqliteConnection::establish(path).expect("sqlite");
            c.batch_execute(sql).expect("tamper");
        }
        Backend::Postgres => {
            let mut c = diesel::pg::PgConnection::establish(&app.db.url).expect("postgres");
            c.batch_execute(sql).expect("tamper");
        }
    }
}

/// A directory with the checkpoint key; checkpoints go to `cp/` in it.
fn key_dir(seed: u8) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem")
        .to_string();
    std::fs::write(dir.path().join("key.pem"), pem).expect("key file");
    let extra = format!(
        "[audit]\ncheckpoint_dir = \"{0}/cp\"\ncheckpoint_key_file = \"{0}/key.pem\"\ncheckpoint_interval = \"1m\"\n",
        dir.path().display()
    );
    (dir, extra)
}

async fn approve(app: &TestApp, n: u64) {
    let mut issue = Issue::new(n, t0());
    issue.labels = vec!["access-approved"];
    let body = payloads::github("labeled", &issue, "alice-gh", Some("access-approved"));
    assert_eq!(
        app.post_github("issues", &format!("cp-{n}"), &body)
            .await
            .status(),
        200
    );
    app.run_jobs().await;
}

/// Three rounds of events, each followed by a checkpoint.
async fn three_checkpoints(app: &TestApp) {
    for n in 1..=3 {
        approve(app, n).await;
        app.advance(Duration::minutes(1));
        let made = checkpoint::run_once(&app.ctx).await.expect("checkpoint");
        assert!(made.is_some(), "round {n}");
    }
    // Nothing new: no checkpoint.
    assert!(checkpoint::run_once(&app.ctx)
        .await
        .expect("checkpoint")
        .is_none());
}

fn verdict(app: &TestApp, dir: &Path) -> checkpoint::Verdict {
    let key = checkpoint::key(&app.ctx.config)
        .expect("key")
        .expect("configured");
    checkpoint::verify(&app.ctx.db, dir, &key.public()).expect("verify runs")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

async fn untouched_chain_and_checkpoints_verify(backend: Backend) {
    let (keys, extra) = key_dir(1);
    let app = app!(backend, &extra);
    three_checkpoints(&app).await;
    let cp = keys.path().join("cp");
    assert_eq!(files(&cp).len(), 3);
    let v = verdict(&app, &cp);
    assert!(v.ok, "{v:?}");
    assert_eq!(v.checkpoints, 3);

    // The API serves the key and the list.
    let (status, key) = app
        .get_json("/v1/audit/checkpoint-key", AUDITOR_TOKEN)
        .await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(key["alg"], "Ed25519");
    let pem = key["pem"].as_str().unwrap_or_default();
    assert!(pem.contains("BEGIN PUBLIC KEY"), "{key}");
    let (status, list) = app.get_json("/v1/audit/checkpoints", AUDITOR_TOKEN).await;
    assert_eq!(status, 200, "{list}");
    let list = list["checkpoints"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 3);
    let first: Value =
        serde_json::from_slice(&std::fs::read(&files(&cp)[0]).expect("file")).expect("json");
    assert_eq!(list[0], first);
    // The served public key verifies what was written.
    let public = warrant::crypto::checkpoint::public_key_from_pem(pem).expect("pem");
    assert!(
        checkpoint::verify(&app.ctx.db, &cp, &public)
            .expect("runs")
            .ok
    );
    // No key material in the database.
    let rows = warrant::evidence::checkpoint::list(&app.ctx.db, 0, 100).expect("list");
    assert!(rows.iter().all(|c| !serde_json::to_string(c)
        .unwrap_or_default()
        .contains("PRIVATE")));
}

async fn a_cut_tail_with_the_head_moved_back_is_found(backend: Backend) {
    let (keys, extra) = key_dir(2);
    let app = app!(backend, &extra);
    three_checkpoints(&app).await;
    let cp = keys.path().join("cp");
    let second: Value =
        serde_json::from_slice(&std::fs::read(&files(&cp)[1]).expect("file")).expect("json");
    let keep = second["seq"].as_i64().unwrap_or(0) - 1;
    exec(
        &app,
        &format!(
            "DELETE FROM audit_events WHERE seq > {keep}; \
             UPDATE audit_head SET seq = {keep}, hash = (SELECT hash FROM audit_events WHERE seq = {keep}) WHERE id = 1;"
        ),
    );
    let v = verdict(&app, &cp);
    assert!(v.chain.ok, "the chain alone still verifies: {v:?}");
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_checkpoint, second["seq"].as_i64(), "{v:?}");
}

async fn a_chain_rewritten_consistently_is_found(backend: Backend) {
    let (keys, extra) = key_dir(3);
    let app = app!(backend, &extra);
    three_checkpoints(&app).await;
    let cp = keys.path().join("cp");
    // Rewrite event 1's actor and re-hash every event after it, moving
    // the head: a chain that verifies on its own.
    let mut rows = app
        .ctx
        .db
        .read(|c| warrant::db::audit::after(c, 0, 100_000))
        .expect("rows");
    let mut prev = warrant::audit::GENESIS.to_string();
    let mut sql = String::new();
    for (i, row) in rows.iter_mut().enumerate() {
        if i == 0 {
            row.actor = "someone-else".into();
        }
        row.prev_hash = prev.clone();
        row.hash = warrant::audit::event_hash(&prev, row);
        prev = row.hash.clone();
        sql.push_str(&format!(
            "UPDATE audit_events SET actor = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {};\n",
            row.actor.replace('\'', "''"),
            row.prev_hash,
            row.hash,
            row.seq
        ));
    }
    sql.push_str(&format!(
        "UPDATE audit_head SET hash = '{prev}' WHERE id = 1;"
    ));
    exec(&app, &sql);
    let v = verdict(&app, &cp);
    assert!(v.chain.ok, "the rewritten chain verifies alone: {v:?}");
    assert!(!v.ok, "{v:?}");
    let first: Value =
        serde_json::from_slice(&std::fs::read(&files(&cp)[0]).expect("file")).expect("json");
    assert_eq!(v.first_bad_checkpoint, first["seq"].as_i64(), "{v:?}");
}

async fn an_edited_or_missing_checkpoint_file_is_found(backend: Backend) {
    let (keys, extra) = key_dir(4);
    let app = app!(backend, &extra);
    three_checkpoints(&app).await;
    let cp = keys.path().join("cp");
    let paths = files(&cp);

    // Edited: the time moved.
    let original = std::fs::read_to_string(&paths[1]).expect("file");
    let mut edited: Value = serde_json::from_str(&original).expect("json");
    edited["at"] = Value::String("2020-01-01T00:00:00Z".into());
    std::fs::write(&paths[1], edited.to_string()).expect("write");
    let v = verdict(&app, &cp);
    assert!(!v.ok, "{v:?}");
    assert_eq!(v.first_bad_checkpoint, edited["seq"].as_i64(), "{v:?}");
    std::fs::write(&paths[1], &original).expect("restore");
    assert!(verdict(&app, &cp).ok);

    // Deleted from the middle: the next one's `prev` no longer follows.
    std::fs::remove_file(&paths[1]).expect("delete");
    let v = verdict(&app, &cp);
    assert!(!v.ok, "{v:?}");
    let third: Value =
        serde_json::from_slice(&std::fs::read(&paths[2]).expect("file")).expect("json");
    assert_eq!(v.first_bad_checkpoint, third["seq"].as_i64(), "{v:?}");

    // The replica's loop writes the missing file again from the database.
    checkpoint::run_once(&app.ctx).await.expect("turn");
    assert!(verdict(&app, &cp).ok);
}

/// Two replicas on one database, each with its own directory, take turns:
/// one sequence between them (no two checkpoints for one seq, no gap in
/// `prev`), and each directory ends with all of it.
async fn replicas_write_one_sequence(backend: Backend) {
    let (keys, extra) = key_dir(5);
    let a = app!(backend, &extra);
    let other = keys.path().join("b");
    let b_extra = extra.replace(
        &format!("{}/cp", keys.path().display()),
        &other.display().to_string(),
    );
    let b = a.restart_with(|base| format!("{base}\n{b_extra}")).await;
    for n in 1..=4 {
        approve(&a, n).await;
        a.advance(Duration::minutes(1));
        b.advance(Duration::minutes(1));
        let (ra, rb) = tokio::join!(checkpoint::run_once(&a.ctx), checkpoint::run_once(&b.ctx));
        let made = [ra.expect("a"), rb.expect("b")];
        assert_eq!(made.iter().filter(|m| m.is_some()).count(), 1, "round {n}");
    }
    checkpoint::run_once(&a.ctx).await.expect("a");
    checkpoint::run_once(&b.ctx).await.expect("b");
    let cp = keys.path().join("cp");
    let names = |d: &Path| -> Vec<String> {
        files(d)
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(names(&cp).len(), 4);
    assert_eq!(names(&cp), names(&other));
    assert!(verdict(&a, &cp).ok);
    assert!(verdict(&a, &other).ok);
}

backend_tests!(
    untouched_chain_and_checkpoints_verify,
    a_cut_tail_with_the_head_moved_back_is_found,
    a_chain_rewritten_consistently_is_found,
    an_edited_or_missing_checkpoint_file_is_found,
    replicas_write_one_sequence,
);
