//! `conclave`: one binary over the libraries. It parses arguments, loads the config, sets up
//! logging and calls in; the logic lives in the `conclave-*` crates.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let config = match conclave_shared::config::Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("conclave: {e}");
            return ExitCode::from(2);
        }
    };
    // A person typing at the console should not have info logs scrolling through their line.
    let level = match &args.log_level {
        Some(l) => l.clone(),
        None if commands::quiet_console(&args) => "warn".to_owned(),
        None => config.log_level.clone(),
    };
    if let Err(e) = output::init_tracing(&level) {
        eprintln!("conclave: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conclave: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conclave: {e:#}");
            ExitCode::from(1)
        }
    }
}
