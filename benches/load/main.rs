//! `cargo bench --bench load`: the real `warrant serve` (the release binary
//! cargo builds for this bench) as a child process, over real HTTP on
//! loopback, on SQLite and on PostgreSQL, with a table of results and
//! PASS/MISS for each target of issue 7.
//!
//! Per backend, two server runs, each on a fresh database:
//!
//! 1. ingest: the database's own floor (single-row durable commits/s from
//!    the pool's number of connections, measured before the server starts);
//!    idle memory; signed webhooks at saturation and at a fixed offered
//!    rate; approval→grant under that rate and on an idle server; then
//!    SIGKILL and a check that every acknowledged delivery is stored.
//! 2. revocation: grants and their jobs seeded with SQL (history, live
//!    grants expiring hours ahead, a steady trickle of expiries, and a
//!    burst that all expire in one second), then the server starts and the
//!    receiver times every revoke call against the grant's `expires_at`;
//!    resident memory with all those grants stored.
//!
//! Sizes and durations: `BENCH_SCALE=small` for a quick try, and each one
//! on its own by its `BENCH_*` variable (see `Settings::from_env`).
//! `BENCH_BACKENDS=sqlite` or `postgres` runs one backend;
//! `BENCH_PG_URL` is the PostgreSQL admin URL (a database is created and
//! dropped); `BENCH_LOG` sets the server's log filter (default `info`, as
//! shipped); `BENCH_KEEP=1` keeps the temporary directory (configs, logs,
//! the SQLite files); `BENCH_PHASES=ingest` or `revoke` runs one of the
//! two; `BENCH_WRITERS` sets `database.writers`; `BENCH_PERF=1` runs `perf` beside the saturation, fixed-rate and
//! burst phases (syscall counts in the table, profiles kept).
//!
//! 3. trickle: `BENCH_TRICKLE_SOCKETS` (2,000) sockets each send a webhook
//!    body one byte a second (reconnecting when cut off at
//!    `server.read_timeout`) while signed webhooks arrive at
//!    `BENCH_TRICKLE_RATE` (200/s) for `BENCH_TRICKLE_SECS`; the real ones'
//!    accepted ratio and latency. The harness raises its open-file limit
//!    (the server inherits it) to fit the sockets on both sides.
//!
//! All traffic goes to 127.0.0.1; every loop is bounded in count and time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
mod db;
mod http;
mod ingest;
mod payloads;
mod perf;
mod server;
mod stats;
mod trickle;

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use db::{Backend, BenchDb, Seed, BURST, HISTORY, LIVE_LATER, STEADY};
use http::{now_us, Client, Receiver};
use ingest::{fixed_rate, grants_arrived, idle_approvals, saturate, spread, Load};
use server::{free_port, migrate, write_config, Server, ServerSetup};
use stats::{summarize, wait_quiet, Cpu, Summary};

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Settings {
    scale: String,
    backends: Vec<Backend>,
    clients: usize,
    warmup: Duration,
    saturation: Duration,
    rate: f64,
    rate_secs: Duration,
    rate_workers: usize,
    idle_approvals: u64,
    floor_secs: Duration,
    pool_size: u32,
    writers: usize,
    job_concurrency: usize,
    stored: u64,
    live: u64,
    steady: u64,
    steady_secs: u64,
    burst: u64,
    lead_secs: u64,
    pg_admin: String,
    keep: bool,
    /// `ingest`, `revoke`, `trickle`, or all (the default).
    phases: String,
    trickle_sockets: usize,
    trickle_rate: f64,
    trickle_secs: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let scale = std::env::var("BENCH_SCALE").unwrap_or_else(|_| "full".into());
        let small = scale == "small";
        let pick = |full: u64, quick: u64| if small { quick } else { full };
        let secs = |name: &str, full: u64, quick: u64| {
            Duration::from_secs(env_or(name, pick(full, quick)))
        };
        let backends = std::env::var("BENCH_BACKENDS")
            .unwrap_or_else(|_| "sqlite,postgres".into())
            .split(',')
            .filter_map(|b| match b.trim() {
                "sqlite" => Some(Backend::Sqlite),
                "postgres" | "pg" => Some(Backend::Postgres),
                _ => None,
            })
            .collect();
        let live = env_or("BENCH_LIVE_GRANTS", pick(100_000, 10_000));
        Settings {
            backends,
            // Enough deliveries in flight that the server, not the senders,
            // is the limit: at 64 the PostgreSQL run left a quarter of the
            // two cores idle while each writer waited for its next batch.
            clients: env_or("BENCH_CLIENTS", pick(256, 64) as usize),
            warmup: secs("BENCH_WARMUP_SECS", 3, 1),
            saturation: secs("BENCH_SATURATION_SECS", 20, 5),
            rate: env_or("BENCH_RATE", 500.0),
            rate_secs: secs("BENCH_RATE_SECS", 20, 5),
            rate_workers: env_or("BENCH_RATE_WORKERS", 64),
            idle_approvals: env_or("BENCH_IDLE_APPROVALS", pick(50, 10)),
            floor_secs: secs("BENCH_FLOOR_SECS", 10, 3),
            pool_size: env_or("BENCH_POOL_SIZE", 8),
            writers: env_or("BENCH_WRITERS", 2),
            job_concurrency: env_or("BENCH_JOB_CONCURRENCY", 256),
            stored: env_or("BENCH_STORED_GRANTS", pick(1_000_000, 50_000)).max(live),
            live,
            steady: env_or("BENCH_STEADY_EXPIRIES", pick(1_500, 300)),
            steady_secs: env_or("BENCH_STEADY_SECS", pick(30, 10)),
            burst: env_or("BENCH_BURST", pick(10_000, 2_000)),
            lead_secs: env_or("BENCH_LEAD_SECS", 10),
            pg_admin: std::env::var("BENCH_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            keep: std::env::var_os("BENCH_KEEP").is_some() || perf::enabled(),
            phases: std::env::var("BENCH_PHASES")
                .unwrap_or_else(|_| "ingest,revoke,trickle".into()),
            trickle_sockets: env_or("BENCH_TRICKLE_SOCKETS", 2000),
            trickle_rate: env_or("BENCH_TRICKLE_RATE", 200.0),
            trickle_secs: secs("BENCH_TRICKLE_SECS", 30, 12),
            scale,
        }
    }
}

