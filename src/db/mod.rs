//! The database: one code path over SQLite (embedded default) and
//! PostgreSQL (several replicas), chosen by the URL's scheme at run time.
//! Business code takes a `&mut Conn` and never names a backend; the leaf
//! queries are written once and compiled for each backend by `dispatch!`.

pub mod access;
pub mod audit;
pub mod checkpoints;
pub mod deliveries;
pub mod drift;
pub mod grants;
pub mod jobs;
pub mod keys;
pub mod prepared;
pub mod schema;
pub mod sinks;
pub mod tickets;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool as R2Pool, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Storage errors. `Unavailable` means "try again later" (HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("migrations failed: {0}")]
    Migration(String),
    /// A bug panicked while this unit of work ran; nothing of it was
    /// committed, and the service went on (HTTP 500 for a request).
    #[error("the work panicked: {0}")]
    Panicked(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => StoreError::NotFound,
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info)
            | Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, info) => {
                StoreError::Unavailable(info.message().to_string())
            }
            Error::DatabaseError(DatabaseErrorKind::Unknown, ref info)
                if is_transient(info.message()) =>
            {
                StoreError::Unavailable(info.message().to_string())
            }
            other => StoreError::Database(other),
        }
    }
}

fn is_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "database is locked",
        "server closed the connection",
        "connection refused",
        "terminating connection",
        "no connection to the server",
        "could not connect",
        "the database system is",
        "ssl connection has been closed",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

impl From<r2d2_error::PoolError> for StoreError {
    fn from(e: r2d2_error::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

mod r2d2_error {
    pub use diesel::r2d2::PoolError;
}

/// A parsed `database.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<DbUrl, String> {
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err("`sqlite://` needs a file path, e.g. sqlite://warrant.db".into());
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(rest)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(url.to_string()));
        }
        Err("must start with sqlite:// or postgres://".into())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DbUrl::Sqlite(_) => "sqlite",
            DbUrl::Postgres(_) => "postgres",
        }
    }
}

/// A connection of either backend, borrowed for one unit of work.
pub enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

impl Conn<'_> {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }
}

/// Runs the same expression on whichever backend `conn` is.
#[macro_export]
macro_rules! dispatch {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite($c) => {
                let $c: &mut diesel::sqlite::SqliteConnection = &mut **$c;
                $body
            }
            $crate::db::Conn::Postgres($c) => {
                let $c: &mut diesel::pg::PgConnection = &mut **$c;
                $body
            }
        }
    };
}

#[derive(Debug)]
struct SqliteSetup;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets readers run beside the writer; FULL keeps every
        // acknowledged commit on disk; the busy timeout queues writers.
        conn.batch_execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[derive(Debug)]
struct PgSetup;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgSetup {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        // Prepared statements are planned for the values at hand: a plan
        // made once while a table was still empty would scan it forever.
        conn.batch_execute(
            "SET TIME ZONE 'UTC'; SET statement_timeout = '30s'; \
             SET plan_cache_mode = force_custom_plan;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[derive(Clone)]
enum Pool {
    /// SQLite has one writer: writers queue on the mutex in this process
    /// instead of sleeping in SQLite's busy handler and retrying.
    Sqlite(R2Pool<ConnectionManager<SqliteConnection>>, Arc<Mutex<()>>),
    Postgres(R2Pool<ConnectionManager<PgConnection>>),
}

/// The connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({})", self.backend())
    }
}

