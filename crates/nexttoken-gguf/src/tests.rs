use super::*;

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn sample() -> Writer {
    Writer::new()
        .metadata("general.architecture", Value::String("gpt2".into()))
        .metadata("gpt2.block_count", Value::U32(12))
        .metadata("gpt2.attention.layer_norm_epsilon", Value::F32(1e-5))
        .metadata(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("!".into()), Value::String("\"".into())]),
        )
        .metadata("general.flag", Value::Bool(true))
        .tensor("a", &[3], TensorType::F32, &floats(&[1.0, 2.0, 3.0]))
        .tensor("b", &[32, 2], TensorType::Q8_0, &[7; 68])
}

#[test]
fn reads_back_what_was_written() {
    let gguf = Gguf::from_bytes(sample().to_bytes()).expect("valid");
    assert_eq!(gguf.version(), 3);
    assert_eq!(
        gguf.metadata("gpt2.block_count").and_then(Value::as_u64),
        Some(12)
    );
    assert_eq!(
        gguf.metadata("gpt2.attention.layer_norm_epsilon")
            .and_then(Value::as_f64),
        Some(f64::from(1e-5f32))
    );
    let tokens = gguf
        .metadata("tokenizer.ggml.tokens")
        .and_then(Value::as_array);
    assert_eq!(tokens.map(<[Value]>::len), Some(2));
    assert_eq!(gguf.metadata("general.flag"), Some(&Value::Bool(true)));
    let a = gguf.tensor("a").expect("a");
    assert_eq!(gguf.tensor_bytes(a), floats(&[1.0, 2.0, 3.0]));
    let b = gguf.tensor("b").expect("b");
    assert_eq!(
        (b.kind, b.shape.as_slice(), b.values()),
        (TensorType::Q8_0, &[32, 2][..], 64)
    );
    assert_eq!(gguf.tensor_bytes(b), [7; 68]);
    assert_eq!(gguf.tensors().len(), 2);
}

#[test]
fn a_file_cut_anywhere_is_an_error_naming_the_cut() {
    let bytes = sample().to_bytes();
    for len in 0..bytes.len() {
        let error = Gguf::from_bytes(bytes[..len].to_vec()).expect_err("truncated");
        let message = error.to_string();
        assert!(
            matches!(error, GgufError::Truncated { .. }) || len < 4,
            "{len}: {message}"
        );
        if len >= 4 {
            assert!(message.contains("truncated"), "{len}: {message}");
        }
    }
}

#[test]
fn the_file_on_disk_reads_as_in_memory() {
    let dir = std::env::temp_dir().join(format!("nexttoken-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("sample.gguf");
    std::fs::write(&path, sample().to_bytes()).expect("written");
    let gguf = Gguf::open(&path).expect("valid");
    let b = gguf.tensor("b").expect("b");
    assert_eq!(gguf.tensor_bytes(b), [7; 68]);
    let missing = Gguf::open(dir.join("missing.gguf")).expect_err("missing");
    assert!(missing.to_string().contains("missing.gguf"), "{missing}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_headers_are_named() {
    let bytes = sample().to_bytes();
    let mut safetensors = bytes.clone();
    safetensors[..4].copy_from_slice(b"{\"__");
    let error = Gguf::from_bytes(safetensors)
        .expect_err("not gguf")
        .to_string();
    assert!(error.contains("not a GGUF file"), "{error}");
    let mut v1 = bytes.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let error = Gguf::from_bytes(v1).expect_err("v1").to_string();
    assert!(error.contains("version 1"), "{error}");
    // A tensor count of 2^60 is refused before anything is allocated for it.
    let mut huge = bytes.clone();
    huge[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(Gguf::from_bytes(huge).is_err());
    // A metadata value type that does not exist.
    let mut unknown = bytes;
    let at = 24 + 8 + "general.architecture".len();
    unknown[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let error = Gguf::from_bytes(unknown).expect_err("type 99").to_string();
    assert!(error.contains("value type 99"), "{error}");
}

#[test]
fn tensors_outside_the_data_or_of_unknown_kinds() {
    let bad_blocks = Writer::new().tensor("q", &[31], TensorType::Q4_0, &[0; 18]);
    let error = Gguf::from_bytes(bad_blocks.to_bytes()).expect_err("31 values");
    assert!(error.to_string().contains("whole number"), "{error}");
    let short = Writer::new().tensor("w", &[8], TensorType::F32, &[0; 16]);
    let error = Gguf::from_bytes(short.to_bytes()).expect_err("16 of 32 bytes");
    assert!(error.to_string().contains("tensor w"), "{error}");
    let iq = Writer::new().tensor("w", &[256], TensorType::from_id(16), &[]);
    let gguf = Gguf::from_bytes(iq.to_bytes()).expect("kept, to be refused by name");
    let kind = gguf.tensor("w").expect("w").kind;
    assert_eq!(kind.to_string(), "IQ2_XXS (ggml type 16)");
}

#[test]
fn type_ids_round_trip() {
    for id in 0..45 {
        assert_eq!(TensorType::from_id(id).id(), id);
    }
}