/// The table: one column per backend, rows in the order first written.
struct Report {
    cols: Vec<String>,
    rows: Vec<(String, Vec<String>)>,
    targets: Vec<(String, Vec<String>)>,
}

impl Report {
    fn put(rows: &mut Vec<(String, Vec<String>)>, n: usize, col: usize, label: &str, v: String) {
        let i = match rows.iter().position(|(l, _)| l == label) {
            Some(i) => i,
            None => {
                rows.push((label.to_string(), vec!["-".to_string(); n]));
                rows.len() - 1
            }
        };
        rows[i].1[col] = v;
    }

    fn row(&mut self, col: usize, label: &str, v: impl Into<String>) {
        let n = self.cols.len();
        Report::put(&mut self.rows, n, col, label, v.into());
    }

    fn target(&mut self, col: usize, label: &str, pass: bool, measured: impl Into<String>) {
        let n = self.cols.len();
        let v = format!("{} {}", if pass { "PASS" } else { "MISS" }, measured.into());
        Report::put(&mut self.targets, n, col, label, v);
    }

    fn print(&self, s: &Settings) {
        let w0 = self
            .rows
            .iter()
            .chain(&self.targets)
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(10);
        let widths: Vec<usize> = (0..self.cols.len())
            .map(|c| {
                self.rows
                    .iter()
                    .chain(&self.targets)
                    .map(|(_, v)| v[c].chars().count())
                    .chain([self.cols[c].len()])
                    .max()
                    .unwrap_or(8)
            })
            .collect();
        let line = |l: &str, vals: &[String]| {
            let mut out = format!("{l:<w0$}");
            for (v, w) in vals.iter().zip(&widths) {
                out.push_str(&format!(" | {v:<w$}"));
            }
            println!("{}", out.trim_end());
        };
        let rule = || {
            let mut out = "-".repeat(w0);
            for w in &widths {
                out.push_str(&format!("-+-{}", "-".repeat(*w)));
            }
            println!("{out}");
        };
        println!();
        println!(
            "warrant load benchmark — scale {}, {} cores, {} clients at saturation, {}/s offered, pool {} connections, jobs.concurrency {}",
            s.scale,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            s.clients,
            s.rate,
            s.pool_size,
            s.job_concurrency
        );
        rule();
        line("metric", &self.cols);
        rule();
        for (l, v) in &self.rows {
            line(l, v);
        }
        rule();
        line("target", &self.cols);
        rule();
        for (l, v) in &self.targets {
            line(l, v);
        }
        rule();
        if s.scale == "small" {
            println!("(scale small: sizes and durations are cut down, so the targets are only indicative)");
        }
    }
}

fn ms(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!("{:.1} / {:.1} ms (n={})", s.median, s.p99, s.n),
        None => "no samples".into(),
    }
}

