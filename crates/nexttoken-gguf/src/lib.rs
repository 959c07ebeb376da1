//! A reader of GGUF, the file format of llama.cpp: a header, typed metadata (the model's sizes,
//! its tokenizer), then each tensor's name, shape, type and bytes. Versions 2 and 3, little
//! endian, as llama.cpp's `convert_hf_to_gguf.py` and `llama-quantize` write them
//! (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>).
//!
//! The file is memory-mapped: opening reads the header, metadata and tensor infos and checks
//! that every tensor's bytes lie inside the file; [`Gguf::tensor_bytes`] then borrows a
//! tensor's bytes from the mapping without copying. It knows nothing of models or of how the
//! bytes are computed with: quantized blocks are read by `nexttoken-cpu`'s `quant` module.
//!
//! [`Writer`] writes the same format, for tests and small files built in memory.
//!
//! ```
//! use nexttoken_gguf::{Gguf, TensorType, Value, Writer};
//!
//! let values: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! let file = Writer::new()
//!     .metadata("general.architecture", Value::String("gpt2".into()))
//!     .tensor("token_embd.weight", &[4, 2], TensorType::F32, &values)
//!     .to_bytes();
//! let gguf = Gguf::from_bytes(file)?;
//! assert_eq!(gguf.metadata("general.architecture"), Some(&Value::String("gpt2".into())));
//! let tensor = gguf.tensor("token_embd.weight").expect("in the file");
//! assert_eq!((tensor.kind, tensor.shape.as_slice()), (TensorType::F32, &[4, 2][..]));
//! assert_eq!(gguf.tensor_bytes(tensor).len(), 4 * 2 * 4);
//! # Ok::<(), nexttoken_gguf::GgufError>(())
//! ```

mod error;
#[cfg(test)]
mod tests;
mod types;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::GgufError;
pub use types::TensorType;
pub use writer::Writer;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// GGUF's id of the value's type (`gguf_type` in llama.cpp: 0 for u8 .. 12 for f64), as a
    /// file writes it before the value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, whatever its integer type (`None` for a negative one
    /// or another type).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, from either float type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(values) => Some(values),
            _ => None,
        }
    }
}

/// A tensor's entry in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's order: the fastest-varying dimension first (a `[rows, columns]` matrix is
    /// `[columns, rows]` here).
    pub shape: Vec<usize>,
    pub kind: TensorType,
    /// Where its bytes start, from the start of the file.
    start: usize,
    len: usize,
}

