//! `cargo bench --bench drift`: one drift check over a PostgreSQL role with
//! 100,000 members (`DRIFT_MEMBERS` to change it), on the local server at
//! `WARRANT_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! with warrant's own store on a fresh SQLite file and on a fresh PostgreSQL
//! database. Timed: the first check, which records every membership as a
//! finding (one row and one audit event each), and the next, which finds
//! them all already open. Exits 1 if a check takes 5 s or more.
//!
//! The member roles (`wb_dm_N`, cluster-wide) are dropped at the end;
//! `DRIFT_KEEP=1` keeps them for the next run, which then skips making them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use warrant::clock::SystemClock;
use warrant::config::Config;
use warrant::context::Context;

const ROLE: &str = "wb_drift_role";
const LIMIT: Duration = Duration::from_secs(5);

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn admin_url() -> String {
    std::env::var("WARRANT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn admin() -> PgConnection {
    PgConnection::establish(&admin_url()).expect("the local PostgreSQL server")
}

/// Makes the role and its members, as far as an earlier run has not.
fn members(n: i64) {
    let mut c = admin();
    let have: i64 = diesel::sql_query(format!(
        "SELECT count(*)::bigint AS n FROM pg_auth_members am \
         JOIN pg_roles r ON r.oid = am.roleid WHERE r.rolname = '{ROLE}'"
    ))
    .get_result::<Count>(&mut c)
    .map(|r| r.n)
    .unwrap_or(0);
    if have == n {
        return;
    }
    let started = Instant::now();
    c.batch_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN \
           CREATE ROLE {ROLE} NOLOGIN; END IF; END $$;"
    ))
    .expect("create the role");
    // A few thousand per transaction, as `drop_members` does.
    for from in (1..=n).step_by(5000) {
        let to = (from + 4999).min(n);
        c.batch_execute(&format!(
            "DO $$ BEGIN FOR i IN {from}..{to} LOOP \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wb_dm_' || i) THEN \
                 EXECUTE format('CREATE ROLE wb_dm_%s NOLOGIN', i); END IF; \
               EXECUTE format('GRANT {ROLE} TO wb_dm_%s', i); \
             END LOOP; END $$;"
        ))
        .expect("create the member roles");
    }
    println!(
        "set-up: {n} members of {ROLE} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Drops the member roles, a few thousand per transaction: each drop
/// holds a lock until its transaction ends, and the server's lock table
/// has room for only so many.
fn drop_members(n: i64) {
    let mut c = admin();
    for from in (1..=n).step_by(5000) {
        let to = (from + 4999).min(n);
        if let Err(e) = c.batch_execute(&format!(
            "DO $$ BEGIN FOR i IN {from}..{to} LOOP \
               EXECUTE format('DROP ROLE IF EXISTS wb_dm_%s', i); END LOOP; END $$;"
        )) {
            println!("cannot drop the member roles: {e}");
            return;
        }
    }
    let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS {ROLE}"));
}

fn config(db_url: &str) -> Config {
    let text = format!(
        "[database]\nurl = \"{db_url}\"\n\
         [providers.prod-db]\nkind = \"postgres\"\nurl_env = \"PROD_DB_URL\"\ntimeout = \"10s\"\n\
         [[policies]]\nname = \"db\"\nresources = [\"prod-db/{ROLE}\"]\nsources = [\"github\"]\n\
         max_duration = \"4h\"\n\
         [drift]\ndrift = \"report\"\n"
    );
    let url = admin_url();
    Config::from_toml(&text, &|name| (name == "PROD_DB_URL").then(|| url.clone()))
        .expect("the bench configuration")
}

/// Times the first check and the next on a fresh store; answers both.
async fn run(backend: &str, db_url: &str, n: i64) -> (Duration, Duration) {
    let ctx = Arc::new(
        Context::new(
            config(db_url),
            Arc::new(SystemClock),
            Arc::new(warrant::engine::Fold),
        )
        .expect("the context"),
    );
    let db = ctx.db.clone();
    tokio::task::spawn_blocking(move || db.migrate())
        .await
        .unwrap()
        .expect("migrations");
    let mut times = Vec::new();
    for what in [
        "first check (records every finding)",
        "next check (all open)",
    ] {
        let started = Instant::now();
        let report = warrant::drift::check_now(&ctx, None)
            .await
            .expect("the check");
        let took = started.elapsed();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.items.len() as i64, n, "one item per member");
        println!(
            "{backend:<10} {what:<38} {n} memberships: {:.2} s",
            took.as_secs_f64()
        );
        times.push(took);
    }
    (times[0], times[1])
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the arguments.
    let n: i64 = std::env::var("DRIFT_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    members(n);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;

    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("warrant.db").display());
    let (a, b) = runtime.block_on(run("sqlite", &sqlite, n));
    worst = worst.max(a).max(b);

    let name = format!("warrant_bench_{}", uuid::Uuid::new_v4().simple());
    admin()
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let base = admin_url();
    let pg = format!(
        "{}/{name}",
        base.rsplit_once('/').map(|(a, _)| a).unwrap_or(&base)
    );
    let (a, b) = runtime.block_on(run("postgres", &pg, n));
    worst = worst.max(a).max(b);
    drop(runtime);
    let _ = admin().batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));

    if std::env::var_os("DRIFT_KEEP").is_none() {
        drop_members(n);
    }
    if worst >= LIMIT {
        println!(
            "FAIL: a check took {:.2} s (limit {} s)",
            worst.as_secs_f64(),
            LIMIT.as_secs()
        );
        std::process::exit(1);
    }
    println!(
        "pass: every check under {} s (slowest {:.2} s)",
        LIMIT.as_secs(),
        worst.as_secs_f64()
    );
}
