//! `generate --save-logits`: the logits behind every generated id, for comparing backends.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use nexttoken_generate::Step;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Each prompt's logits rows, in step order, as little-endian float32 bytes.
pub struct LogitsRecorder {
    rows: Vec<Vec<u8>>,
    vocab_size: usize,
}

impl LogitsRecorder {
    pub fn new(prompts: usize, vocab_size: usize) -> Self {
        Self {
            rows: vec![Vec::new(); prompts],
            vocab_size,
        }
    }

    /// Keeps the logits of the rows of `step` that got an id; `prompts[row]` is the prompt each
    /// batch row belongs to.
    pub fn record(&mut self, prompts: &[usize], step: &Step) -> Result<()> {
        let logits = step
            .logits
            .to_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow!("reading the logits back from the device: {e:?}"))?;
        for ((row, id), &prompt) in step.ids.iter().enumerate().zip(prompts) {
            if id.is_some() {
                let values = &logits[row * self.vocab_size..(row + 1) * self.vocab_size];
                self.rows[prompt].extend(values.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        Ok(())
    }

    /// Writes `logits.N` for every prompt N, and the backend's name in the file's metadata.
    pub fn save(&self, path: &Path, backend: &str) -> Result<()> {
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
        safetensors::serialize_to_file(&views, Some(metadata), path)
            .with_context(|| format!("writing the logits to {}", path.display()))
    }
}
