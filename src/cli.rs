//! The command line: parses arguments and calls into the library. Exit 0 on
//! success, 1 on a failed check, 2 on bad usage or configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{App, Options};
use crate::config::{Config, LogFormat};

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
    let path = crate::config::locate(cli.config.as_deref());
    let config = match load(&path) {
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

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}
