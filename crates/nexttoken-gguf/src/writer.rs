//! GGUF version 3 written in memory: what tests and tools need to make a small file.

use crate::{DEFAULT_ALIGNMENT, TensorType, Value};

/// A GGUF file being built: metadata and tensors in the order added.
#[derive(Default)]
pub struct Writer {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, TensorType, Vec<u8>)>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn metadata(mut self, key: &str, value: Value) -> Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// A tensor of `shape` (ggml's order, fastest-varying first) whose stored bytes are `bytes`.
    #[must_use]
    pub fn tensor(mut self, name: &str, shape: &[usize], kind: TensorType, bytes: &[u8]) -> Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), kind, bytes.to_vec()));
        self
    }

    /// The file's bytes, each tensor's data aligned to 32 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            string(&mut out, key);
            out.extend(value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        for (name, shape, kind, bytes) in &self.tensors {
            string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for &d in shape {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(kind.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + bytes.len()).next_multiple_of(DEFAULT_ALIGNMENT);
        }
        for (_, _, _, bytes) in &self.tensors {
            out.resize(out.len().next_multiple_of(DEFAULT_ALIGNMENT), 0);
            out.extend(bytes);
        }
        out
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.extend(v.to_le_bytes()),
        Value::I8(v) => out.extend(v.to_le_bytes()),
        Value::U16(v) => out.extend(v.to_le_bytes()),
        Value::I16(v) => out.extend(v.to_le_bytes()),
        Value::U32(v) => out.extend(v.to_le_bytes()),
        Value::I32(v) => out.extend(v.to_le_bytes()),
        Value::U64(v) => out.extend(v.to_le_bytes()),
        Value::I64(v) => out.extend(v.to_le_bytes()),
        Value::F32(v) => out.extend(v.to_le_bytes()),
        Value::F64(v) => out.extend(v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => string(out, s),
        Value::Array(values) => {
            // An empty array's element type is not kept; llama.cpp writes none such.
            let element = values.first().map_or(0, Value::type_id);
            out.extend(element.to_le_bytes());
            out.extend((values.len() as u64).to_le_bytes());
            for value in values {
                write_value(out, value);
            }
        }
    }
}
