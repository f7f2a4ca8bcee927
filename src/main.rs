//! The `retentiond` binary: logging setup, then [`retentiond::cli`].

use clap::Parser;
use retentiond::cli::{Cli, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

fn main() {
    // reqwest (under the Azure SDK) is built without a TLS crypto provider:
    // ring is installed for the whole process before any client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // Text output already shows every rule's result in a table; JSON logs are
    // for shipping, where the per-rule events are the point.
    let default = match (cli.log_format, &cli.command) {
        (LogFormat::Json, _) | (_, retentiond::cli::Command::Serve { .. }) => "info,sqlx=warn",
        (LogFormat::Text, _) => "warn",
    };
    let filter =
        EnvFilter::try_from_env("RETENTIOND_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(retentiond::cli::exit::FAILED);
        }
    };
    let code = runtime.block_on(retentiond::cli::run(cli));
    std::process::exit(code);
}
