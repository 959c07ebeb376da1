//! `nexttoken serve`: the OpenAI-compatible server of `nexttoken-server`, on the model and
//! backend the flags name, until Ctrl-C or SIGTERM.

use std::net::IpAddr;

use anyhow::{Context, Result};
use nexttoken_backend::set_cpu_threads;
use nexttoken_server::ServerOptions;

use crate::args::ServeArgs;
use crate::{load_generator, model};

pub fn run(args: ServeArgs) -> Result<()> {
    if let Some(threads) = args.threads {
        set_cpu_threads(threads as usize)?;
    }
    let mut opened = model::open(&args.model, false)?;
    let (generator, load_time) =
        load_generator(args.backend, &mut opened.checkpoint, args.model.dtype)?;
    let options = ServerOptions {
        max_batch: args.max_batch as usize,
        max_queue: args.max_queue as usize,
        api_key: args.api_key.clone(),
        ..ServerOptions::new(args.model_name.clone().unwrap_or(opened.name.clone()))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| {
                format!("listening on {address}: is another server on that port? (--port)")
            })?;
        let local = listener.local_addr()?;
        eprintln!(
            "serving {} on http://{local} ({} backend, loaded in {:.1} s): POST /v1/completions, \
             GET /v1/models, /health, /metrics",
            options.model_name,
            args.backend,
            load_time.as_secs_f64()
        );
        let loopback = args.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || args.host == "localhost";
        if !loopback {
            eprintln!(
                "warning: listening on {}: anyone who can reach this machine can use the server{}",
                args.host,
                if options.api_key.is_some() {
                    ""
                } else {
                    " (no --api-key is set)"
                }
            );
        }
        nexttoken_server::serve(listener, generator, options, shutdown_signal())
            .await
            .context("serving")?;
        eprintln!("stopped");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM (what `kill`, systemd and container runtimes send).
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    eprintln!("shutting down: no new requests; waiting for the running ones to finish");
}
