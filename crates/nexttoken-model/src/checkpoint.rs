//! Hugging Face GPT-2 checkpoints: `config.json` beside `model.safetensors`, or beside a sharded
//! `model.safetensors.index.json`, or safetensors bytes held in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::store::burn_pack::{Error as PackError, Tensor as PackTensor};
use burn::store::{
    ApplyError, FloatCastAdapter, KeyRemapper, ModuleSnapshot, ModuleStore, SafetensorsStore,
    bridge,
};
use burn::tensor::{Bytes, DType, Device, TensorData};

use crate::layout::{self, CONFIG, INDEX, PYTORCH_WEIGHTS, WEIGHTS};
use crate::{Gpt2, Gpt2Config, ModelError};

/// A GPT-2 checkpoint, opened: where its weights are, its config, their dtype. Opening reads
/// the config and the safetensors headers (never the weights), so a caller can decide where the
/// model fits before [`Checkpoint::load`] reads them, on any number of devices.
///
/// ```no_run
/// # use burn::tensor::Device;
/// use nexttoken_model::Checkpoint;
///
/// let mut checkpoint = Checkpoint::open("path/to/gpt2")?;
/// println!("{} layers, {:?}", checkpoint.config().n_layer, checkpoint.dtype());
/// let model = checkpoint.load(&Device::flex())?;
/// # Ok::<(), nexttoken_model::ModelError>(())
/// ```
#[derive(Debug)]
pub struct Checkpoint {
    shards: Vec<Shard>,
    config: Gpt2Config,
    dtype: DType,
}

/// One safetensors file (or buffer) of a checkpoint, with the tensors' shapes from its header.
struct Shard {
    /// Where the bytes come from, for messages.
    path: PathBuf,
    /// Reads and checks the header; loads a shard held in memory.
    store: SafetensorsStore,
    /// A file's tensors, read from the file as the model takes them; `None` for bytes held in
    /// memory.
    from_file: Option<FileTensors>,
    tensors: BTreeMap<String, (DType, Vec<usize>)>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("path", &self.path).finish()
    }
}

