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

#[test]
fn every_value_type_reads_back_as_written() {
    let values = [
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-5)),
        ("u16", Value::U16(60_000)),
        ("i16", Value::I16(-300)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-70_000)),
        ("u64", Value::U64(1 << 40)),
        ("i64", Value::I64(-(1 << 40))),
        ("f32", Value::F32(0.25)),
        ("f64", Value::F64(-1.5e300)),
        ("bool", Value::Bool(false)),
        ("string", Value::String("Ġthe".into())),
        (
            "nested",
            Value::Array(vec![Value::Array(vec![Value::I16(7), Value::I16(-8)])]),
        ),
    ];
    let writer = values.iter().fold(Writer::new(), |w, (key, value)| {
        w.metadata(key, value.clone())
    });
    let gguf = Gguf::from_bytes(writer.to_bytes()).expect("valid");
    for (key, value) in &values {
        assert_eq!(gguf.metadata(key), Some(value), "{key}");
    }
    let keys: Vec<&str> = gguf.metadata_entries().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), values.len());
    assert!(format!("{gguf:?}").contains("metadata: 13"), "{gguf:?}");
}

#[test]
fn values_convert_only_where_they_fit() {
    let unsigned = [
        (Value::U8(200), Some(200)),
        (Value::U16(60_000), Some(60_000)),
        (Value::U32(7), Some(7)),
        (Value::U64(1 << 40), Some(1 << 40)),
        (Value::I8(5), Some(5)),
        (Value::I8(-5), None),
        (Value::I16(300), Some(300)),
        (Value::I16(-1), None),
        (Value::I32(70_000), Some(70_000)),
        (Value::I32(-1), None),
        (Value::I64(1 << 40), Some(1 << 40)),
        (Value::I64(-1), None),
        (Value::F32(1.0), None),
    ];
    for (value, expected) in unsigned {
        assert_eq!(value.as_u64(), expected, "{value:?}");
    }
    assert_eq!(Value::F32(0.5).as_f64(), Some(0.5));
    assert_eq!(Value::F64(-2.5).as_f64(), Some(-2.5));
    assert_eq!(Value::U8(1).as_f64(), None);
    assert_eq!(Value::String("gpt2".into()).as_str(), Some("gpt2"));
    assert_eq!(Value::U8(1).as_str(), None);
    assert_eq!(Value::Array(vec![]).as_array(), Some(&[][..]));
    assert_eq!(Value::U8(1).as_array(), None);
}

/// ggml's ids, names and block sizes (`ggml.h`, `ggml-common.h`).
#[test]
fn tensor_types_are_ggml_s() {
    let known = [
        (0, "F32", Some((1, 4))),
        (1, "F16", Some((1, 2))),
        (2, "Q4_0", Some((32, 18))),
        (3, "Q4_1", Some((32, 20))),
        (6, "Q5_0", Some((32, 22))),
        (7, "Q5_1", Some((32, 24))),
        (8, "Q8_0", Some((32, 34))),
        (9, "Q8_1", Some((32, 36))),
        (10, "Q2_K", Some((256, 84))),
        (11, "Q3_K", Some((256, 110))),
        (12, "Q4_K", Some((256, 144))),
        (13, "Q5_K", Some((256, 176))),
        (14, "Q6_K", Some((256, 210))),
        (15, "Q8_K", Some((256, 292))),
        (24, "I8", Some((1, 1))),
        (25, "I16", Some((1, 2))),
        (26, "I32", Some((1, 4))),
        (27, "I64", Some((1, 8))),
        (28, "F64", Some((1, 8))),
        (30, "BF16", Some((1, 2))),
        (16, "IQ2_XXS (ggml type 16)", None),
        (17, "IQ2_XS (ggml type 17)", None),
        (18, "IQ3_XXS (ggml type 18)", None),
        (19, "IQ1_S (ggml type 19)", None),
        (20, "IQ4_NL (ggml type 20)", None),
        (21, "IQ3_S (ggml type 21)", None),
        (22, "IQ2_S (ggml type 22)", None),
        (23, "IQ4_XS (ggml type 23)", None),
        (29, "IQ1_M (ggml type 29)", None),
        (34, "TQ1_0 (ggml type 34)", None),
        (35, "TQ2_0 (ggml type 35)", None),
        (39, "MXFP4 (ggml type 39)", None),
        (40, "NVFP4 (ggml type 40)", None),
        (99, "unknown (ggml type 99)", None),
    ];
    for (id, name, block) in known {
        let kind = TensorType::from_id(id);
        assert_eq!(
            (kind.to_string().as_str(), kind.block()),
            (name, block),
            "id {id}"
        );
    }
}