fn log(backend: Backend, msg: impl AsRef<str>) {
    eprintln!(
        "[{} {}] {}",
        Utc::now().format("%H:%M:%S"),
        backend.name(),
        msg.as_ref()
    );
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn ingest_run(
    s: &Settings,
    backend: Backend,
    receiver: &Receiver,
    dir: &Path,
    rep: &mut Report,
    col: usize,
) {
    let db = BenchDb::create(backend, dir, &s.pg_admin, "ingest");

    // The floor, on an empty database of its own, before the server runs.
    wait_quiet(0, Duration::from_secs(90)).await;
    let floor_db = db.floor_db(dir, &s.pg_admin, "floor");
    let (conns, secs) = (s.pool_size as usize, s.floor_secs);
    let floor = blocking(move || {
        let f = db::floor(&floor_db, conns, secs);
        drop(floor_db);
        f
    })
    .await;
    log(
        backend,
        format!("floor {:.0} commits/s", floor.commits_per_s),
    );
    rep.row(
        col,
        &format!("DB floor: 1-row durable commits/s ({conns} conns)"),
        format!("{:.0}/s", floor.commits_per_s),
    );
    rep.row(
        col,
        "DB floor: commit latency median / p99",
        ms(floor.latency),
    );
    rep.row(col, "DB floor: CPU", floor.cpu.clone());
    // The same floor from as many connections as warrant commits through
    // (its group-commit writers; SQLite has one), for the second ratio.
    let writer_conns = match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => s.writers.max(1),
    };
    let writers_floor = if writer_conns == conns {
        floor.commits_per_s
    } else {
        wait_quiet(0, Duration::from_secs(90)).await;
        let floor_db = db.floor_db(dir, &s.pg_admin, "floor_writers");
        let f = blocking(move || {
            let f = db::floor(&floor_db, writer_conns, secs);
            drop(floor_db);
            f
        })
        .await;
        f.commits_per_s
    };
    rep.row(
        col,
        &format!("DB floor from the writers' connections ({writer_conns})"),
        format!("{writers_floor:.0}/s"),
    );

    let port = free_port();
    let config = write_config(
        dir,
        port,
        &ServerSetup {
            db_url: &db.url,
            receiver_url: &receiver.url,
            pool_size: s.pool_size,
            writers: s.writers,
            job_concurrency: s.job_concurrency,
        },
    );
    let mut server = Server::start(&config, port, dir, &format!("{}-ingest", backend.name())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = server.rss_mb();
    rep.row(col, "RSS idle, empty database", format!("{idle_rss:.1} MB"));

    let load = Arc::new(Load::new(server.addr));
    let epoch = Utc::now() - chrono::Duration::seconds(60);
    let mut acked: Vec<(String, String)> = Vec::new();

    // Warm-up: connections, caches, the first tickets.
    let mark = receiver.len();
    let warm = saturate(load.clone(), s.clients, s.warmup, 100_000, epoch).await;
    acked.extend(warm.acked.iter().cloned());
    let _ = grants_arrived(receiver, mark, &warm.approvals, Duration::from_secs(60)).await;

    // Saturation.
    wait_quiet(server.pid(), Duration::from_secs(90)).await;
    let mark = receiver.len();
    let cpu0 = Cpu::sample(server.pid());
    let waits = db::Waits::start(&db);
    let mut stats_conn = db.connect();
    let pg0 = db::pg_counters(&mut stats_conn);
    let prof = perf::start(
        server.pid(),
        dir,
        &format!("{}-saturation", backend.name()),
        s.saturation.saturating_sub(Duration::from_secs(2)),
    );
    let sat = saturate(load.clone(), s.clients, s.saturation, 200_000, epoch).await;
    let cpu_sat = Cpu::sample(server.pid()).since(&cpu0);
    if let Some(p) = prof {
        rep.row(col, "ingest @ saturation: perf", p.finish());
    }
    if let Some(w) = waits {
        rep.row(
            col,
            "ingest @ saturation: PostgreSQL backends (sampled)",
            w.finish(s.saturation.as_secs_f64()),
        );
    }
    // PostgreSQL publishes its counters within a second.
    if let Some((c0, s0)) = pg0 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if let Some((c1, s1)) = db::pg_counters(&mut stats_conn) {
            rep.row(
                col,
                "ingest @ saturation: PostgreSQL transactions (reads too) per accepted webhook; seq scans of jobs/s",
                format!(
                    "{:.2}; {:.0}/s",
                    (c1 - c0) as f64 / sat.accepted.max(1) as f64,
                    (s1 - s0) as f64 / sat.elapsed.as_secs_f64()
                ),
            );
        }
    }
    drop(stats_conn);
    let sat_lat = summarize(&sat.latency_ms);
    log(
        backend,
        format!(
            "saturation {:.0}/s accepted, latency {}, errors {}; cpu {cpu_sat}",
            sat.rate(),
            ms(sat_lat),
            sat.errors()
        ),
    );
    acked.extend(sat.acked.iter().cloned());
    let (sat_grants, sat_missing) =
        grants_arrived(receiver, mark, &sat.approvals, Duration::from_secs(120)).await;
    let ratio = sat.rate() / floor.commits_per_s.max(1e-9);
    rep.row(
        col,
        "webhook body size",
        spread(&[warm.body_bytes.clone(), sat.body_bytes.clone()].concat()),
    );
    rep.row(
        col,
        &format!("ingest @ saturation ({} clients): accepted/s", s.clients),
        format!(
            "{:.0}/s ({} in {:.1} s)",
            sat.rate(),
            sat.accepted,
            sat.elapsed.as_secs_f64()
        ),
    );
    rep.row(
        col,
        "ingest @ saturation: latency median / p99",
        ms(sat_lat),
    );
    rep.row(col, "ingest @ saturation: not accepted", sat.errors());
    rep.row(
        col,
        "ingest @ saturation: ratio to DB floor",
        format!("{ratio:.2}"),
    );
    rep.row(
        col,
        "ingest @ saturation: ratio to the writers' floor",
        format!("{:.2}", sat.rate() / writers_floor.max(1e-9)),
    );
    rep.row(col, "ingest @ saturation: CPU", cpu_sat);
    rep.row(
        col,
        "approval→grant @ saturation: median / p99",
        format!("{} missing {sat_missing}", ms(summarize(&sat_grants))),
    );

    // A fixed offered rate.
    wait_quiet(server.pid(), Duration::from_secs(90)).await;
    let mark = receiver.len();
    let cpu0 = Cpu::sample(server.pid());
    let prof = perf::start(
        server.pid(),
        dir,
        &format!("{}-fixed", backend.name()),
        s.rate_secs.saturating_sub(Duration::from_secs(2)),
    );
    let waits = db::Waits::start(&db);
    let fixed = fixed_rate(
        load.clone(),
        s.rate,
        s.rate_secs,
        s.rate_workers,
        600_000,
        epoch,
    )
    .await;
    let cpu_fixed = Cpu::sample(server.pid()).since(&cpu0);
    if let Some(w) = waits {
        rep.row(
            col,
            &format!("ingest @ {}/s: PostgreSQL backends (sampled)", s.rate),
            w.finish(s.rate_secs.as_secs_f64()),
        );
    }
    if let Some(p) = prof {
        rep.row(col, &format!("ingest @ {}/s: perf", s.rate), p.finish());
    }
    let fixed_lat = summarize(&fixed.latency_ms);
    log(
        backend,
        format!(
            "fixed rate {:.0}/s accepted, latency {}, errors {}; cpu {cpu_fixed}",
            fixed.rate(),
            ms(fixed_lat),
            fixed.errors()
        ),
    );
    acked.extend(fixed.acked.iter().cloned());
    let (fixed_grants, fixed_missing) =
        grants_arrived(receiver, mark, &fixed.approvals, Duration::from_secs(60)).await;
    rep.row(
        col,
        &format!("ingest @ {}/s offered: accepted/s", s.rate),
        format!(
            "{:.0}/s ({} in {:.1} s)",
            fixed.rate(),
            fixed.accepted,
            fixed.elapsed.as_secs_f64()
        ),
    );
    rep.row(
        col,
        &format!("ingest @ {}/s: latency median / p99", s.rate),
        ms(fixed_lat),
    );
    rep.row(
        col,
        &format!("ingest @ {}/s: not accepted", s.rate),
        fixed.errors(),
    );
    rep.row(col, &format!("ingest @ {}/s: CPU", s.rate), cpu_fixed);
    rep.row(
        col,
        &format!("approval→grant @ {}/s: median / p99", s.rate),
        format!("{} missing {fixed_missing}", ms(summarize(&fixed_grants))),
    );

    // Approvals on an idle server.
    wait_quiet(server.pid(), Duration::from_secs(90)).await;
    let (idle_lat, idle) =
        idle_approvals(load.clone(), receiver, s.idle_approvals, 900_000, epoch).await;
    acked.extend(idle.acked.iter().cloned());
    rep.row(
        col,
        "approval→grant, idle server: median / p99",
        ms(summarize(&idle_lat)),
    );
    rep.row(
        col,
        "RSS after the ingest runs",
        format!("{:.1} MB (peak {:.1} MB)", server.rss_mb(), server.hwm_mb()),
    );

    // The audit chain stayed linear under concurrent writers.
    let mut c = Client::new(server.addr);
    let t = Instant::now();
    let verify = c
        .get("/v1/audit/verify", Some(payloads::ADMIN_TOKEN))
        .await
        .ok()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_else(|| "no answer".into());
    let v: serde_json::Value = serde_json::from_str(&verify).unwrap_or_default();
    rep.row(
        col,
        "audit chain verify after ingest",
        format!(
            "ok={} events={} ({:.1} s)",
            v["ok"],
            v["events"],
            t.elapsed().as_secs_f64()
        ),
    );
    let (warns, first) = server.warnings();
    rep.row(
        col,
        "server WARN/ERROR log lines (ingest run)",
        match first {
            Some(f) => format!(
                "{warns}, first: {}",
                f.chars().take(100).collect::<String>()
            ),
            None => "0".into(),
        },
    );

    // SIGKILL, then every acknowledged delivery must be in the database.
    server.kill();
    // Blocking is fine here: the server is gone and nothing else runs.
    let present = db::deliveries(&db);
    let missing = acked
        .iter()
        .filter(|(s, d)| !present.contains(&(s.clone(), d.clone())))
        .count();
    log(
        backend,
        format!(
            "durability: {} acknowledged, {missing} missing after SIGKILL",
            acked.len()
        ),
    );
    rep.row(
        col,
        "acknowledged deliveries missing after SIGKILL",
        format!("{missing} of {}", acked.len()),
    );

    rep.target(
        col,
        "ingest ≥ 2,000 webhooks/s at saturation",
        sat.rate() >= 2000.0,
        format!("{:.0}/s", sat.rate()),
    );
    rep.target(
        col,
        "ingest ≥ 0.5 × DB floor",
        ratio >= 0.5,
        format!(
            "{ratio:.2} ({:.0} / {:.0})",
            sat.rate(),
            floor.commits_per_s
        ),
    );
    let p99 = fixed_lat.map(|l| l.p99).unwrap_or(f64::INFINITY);
    let kept_up = fixed.rate() >= 0.95 * s.rate;
    rep.target(
        col,
        &format!("p99 ingest latency < 25 ms at {}/s", s.rate),
        p99 < 25.0 && kept_up,
        format!("{p99:.1} ms at {:.0}/s", fixed.rate()),
    );
    rep.target(
        col,
        "nothing acknowledged is missing",
        missing == 0 && !acked.is_empty(),
        format!("{missing} of {} missing", acked.len()),
    );
}

