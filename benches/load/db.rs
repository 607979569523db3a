//! Direct database work beside the server: a fresh database per run
//! (a SQLite file in a temporary directory, or a PostgreSQL database that
//! is created and dropped), the durable-commit floor, seeding grants and
//! their jobs with SQL, and the checks after a run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;

use crate::stats::{summarize, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

pub enum AnyConn {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
}

impl AnyConn {
    pub fn batch(&mut self, sql: &str) -> QueryResult<()> {
        match self {
            AnyConn::Sqlite(c) => c.batch_execute(sql),
            AnyConn::Pg(c) => c.batch_execute(sql),
        }
    }

    pub fn count(&mut self, sql: &str) -> QueryResult<i64> {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let rows: Vec<N> = match self {
            AnyConn::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            AnyConn::Pg(c) => diesel::sql_query(sql).load(c)?,
        };
        Ok(rows.first().map(|r| r.n).unwrap_or(0))
    }

    pub fn pairs(&mut self, sql: &str) -> QueryResult<Vec<(String, String)>> {
        #[derive(QueryableByName)]
        struct P {
            #[diesel(sql_type = Text)]
            a: String,
            #[diesel(sql_type = Text)]
            b: String,
        }
        let rows: Vec<P> = match self {
            AnyConn::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            AnyConn::Pg(c) => diesel::sql_query(sql).load(c)?,
        };
        Ok(rows.into_iter().map(|p| (p.a, p.b)).collect())
    }
}

/// A database that exists for one server run.
pub struct BenchDb {
    pub backend: Backend,
    /// What warrant's `database.url` says.
    pub url: String,
    sqlite_path: Option<PathBuf>,
    pg: Option<(String, String)>,
}

impl BenchDb {
    pub fn create(backend: Backend, dir: &Path, pg_admin: &str, name: &str) -> BenchDb {
        match backend {
            Backend::Sqlite => {
                let path = dir.join(format!("{name}.db"));
                BenchDb {
                    backend,
                    url: format!("sqlite://{}", path.display()),
                    sqlite_path: Some(path),
                    pg: None,
                }
            }
            Backend::Postgres => {
                let db = format!("warrant_bench_{}_{}", name, uuid::Uuid::new_v4().simple());
                let mut admin = PgConnection::establish(pg_admin).expect("connect to PostgreSQL");
                admin
                    .batch_execute(&format!("CREATE DATABASE {db}"))
                    .expect("create the bench database");
                let base = pg_admin.rsplit_once('/').map_or(pg_admin, |(a, _)| a);
                BenchDb {
                    backend,
                    url: format!("{base}/{db}"),
                    sqlite_path: None,
                    pg: Some((pg_admin.to_string(), db)),
                }
            }
        }
    }

    pub fn connect(&self) -> AnyConn {
        match self.backend {
            Backend::Sqlite => {
                let path = self.sqlite_path.as_ref().expect("a SQLite path");
                let mut c = SqliteConnection::establish(&path.to_string_lossy())
                    .expect("open the SQLite file");
                c.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;",
                )
                .expect("pragmas");
                AnyConn::Sqlite(c)
            }
            Backend::Postgres => AnyConn::Pg(
                PgConnection::establish(&self.url).expect("connect to the bench database"),
            ),
        }
    }

    /// A second, empty database of the same kind for the floor, so its
    /// table stays out of warrant's.
    pub fn floor_db(&self, dir: &Path, pg_admin: &str, name: &str) -> BenchDb {
        BenchDb::create(self.backend, dir, pg_admin, name)
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if let Some((admin, db)) = &self.pg {
            if let Ok(mut c) = PgConnection::establish(admin) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Floor {
    pub commits_per_s: f64,
    pub latency: Option<Summary>,
    /// Taken while the connections are open, so PostgreSQL's backends count.
    pub cpu: String,
}

/// Single-row durable commits per second from `conns` connections, each in
/// a loop of one small INSERT per transaction, with warrant's own settings
/// (SQLite: WAL, synchronous=FULL, busy_timeout, BEGIN IMMEDIATE;
/// PostgreSQL: synchronous_commit on, BEGIN … COMMIT).
pub fn floor(db: &BenchDb, conns: usize, secs: Duration) -> Floor {
    {
        let mut c = db.connect();
        let ddl = match db.backend {
            Backend::Sqlite => "CREATE TABLE floor (id INTEGER PRIMARY KEY AUTOINCREMENT, conn BIGINT NOT NULL, n BIGINT NOT NULL, at BIGINT NOT NULL, note TEXT NOT NULL)",
            Backend::Postgres => "CREATE TABLE floor (id BIGSERIAL PRIMARY KEY, conn BIGINT NOT NULL, n BIGINT NOT NULL, at BIGINT NOT NULL, note TEXT NOT NULL)",
        };
        c.batch(ddl).expect("create the floor table");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let stop = stop.clone();
            let mut conn = db.connect();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let at = crate::http::now_us();
                    let insert = |sql: &str| {
                        diesel::sql_query(sql.to_string())
                            .bind::<BigInt, _>(i as i64)
                            .bind::<BigInt, _>(n)
                            .bind::<BigInt, _>(at)
                            .bind::<Text, _>("delivery accepted")
                    };
                    let ok = match &mut conn {
                        AnyConn::Sqlite(c) => c
                            .immediate_transaction(|c| {
                                insert("INSERT INTO floor (conn, n, at, note) VALUES (?, ?, ?, ?)")
                                    .execute(c)
                            })
                            .is_ok(),
                        AnyConn::Pg(c) => c
                            .transaction(|c| {
                                insert(
                                    "INSERT INTO floor (conn, n, at, note) VALUES ($1, $2, $3, $4)",
                                )
                                .execute(c)
                            })
                            .is_ok(),
                    };
                    if ok {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        n += 1;
                    }
                }
                lat
            })
        })
        .collect();
    let cpu0 = crate::stats::Cpu::sample(0);
    std::thread::sleep(secs);
    let cpu = crate::stats::Cpu::sample(0).since(&cpu0);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(t.join().unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    Floor {
        commits_per_s: lat.len() as f64 / elapsed,
        latency: summarize(&lat),
        cpu,
    }
}

