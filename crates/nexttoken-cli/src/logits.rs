//! `generate --save-logits`: the logits behind every generated id, for comparing backends.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nexttoken_generate::Step;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tempfile::NamedTempFile;

/// Each prompt's logits rows, in step order, as little-endian float32 bytes.
pub struct LogitsRecorder {
    rows: Vec<Vec<u8>>,
    vocab_size: usize,
    path: PathBuf,
    /// Created beside `path` before anything is generated, so that an unwritable place fails
    /// first; renamed onto `path` once complete, so that a failure never leaves half a file
    /// there, nor destroys the file that was.
    file: NamedTempFile,
}

impl LogitsRecorder {
    /// A recorder that will write to `path`, which must be a writable file path.
    pub fn create(path: &Path, prompts: usize, vocab_size: usize) -> Result<Self> {
        if path.is_dir() {
            bail!(
                "--save-logits {}: that is a directory; give a file path",
                path.display()
            );
        }
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let file = tempfile::Builder::new()
            .prefix(".nexttoken-logits")
            .suffix(".tmp")
            .tempfile_in(folder)
            .map_err(|e| anyhow!("--save-logits {}: cannot write there: {e}", path.display()))?;
        Ok(Self {
            rows: vec![Vec::new(); prompts],
            vocab_size,
            path: path.to_path_buf(),
            file,
        })
    }

    /// Keeps the logits of the rows of `step` that got an id; `prompts[row]` is the prompt each
    /// batch row belongs to.
    pub fn record(&mut self, prompts: &[usize], step: &Step) -> Result<()> {
        let logits = step
            .logits
            .to_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow!("reading the logits back from the device: {e:?}"))?;
        // The logits hold one row per id given, in batch order.
        let given = step.ids.iter().zip(prompts).filter(|(id, _)| id.is_some());
        for ((_, &prompt), values) in given.zip(logits.chunks_exact(self.vocab_size)) {
            self.rows[prompt].extend(values.iter().flat_map(|v| v.to_le_bytes()));
        }
        Ok(())
    }

    /// Writes `logits.N` for every prompt N, and the backend's name in the file's metadata.
    pub fn save(self, backend: &str) -> Result<()> {
        let row_bytes = self.vocab_size * size_of::<f32>();
        let views = self
            .rows
            .iter()
            .enumerate()
            .map(|(prompt, bytes)| {
                let shape = vec![bytes.len() / row_bytes, self.vocab_size];
                let view = TensorView::new(Dtype::F32, shape, bytes)?;
                Ok((format!("logits.{prompt}"), view))
            })
            .collect::<Result<HashMap<_, _>, safetensors::SafeTensorError>>()?;
        let metadata = HashMap::from([("backend".to_string(), backend.to_string())]);
        let bytes = safetensors::serialize(&views, Some(metadata))?;
        let mut file = self.file;
        // The temporary file is private (0600); the saved one gets the mode a new file gets
        // (0666 less the umask), or keeps the mode of the file it replaces.
        let mode = new_file_mode(&self.path);
        file.write_all(&bytes)
            .and_then(|()| file.as_file().set_permissions(mode))
            .and_then(|()| file.as_file().sync_all())
            .map_err(|e| anyhow!("{e}"))
            .and_then(|()| file.persist(&self.path).map_err(|e| anyhow!("{}", e.error)))
            .with_context(|| format!("writing the logits to {}", self.path.display()))?;
        Ok(())
    }
}

/// The permissions a file written at `path` should have: those of the file there, or those a
/// newly created file gets under this process's umask.
fn new_file_mode(path: &Path) -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(existing) = std::fs::metadata(path) {
        return existing.permissions();
    }
    std::fs::Permissions::from_mode(0o666 & !umask())
}

/// The process's umask, read from /proc (Linux 4.7+) rather than set and reset, which would
/// race with other threads creating files; 022 where /proc does not say.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix("Umask:")?.trim();
                u32::from_str_radix(value, 8).ok()
            })
        })
        .unwrap_or(0o022)
}
