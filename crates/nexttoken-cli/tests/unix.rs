//! Behaving as a Unix tool: a closed pipe ends a run quietly, Ctrl-C stops it with the
//! text so far.

mod common;

use common::*;

/// Waits for `child` to exit, failing the test if it takes longer than `limit` (a hang, not a
/// speed check: the bound is many times what the work needs).
fn wait_within(child: &mut std::process::Child, limit: std::time::Duration) -> Output {
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr,
    }
}

/// Starts a generation that would run for minutes on its own, and reads its first `bytes`
/// bytes of text: it is under way.
fn spawn_endless_generation(bytes: usize) -> std::process::Child {
    use std::io::Read;
    let mut child = spawn(&["generate", "-n", "1000000", "--ignore-eos", "Every effort"]);
    let mut first = vec![0; bytes];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    child
}

/// `nexttoken generate ... | head -c 100`: the reader goes away and the generation ends at
/// once, quietly, as Unix tools end (by SIGPIPE).
#[test]
fn closing_stdout_stops_the_generation_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = spawn_endless_generation(100);
    drop(child.stdout.take());
    let output = wait_within(&mut child, std::time::Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert!(stderr.is_empty(), "printed to stderr: {stderr}");
}

/// `nexttoken info | grep -q flex`: every subcommand, not only `generate`.
#[test]
fn info_into_a_closed_pipe_is_quiet() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .arg("info")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    // (Not `is_empty`: a Vulkan driver may print its own notices while the backends are probed.)
    for complaint in ["panicked", "Broken pipe", "error"] {
        assert!(!stderr.contains(complaint), "printed to stderr: {stderr}");
    }
}

/// Ctrl-C ends the generation after the current step, then prints the timings so far, like
/// llama-cli's summary; the exit status says it was interrupted (130).
#[test]
fn ctrl_c_stops_and_prints_the_timings() {
    use std::io::Read;
    let mut child = spawn_endless_generation(64);
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    // Keep reading stdout, or the child could block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).map(|_| rest)
    });
    let output = wait_within(&mut child, std::time::Duration::from_secs(20));
    reader.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    for expected in ["load:", "prompt:", "generated:", "tokens/s", "interrupted"] {
        assert!(stderr.contains(expected), "`{expected}` not in: {stderr}");
    }
}