impl Db {
    /// Builds the pool without connecting; `migrate` or the first query connects.
    pub fn open(url: &str, pool_size: u32, timeout: Duration) -> Result<Db, StoreError> {
        let parsed = DbUrl::parse(url).map_err(StoreError::Unavailable)?;
        let pool = match parsed {
            DbUrl::Sqlite(path) => {
                let manager = ConnectionManager::<SqliteConnection>::new(path.to_string_lossy());
                Pool::Sqlite(
                    R2Pool::builder()
                        .max_size(pool_size.max(1))
                        .min_idle(Some(0))
                        .connection_timeout(timeout)
                        .connection_customizer(Box::new(SqliteSetup))
                        .test_on_check_out(false)
                        .build_unchecked(manager),
                    Arc::new(Mutex::new(())),
                )
            }
            DbUrl::Postgres(url) => {
                let manager = ConnectionManager::<PgConnection>::new(url);
                Pool::Postgres(
                    R2Pool::builder()
                        .max_size(pool_size.max(1))
                        .min_idle(Some(0))
                        .connection_timeout(timeout)
                        .connection_customizer(Box::new(PgSetup))
                        // A broken connection fails its query, which maps to
                        // 503; a test query on every check-out would cost a
                        // round trip per transaction.
                        .test_on_check_out(false)
                        .build_unchecked(manager),
                )
            }
        };
        Ok(Db { pool })
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(..) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// How many writers may usefully work at once, of `wanted`: SQLite
    /// has one writer, so more would only queue.
    pub fn writers(&self, wanted: usize) -> usize {
        match self.pool {
            Pool::Sqlite(..) => 1,
            Pool::Postgres(_) => wanted.max(1),
        }
    }

    /// Applies the embedded migrations for this backend; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        match &self.pool {
            Pool::Sqlite(p, _) => {
                let mut c = p.get()?;
                let c: &mut SqliteConnection = &mut c;
                c.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(|e| StoreError::Migration(e.to_string()))
            }
            Pool::Postgres(p) => {
                let mut c = p.get()?;
                let c: &mut PgConnection = &mut c;
                // Replicas starting together must not run migrations twice.
                c.batch_execute("SELECT pg_advisory_lock(7426210001)")?;
                let result = c
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(|e| StoreError::Migration(e.to_string()));
                c.batch_execute("SELECT pg_advisory_unlock(7426210001)")?;
                result
            }
        }
    }

    /// True when the database answers and no migration is pending.
    pub fn ready(&self) -> Result<(), StoreError> {
        let pending = |n: usize| {
            if n == 0 {
                Ok(())
            } else {
                Err(StoreError::Migration(format!("{n} migrations pending")))
            }
        };
        match &self.pool {
            Pool::Sqlite(p, _) => {
                let mut c = p.get()?;
                let c: &mut SqliteConnection = &mut c;
                c.batch_execute("SELECT 1")?;
                let n = c
                    .pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(|e| StoreError::Migration(e.to_string()))?
                    .len();
                pending(n)
            }
            Pool::Postgres(p) => {
                let mut c = p.get()?;
                let c: &mut PgConnection = &mut c;
                c.batch_execute("SELECT 1")?;
                let n = c
                    .pending_migrations(POSTGRES_MIGRATIONS)
                    .map_err(|e| StoreError::Migration(e.to_string()))?
                    .len();
                pending(n)
            }
        }
    }

    /// Runs `f` in a write transaction (SQLite: `BEGIN IMMEDIATE`, so two
    /// writers queue instead of deadlocking on the upgrade).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.pool {
            Pool::Sqlite(p, writer) => {
                let _turn = writer.lock().unwrap_or_else(|e| e.into_inner());
                let mut c: PooledConnection<_> = p.get()?;
                c.immediate_transaction(|c| f(&mut Conn::Sqlite(c)))
            }
            Pool::Postgres(p) => {
                let mut c: PooledConnection<_> = p.get()?;
                c.transaction(|c| f(&mut Conn::Postgres(c)))
            }
        }
    }

    /// Runs `f` on a connection outside any explicit transaction (reads).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.pool {
            Pool::Sqlite(p, _) => {
                let mut c = p.get()?;
                f(&mut Conn::Sqlite(&mut c))
            }
            Pool::Postgres(p) => {
                let mut c = p.get()?;
                f(&mut Conn::Postgres(&mut c))
            }
        }
    }
}
