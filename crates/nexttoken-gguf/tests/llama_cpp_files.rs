//! GGUF files written by llama.cpp's tools, read by this crate and by llama.cpp's own reader
//! (gguf-py): the same tensors, byte for byte, and the same metadata. The files and gguf-py's
//! reading of them (`scripts/gguf_arrays.py FILE.gguf FILE.gguf-py.safetensors`) are made
//! outside the test, so it is ignored unless asked for: `NEXTTOKEN_GGUF_DIR=DIR cargo test -p
//! nexttoken-gguf --test llama_cpp_files -- --ignored` checks every `NAME.gguf` in DIR that has
//! its `NAME.gguf-py.safetensors`. `cargo xtask test` makes them with llama.cpp's converter.

use std::path::PathBuf;

use nexttoken_gguf::{Gguf, Value};
use safetensors::SafeTensors;
use serde_json::json;

/// gguf-py's value type ids and value, as scripts/gguf_arrays.py writes them.
fn as_gguf_py(value: &Value) -> serde_json::Value {
    let plain = |value: &Value| match value {
        Value::U8(v) => json!(v),
        Value::I8(v) => json!(v),
        Value::U16(v) => json!(v),
        Value::I16(v) => json!(v),
        Value::U32(v) => json!(v),
        Value::I32(v) => json!(v),
        Value::U64(v) => json!(v),
        Value::I64(v) => json!(v),
        Value::F32(v) => json!(f64::from(*v)),
        Value::F64(v) => json!(v),
        Value::Bool(v) => json!(v),
        Value::String(v) => json!(v),
        Value::Array(_) => unreachable!("arrays are taken apart below"),
    };
    match value {
        Value::Array(values) => {
            let element = values.first().map(Value::type_id).into_iter();
            json!({
                "types": std::iter::once(9).chain(element).collect::<Vec<_>>(),
                "value": values.iter().map(plain).collect::<Vec<_>>(),
            })
        }
        value => json!({"types": [value.type_id()], "value": plain(value)}),
    }
}

#[test]
#[ignore = "needs GGUF files made by llama.cpp's tools (see the file's comment)"]
fn every_tensor_and_value_is_what_llama_cpp_s_reader_reads() {
    let dir = PathBuf::from(
        std::env::var_os("NEXTTOKEN_GGUF_DIR")
            .expect("set NEXTTOKEN_GGUF_DIR (see this file's comment)"),
    );
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the folder") {
        let path = entry.expect("an entry").path();
        let dump = PathBuf::from(format!("{}-py.safetensors", path.display()));
        if path.extension().is_none_or(|ext| ext != "gguf") || !dump.is_file() {
            continue;
        }
        let file = Gguf::open(&path).expect("reads");
        let bytes = std::fs::read(&dump).expect("the dump");
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("safetensors");
        let arrays = SafeTensors::deserialize(&bytes).expect("safetensors");
        let metadata = header.metadata().as_ref().expect("metadata");
        let parse = |key: &str| -> serde_json::Value {
            serde_json::from_str(&metadata[key]).expect("json")
        };
        let theirs = parse("tensors");
        let ours: Vec<serde_json::Value> = file
            .tensors()
            .iter()
            .map(|t| json!({"name": t.name, "type": t.kind.id(), "shape": t.shape}))
            .collect();
        assert_eq!(json!(ours), theirs, "{}: tensor infos", path.display());
        for tensor in file.tensors() {
            let expected = arrays.tensor(&tensor.name).expect("dumped");
            assert!(
                file.tensor_bytes(tensor) == expected.data(),
                "{}: {}'s bytes",
                path.display(),
                tensor.name
            );
        }
        let ours: serde_json::Map<String, serde_json::Value> = file
            .metadata_entries()
            .map(|(key, value)| (key.to_owned(), as_gguf_py(value)))
            .collect();
        assert_eq!(
            serde_json::Value::Object(ours),
            parse("metadata"),
            "{}: metadata",
            path.display()
        );
        checked.push(path);
    }
    assert!(
        !checked.is_empty(),
        "no NAME.gguf with its NAME.gguf-py.safetensors in {}",
        dir.display()
    );
    eprintln!("checked {checked:?}");
}
