//! GGUF's other block formats widened as llama.cpp's gguf-py widens them, bit for bit: the
//! goldens are its `dequantize` of pseudo-random blocks (scripts/make_gguf_block_goldens.py).

use nexttoken_cpu::quant::WidenedFormat;
use safetensors::SafeTensors;

#[test]
fn every_widened_format_gives_gguf_py_s_values() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/goldens/gguf-blocks.safetensors"
    );
    let file = std::fs::read(path).expect("the goldens");
    let goldens = SafeTensors::deserialize(&file).expect("safetensors");
    for format in WidenedFormat::ALL {
        let name = format.name();
        let bytes = goldens.tensor(&format!("{name}.bytes")).expect("bytes");
        let expected: Vec<f32> = goldens
            .tensor(&format!("{name}.values"))
            .expect("values")
            .data()
            .chunks_exact(4)
            .map(|v| f32::from_le_bytes(v.try_into().expect("4 bytes")))
            .collect();
        assert_eq!(bytes.data().len() % format.bytes(), 0, "{name}");
        assert!(
            bytes.data().len() / format.bytes() >= 2,
            "{name}: a few blocks"
        );
        let mut got = vec![f32::NAN; expected.len()];
        format.dequantize(bytes.data(), &mut got);
        let differing: Vec<usize> = (0..got.len())
            .filter(|&i| got[i].to_bits() != expected[i].to_bits())
            .collect();
        assert!(
            differing.is_empty(),
            "{name}: {} of {} values differ, first at {}: {} vs gguf-py's {}",
            differing.len(),
            got.len(),
            differing[0],
            got[differing[0]],
            expected[differing[0]]
        );
        assert!(expected.iter().any(|&v| v != 0.0), "{name}: not all zeros");
    }
}
