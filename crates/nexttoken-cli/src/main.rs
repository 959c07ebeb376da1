//! `nexttoken`: GPT-2 text generation from the command line.

/// Every step allocates and frees tensors of a few MB; glibc's malloc hands such blocks back to
/// the kernel and takes page faults to get them again, a fifth of GPT-2 124M's decode time on
/// flex (docs/performance.md); mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod args;
mod bench;
mod generate;
mod kl_divergence;
mod logging;
mod logits;
mod memory;
mod model;
mod perplexity;
mod serve;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use nexttoken_backend::{Backend, BackendError, set_cpu_threads};

use crate::args::{Cli, Command, RunArgs};
use crate::generate::Outcome;

fn main() -> ExitCode {
    restore_default_sigpipe();
    let command = Cli::parse().command;
    // The server logs a line per request; elsewhere only the libraries' warnings show.
    match &command {
        Command::Serve(args) => logging::init(args.log_format, "info"),
        _ => logging::init(args::LogFormat::Text, "warn"),
    }
    let result = match command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args).map(|()| Outcome::Finished),
        Command::Serve(args) => serve::run(args).map(|()| Outcome::Finished),
        Command::Perplexity(args) => perplexity::run(args).map(|()| Outcome::Finished),
        Command::Info => run_info().map(|()| Outcome::Finished),
    };
    match result {
        Ok(Outcome::Finished) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => ExitCode::from(generate::INTERRUPTED),
        Err(error) => {
            // One line with the whole chain of causes, without anyhow's backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust starts programs with SIGPIPE ignored, so writing to a closed pipe is an error, which
/// `println!` turns into a panic. With the default action back, `nexttoken ... | head` ends at
/// its next write, silently, as Unix tools do. (Sockets are unaffected: the standard library
/// sends with MSG_NOSIGNAL.)
fn restore_default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler; nothing else runs yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Applies the settings that must be in place before the first tensor operation.
fn apply(run: &RunArgs) -> Result<()> {
    if let Some(threads) = run.threads {
        set_cpu_threads(threads as usize)?;
    }
    Ok(())
}

/// "1 token", "2 tokens".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("{count} {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Lists every backend: compiled in or not, and whether it starts on this machine.
fn run_info() -> Result<()> {
    println!("nexttoken {}", env!("CARGO_PKG_VERSION"));
    println!("{:<8} {:<9} status", "backend", "compiled");
    for backend in Backend::ALL {
        let status = match backend.probe() {
            Ok(_) => match backend.adapter() {
                Some(adapter) => format!("ready, on {adapter}"),
                None => "ready".to_string(),
            },
            Err(BackendError::NotCompiled { feature, .. }) => {
                format!("not in this build: rebuild with `--features {feature}`")
            }
            Err(e) => format!("cannot start: {e}"),
        };
        let compiled = if backend.is_compiled() { "yes" } else { "no" };
        println!("{:<8} {compiled:<9} {status}", backend.name());
    }
    Ok(())
}
