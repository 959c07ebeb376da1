//! A stand-in for the Hugging Face Hub on 127.0.0.1, for tests: it answers
//! `GET /{repo}/resolve/{revision}/{file}` as the Hub does (the `etag`, `x-repo-commit` and
//! `content-range` headers `hf-hub` needs, byte ranges, the Hub's `x-error-code`s), and can
//! gate a repo, break downloads off midway or serve damaged bytes. Point `HF_ENDPOINT` at
//! [`FakeHub::endpoint`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The commit every revision of every repo resolves to.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct State {
    /// (repo, file) -> bytes.
    files: HashMap<(String, String), Vec<u8>>,
    /// Repo -> the token that may read it.
    gated: HashMap<String, String>,
    /// Downloads still to break off, and after how many bytes of the body.
    breaks: usize,
    break_after: usize,
    /// (repo, file) served with its last byte flipped (its etag stays right).
    damaged: Vec<(String, String)>,
}

/// A running fake Hub; it stops with the test process.
#[derive(Clone)]
pub struct FakeHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    /// Starts a server on an ephemeral port of 127.0.0.1.
    ///
    /// # Panics
    /// If no port can be bound (a test set-up failure).
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let endpoint = format!("http://{}", listener.local_addr().expect("local address"));
        let hub = Self {
            endpoint,
            state: Arc::default(),
            requests: Arc::default(),
        };
        let server = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        hub
    }

    /// The value for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Serves `bytes` as `file` of `repo` (at every revision).
    pub fn add_file(&self, repo: &str, file: &str, bytes: Vec<u8>) {
        self.lock()
            .files
            .insert((repo.to_string(), file.to_string()), bytes);
    }

    /// Serves every file of the folder `dir` as a file of `repo`.
    ///
    /// # Panics
    /// If the folder cannot be read.
    pub fn add_folder(&self, repo: &str, dir: &std::path::Path) {
        for entry in std::fs::read_dir(dir).expect("reading the fixture folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_file() {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                self.add_file(
                    repo,
                    &name,
                    std::fs::read(&path).expect("reading a fixture"),
                );
            }
        }
    }

    /// Answers requests for `repo` without `Authorization: Bearer {token}` with 401, as the Hub
    /// answers for a gated repo.
    pub fn gate(&self, repo: &str, token: &str) {
        self.lock().gated.insert(repo.into(), token.into());
    }

    /// Cuts the next `count` downloads off after `bytes` bytes of their body.
    pub fn break_downloads(&self, count: usize, bytes: usize) {
        let mut state = self.lock();
        state.breaks = count;
        state.break_after = bytes;
    }

    /// Serves `file` of `repo` with its last byte changed, under the right etag.
    pub fn damage(&self, repo: &str, file: &str) {
        self.lock().damaged.push((repo.into(), file.into()));
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn serve(&self, stream: TcpStream) {
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(reader);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.trim().is_empty() => break,
                Ok(_) => {
                    if let Some((name, value)) = line.split_once(':') {
                        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                    }
                }
            }
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let _ = self.respond(stream, path, &headers);
    }

    fn respond(
        &self,
        mut stream: TcpStream,
        path: &str,
        headers: &HashMap<String, String>,
    ) -> std::io::Result<()> {
        let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
            return error(&mut stream, 404, "RepoNotFound");
        };
        let Some((revision, file)) = rest.split_once('/') else {
            return error(&mut stream, 404, "EntryNotFound");
        };
        let mut state = self.lock();
        if !state.files.keys().any(|(r, _)| r == repo) {
            // What the Hub tells an anonymous client about a repo it cannot see.
            return error(&mut stream, 401, "RepoNotFound");
        }
        if let Some(token) = state.gated.get(repo)
            && headers.get("authorization") != Some(&format!("Bearer {token}"))
        {
            return error(&mut stream, 401, "GatedRepo");
        }
        if revision != "main" && revision != COMMIT {
            return error(&mut stream, 404, "RevisionNotFound");
        }
        let key = (repo.to_string(), file.to_string());
        let Some(bytes) = state.files.get(&key).cloned() else {
            return error(&mut stream, 404, "EntryNotFound");
        };
        let etag: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut body = bytes;
        if state.damaged.contains(&key)
            && let Some(last) = body.last_mut()
        {
            *last ^= 0xff;
        }
        let total = body.len();
        let (start, end) = match headers.get("range").and_then(|r| parse_range(r, total)) {
            Some(range) => range,
            None => (0, total.saturating_sub(1)),
        };
        let is_download = end > start || start > 0;
        let cut = if is_download && state.breaks > 0 {
            state.breaks -= 1;
            Some(state.break_after)
        } else {
            None
        };
        drop(state);
        let slice = if total == 0 {
            &[][..]
        } else {
            &body[start..=end]
        };
        write!(
            stream,
            "HTTP/1.1 206 Partial Content\r\netag: \"{etag}\"\r\nx-linked-etag: \"{etag}\"\r\n\
             x-repo-commit: {COMMIT}\r\ncontent-range: bytes {start}-{end}/{total}\r\n\
             content-length: {}\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n",
            slice.len()
        )?;
        match cut {
            Some(bytes) => stream.write_all(&slice[..bytes.min(slice.len())])?,
            None => stream.write_all(slice)?,
        }
        stream.flush()
    }
}

/// `bytes=a-b` or `bytes=a-` within a body of `total` bytes.
fn parse_range(range: &str, total: usize) -> Option<(usize, usize)> {
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = start.parse().ok()?;
    let end = if end.is_empty() {
        total.checked_sub(1)?
    } else {
        end.parse::<usize>().ok()?.min(total.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

fn error(stream: &mut TcpStream, status: u16, code: &str) -> std::io::Result<()> {
    let reason = match status {
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let body = format!("{{\"error\":\"{code}\"}}");
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nx-error-code: {code}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
