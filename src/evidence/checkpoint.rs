//! Checkpoints: every `[audit] checkpoint_interval` the chain's head is
//! signed (`crypto::checkpoint`) and written as one file in
//! `checkpoint_dir`, outside the database; and verification of the chain
//! against a directory of them. Whoever can write the database can cut the
//! chain's tail or rewrite it whole and still have a chain that verifies;
//! they cannot make it agree with checkpoints signed by a key they do not
//! hold and kept where they cannot write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::crypto::checkpoint::{
    self as signing, Checkpoint, CheckpointKey, Statement, FIRST_PREV,
};
use crate::db::checkpoints::{self as store, CheckpointRow};
use crate::db::{Db, StoreError};
use crate::domain::{rfc3339, to_micros};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("checkpoints are not configured ([audit] checkpoint_dir and checkpoint_key_file)")]
    NotConfigured,
    #[error("{0}")]
    Key(String),
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the checkpoint directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The configured signing key, if checkpoints are on.
pub fn key(config: &Config) -> Result<Option<CheckpointKey>, CheckpointError> {
    match &config.audit.checkpoint_key {
        Some(pem) => signing::signing_key_from_pem(pem.expose_secret())
            .map(Some)
            .map_err(CheckpointError::Key),
        None => Ok(None),
    }
}

/// A checkpoint's file name: its seq, zero-padded so names sort as seqs.
pub fn file_name(seq: i64) -> String {
    format!("checkpoint-{seq:020}.json")
}

/// Makes the next checkpoint if the chain has grown since the last one:
/// under the checkpoint lock, so replicas share one sequence. Answers the
/// new checkpoint, if one was made.
pub fn make(
    db: &Db,
    key: &CheckpointKey,
    now: DateTime<Utc>,
) -> Result<Option<Checkpoint>, StoreError> {
    db.write(|conn| {
        store::lock(conn)?;
        let (seq, hash) = crate::db::audit::head(conn)?;
        let last = store::last(conn)?;
        if seq == 0 || last.as_ref().is_some_and(|l| l.seq >= seq) {
            return Ok(None);
        }
        let statement = Statement {
            seq,
            hash,
            at: rfc3339(now),
            prev: last.map_or_else(|| FIRST_PREV.to_string(), |l| l.digest),
        };
        let checkpoint = key.sign(&statement);
        let body = serde_json::to_string_pretty(&checkpoint)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        store::insert(
            conn,
            &CheckpointRow {
                seq,
                body,
                digest: statement.digest(),
                created_at: to_micros(now),
            },
        )?;
        Ok(Some(checkpoint))
    })
}

/// Writes the file of every checkpoint not yet in `dir` (each replica
/// writes all of them, so every directory holds the whole sequence). A
/// file is written whole or not at all: to a temporary name, synced, then
/// renamed. Answers how many files were written.
pub fn write_files(db: &Db, dir: &Path) -> Result<usize, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = 0;
    let mut after = 0;
    loop {
        let rows = db.read(|c| store::after(c, after, 1000))?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in rows {
            let path = dir.join(file_name(row.seq));
            if path.exists() {
                continue;
            }
            write_atomically(&path, row.body.as_bytes())?;
            written += 1;
        }
    }
    Ok(written)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let err = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// One turn of the checkpoint loop: a new checkpoint if the chain grew,
/// then the files of every checkpoint this replica has not written yet.
pub async fn run_once(ctx: &Arc<Context>) -> Result<Option<Checkpoint>, CheckpointError> {
    let (Some(dir), Some(key)) = (ctx.config.audit.checkpoint_dir.clone(), key(&ctx.config)?)
    else {
        return Ok(None);
    };
    let db = ctx.db.clone();
    let now = ctx.clock.now();
    tokio::task::spawn_blocking(move || {
        let made = make(&db, &key, now)?;
        write_files(&db, &dir)?;
        Ok(made)
    })
    .await
    .map_err(|_| CheckpointError::Store(StoreError::Unavailable("checkpoint task ended".into())))?
}