impl TensorInfo {
    /// How many values the tensor holds.
    pub fn values(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The file's bytes: mapped, or owned (tests, files built in memory).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// An opened GGUF file.
pub struct Gguf {
    bytes: Bytes,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The alignment of the tensor data when `general.alignment` does not say.
const DEFAULT_ALIGNMENT: usize = 32;

impl Gguf {
    /// Maps `path` and reads its header, metadata and tensor infos.
    ///
    /// # Errors
    /// If the file cannot be read, is not GGUF, is of another version, or is truncated or
    /// corrupt (a length past the end of the file, a tensor outside its data).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; a file changed under it while it is open gives
        // wrong values, not unsafety in this process's own memory (the same contract as
        // llama.cpp's and safetensors' mappings).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Bytes::Mapped(map), path)
    }

    /// Reads a GGUF file held in memory.
    ///
    /// # Errors
    /// As [`Gguf::open`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Bytes::Owned(bytes), Path::new("<memory>"))
    }

    fn parse(bytes: Bytes, path: &Path) -> Result<Self, GgufError> {
        let mut reader = Reader {
            bytes: bytes.as_slice(),
            at: 0,
            path,
        };
        let magic: [u8; 4] = reader.take(4, "the magic number")?.try_into().expect("4");
        if &magic != b"GGUF" {
            return Err(GgufError::NotGguf {
                path: path.to_path_buf(),
                magic,
            });
        }
        let version = reader.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let tensor_count = reader.count("the tensor count")?;
        let metadata_count = reader.count("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..metadata_count {
            let key = reader.string("a metadata key")?;
            let kind = reader.u32(&format!("the type of {key}"))?;
            let value = reader.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count.min(1 << 16));
        let mut offsets = Vec::with_capacity(tensor_count.min(1 << 16));
        for _ in 0..tensor_count {
            let name = reader.string("a tensor name")?;
            let dims = reader.u32(&format!("{name}'s dimension count"))?;
            if dims > 4 {
                return Err(reader.corrupt(format!("{name} has {dims} dimensions (at most 4)")));
            }
            let shape = (0..dims)
                .map(|_| reader.count(&format!("{name}'s shape")))
                .collect::<Result<Vec<_>, _>>()?;
            let kind = TensorType::from_id(reader.u32(&format!("{name}'s type"))?);
            let offset = reader.count(&format!("{name}'s offset"))?;
            offsets.push(offset);
            tensors.push(TensorInfo {
                name,
                shape,
                kind,
                start: 0,
                len: 0,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => match value.as_u64().and_then(|a| usize::try_from(a).ok()) {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(reader.corrupt(format!("general.alignment is {value:?}"))),
            },
        };
        let data_start = reader.at.next_multiple_of(alignment);
        let file_len = reader.bytes.len();
        for (tensor, offset) in tensors.iter_mut().zip(offsets) {
            let values = tensor
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| reader.corrupt(format!("{}'s shape overflows", tensor.name)))?;
            // A type whose size is unknown is kept, with no bytes, for the caller to refuse by
            // name if it needs the tensor.
            let len = match tensor.kind.block() {
                Some((block_values, block_bytes)) => {
                    if values % block_values != 0 {
                        return Err(reader.corrupt(format!(
                            "{} holds {values} values, not a whole number of {:?} blocks of \
                             {block_values}",
                            tensor.name, tensor.kind
                        )));
                    }
                    values / block_values * block_bytes
                }
                None => 0,
            };
            let start = data_start
                .checked_add(offset)
                .filter(|start| start % alignment == 0)
                .ok_or_else(|| {
                    reader.corrupt(format!("{}'s offset {offset} is misaligned", tensor.name))
                })?;
            match start.checked_add(len) {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(GgufError::Truncated {
                        path: path.to_path_buf(),
                        what: format!("tensor {} ({len} bytes from byte {start})", tensor.name),
                        len: file_len,
                    });
                }
            }
            tensor.start = start;
            tensor.len = len;
        }
        Ok(Self {
            bytes,
            version,
            metadata,
            tensors,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The value under `key` (`general.architecture`, `gpt2.block_count`, ...).
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Every metadata key and value, by key.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The tensors, in the file's order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's bytes as stored (little-endian values, or blocks); empty for a type whose
    /// size this reader does not know ([`TensorType::block`] is `None`).
    pub fn tensor_bytes(&self, tensor: &TensorInfo) -> &[u8] {
        &self.bytes.as_slice()[tensor.start..tensor.start + tensor.len]
    }

    /// Gives a tensor's pages back once its bytes have been copied out (`madvise(MADV_DONTNEED)`
    /// on the mapping): a model loaded tensor by tensor then holds the file's pages of one
    /// tensor at a time beside its copy, not the whole file. The pages stay in the operating
    /// system's page cache, and reading the tensor again faults them back in with the same
    /// bytes. Does nothing for a file held in memory, or off Unix.
    pub fn release(&self, tensor: &TensorInfo) {
        #[cfg(unix)]
        if let Bytes::Mapped(map) = &self.bytes {
            // SAFETY: the mapping is a read-only shared mapping of a file: after MADV_DONTNEED
            // its pages are read from the file again on the next access, so every slice of
            // it keeps its bytes (an advice that fails changes nothing).
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    tensor.start,
                    tensor.len,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = tensor;
    }
}

/// A cursor over the file's header, every read checked against its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

/// How deep arrays may nest: llama.cpp writes one level; more is a corrupt file.
const MAX_NESTING: usize = 4;

impl Reader<'_> {
    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn corrupt(&self, what: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path(),
            what,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], GgufError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(GgufError::Truncated {
                path: self.path(),
                what: what.to_string(),
                len: self.bytes.len(),
            });
        };
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A u64 count, length or offset, as a `usize`: one past what this machine can address
    /// cannot describe this file.
    fn count(&mut self, what: &str) -> Result<usize, GgufError> {
        let value = u64::from_le_bytes(self.array(what)?);
        usize::try_from(value).map_err(|_| self.corrupt(format!("{what} is {value}")))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.count(what)?;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.corrupt(format!("{what} is not UTF-8"))),
        }
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::U8(u8::from_le_bytes(self.array(key)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [other] => return Err(self.corrupt(format!("{key} is a bool of {other}"))),
            },
            8 => Value::String(self.string(key)?),
            9 if depth < MAX_NESTING => {
                let element = self.u32(key)?;
                let len = self.count(key)?;
                // Each element takes at least a byte: a longer count is a corrupt file, found
                // before it sizes an allocation.
                if len > self.bytes.len() - self.at {
                    return Err(GgufError::Truncated {
                        path: self.path(),
                        what: format!("{key}'s {len} values"),
                        len: self.bytes.len(),
                    });
                }
                let values = (0..len)
                    .map(|_| self.value(element, key, depth + 1))
                    .collect::<Result<_, _>>()?;
                Value::Array(values)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            _ => return Err(self.corrupt(format!("{key} has value type {kind}"))),
        })
    }
}
