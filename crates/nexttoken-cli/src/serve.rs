//! `nexttoken serve`: the OpenAI-compatible server of `nexttoken-server`, on the model and
//! backend the flags name, until Ctrl-C or SIGTERM.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexttoken_backend::set_cpu_threads;
use nexttoken_server::ServerOptions;

use crate::args::ServeArgs;
use crate::model;

pub fn run(args: ServeArgs) -> Result<()> {
    let options = options(&args, "(loading)".into())?;
    if let Some(threads) = args.threads {
        set_cpu_threads(threads as usize)?;
    }
    let mut opened = model::open(&args.model, false)?;
    let (generator, load_time) =
        nexttoken_load::load(args.backend, &mut opened.weights, args.model.dtype)?;
    let options = ServerOptions {
        model_name: args.model_name.clone().unwrap_or(opened.name.clone()),
        ..options
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async {
        let listener = bind(&args.host, args.port).await?;
        let local = listener.local_addr()?;
        eprintln!(
            "serving {} on http://{local} ({} backend, loaded in {:.1} s): POST /v1/completions, \
             GET /v1/models, POST /tokenize, POST /detokenize, GET /health, GET /metrics",
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
                if options.api_keys.is_empty() {
                    " (no --api-key is set)"
                } else {
                    ""
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

/// The server's options from the flags, checked before the model loads.
fn options(args: &ServeArgs, model_name: String) -> Result<ServerOptions> {
    let mut api_keys = args.api_key.clone();
    if let Some(file) = &args.api_key_file {
        api_keys.extend(read_keys(file)?);
    }
    let options = ServerOptions {
        max_batch: args.max_batch as usize,
        max_queue: args.max_queue as usize,
        api_keys,
        cors_origins: args.cors_origin.clone(),
        body_limit: usize::try_from(args.body_limit).unwrap_or(usize::MAX),
        read_timeout: Duration::from_secs_f64(args.read_timeout),
        request_time_limit: args.request_time_limit.map(Duration::from_secs_f64),
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        prefill_chunk: args.prefill_chunk as usize,
        kv_cache_bytes: args.kv_cache_mib.map(|mib| mib.saturating_mul(1 << 20)),
        prefix_caching: !args.no_prefix_caching,
        ..ServerOptions::new(model_name)
    };
    if let Err(reason) = options.check() {
        bail!("{reason}");
    }
    Ok(options)
}

/// `--api-key-file`: one key a line; blank lines and `#` comments skipped.
fn read_keys(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API keys in {}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        bail!(
            "{} holds no API key: put one a line (a server with an empty key file would lock \
             every client out)",
            path.display()
        );
    }
    Ok(keys)
}

/// Binds `host:port`, with an error that names what went wrong: a host that does not resolve
/// is not a port in use.
async fn bind(host: &str, port: u16) -> Result<tokio::net::TcpListener> {
    let addresses: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| {
            format!("--host {host}: not an address this machine can listen on (e.g. 127.0.0.1, 0.0.0.0, ::1)")
        })?
        .collect();
    let mut last = None;
    for address in addresses {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some((address, e)),
        }
    }
    let Some((address, error)) = last else {
        bail!("--host {host}: resolves to no address");
    };
    let hint = match error.kind() {
        std::io::ErrorKind::AddrInUse => "another server is on that port: pick another (--port)",
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges: pick a higher one (--port)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "that address is not one of this machine's (--host)"
        }
        _ => "check --host and --port",
    };
    Err(error).with_context(|| format!("listening on {address}: {hint}"))
}

/// Ctrl-C or SIGTERM (what `kill`, systemd and container runtimes send). A second Ctrl-C or
/// SIGTERM during the shutdown stops the process at once.
async fn shutdown_signal() {
    signal().await;
    eprintln!(
        "shutting down: no new requests; waiting for the running ones to finish (Ctrl-C again \
         to stop now)"
    );
    tokio::spawn(async {
        signal().await;
        eprintln!("stopped at once: running requests were cut off");
        std::process::exit(130);
    });
}

async fn signal() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_hold_one_key_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# clients\nalpha\n\n  beta  \n").unwrap();
        assert_eq!(read_keys(&path).unwrap(), ["alpha", "beta"]);
        std::fs::write(&path, "# none yet\n\n").unwrap();
        let err = read_keys(&path).unwrap_err().to_string();
        assert!(err.contains("holds no API key"), "{err}");
        let err = read_keys(&dir.path().join("missing")).unwrap_err();
        assert!(
            format!("{err:#}").contains("reading the API keys"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_host_that_does_not_resolve_is_not_blamed_on_the_port() {
        let err = bind("nonsense.invalid", 8080).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("--host nonsense.invalid"), "{message}");
        assert!(!message.contains("--port"), "{message}");
        // A port in use says so.
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let message = format!("{:#}", bind("127.0.0.1", port).await.unwrap_err());
        assert!(
            message.contains("another server is on that port"),
            "{message}"
        );
    }
}