/// `(source, delivery_id)` of every stored delivery.
pub fn deliveries(db: &BenchDb) -> HashSet<(String, String)> {
    db.connect()
        .pairs("SELECT source AS a, delivery_id AS b FROM deliveries")
        .expect("read deliveries")
        .into_iter()
        .collect()
}

/// Grant ids are UUID-shaped: `00000000-0000-7000-8KKK-NNNNNNNNNNNN`,
/// where `KKK` names the set the grant belongs to.
pub const HISTORY: u32 = 0;
pub const LIVE_LATER: u32 = 1;
pub const STEADY: u32 = 2;
pub const BURST: u32 = 3;

pub fn grant_prefix(set: u32) -> String {
    format!("00000000-0000-7000-8{set:03}-")
}

/// What to seed: `count` grants of one set.
pub struct Seed {
    pub set: u32,
    pub count: u64,
    /// `active` with a job at `expires_at`, or `revoked` (history, no job).
    pub live: bool,
    /// Expiry of grant `i` (0-based): `first_us + i * step_us`, then
    /// wrapped into `[first_us, first_us + span_us)` when `span_us` > 0.
    pub first_us: i64,
    pub step_us: i64,
    pub span_us: i64,
}

/// Inserts one set of grants (and, for live ones, their jobs, as
/// `grants::insert` writes them) in one
/// statement each.
pub fn seed(conn: &mut AnyConn, s: &Seed, now_us: i64) {
    let prefix = grant_prefix(s.set);
    let (series, id, num20) = match conn {
        AnyConn::Sqlite(_) => (
            format!(
                "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {})",
                s.count
            ),
            format!("'{prefix}' || printf('%012d', i)"),
            "printf('%020d', i)".to_string(),
        ),
        AnyConn::Pg(_) => (
            String::new(),
            format!("'{prefix}' || lpad(i::text, 12, '0')"),
            "lpad(i::text, 20, '0')".to_string(),
        ),
    };
    let from = match conn {
        AnyConn::Sqlite(_) => "FROM s".to_string(),
        AnyConn::Pg(_) => format!(
            "FROM generate_series(0::bigint, {}) AS i",
            s.count as i64 - 1
        ),
    };
    let expires = if s.span_us > 0 {
        format!("({} + (i * {}) % {})", s.first_us, s.step_us, s.span_us)
    } else {
        format!("({} + i * {})", s.first_us, s.step_us)
    };
    let day = 86_400_000_000i64;
    let (state, starts, activated, revoked, reason) = if s.live {
        (
            "'active'",
            format!("{} - 3600000000", now_us),
            format!("{} - 3599000000", now_us),
            "NULL".to_string(),
            "NULL",
        )
    } else {
        (
            "'revoked'",
            format!("{expires} - 3600000000"),
            format!("{expires} - 3599000000"),
            format!("{expires} + 150000"),
            "'expired'",
        )
    };
    let created = if s.live {
        format!("{now_us} - 3600000000")
    } else {
        format!("{expires} - 3600000000 - {day}")
    };
    // Each grant its own account, so each is the only holder of its access
    // and its revocation reaches the provider: grants sharing an access
    // (the same account and resource) are removed only with the last one.
    let sql = format!(
        "{series} INSERT INTO grants (id, ticket, subject, account, resource, state, origin, \
         starts_at, expires_at, activated_at, revoked_at, revoke_reason, failure, created_at, updated_at) \
         SELECT {id}, 'jira:OPS-' || (5000000 + {set} * 1000000 + i), 'user' || (i % 200), \
         'acct' || {set} || '-' || i, 'hooks/svc-' || (i % 20), {state}, 'approval:' || {num20}, \
         {starts}, {expires}, {activated}, {revoked}, {reason}, NULL, {created}, {created} {from}",
        set = s.set,
    );
    conn.batch(&sql).expect("seed grants");
    if s.live {
        let sql = format!(
            "INSERT INTO jobs (kind, dedupe_key, payload, run_at, attempts, version, created_at) \
             SELECT 'grant', 'grant:' || id, '{{\"grant_id\":\"' || id || '\"}}', expires_at, 0, 0, created_at \
             FROM grants WHERE id LIKE '{prefix}%'"
        );
        conn.batch(&sql).expect("seed jobs");
    }
}

