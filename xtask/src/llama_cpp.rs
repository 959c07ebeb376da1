//! llama.cpp, the peer users pick for CPU speed: its binaries as `scripts/install-backends.sh
//! llama-cpp` builds them (from the sources llama-cpp-python ships on PyPI), a checkpoint
//! converted to GGUF by llama.cpp's own converter, and its server started for a run.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cache_dir, install, venv_python};

/// Where llama.cpp's sources and build live.
fn dir() -> Result<PathBuf> {
    std::env::var_os("NEXTTOKEN_LLAMA_CPP")
        .map(PathBuf::from)
        .or_else(|| cache_dir().map(|cache| cache.join("llama.cpp")))
        .context("no HOME: set NEXTTOKEN_LLAMA_CPP")
}

/// A llama.cpp program (`llama-server`, `llama-bench`), built first if it is not there.
pub fn binary(root: &Path, name: &str) -> Result<PathBuf> {
    let path = dir()?.join("build/bin").join(name);
    if !path.is_file() {
        install(root, &["llama-cpp"])
            .context("building llama.cpp (scripts/install-backends.sh llama-cpp)")?;
    }
    Ok(path)
}

/// `checkpoint` as GGUF in `outtype` (f32, f16, bf16, q8_0 from the converter; q4_0 and
/// q4_k_m from `llama-quantize` on the f32 file, as llama.cpp's users make them), converted once and kept
/// beside the llama.cpp build; converted again when the checkpoint is newer.
pub fn gguf(root: &Path, checkpoint: &Path, outtype: &str) -> Result<PathBuf> {
    let name = checkpoint
        .canonicalize()
        .with_context(|| format!("{}", checkpoint.display()))?
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let out = dir()?.join("gguf").join(format!("{name}-{outtype}.gguf"));
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    if modified(&out) >= modified(&checkpoint.join("model.safetensors")) && out.is_file() {
        return Ok(out);
    }
    if matches!(outtype, "q4_0" | "q4_k_m") {
        let float = gguf(root, checkpoint, "f32")?;
        crate::run(
            Command::new(binary(root, "llama-quantize")?)
                .arg(float)
                .arg(&out)
                .arg(outtype.to_uppercase())
                .stdout(Stdio::null()),
        )?;
        return Ok(out);
    }
    install(root, &["llama-cpp-sources", "hf"])?;
    crate::run(
        Command::new(venv_python()?)
            .current_dir(root)
            .arg("scripts/to_gguf.py")
            .arg(checkpoint)
            .arg(&out)
            .args(["--outtype", outtype])
            .arg("--llama-cpp")
            .arg(dir()?),
    )?;
    Ok(out)
}

/// GGUF files of `checkpoint` written by llama.cpp's tools, each beside llama.cpp's own reading
/// of it (`NAME.gguf-py.safetensors`, scripts/gguf_arrays.py), for the tests on them: f32 and
/// Q8_0 from the converter (its sources alone, seconds), and Q4_0 and Q4_K_M from
/// `llama-quantize` where llama.cpp is built (a build is 15 minutes: CI does without). The
/// folder, and whether llama-quantize's files are there.
pub fn test_files(root: &Path, checkpoint: &Path) -> Result<(PathBuf, bool)> {
    let quantize_built = dir()?.join("build/bin/llama-quantize").is_file();
    let outtypes: &[&str] = if quantize_built {
        &["f32", "q8_0", "q4_0", "q4_k_m"]
    } else {
        &["f32", "q8_0"]
    };
    for outtype in outtypes {
        let file = gguf(root, checkpoint, outtype)?;
        crate::run(
            Command::new(venv_python()?)
                .current_dir(root)
                .arg("scripts/gguf_arrays.py")
                .arg(&file)
                .arg(format!("{}-py.safetensors", file.display()))
                .arg("--llama-cpp")
                .arg(dir()?),
        )?;
    }
    Ok((dir()?.join("gguf"), quantize_built))
}

/// A running `llama-server`, stopped when dropped.
pub struct LlamaServer {
    child: Child,
    pub completions_url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    /// Starts llama.cpp's server on `gguf` on a free local port with `threads` threads and
    /// `slots` parallel sequences (its continuous batching), each with room for
    /// `tokens_per_slot`; returns once it answers `/health`.
    pub fn start(
        root: &Path,
        gguf: &Path,
        threads: usize,
        slots: usize,
        tokens_per_slot: usize,
    ) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new(binary(root, "llama-server")?)
            .arg("--model")
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--threads-batch", &threads.to_string()])
            .args(["--parallel", &slots.to_string()])
            .args(["--ctx-size", &(slots * tokens_per_slot).to_string()])
            .args(["--no-webui", "--log-disable"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting llama-server")?;
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let mut log = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut log);
                }
                bail!("llama-server exited with {status}:\n{log}");
            }
            if ureq::get(&format!("{base}/health"))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                bail!("llama-server did not answer {base}/health within 120 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Its log is not needed, but a full pipe would block it.
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        }
        Ok(Self {
            child,
            completions_url: format!("{base}/v1/completions"),
        })
    }
}
