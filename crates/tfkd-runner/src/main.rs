//! The `tfkd` command line: train, evaluate, list models, download datasets.

mod cli;
mod commands;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    tfkd_runner::tune_for_training();
    tfkd_runner::run_dir::release_locks_on_termination();
    let cli = cli::Cli::parse();
    cli::init_logging(cli.verbose, cli.quiet);
    match commands::dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let interrupted = e.chain().any(|c| matches!(c.downcast_ref(), Some(tfkd_runner::RunError::Interrupted { .. })));
            ExitCode::from(if interrupted { tfkd_runner::run_dir::EXIT_INTERRUPTED } else { 1 })
        }
    }
}