impl Checkpoint {
    /// Opens the checkpoint at `path`: a directory holding `model.safetensors` (or a sharded
    /// `model.safetensors.index.json`) and normally `config.json`, or one of those files itself.
    /// Without a `config.json` the sizes are read off the weights and the head count comes from
    /// the GPT-2 preset of the same width. The weights are read from the files when loaded, one tensor at a time.
    ///
    /// # Errors
    /// A [`ModelError`] naming the file at fault: missing path, only PyTorch pickles, corrupt
    /// file, a config that is not GPT-2's or disagrees with the weights, non-float32 weights.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let files = weight_files(path.as_ref())?;
        let config = match files[0].with_file_name(CONFIG) {
            config if config.is_file() => Some(Gpt2Config::from_json_file(&config)?),
            _ => None,
        };
        let shards = files
            .into_iter()
            .map(|file| {
                let mut shard = Shard::new(SafetensorsStore::from_file(&file), file)?;
                shard.from_file = Some(FileTensors::open(&shard.path)?);
                Ok(shard)
            })
            .collect::<Result<_, ModelError>>()?;
        Self::from_shards(shards, config)
    }

    /// A checkpoint held in memory: safetensors `bytes` and the text of its `config.json`;
    /// `name` stands for the file in messages.
    ///
    /// # Errors
    /// As [`Checkpoint::open`].
    pub fn from_bytes(name: &str, bytes: Vec<u8>, config_json: &str) -> Result<Self, ModelError> {
        let path = PathBuf::from(name);
        let config =
            Gpt2Config::from_json(config_json).map_err(|reason| ModelError::InvalidConfig {
                path: path.with_file_name(CONFIG),
                reason,
            })?;
        let shard = Shard::new(SafetensorsStore::from_bytes(Some(bytes)), path)?;
        Self::from_shards(vec![shard], Some(config))
    }

    fn from_shards(shards: Vec<Shard>, config: Option<Gpt2Config>) -> Result<Self, ModelError> {
        let header = Header::of(&shards);
        let config = match config {
            Some(config) => {
                header.check_agrees(&config)?;
                config
            }
            None => header.infer_config()?,
        };
        let dtype = header.dtype("wte.weight")?;
        Ok(Self {
            shards,
            config,
            dtype,
        })
    }

    /// The model's hyper-parameters (from `config.json`, checked against the weights).
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// The weights' element type, as the file stores it (f32, f16, bf16 or f64).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The safetensors files (one, or the shards in order).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|shard| shard.path.as_path())
    }

    /// Reads the weights into a model on `device`, in the dtype the file stores them in.
    ///
    /// # Errors
    /// A [`ModelError`] naming the tensor at fault: missing, misshapen, unexpected, or an
    /// `lm_head.weight` that is not a copy of `wte.weight` (GPT-2 ties them; an untied head would
    /// be silently ignored otherwise).
    pub fn load(&mut self, device: &Device) -> Result<Gpt2, ModelError> {
        self.load_as(device, self.dtype)
    }

    /// Reads the weights into a model on `device`, converting them to `dtype` (a float type)
    /// tensor by tensor as they are read. The model computes in `dtype`; its logits are float32.
    ///
    /// # Errors
    /// As [`Checkpoint::load`].
    pub fn load_as(&mut self, device: &Device, dtype: DType) -> Result<Gpt2, ModelError> {
        self.check_head_is_tied()?;
        let mut model = self.config.init(device);
        let mut applied = BTreeSet::new();
        let mut missing = Vec::new();
        for shard in &mut self.shards {
            let result = match &shard.from_file {
                Some(file) => model.apply(file.tensors(Some(dtype)), None, None, false),
                None => {
                    shard.convert_to(dtype);
                    model
                        .load_from(&mut shard.store)
                        .map_err(|e| corrupt(&shard.path, e))?
                }
            };
            if let Some(error) = result.errors.first() {
                return Err(apply_error(&shard.path, error));
            }
            if let Some(name) = result.unused.iter().find(|name| !is_extra(name)) {
                return Err(ModelError::UnexpectedTensor {
                    path: shard.path.clone(),
                    name: hf_name(name),
                });
            }
            applied.extend(result.applied);
            missing.extend(result.missing.into_iter().map(|(name, _)| name));
        }
        // Each shard reports what the others hold as missing.
        if let Some(name) = missing.iter().find(|name| !applied.contains(*name)) {
            return Err(ModelError::MissingTensor {
                path: self.shards[0].path.clone(),
                name: hf_name(name),
            });
        }
        Ok(model)
    }

    /// GPT-2's output head is `wte`; a file may carry it again as `lm_head.weight`, which must
    /// then hold the same values.
    fn check_head_is_tied(&mut self) -> Result<(), ModelError> {
        let Some(head) = self.tensor_bytes("lm_head.weight")? else {
            return Ok(());
        };
        let wte = self.tensor_bytes("wte.weight")?;
        if wte.as_deref() == Some(&*head) {
            Ok(())
        } else {
            Err(ModelError::UntiedHead {
                path: self.shards[0].path.clone(),
            })
        }
    }

    fn tensor_bytes(&mut self, name: &str) -> Result<Option<Bytes>, ModelError> {
        for shard in &mut self.shards {
            let tensor = match &shard.from_file {
                Some(file) => file.tensors(None).into_iter().find(|t| t.name == name),
                None => shard
                    .store
                    .get_tensor(name)
                    .map_err(|e| corrupt(&shard.path, e))?
                    .cloned(),
            };
            if let Some(tensor) = tensor {
                return tensor
                    .to_bytes()
                    .map(Some)
                    .map_err(|e| corrupt(&shard.path, e));
            }
        }
        Ok(None)
    }
}

impl Shard {
    /// Renames Hugging Face's keys to this crate's field names and reads the header, refusing
    /// weights that are not floats.
    fn new(store: SafetensorsStore, path: PathBuf) -> Result<Self, ModelError> {
        let mut store = store
            .remap(key_remapper())
            // Report problems ourselves, with Hugging Face's names.
            .allow_partial(true)
            .validate(false);
        let mut tensors = BTreeMap::new();
        for (name, tensor) in store.get_all_tensors().map_err(|e| corrupt(&path, e))? {
            let float = matches!(
                tensor.dtype,
                DType::F32 | DType::F16 | DType::BF16 | DType::F64
            );
            if !float && !is_buffer(name) {
                return Err(ModelError::UnsupportedDtype {
                    path,
                    name: hf_name(name),
                    dtype: format!("{:?}", tensor.dtype),
                });
            }
            tensors.insert(name.clone(), (tensor.dtype, tensor.shape.to_vec()));
        }
        Ok(Self {
            path,
            store,
            from_file: None,
            tensors,
        })
    }

