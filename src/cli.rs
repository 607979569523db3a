//! The command line: parses arguments and calls into the library. Exit 0 on
//! success, 1 on a failed check (a broken chain, drift found), 2 on bad
//! usage or configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::app::{App, Options};
use crate::clock::SystemClock;
use crate::config::{Config, LogFormat};
use crate::context::Context;

#[derive(Debug, Parser)]
#[command(
    name = "warrant",
    version,
    about = "Just-in-time access warranted by a ticket"
)]
pub struct Cli {
    /// Configuration file (else $WARRANT_CONFIG, else ./warrant.toml).
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and the job runner.
    Serve {
        /// Serve the API only; another process runs the jobs.
        #[arg(long)]
        no_jobs: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Validate the configuration and exit.
    CheckConfig,
    /// Parse a webhook body from a file and print the snapshot and the
    /// decision it would lead to. Changes nothing.
    Simulate {
        /// github, jira or servicenow.
        #[arg(long)]
        source: String,
        /// The webhook body (JSON).
        #[arg(long)]
        file: PathBuf,
        /// For GitHub: the X-GitHub-Event header.
        #[arg(long, default_value = "issues")]
        event: String,
        /// Decide as of this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
    },
    /// List or revoke grants.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Verify or export the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Re-decide every ticket now (after a configuration change, say),
    /// reschedule grants that lost their job, and run what is due.
    Reconcile {
        /// Only re-decide and schedule; leave the provider calls to `serve`.
        #[arg(long)]
        no_jobs: bool,
    },
    /// Check once what providers hold against the grants: access held
    /// without a live grant is recorded (and removed in `revoke` mode), a
    /// live grant's missing access applied again. Exits 1 on drift.
    Drift {
        /// Check only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List grants, newest last.
    List {
        #[arg(long)]
        ticket: Option<String>,
        /// Only grants that are live (pending, granting, active).
        #[arg(long)]
        active: bool,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant by hand.
    Revoke {
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, and with --checkpoints the chain against
    /// signed checkpoints; exits 1 if either fails.
    Verify {
        /// A directory of checkpoint files (`[audit] checkpoint_dir`, or a
        /// copy shipped elsewhere).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The checkpoints' public key (PEM); default: the public half of
        /// `[audit] checkpoint_key_file`.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Write every event to standard output.
    Export {
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a random token; print it once, with the configuration entry that holds its hash.
    New {
        #[arg(long)]
        name: String,
        /// admin, auditor or introspector.
        #[arg(long)]
        role: String,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    // Making a token needs no configuration.
    if let Command::Token {
        command: TokenCommand::New { name, role },
    } = &cli.command
    {
        return token_new(name, role);
    }
    let path = crate::config::locate(cli.config.as_deref());
    // Reading the trail and the grants needs only the database settings.
    let reading = matches!(
        cli.command,
        Command::Audit { .. }
            | Command::Grants {
                command: GrantsCommand::List { .. }
            }
    );
    let loaded = if reading {
        Config::load_for_reading(&path).map_err(|e| {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(2)
        })
    } else {
        load(&path)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_tracing(config.server.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli.command, config, &path))
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARRANT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run(command: Command, config: Config, path: &Path) -> ExitCode {
    match command {
        Command::CheckConfig => {
            println!(
                "{}: ok ({} sources, {} providers, {} policies, {} identities, database {})",
                path.display(),
                [
                    config.sources.github.is_some(),
                    config.sources.jira.is_some(),
                    config.sources.servicenow.is_some()
                ]
                .iter()
                .filter(|x| **x)
                .count(),
                config.providers.len(),
                config.policies.len(),
                config.identities.len(),
                crate::db::DbUrl::parse(&config.database.url)
                    .map(|u| u.backend())
                    .unwrap_or("?"),
            );
            // Starts, but cannot issue these providers' credentials.
            for (name, p) in &config.providers {
                if let crate::config::ProviderConfig::Token(t) = p {
                    if t.key.is_none() && config.keys.secret.is_none() {
                        eprintln!(
                            "warning: providers.{name} has no key_file and [keys] names no \
                             key-encryption key (secret_env or secret_file): its credentials \
                             cannot be issued until one is set"
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Migrate => {
            let db = match crate::db::Db::open(
                &config.database.url,
                1,
                config.database.connect_timeout.std(),
            ) {
                Ok(db) => db,
                Err(e) => return fail(e),
            };
            match tokio::task::spawn_blocking(move || db.migrate()).await {
                Ok(Ok(n)) => {
                    println!("{n} migrations applied");
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => fail(e),
                Err(e) => fail(e),
            }
        }
        Command::Simulate {
            source,
            file,
            event,
            at,
        } => simulate(&config, &source, &file, &event, at.as_deref()),
        Command::Grants { command } => {
            tokio::task::block_in_place(|| grants_command(&config, command))
        }
        Command::Audit { command } => {
            tokio::task::block_in_place(|| audit_command(&config, command))
        }
        Command::Reconcile { no_jobs } => reconcile(config, no_jobs).await,
        Command::Drift { provider, json } => drift(config, provider, json).await,
        Command::Token { .. } => ExitCode::from(2),
        Command::Serve { no_jobs } => {
            let options = Options {
                run_jobs: !no_jobs,
                ..Options::default()
            };
            match App::build(config, options).await {
                Ok(app) => match app.run_until_stopped().await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                },
                Err(e) => fail(e),
            }
        }
    }
}

fn token_new(name: &str, role: &str) -> ExitCode {
    use rand::RngCore;
    if !matches!(role, "admin" | "auditor" | "introspector") {
        eprintln!("error: --role must be admin, auditor or introspector");
        return ExitCode::from(2);
    }
    if name.trim().is_empty() || name.contains(['"', '\\', '\n']) {
        eprintln!("error: --name must be a plain name");
        return ExitCode::from(2);
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("wrt_{}", hex::encode(bytes));
    println!("token (shown once, keep it secret): {token}");
    println!();
    println!("[[api.tokens]]");
    println!("name = \"{name}\"");
    println!("role = \"{role}\"");
    println!("sha256 = \"{}\"", crate::api::auth::hash_token(&token));
    ExitCode::SUCCESS
}

fn open_db(config: &Config) -> Result<crate::db::Db, ExitCode> {
    let db = crate::db::Db::open(
        &config.database.url,
        2,
        config.database.connect_timeout.std(),
    )
    .map_err(fail)?;
    db.migrate().map_err(fail)?;
    Ok(db)
}

fn simulate(config: &Config, source: &str, file: &Path, event: &str, at: Option<&str>) -> ExitCode {
    use crate::domain::Source;
    use crate::sources::Parsed;
    let source: Source = match source.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: --source: {e}");
            return ExitCode::from(2);
        }
    };
    let now = match at.map(chrono::DateTime::parse_from_rfc3339).transpose() {
        Ok(t) => t
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(chrono::Utc::now),
        Err(_) => {
            eprintln!("error: --at must be an RFC 3339 time");
            return ExitCode::from(2);
        }
    };
    let body = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: --file {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    // The file stands for a delivery whose signature was checked: only
    // the source's parser runs, told the event as its header would.
    let headers = [("x-github-event", event)];
    let inbound = crate::sources::Inbound {
        headers: &headers,
        body: &body,
        now,
        tolerance: chrono::Duration::zero(),
    };
    let parsed = crate::sources::configured(&config.sources, source).map(|s| s.parse(&inbound));
    let out = match parsed {
        None => {
            eprintln!("error: --source: [sources.{source}] is not configured");
            return ExitCode::from(2);
        }
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        Some(Ok(Parsed::Ignored { why, ticket })) => {
            serde_json::json!({ "status": "ignored", "why": why, "ticket": ticket })
        }
        Some(Ok(Parsed::Ticket(ev))) => {
            let snapshot = crate::ticket::merge(None, ev);
            let decision = crate::policy::decide(&snapshot, config, now);
            serde_json::json!({
                "status": "accepted",
                "ticket": snapshot.key,
                "snapshot": snapshot,
                "decision": { "outcome": if decision.reason().is_some() { "deny" } else { "warrant" }, "reason": decision.reason(), "detail": decision.detail() },
            })
        }
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    ExitCode::SUCCESS
}

fn grants_command(config: &Config, command: GrantsCommand) -> ExitCode {
    let db = match open_db(config) {
        Ok(db) => db,
        Err(code) => return code,
    };
    match command {
        GrantsCommand::List {
            ticket,
            active,
            json,
        } => {
            let mut after = None;
            if !json {
                println!(
                    "{:<36}  {:<9}  {:<14}  {:<24}  {:<20}  {:<20}  TICKET",
                    "ID", "STATE", "SUBJECT", "RESOURCE", "STARTS", "EXPIRES"
                );
            }
            loop {
                let filter = crate::grants::Filter {
                    ticket: ticket.clone(),
                    after: after.clone(),
                    limit: 1000,
                    ..Default::default()
                };
                let rows = match db.read(|c| crate::grants::list(c, &filter)) {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
                let Some(last) = rows.last() else { break };
                after = Some(last.id.clone());
                let n = rows.len();
                for g in rows.into_iter().filter(|g| !active || g.state().is_live()) {
                    let g = crate::grants::Grant::from(g);
                    if json {
                        println!("{}", serde_json::to_string(&g).unwrap_or_default());
                    } else {
                        println!(
                            "{:<36}  {:<9}  {:<14}  {:<24}  {:<20}  {:<20}  {}",
                            g.id,
                            g.state,
                            g.subject,
                            g.resource,
                            g.starts_at,
                            g.expires_at,
                            g.ticket
                        );
                    }
                }
                if n < 1000 {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        GrantsCommand::Revoke { id, reason } => {
            let (why, note) = crate::api::grants::manual_reason(Some(&reason));
            let actor = format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            );
            match crate::engine::revoke_by_hand(
                &db,
                config,
                chrono::Utc::now(),
                &id,
                why,
                &actor,
                note.as_deref(),
            ) {
                Ok(Some(g)) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&crate::grants::Grant::from(g))
                            .unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!("error: no grant {id}");
                    ExitCode::from(1)
                }
                Err(e) => fail(e),
            }
        }
    }
}

/// `audit verify --checkpoints DIR`: exit 0 when the chain and every
/// checkpoint hold, 1 (naming the first bad event or checkpoint) when not,
/// 2 when the key or the directory cannot be read.
fn verify_checkpoints(
    config: &Config,
    db: &crate::db::Db,
    dir: &std::path::Path,
    public_key: Option<&std::path::Path>,
) -> ExitCode {
    use crate::evidence::checkpoint;
    let public = match public_key {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("--public-key: cannot read {}: {e}", path.display()))
            .and_then(|pem| {
                crate::crypto::checkpoint::public_key_from_pem(&pem)
                    .map_err(|e| format!("--public-key: {}: {e}", path.display()))
            }),
        None => match checkpoint::key(config) {
            Ok(Some(k)) => Ok(k.public()),
            Ok(None) => Err(
                "give --public-key, or set [audit] checkpoint_key_file in the configuration"
                    .to_string(),
            ),
            Err(e) => Err(e.to_string()),
        },
    };
    let public = match public {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match checkpoint::verify(db, dir, &public) {
        Ok(v) => {
            println!("{}", serde_json::to_string(&v).unwrap_or_default());
            if v.ok {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "audit verification failed: {}",
                    v.problem.as_deref().unwrap_or("the chain is broken")
                );
                ExitCode::from(1)
            }
        }
        Err(checkpoint::CheckpointError::Store(e)) => fail(e),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn audit_command(config: &Config, command: AuditCommand) -> ExitCode {
    use std::io::Write;
    let db = match open_db(config) {
        Ok(db) => db,
        Err(code) => return code,
    };
    match command {
        AuditCommand::Verify {
            checkpoints: Some(dir),
            public_key,
        } => verify_checkpoints(config, &db, &dir, public_key.as_deref()),
        AuditCommand::Verify { .. } => match crate::audit::verify(&db) {
            Ok(v) => {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
                if v.ok {
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "audit chain broken at seq {}",
                        v.first_bad.unwrap_or_default()
                    );
                    ExitCode::from(1)
                }
            }
            Err(e) => fail(e),
        },
        AuditCommand::Export { format } => {
            let format: crate::api::audit::Format = match format.parse() {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: --format: {e}");
                    return ExitCode::from(2);
                }
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if format == crate::api::audit::Format::Csv
                && out
                    .write_all(crate::api::audit::CSV_HEADER.as_bytes())
                    .is_err()
            {
                return ExitCode::from(1);
            }
            let mut f = crate::db::audit::Filter {
                limit: 1000,
                ..Default::default()
            };
            loop {
                let rows = match crate::db::audit::page(&db, &f) {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
                let Some(last) = rows.last() else { break };
                f.after = last.seq;
                let n = rows.len();
                for r in rows {
                    if out
                        .write_all(crate::api::audit::export_line(r, format).as_bytes())
                        .is_err()
                    {
                        return ExitCode::from(1);
                    }
                }
                if n < 1000 {
                    break;
                }
            }
            if out.flush().is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
    }
}

async fn reconcile(config: Config, no_jobs: bool) -> ExitCode {
    // Only what workers need: no CI verifier, no body permits, no server.
    let ctx = match Context::new(config, Arc::new(SystemClock), Arc::new(crate::engine::Fold)) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(e),
    };
    let st = ctx.clone();
    let result =
        tokio::task::spawn_blocking(move || -> Result<(usize, usize), crate::db::StoreError> {
            st.db.migrate()?;
            let now = st.clock.now();
            let keys = crate::engine::all_ticket_keys(&st.db)?;
            for k in &keys {
                crate::engine::reconcile_ticket(&st.db, &st.config, now, k)?;
            }
            let swept = crate::jobs::sweep(&st.db, now)?;
            Ok((keys.len(), swept))
        })
        .await;
    let (tickets, swept) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(e),
        Err(e) => return fail(e),
    };
    println!("re-decided {tickets} tickets; {swept} grants had lost their job");
    if !no_jobs {
        match crate::jobs::run_pending(&ctx).await {
            Ok(n) => println!("ran {n} due jobs"),
            Err(e) => return fail(e),
        }
    }
    ExitCode::SUCCESS
}

async fn drift(config: Config, provider: Option<String>, json: bool) -> ExitCode {
    use crate::drift::DriftError;
    if let Some(p) = provider.as_deref() {
        if !config.providers.contains_key(p) {
            eprintln!("error: --provider: no provider `{p}` is configured");
            return ExitCode::from(2);
        }
    }
    // Like `reconcile`: the workers' parts, without HTTP.
    let ctx = match Context::new(config, Arc::new(SystemClock), Arc::new(crate::engine::Fold)) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(e),
    };
    let st = ctx.clone();
    match tokio::task::spawn_blocking(move || st.db.migrate()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return fail(e),
        Err(e) => return fail(e),
    }
    let report = match crate::drift::check_now(&ctx, provider.as_deref()).await {
        Ok(r) => r,
        Err(DriftError::Unknown(p)) => {
            eprintln!("error: --provider: no provider `{p}` is configured");
            return ExitCode::from(2);
        }
        Err(e) => return fail(e),
    };
    if json {
        for i in &report.items {
            println!("{}", serde_json::to_string(i).unwrap_or_default());
        }
    } else {
        let width = |f: fn(&crate::drift::Item) -> &str, title: &str| {
            report
                .items
                .iter()
                .map(|i| f(i).chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or_default()
        };
        let (wp, wa, wt) = (
            width(|i| &i.provider, "PROVIDER"),
            width(|i| &i.account, "ACCOUNT"),
            width(|i| &i.target, "TARGET"),
        );
        println!(
            "{:<wp$}  {:<wa$}  {:<wt$}  STATE",
            "PROVIDER", "ACCOUNT", "TARGET"
        );
        for i in &report.items {
            let what = match &i.error {
                Some(e) => format!("{} ({})", i.outcome.as_str(), crate::domain::printable(e)),
                None => i.outcome.as_str().to_string(),
            };
            println!(
                "{:<wp$}  {:<wa$}  {:<wt$}  {what}",
                crate::domain::printable(&i.provider),
                crate::domain::printable(&i.account),
                crate::domain::printable(&i.target),
            );
        }
    }
    for e in &report.errors {
        eprintln!("error: {}", crate::domain::printable(e));
    }
    let drifted = report.items.iter().filter(|i| i.outcome.is_drift()).count();
    eprintln!(
        "checked {} providers: {drifted} drifted, {} errors",
        report.providers.len(),
        report.errors.len()
    );
    if drifted > 0 || !report.errors.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}
