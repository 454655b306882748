//! The `order-timeout` command: `serve` runs the service, `migrate` only migrates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use order_timeout::config::{Config, LogFormat};
use order_timeout::startup::Application;
use order_timeout::{store, telemetry};

/// Cancel orders and waybills nobody acted on in time.
#[derive(Debug, Parser)]
#[command(name = "order-timeout", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API, the outbox relay, the due-queue consumer and the sweeper.
    Serve(Box<Config>),
    /// Create the database if missing and apply the migrations, then exit.
    Migrate {
        /// The database to migrate.
        #[arg(
            long,
            env = "DATABASE_URL",
            hide_env_values = true,
            default_value = order_timeout::config::DEFAULT_DATABASE_URL
        )]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Migrate { database_url } => migrate(&database_url).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "exiting");
            eprintln!("order-timeout: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init_logs(config.log_format);
    let app = Application::build(config).await?;
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        shutdown.cancel();
    });
    app.run_until_stopped().await
}

async fn migrate(database_url: &str) -> anyhow::Result<()> {
    telemetry::init_logs(LogFormat::Text);
    let settings = store::PoolSettings {
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(10),
        lock_timeout: std::time::Duration::from_secs(60),
        statement_timeout: std::time::Duration::ZERO,
        session: store::SessionSettings::default(),
    };
    let pool = store::connect(database_url, settings).await?;
    store::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// SIGTERM (orchestrators) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