    /// Makes the store convert every float tensor it reads to `dtype`.
    fn convert_to(&mut self, dtype: DType) {
        // The builder takes the store by value; an empty one stands in for the moment.
        let store = std::mem::replace(&mut self.store, SafetensorsStore::from_bytes(None));
        self.store = store.with_from_adapter(FloatCastAdapter::to(dtype));
    }
}

/// Hugging Face's tensor names to this crate's field names.
fn key_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        // transformer.X -> X (GPT2LMHeadModel saves the body under `transformer.`)
        (r"^transformer\.", ""),
        // ln_1.weight -> ln_1.gamma (burn's LayerNorm names its scale gamma)
        (r"(ln_[12f])\.weight$", "$1.gamma"),
        // ln_1.bias -> ln_1.beta
        (r"(ln_[12f])\.bias$", "$1.beta"),
    ])
    .expect("the patterns are valid regular expressions")
}

/// A safetensors file's float tensors, where its header puts them (the header already checked
/// by the store). The store would read them out of a memory map, whose pages stay resident
/// beside the model's copy: loading that way peaks at twice the weights.
struct FileTensors {
    file: Arc<File>,
    /// Each tensor's name (Hugging Face's), dtype, shape, and first and last byte in the file.
    entries: Vec<(String, DType, Vec<usize>, [u64; 2])>,
}

impl FileTensors {
    fn open(path: &Path) -> Result<Self, ModelError> {
        #[derive(serde::Deserialize)]
        struct Entry {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: [u64; 2],
        }
        let io = |error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        let mut header_len = [0; 8];
        read_at(&file, &mut header_len, 0).map_err(io)?;
        let header_len = u64::from_le_bytes(header_len);
        let mut header = vec![0; header_len as usize];
        read_at(&file, &mut header, 8).map_err(io)?;
        let mut header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| corrupt(path, e))?;
        header.remove("__metadata__");
        let mut entries = Vec::new();
        for (name, entry) in header {
            let entry: Entry = serde_json::from_value(entry).map_err(|e| corrupt(path, e))?;
            let dtype = match entry.dtype.as_str() {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                "F64" => DType::F64,
                _ => continue, // the mask buffers: never loaded
            };
            let offsets = entry.data_offsets.map(|offset| 8 + header_len + offset);
            entries.push((name, dtype, entry.shape, offsets));
        }
        Ok(Self {
            file: Arc::new(file),
            entries,
        })
    }

    /// The tensors, renamed to this crate's names, each read with positioned reads when the
    /// model takes it, as `dtype` (or the file's own). A tensor in another dtype is converted a
    /// chunk at a time as it is read, so it is never held whole in both.
    fn tensors(&self, dtype: Option<DType>) -> Vec<PackTensor> {
        let tensors = self.entries.iter().map(|(name, stored, shape, offsets)| {
            let target = dtype.unwrap_or(*stored);
            let (file, dims, [start, end], stored) =
                (self.file.clone(), shape.clone(), *offsets, *stored);
            let read = move || {
                let bytes = read_as(&file, start..end, stored, target)?;
                TensorData::try_from_bytes(Bytes::from_bytes_vec(bytes), dims.clone(), target)
                    .map_err(|e| PackError::TensorBytesSizeMismatch(e.to_string()))
            };
            bridge::deferred(name.clone(), target, shape.clone().into(), None, read)
        });
        key_remapper().remap(tensors.collect()).0
    }
}