async fn revoke_run(
    s: &Settings,
    backend: Backend,
    receiver: &Receiver,
    dir: &Path,
    rep: &mut Report,
    col: usize,
) {
    let db = BenchDb::create(backend, dir, &s.pg_admin, "revoke");
    let port = free_port();
    let config = write_config(
        dir,
        port,
        &ServerSetup {
            db_url: &db.url,
            receiver_url: &receiver.url,
            pool_size: s.pool_size,
            writers: s.writers,
            job_concurrency: s.job_concurrency,
        },
    );
    migrate(&config, dir);

    // History and grants that expire hours from now, in bulk.
    let (stored, live, steady, burst) = (s.stored, s.live, s.steady, s.burst);
    let later = live.saturating_sub(steady + burst);
    let history = stored - live;
    let t = Instant::now();
    let mut conn = blocking({
        let sqlite = db.backend == Backend::Sqlite;
        let db_conn = db.connect();
        move || {
            let mut conn = db_conn;
            let now = now_us();
            let day = 86_400_000_000i64;
            db::seed(
                &mut conn,
                &Seed {
                    set: HISTORY,
                    count: history,
                    live: false,
                    first_us: now - 30 * day,
                    step_us: 2_591_993,
                    span_us: 29 * day,
                },
                now,
            );
            db::seed(
                &mut conn,
                &Seed {
                    set: LIVE_LATER,
                    count: later,
                    live: true,
                    first_us: now + 3_600_000_000,
                    step_us: 104_729_113,
                    span_us: 3 * 3_600_000_000,
                },
                now,
            );
            if sqlite {
                conn.batch("PRAGMA wal_checkpoint(TRUNCATE)")
                    .expect("checkpoint");
            } else {
                conn.batch("ANALYZE").expect("analyze");
            }
            conn
        }
    })
    .await;
    let seed_secs = t.elapsed().as_secs_f64();
    log(
        backend,
        format!("seeded {history} history + {later} live grants in {seed_secs:.1} s"),
    );

    // The timed sets, relative to now.
    wait_quiet(0, Duration::from_secs(90)).await;
    let t0 = now_us();
    let steady_first = t0 + s.lead_secs as i64 * 1_000_000;
    let steady_step = (s.steady_secs as i64 * 1_000_000) / steady.max(1) as i64;
    let burst_first = steady_first + s.steady_secs as i64 * 1_000_000 + 15_000_000;
    let burst_step = 1_000_000 / burst.max(1) as i64;
    conn = blocking(move || {
        for (set, count, first, step) in [
            (STEADY, steady, steady_first, steady_step),
            (BURST, burst, burst_first, burst_step),
        ] {
            db::seed(
                &mut conn,
                &Seed {
                    set,
                    count,
                    live: true,
                    first_us: first,
                    step_us: step,
                    span_us: 0,
                },
                t0,
            );
        }
        conn
    })
    .await;
    let (total, mut conn) = blocking(move || {
        let n = conn.count("SELECT COUNT(*) AS n FROM grants").unwrap_or(0);
        let j = conn.count("SELECT COUNT(*) AS n FROM jobs").unwrap_or(0);
        ((n, j), conn)
    })
    .await;
    log(
        backend,
        format!(
            "{} grants stored, {} jobs; starting the server",
            total.0, total.1
        ),
    );
    rep.row(
        col,
        "revocation run: grants stored / live (jobs)",
        format!("{} / {} ({})", total.0, live, total.1),
    );
    rep.row(
        col,
        "revocation run: seeding time",
        format!("{seed_secs:.1} s"),
    );

    let mark = receiver.len();
    let started = Instant::now();
    let mut server = Server::start(&config, port, dir, &format!("{}-revoke", backend.name())).await;
    rep.row(
        col,
        "start-up to /readyz with all grants stored",
        format!("{:.2} s", started.elapsed().as_secs_f64()),
    );
    let pid = server.pid();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    tokio::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kb) = stats::proc_status_kb(pid, "VmRSS") {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Idle with everything stored: a scrape and a page of grants, as an
    // operator's tools would ask.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut c = Client::new(server.addr);
    let _ = c.get("/metrics", None).await;
    let _ = c
        .get(
            "/v1/grants?state=active&limit=500",
            Some(payloads::ADMIN_TOKEN),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_full = server.rss_mb();
    rep.row(
        col,
        &format!("RSS idle, {} grants stored", total.0),
        format!("{idle_full:.1} MB"),
    );

    // Steady expiries, then the burst.
    let wait_until = |us: i64| {
        let d = (us - now_us()).max(0) as u64;
        tokio::time::sleep(Duration::from_micros(d))
    };
    wait_until(steady_first).await;
    let cpu0 = Cpu::sample(pid);
    let pg0 = db::pg_counters(&mut conn);
    let steady_end = steady_first + s.steady_secs as i64 * 1_000_000;
    wait_until(steady_end).await;
    let revokes = |set: u32| {
        let p = db::grant_prefix(set);
        receiver
            .since(mark)
            .into_iter()
            .filter(move |c| c.action == "revoke" && c.grant_id.starts_with(&p))
            .collect::<Vec<_>>()
    };
    let settle = Instant::now() + Duration::from_secs(10);
    while (revokes(STEADY).len() as u64) < steady && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_steady = Cpu::sample(pid).since(&cpu0);
    if let Some((_, s0)) = pg0 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if let Some((_, s1)) = db::pg_counters(&mut conn) {
            rep.row(
                col,
                "revocation, steady: seq scans of jobs/s (PostgreSQL)",
                format!("{:.0}/s", (s1 - s0) as f64 / s.steady_secs as f64),
            );
        }
    }
    let steady_calls = revokes(STEADY);
    let steady_lag: Vec<f64> = steady_calls
        .iter()
        .map(|c| (c.at_us - c.expires_at_us) as f64 / 1e3)
        .collect();
    let steady_sum = summarize(&steady_lag);
    log(
        backend,
        format!(
            "steady expiries: {} of {steady} revoked, lag {}",
            steady_calls.len(),
            ms(steady_sum)
        ),
    );

    wait_until(burst_first).await;
    let cpu0 = Cpu::sample(pid);
    let prof = perf::start(
        pid,
        dir,
        &format!("{}-burst", backend.name()),
        Duration::from_secs(8),
    );
    let deadline = burst_first + 1_000_000 + 60_000_000;
    while (revokes(BURST).len() as u64) < burst && now_us() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_burst = Cpu::sample(pid).since(&cpu0);
    if let Some(p) = prof {
        rep.row(col, "revocation, burst: perf (first 8 s)", p.finish());
    }
    let burst_calls = revokes(BURST);
    let burst_lag: Vec<f64> = burst_calls
        .iter()
        .map(|c| (c.at_us - c.expires_at_us) as f64 / 1e3)
        .collect();
    let burst_sum = summarize(&burst_lag);
    let last = burst_calls.iter().map(|c| c.at_us).max().unwrap_or(0);
    let all_in = (last - burst_first) as f64 / 1e6;
    log(
        backend,
        format!(
            "burst: {} of {burst} revoked, lag {}, last {all_in:.1} s after the first expiry",
            burst_calls.len(),
            ms(burst_sum)
        ),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampling.store(false, Ordering::Relaxed);
    let peak_mb = (peak.load(Ordering::Relaxed) as f64 / 1024.0).max(server.hwm_mb());
    let early = receiver
        .since(mark)
        .iter()
        .filter(|c| {
            c.grant_id.starts_with(&db::grant_prefix(LIVE_LATER))
                || c.grant_id.starts_with(&db::grant_prefix(HISTORY))
        })
        .count();
    let (warns, first) = server.warnings();
    server.kill();
    let steady_states = db::states(&mut conn, STEADY);
    let burst_states = db::states(&mut conn, BURST);
    drop(conn);
    let fmt_states = |v: &[(String, String)]| {
        v.iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    rep.row(
        col,
        &format!(
            "revocation lag, steady ({steady} over {} s): median / p99",
            s.steady_secs
        ),
        format!(
            "{} max {:.0} ms, revoked {}",
            ms(steady_sum),
            steady_sum.map(|x| x.max).unwrap_or(0.0),
            steady_calls.len()
        ),
    );
    rep.row(col, "revocation, steady: CPU", cpu_steady);
    rep.row(
        col,
        &format!("revocation lag, burst ({burst} in 1 s): median / p99"),
        format!(
            "{} max {:.0} ms",
            ms(burst_sum),
            burst_sum.map(|x| x.max).unwrap_or(0.0)
        ),
    );
    rep.row(
        col,
        "burst: revoked at the provider / last one after first expiry",
        format!("{} of {burst} / {all_in:.1} s", burst_calls.len()),
    );
    rep.row(col, "revocation, burst: CPU", cpu_burst);
    rep.row(
        col,
        "grants in the database afterwards: steady | burst",
        format!(
            "{} | {}",
            fmt_states(&steady_states),
            fmt_states(&burst_states)
        ),
    );
    rep.row(
        col,
        "revoke calls for grants not yet due",
        early.to_string(),
    );
    rep.row(
        col,
        &format!("RSS peak, {} grants stored (whole run)", total.0),
        format!("{peak_mb:.1} MB"),
    );
    rep.row(
        col,
        "server WARN/ERROR log lines (revocation run)",
        match first {
            Some(f) => format!(
                "{warns}, first: {}",
                f.chars().take(100).collect::<String>()
            ),
            None => "0".into(),
        },
    );

    let p99 = steady_sum.map(|x| x.p99).unwrap_or(f64::INFINITY);
    rep.target(
        col,
        &format!("revocation lag p99 < 200 ms with {live} live grants"),
        p99 < 200.0 && steady_calls.len() as u64 == steady,
        format!("{p99:.0} ms ({} of {steady})", steady_calls.len()),
    );
    let burst_max = burst_sum.map(|x| x.max).unwrap_or(f64::INFINITY);
    rep.target(
        col,
        &format!("all {burst} simultaneous expiries revoked within 10 s"),
        burst_calls.len() as u64 == burst && burst_max <= 10_000.0,
        format!(
            "{} of {burst}, max lag {:.1} s",
            burst_calls.len(),
            burst_max / 1e3
        ),
    );
    rep.target(
        col,
        &format!("RSS < 100 MB with {} stored grants", total.0),
        peak_mb < 100.0,
        format!("peak {peak_mb:.1} MB (idle {idle_full:.1} MB)"),
    );
}

async fn trickle_run(
    s: &Settings,
    backend: Backend,
    receiver: &Receiver,
    dir: &Path,
    rep: &mut Report,
    col: usize,
) {
    // Each socket is a descriptor here and one in the server, plus the
    // real clients, the pool and the log.
    let want = (s.trickle_sockets as u64) * 2 + 1024;
    let nofile = trickle::raise_nofile(want);
    if nofile < want {
        log(
            backend,
            format!("open-file limit {nofile} is below the {want} the trickle run needs; raise the hard limit (ulimit -Hn)"),
        );
    }
    let db = BenchDb::create(backend, dir, &s.pg_admin, "trickle");
    let port = free_port();
    let config = write_config(
        dir,
        port,
        &ServerSetup {
            db_url: &db.url,
            receiver_url: &receiver.url,
            pool_size: s.pool_size,
            writers: s.writers,
            job_concurrency: s.job_concurrency,
        },
    );
    let server = Server::start(&config, port, dir, &format!("{}-trickle", backend.name())).await;
    let load = Arc::new(Load::new(server.addr));
    let epoch = Utc::now() - chrono::Duration::seconds(60);

    // The slow senders, ramped up over a few seconds, then the real ones.
    let (slow, tasks) = trickle::start(
        server.addr,
        s.trickle_sockets,
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    let ready = Instant::now() + Duration::from_secs(30);
    while (slow.open.load(Ordering::Relaxed) as usize) < s.trickle_sockets * 95 / 100
        && Instant::now() < ready
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_at_start = slow.open.load(Ordering::Relaxed);
    log(
        backend,
        format!(
            "{open_at_start} trickling sockets open; signed webhooks at {}/s",
            s.trickle_rate
        ),
    );
    let cpu0 = Cpu::sample(server.pid());
    let real = fixed_rate(
        load.clone(),
        s.trickle_rate,
        s.trickle_secs,
        s.rate_workers,
        1_200_000,
        epoch,
    )
    .await;
    let cpu = Cpu::sample(server.pid()).since(&cpu0);
    let open_at_end = slow.open.load(Ordering::Relaxed);
    slow.stop();
    for t in tasks {
        let _ = t.await;
    }
    let offered = (s.trickle_rate * s.trickle_secs.as_secs_f64()).round() as u64;
    let lat = summarize(&real.latency_ms);
    let ratio = real.accepted as f64 / offered.max(1) as f64;
    log(
        backend,
        format!(
            "trickle: {} of {offered} signed webhooks accepted, latency {}, errors {}; slow senders 408×{} 503×{} other×{}",
            real.accepted,
            ms(lat),
            real.errors(),
            slow.timed_out.load(Ordering::Relaxed),
            slow.busy.load(Ordering::Relaxed),
            slow.other.load(Ordering::Relaxed),
        ),
    );
    rep.row(
        col,
        "trickle: slow sockets open at start / end (open-file limit)",
        format!("{open_at_start} / {open_at_end} ({nofile})"),
    );
    rep.row(
        col,
        "trickle: slow senders answered 408 / 503 / other; connect errors",
        format!(
            "{} / {} / {}; {}",
            slow.timed_out.load(Ordering::Relaxed),
            slow.busy.load(Ordering::Relaxed),
            slow.other.load(Ordering::Relaxed),
            slow.connect_errors.load(Ordering::Relaxed)
        ),
    );
    rep.row(
        col,
        &format!("trickle: signed webhooks @ {}/s accepted", s.trickle_rate),
        format!(
            "{} of {offered} ({:.1}%), not accepted: {}",
            real.accepted,
            ratio * 100.0,
            real.errors()
        ),
    );
    rep.row(
        col,
        "trickle: signed webhooks latency median / p99",
        ms(lat),
    );
    rep.row(col, "trickle: server CPU", cpu);
    let p99 = lat.map(|l| l.p99).unwrap_or(f64::INFINITY);
    rep.target(
        col,
        &format!(
            "{} trickling sockets: signed webhooks all accepted, p99 < 100 ms",
            s.trickle_sockets
        ),
        real.accepted == offered
            && p99 < 100.0
            && open_at_start as usize >= s.trickle_sockets * 95 / 100,
        format!("{:.1}% accepted, p99 {p99:.1} ms", ratio * 100.0),
    );
    drop(server);
}

fn main() {
    let s = Settings::from_env();
    // Cargo passes `--bench`; this harness takes no arguments.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::Builder::new()
            .prefix("warrant-bench-")
            .tempdir()
            .expect("temporary directory");
        eprintln!(
            "warrant load bench: binary {}, work dir {}",
            server::BIN,
            dir.path().display()
        );
        let receiver = Receiver::start()
            .await
            .expect("start the provider receiver");
        let mut rep = Report {
            cols: s.backends.iter().map(|b| b.name().to_string()).collect(),
            rows: Vec::new(),
            targets: Vec::new(),
        };
        for (col, backend) in s.backends.clone().into_iter().enumerate() {
            if backend == Backend::Postgres {
                use diesel::Connection;
                if let Err(e) = diesel::pg::PgConnection::establish(&s.pg_admin) {
                    eprintln!("PostgreSQL unreachable at {}: {e}; skipping it", s.pg_admin);
                    rep.row(col, "skipped", "PostgreSQL unreachable");
                    continue;
                }
            }
            let sub = dir.path().join(backend.name());
            std::fs::create_dir_all(&sub).expect("backend directory");
            if s.phases.contains("ingest") {
                log(backend, "ingest run");
                ingest_run(&s, backend, &receiver, &sub, &mut rep, col).await;
            }
            if s.phases.contains("revoke") {
                log(backend, "revocation run");
                revoke_run(&s, backend, &receiver, &sub, &mut rep, col).await;
            }
            if s.phases.contains("trickle") {
                log(backend, "trickle run");
                trickle_run(&s, backend, &receiver, &sub, &mut rep, col).await;
            }
        }
        rep.print(&s);
        if s.keep {
            let kept = dir.keep();
            eprintln!("kept {}", kept.display());
        }
    });
}