/// The loop, every `checkpoint_interval` until `stopped`.
pub async fn run_forever(ctx: Arc<Context>, mut stopped: watch::Receiver<bool>) {
    let every = ctx.config.audit.checkpoint_interval.std();
    loop {
        if *stopped.borrow() {
            break;
        }
        match run_once(&ctx).await {
            Ok(Some(c)) => tracing::info!(seq = c.seq, "audit checkpoint written"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed; retrying next interval"),
        }
        tokio::select! {
            _ = stopped.changed() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// What verifying the chain against checkpoints found.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub ok: bool,
    /// The chain's own verification (`audit verify` without checkpoints).
    pub chain: crate::audit::Verification,
    /// How many checkpoint files were read.
    pub checkpoints: usize,
    /// The seq of the first checkpoint that fails, if one does.
    pub first_bad_checkpoint: Option<i64>,
    /// Why, in words.
    pub problem: Option<String>,
}

/// Verifies the database's chain, then the checkpoints in `dir` against
/// `public` and against the chain: each file's signature, the `prev` links
/// from the first checkpoint on, and the chain holding every checkpoint's
/// `seq` with the same `hash` (so it is not shorter than the latest one).
pub fn verify(db: &Db, dir: &Path, public: &VerifyingKey) -> Result<Verdict, CheckpointError> {
    let chain = crate::audit::verify(db)?;
    let files = read_dir(dir)?;
    let n = files.len();
    let bad = |seq: i64, problem: String, chain: crate::audit::Verification| Verdict {
        ok: false,
        chain,
        checkpoints: n,
        first_bad_checkpoint: Some(seq),
        problem: Some(problem),
    };
    let mut prev = FIRST_PREV.to_string();
    let mut last_seq = 0i64;
    let mut checked = Vec::with_capacity(n);
    for (name, parsed) in files {
        let c = match parsed {
            Ok(c) => c,
            Err(why) => {
                let seq = seq_of_name(&name).unwrap_or(last_seq + 1);
                return Ok(bad(seq, format!("{name}: {why}"), chain));
            }
        };
        if file_name(c.seq) != name {
            return Ok(bad(
                c.seq,
                format!("{name} holds checkpoint {}", c.seq),
                chain,
            ));
        }
        if let Err(why) = signing::verify(public, &c) {
            return Ok(bad(c.seq, format!("checkpoint {}: {why}", c.seq), chain));
        }
        if c.prev != prev || c.seq <= last_seq {
            return Ok(bad(
                c.seq,
                format!(
                    "checkpoint {} does not follow the one before it (a checkpoint is missing or out of order)",
                    c.seq
                ),
                chain,
            ));
        }
        prev = c.statement().digest();
        last_seq = c.seq;
        checked.push(c);
    }
    if !chain.ok {
        let first = chain.first_bad.unwrap_or(0);
        return Ok(Verdict {
            ok: false,
            chain,
            checkpoints: n,
            first_bad_checkpoint: None,
            problem: Some(format!("the chain breaks at event {first}")),
        });
    }
    for c in &checked {
        let seq = c.seq;
        let held = db.read(|conn| store::event_hash_at(conn, seq))?;
        match held {
            Some(h) if h == c.hash => {}
            Some(_) => {
                return Ok(bad(
                    seq,
                    format!("the chain's event {seq} is not the one checkpoint {seq} signed (the chain was rewritten)"),
                    chain,
                ))
            }
            None => {
                return Ok(bad(
                    seq,
                    format!(
                        "the chain has {} events, fewer than checkpoint {seq} signed (its tail was cut)",
                        chain.events
                    ),
                    chain,
                ))
            }
        }
    }
    Ok(Verdict {
        ok: true,
        chain,
        checkpoints: n,
        first_bad_checkpoint: None,
        problem: None,
    })
}

fn seq_of_name(name: &str) -> Option<i64> {
    name.strip_prefix("checkpoint-")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// A checkpoint file's name and what it holds (or why it cannot be read).
type CheckpointFile = (String, Result<Checkpoint, String>);

/// The checkpoint files in `dir`, by name (so by seq), each parsed.
fn read_dir(dir: &Path) -> Result<Vec<CheckpointFile>, CheckpointError> {
    let err = |source| CheckpointError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("checkpoint-") && name.ends_with(".json")) {
            continue;
        }
        let parsed = std::fs::read(entry.path())
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|b| {
                serde_json::from_slice::<Checkpoint>(&b)
                    .map_err(|e| format!("not a checkpoint: {e}"))
            });
        out.push((name, parsed));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The checkpoints the replicas have made, oldest first, as their files
/// hold them.
pub fn list(db: &Db, after: i64, limit: i64) -> Result<Vec<Checkpoint>, StoreError> {
    let rows = db.read(|c| store::after(c, after, limit))?;
    rows.iter()
        .map(|r| {
            serde_json::from_str(&r.body).map_err(|e| {
                StoreError::Corrupt(format!("checkpoint {} is not readable: {e}", r.seq))
            })
        })
        .collect()
}