/// The values at `range` of `file`, stored as `stored`, as `target`'s bytes: read whole when
/// the two agree, else a chunk at a time, each converted (as burn's `FloatCastAdapter` would
/// convert the whole) before the next is read.
fn read_as(
    file: &File,
    range: std::ops::Range<u64>,
    stored: DType,
    target: DType,
) -> Result<Vec<u8>, PackError> {
    /// Values a chunk: 4 MiB of float32.
    const CHUNK: u64 = 1 << 20;
    let io = |e: std::io::Error| PackError::IoError(e.to_string());
    let mismatch = |e: burn::tensor::DataError| PackError::TensorBytesSizeMismatch(e.to_string());
    let len = range.end.saturating_sub(range.start);
    if stored == target {
        let mut bytes = vec![0; len as usize];
        read_at(file, &mut bytes, range.start).map_err(io)?;
        return Ok(bytes);
    }
    let (from, to) = (stored.size() as u64, target.size() as u64);
    let mut converted = Vec::with_capacity((len / from * to) as usize);
    let mut chunk = Vec::new();
    for at in (range.start..range.end).step_by((CHUNK * from) as usize) {
        chunk.resize((range.end - at).min(CHUNK * from) as usize, 0);
        read_at(file, &mut chunk, at).map_err(io)?;
        let values = chunk.len() / from as usize;
        let data = TensorData::try_from_bytes(Bytes::from_bytes_vec(chunk), [values], stored)
            .map_err(mismatch)?
            .try_cast(target)
            .map_err(mismatch)?;
        converted.extend_from_slice(data.as_bytes());
        chunk = Vec::new();
    }
    Ok(converted)
}

/// Fills `buffer` from `file` at `offset`, leaving the file's cursor alone (so tensors can be
/// read from any thread).
fn read_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buffer, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buffer.len() {
            match std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buffer[done..],
                offset + done as u64,
            )? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                read => done += read,
            }
        }
        Ok(())
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (file, buffer, offset);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The safetensors files that `path` names, directly or as the directory holding them.
fn weight_files(path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    if !path.exists() {
        return Err(ModelError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let file = if path.is_dir() {
        match [WEIGHTS, INDEX]
            .iter()
            .map(|name| path.join(name))
            .find(|file| file.is_file())
        {
            Some(file) => file,
            None => {
                return Err(
                    match PYTORCH_WEIGHTS
                        .iter()
                        .find(|name| path.join(name).is_file())
                    {
                        Some(name) => ModelError::PytorchWeights {
                            path: path.join(name),
                        },
                        None => ModelError::NoWeights {
                            dir: path.to_path_buf(),
                        },
                    },
                );
            }
        }
    } else {
        path.to_path_buf()
    };
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    if name.ends_with(".index.json") && !name.starts_with("pytorch_model") {
        return shard_files(&file);
    }
    if [".bin", ".pt", ".pth", ".ckpt"]
        .iter()
        .any(|ext| name.ends_with(ext))
        || name.starts_with("pytorch_model")
    {
        return Err(ModelError::PytorchWeights { path: file });
    }
    Ok(vec![file])
}

/// The shards a `model.safetensors.index.json` lists, beside it.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|error| ModelError::Io {
        path: index.to_path_buf(),
        error,
    })?;
    let names = layout::shard_names(&text).map_err(|reason| ModelError::InvalidIndex {
        path: index.to_path_buf(),
        reason,
    })?;
    names
        .into_iter()
        .map(|name| {
            let file = index.with_file_name(name);
            if file.is_file() {
                Ok(file)
            } else {
                Err(ModelError::MissingShard {
                    index: index.to_path_buf(),
                    shard: file,
                })
            }
        })
        .collect()
}

/// Hugging Face's name for a tensor this crate calls `name`.
fn hf_name(name: &str) -> String {
    name.replace(".gamma", ".weight").replace(".beta", ".bias")
}

/// The causal-mask buffers older transformers versions saved with every block.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// Tensors a GPT-2 file may carry that the model does not load: the mask buffers, and the
/// output head (checked to equal `wte` before loading).
fn is_extra(name: &str) -> bool {
    is_buffer(name) || name == "lm_head.weight"
}

fn corrupt(path: &Path, error: impl std::fmt::Display) -> ModelError {
    ModelError::CorruptWeights {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

fn apply_error(path: &Path, error: &ApplyError) -> ModelError {
    match error {
        ApplyError::ShapeMismatch {
            path: name,
            expected,
            found,
        } => ModelError::WrongShape {
            path: path.to_path_buf(),
            name: hf_name(name),
            expected: expected.to_vec(),
            found: found.to_vec(),
        },
        ApplyError::DTypeMismatch {
            path: name, found, ..
        } => ModelError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: hf_name(name),
            dtype: format!("{found:?}"),
        },
        other => corrupt(path, other),
    }
}

/// Every shard's tensors, with the file each is in.
struct Header<'a> {
    tensors: BTreeMap<&'a str, (&'a Path, DType, &'a [usize])>,
    /// For messages about the checkpoint as a whole.
    first: &'a Path,
}