#[test]
fn alignment_and_nesting_are_checked() {
    let odd = Writer::new()
        .metadata("general.alignment", Value::U32(48))
        .tensor("a", &[8], TensorType::F32, &[0; 32]);
    let error = Gguf::from_bytes(odd.to_bytes()).expect_err("48 is no power of two");
    assert!(error.to_string().contains("general.alignment"), "{error}");
    // A power of two the writer did not use: the second tensor's offset (32) is misaligned.
    let wide = Writer::new()
        .metadata("general.alignment", Value::U32(64))
        .tensor("a", &[8], TensorType::F32, &[0; 32])
        .tensor("b", &[8], TensorType::F32, &[0; 32]);
    let error = Gguf::from_bytes(wide.to_bytes()).expect_err("misaligned");
    assert!(error.to_string().contains("misaligned"), "{error}");
    let deep = (0..5).fold(Value::U8(1), |inner, _| Value::Array(vec![inner]));
    let error =
        Gguf::from_bytes(Writer::new().metadata("deep", deep).to_bytes()).expect_err("five levels");
    assert!(error.to_string().contains("value type 9"), "{error}");
    let four = (0..4).fold(Value::U8(1), |inner, _| Value::Array(vec![inner]));
    Gguf::from_bytes(Writer::new().metadata("four", four).to_bytes()).expect("four levels");
}

#[test]
fn impossible_shapes_and_counts_are_named_with_the_file() {
    let five = Writer::new().tensor("t", &[1, 1, 1, 1, 2], TensorType::F32, &[0; 8]);
    let error = Gguf::from_bytes(five.to_bytes()).expect_err("5 dimensions");
    assert!(
        error.to_string().contains("t has 5 dimensions (at most 4)"),
        "{error}"
    );
    let four = Writer::new().tensor("t", &[1, 1, 1, 2], TensorType::F32, &[0; 8]);
    Gguf::from_bytes(four.to_bytes()).expect("4 dimensions");
    // An array claiming more values than bytes remain is refused before it allocates.
    let mut bytes = Writer::new()
        .metadata("a", Value::Array(vec![Value::U8(1), Value::U8(2)]))
        .to_bytes();
    let count_at = 24 + 8 + 1 + 4 + 4;
    bytes[count_at..count_at + 8].copy_from_slice(&10u64.to_le_bytes());
    let dir = tempfile_dir();
    let path = dir.join("counts.gguf");
    std::fs::write(&path, &bytes).expect("written");
    let error = Gguf::open(&path)
        .expect_err("10 values in 2 bytes")
        .to_string();
    assert!(error.contains("a's 10 values"), "{error}");
    assert!(error.contains("counts.gguf"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nexttoken-gguf-counts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The process's resident memory in bytes (Linux's /proc/self/statm, in pages of 4 KiB).
#[cfg(target_os = "linux")]
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[cfg(target_os = "linux")]
#[test]
fn a_released_tensor_leaves_resident_memory_and_reads_back_the_same() {
    const MIB: usize = 1 << 20;
    let values: Vec<u8> = (0..48 * MIB).map(|i| (i % 251) as u8).collect();
    let bytes = Writer::new()
        .tensor("big", &[values.len()], TensorType::I8, &values)
        .to_bytes();
    let dir = std::env::temp_dir().join(format!("nexttoken-gguf-release-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("big.gguf");
    std::fs::write(&path, bytes).expect("written");
    let gguf = Gguf::open(&path).expect("valid");
    let big = gguf.tensor("big").expect("big");
    let sum = |bytes: &[u8]| bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
    let expected = sum(&values);
    assert_eq!(sum(gguf.tensor_bytes(big)), expected);
    let touched = resident_bytes();
    gguf.release(big);
    let released = resident_bytes();
    assert!(
        touched.saturating_sub(released) >= 40 * MIB as u64,
        "resident {touched} -> {released} bytes"
    );
    assert_eq!(
        sum(gguf.tensor_bytes(big)),
        expected,
        "the same bytes again"
    );
    std::fs::remove_dir_all(&dir).ok();
}