/// Grants of one set by state.
pub fn states(conn: &mut AnyConn, set: u32) -> Vec<(String, String)> {
    conn.pairs(&format!(
        "SELECT state AS a, CAST(COUNT(*) AS TEXT) AS b FROM grants WHERE id LIKE '{}%' GROUP BY state ORDER BY state",
        grant_prefix(set)
    ))
    .unwrap_or_default()
}

/// Samples what PostgreSQL's backends of this database are doing, ten times
/// a second, until `finish`: where the time of a write goes (waiting for a
/// lock, for the WAL flush, for the application's next statement).
pub struct Waits {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(String, String)>>,
}

impl Waits {
    pub fn start(db: &BenchDb) -> Option<Waits> {
        if db.backend != Backend::Postgres {
            return None;
        }
        let mut conn = db.connect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                seen.extend(
                    conn.pairs(
                        "SELECT state AS a, COALESCE(wait_event_type || ':' || wait_event, 'on CPU') AS b \
                         FROM pg_stat_activity WHERE datname = current_database() \
                         AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')",
                    )
                    .unwrap_or_default(),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        Some(Waits { stop, handle })
    }

    /// "active Lock:transactionid 41%, idle in transaction Client:ClientRead
    /// 30%, …" over all backend samples; also the mean number of backends
    /// inside a transaction.
    pub fn finish(self, secs: f64) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.handle.join().unwrap_or_default();
        let n = seen.len().max(1) as f64;
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for (state, wait) in &seen {
            let state = if state == "idle in transaction" {
                "idle-in-tx"
            } else {
                state.as_str()
            };
            *counts.entry(format!("{state} {wait}")).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = counts.into_iter().collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        let top: Vec<String> = v
            .iter()
            .take(4)
            .map(|(k, c)| format!("{k} {:.0}%", 100.0 * *c as f64 / n))
            .collect();
        format!(
            "{:.1} backends in a tx on average: {}",
            seen.len() as f64 / (secs * 10.0).max(1.0),
            top.join(", ")
        )
    }
}

/// PostgreSQL's own counters for this database: committed transactions,
/// and sequential scans of `jobs` (each one reads every job row).
pub fn pg_counters(conn: &mut AnyConn) -> Option<(i64, i64)> {
    if !matches!(conn, AnyConn::Pg(_)) {
        return None;
    }
    let rows = conn
        .pairs(
            "SELECT CAST(d.xact_commit AS TEXT) AS a, \
             CAST(COALESCE((SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'jobs'), 0) AS TEXT) AS b \
             FROM pg_stat_database d WHERE d.datname = current_database()",
        )
        .ok()?;
    let (a, b) = rows.first()?;
    Some((a.parse().ok()?, b.parse().ok()?))
}