impl<'a> Header<'a> {
    fn of(shards: &'a [Shard]) -> Self {
        let tensors = shards
            .iter()
            .flat_map(|shard| {
                shard.tensors.iter().map(|(name, (dtype, shape))| {
                    (
                        name.as_str(),
                        (shard.path.as_path(), *dtype, shape.as_slice()),
                    )
                })
            })
            .collect();
        Self {
            tensors,
            first: &shards[0].path,
        }
    }

    fn dims2(&self, name: &str) -> Result<[usize; 2], ModelError> {
        match self.tensors.get(name).copied() {
            Some((_, _, &[rows, cols])) => Ok([rows, cols]),
            Some((path, _, found)) => Err(ModelError::WrongShape {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: vec![0, 0],
                found: found.to_vec(),
            }),
            None => Err(ModelError::MissingTensor {
                path: self.first.to_path_buf(),
                name: name.to_string(),
            }),
        }
    }

    fn dtype(&self, name: &str) -> Result<DType, ModelError> {
        match self.tensors.get(name) {
            Some((_, dtype, _)) => Ok(*dtype),
            None => Err(ModelError::MissingTensor {
                path: self.first.to_path_buf(),
                name: name.to_string(),
            }),
        }
    }

    /// `[vocab_size, n_embd, n_positions, n_layer]` as the tensors say.
    fn sizes(&self) -> Result<[usize; 4], ModelError> {
        let [vocab_size, n_embd] = self.dims2("wte.weight")?;
        let [n_positions, _] = self.dims2("wpe.weight")?;
        let layers: BTreeSet<usize> = self
            .tensors
            .keys()
            .filter_map(|name| name.strip_prefix("h.")?.split('.').next()?.parse().ok())
            .collect();
        Ok([vocab_size, n_embd, n_positions, layers.len()])
    }

    fn check_agrees(&self, config: &Gpt2Config) -> Result<(), ModelError> {
        let [vocab_size, n_embd, n_positions, n_layer] = self.sizes()?;
        let pairs = [
            ("vocab_size", config.vocab_size, vocab_size),
            ("n_embd", config.n_embd, n_embd),
            ("n_positions", config.n_positions, n_positions),
            ("n_layer", config.n_layer, n_layer),
        ];
        match pairs.into_iter().find(|(_, c, w)| c != w) {
            Some((field, config, weights)) => Err(ModelError::ConfigMismatch {
                path: self.first.to_path_buf(),
                field,
                config,
                weights,
            }),
            None => Ok(()),
        }
    }

    fn infer_config(&self) -> Result<Gpt2Config, ModelError> {
        let [vocab_size, n_embd, n_positions, n_layer] = self.sizes()?;
        let preset = Gpt2Config::presets()
            .into_iter()
            .map(|(_, preset)| preset)
            .find(|preset| preset.n_embd == n_embd)
            .ok_or_else(|| ModelError::NoConfig {
                weights: self.first.to_path_buf(),
                n_embd,
            })?;
        Ok(Gpt2Config {
            n_layer,
            n_positions,
            vocab_size,
            ..preset
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Over two chunks of float32, converted a chunk at a time, gives what converting the whole
    /// gives, for each dtype a checkpoint may be loaded as.
    #[test]
    fn a_tensor_read_as_another_dtype_is_converted_as_a_whole_would_be() {
        let values: Vec<f32> = (0..(1u64 << 21) + 7)
            .map(|i| ((i * 7919 % 100_003) as f32 - 50_000.0) * 1.000_123e-3)
            .collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0; 3]).unwrap(); // the values start past the file's start
        file.write_all(&bytes).unwrap();
        let range = 3..3 + bytes.len() as u64;
        let whole = TensorData::new(values.clone(), [values.len()]);
        for target in [DType::F32, DType::F16, DType::BF16] {
            let ours = read_as(&file, range.clone(), DType::F32, target).unwrap();
            let expected = whole.clone().try_cast(target).unwrap();
            assert!(ours == expected.as_bytes(), "{target:?}");
        }
    }
}
