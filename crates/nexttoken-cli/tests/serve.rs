//! The `serve` command as a process: answers, logs, signals, refusals at start.

mod common;

use common::*;

/// `nexttoken serve` as people run it: it says where it listens, answers a completion, and
/// SIGTERM (what `kill`, systemd and container runtimes send) stops it cleanly with status 0.
/// Listening beyond loopback prints a warning.
#[cfg(unix)]
#[test]
fn serve_answers_then_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    for (host, warns) in [("127.0.0.1", false), ("0.0.0.0", true)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
            .args([
                "serve",
                "-m",
                &tiny_trained(),
                "--host",
                host,
                "--port",
                "0",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut banner = String::new();
        let mut warning = String::new();
        stderr.read_line(&mut banner).unwrap();
        let address = banner
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in: {banner}"))
            .replace("0.0.0.0", "127.0.0.1");
        if warns {
            stderr.read_line(&mut warning).unwrap();
            assert!(
                warning.contains("warning: listening on 0.0.0.0"),
                "{warning}"
            );
            assert!(warning.contains("no --api-key"), "{warning}");
        }
        let answer: serde_json::Value = http_post(
            &format!("http://{address}/v1/completions"),
            r#"{"prompt": "Hello", "max_tokens": 4, "temperature": 0}"#,
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "length", "{answer}");

        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        assert!(status.success(), "{status}: {rest}");
        assert!(rest.contains("stopped"), "{rest}");
    }
}

/// A POST with a JSON body over a plain TCP connection (HTTP/1.0: the server closes it).
#[cfg(unix)]
fn http_post(url: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "POST /{path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, json) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// An empty API key would lock every client out: refused before the model loads.
#[test]
fn an_empty_api_key_is_refused_at_start() {
    let output = nexttoken(&["serve", "--port", "0", "--api-key", ""]);
    assert_usage_error(&output, "lock every client out");
    // Set but empty: clap hands the empty value to the same check.
    let output = nexttoken_with_env(&["serve", "--port", "0"], &[("NEXTTOKEN_API_KEY", "")]);
    assert_usage_error(&output, "unset NEXTTOKEN_API_KEY");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# nobody yet\n").unwrap();
    let output = nexttoken(&[
        "serve",
        "--port",
        "0",
        "--api-key-file",
        &keys.display().to_string(),
    ]);
    assert_fails_with(&output, "holds no API key");
}

/// `nexttoken serve` logs one line per request on stderr (JSON with `--log-format json`), and a
/// second Ctrl-C during the shutdown stops it at once, however long the grace.
#[test]
fn serve_logs_requests_and_a_second_ctrl_c_stops_it() {
    use std::io::{BufRead, BufReader, Write};
    let mut server = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args([
            "serve",
            "--port",
            "0",
            "--log-format",
            "json",
            "--shutdown-grace",
            "600",
        ])
        .env_remove("NEXTTOKEN_MODEL")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    let address = stderr
        .by_ref()
        .map(Result::unwrap)
        .find_map(|line| {
            let rest = line.split_once("http://")?.1;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .expect("the server says where it listens");
    // A long stream keeps the server busy through the shutdown.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let body = r#"{"prompt": "ROMEO:", "max_tokens": 200, "stream": true, "temperature": 0}"#;
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: cli-test-1\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    answer.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // The stream is done quickly on the bundled model; the logged line follows.
    let logged = stderr
        .by_ref()
        .map(Result::unwrap)
        .find(|line| line.contains("cli-test-1"))
        .expect("an access-log line");
    let logged: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(logged["target"], "nexttoken::access");
    assert_eq!(logged["status"], 200);
    assert_eq!(logged["prompt_tokens"], 3);
    assert!(
        logged["completion_tokens"].as_u64().unwrap() > 0,
        "{logged}"
    );
    assert!(logged["ttft_ms"].as_f64().is_some(), "{logged}");

    // A request held open (headers sent, no body yet) keeps the graceful shutdown waiting.
    let mut held = std::net::TcpStream::connect(&address).unwrap();
    write!(
        held,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{{"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = server.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        server.try_wait().unwrap().is_none(),
        "stopped before the second Ctrl-C"
    );
    let start = std::time::Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed().as_secs() < 10,
            "a second Ctrl-C did not stop the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    drop(held);
}
