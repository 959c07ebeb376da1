//! The other block formats a GGUF file from `llama-quantize` holds: its 4-, 5- and 6-bit
//! k-quants (`Q4_K_M`, the most downloaded GGUF kind, is Q4_K matrices with some in Q5_K or
//! Q6_K and a Q6_K head) and the 32-value formats it falls back to where a row is not a whole
//! 256-value super-block (GPT-2 XL's 1,600). No product runs on these: they are widened to
//! float32 here, value for value as llama.cpp's `dequantize_row_*` and gguf-py's
//! `dequantize_blocks` compute them (the same float operations in the same order, so the same
//! bits), and the model keeps them in Q8_0 or float32.

use half::f16;

/// A block format read by widening.
#[allow(non_camel_case_types)] // ggml's names, as users see them in llama.cpp's output
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WidenedFormat {
    /// 32 four-bit values, a scale and a minimum: `d × q + m`.
    Q4_1,
    /// 32 five-bit values offset by 16, a scale: `d × (q - 16)`.
    Q5_0,
    /// 32 five-bit values, a scale and a minimum: `d × q + m`.
    Q5_1,
    /// 256 four-bit values in 8 groups of 32, each with a 6-bit scale and minimum under the
    /// super-block's two f16s.
    Q4_K,
    /// Q4_K's layout with a fifth bit for each value.
    Q5_K,
    /// 256 six-bit values offset by 32, 16 groups of 16 with int8 scales.
    Q6_K,
}

impl WidenedFormat {
    /// Every format, for tests and messages.
    pub const ALL: [Self; 6] = [
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// Values in a block.
    pub const fn values(self) -> usize {
        match self {
            Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => 256,
        }
    }

    /// Bytes in a block.
    pub const fn bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// llama.cpp's name of the type (`q4_K`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q4_K => "q4_K",
            Self::Q5_K => "q5_K",
            Self::Q6_K => "q6_K",
        }
    }

    /// The values of `bytes` (whole blocks, as a GGUF file holds them) into `out`.
    ///
    /// # Panics
    /// If `bytes` is not whole blocks or `out` does not hold all their values.
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) {
        let (size, values) = (self.bytes(), self.values());
        assert!(bytes.len().is_multiple_of(size), "{} bytes", bytes.len());
        assert_eq!(out.len(), bytes.len() / size * values);
        let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(values));
        match self {
            Self::Q4_1 => blocks.for_each(|(b, out)| q4_1(b, out)),
            Self::Q5_0 => blocks.for_each(|(b, out)| q5_0(b, out)),
            Self::Q5_1 => blocks.for_each(|(b, out)| q5_1(b, out)),
            Self::Q4_K => blocks.for_each(|(b, out)| q4_k(b, out)),
            Self::Q5_K => blocks.for_each(|(b, out)| q5_k(b, out)),
            Self::Q6_K => blocks.for_each(|(b, out)| q6_k(b, out)),
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Value `i`'s nibble of a 32-value block's 16 bytes: the low nibbles hold 0-15, the high 16-31.
fn nibble(packed: &[u8], i: usize) -> u8 {
    let byte = packed[i % 16];
    if i < 16 { byte & 0x0f } else { byte >> 4 }
}

fn q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for (i, out) in out.iter_mut().enumerate() {
        *out = d * f32::from(nibble(&block[4..], i)) + m;
    }
}

/// Value `i`'s five bits: its nibble and bit `i` of the 32-bit little-endian `high`.
fn five_bits(high: &[u8], packed: &[u8], i: usize) -> u8 {
    let high = u32::from_le_bytes([high[0], high[1], high[2], high[3]]);
    nibble(packed, i) | (((high >> i) & 1) as u8) << 4
}

fn q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (i, out) in out.iter_mut().enumerate() {
        *out = d * f32::from(i16::from(five_bits(&block[2..6], &block[6..], i)) - 16);
    }
}

fn q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(block, 0), f16_at(block, 2));
    for (i, out) in out.iter_mut().enumerate() {
        *out = d * f32::from(five_bits(&block[4..8], &block[8..], i)) + m;
    }
}

/// Group `j`'s 6-bit scale and minimum of a k-quant's 12 packed bytes (llama.cpp's
/// `get_scale_min_k4`): groups 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7 (minimums),
/// groups 4-7 in the nibbles of bytes 8-11 with their top two bits in the first eight's top bits.
fn scale_min(packed: &[u8], j: usize) -> (f32, f32) {
    let (scale, min) = if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    };
    (f32::from(scale), f32::from(min))
}

/// A Q4_K or Q5_K super-block: `d × scale × q - dmin × min` over 8 groups of 32, where
/// `q(group, l)` is value `l` of group `group`'s bits.
fn k_groups(block: &[u8], out: &mut [f32], q: impl Fn(usize, usize) -> u8) {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    for (group, out) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = scale_min(&block[4..16], group);
        let (d, m) = (d * scale, dmin * min);
        for (l, out) in out.iter_mut().enumerate() {
            *out = d * f32::from(q(group, l)) - m;
        }
    }
}

/// 256 values: groups `2i` and `2i + 1` in the low and high nibbles of bytes `32i..32i + 32`.
fn q4_k(block: &[u8], out: &mut [f32]) {
    let packed = &block[16..];
    k_groups(block, out, |group, l| {
        let byte = packed[group / 2 * 32 + l];
        if group % 2 == 0 {
            byte & 0x0f
        } else {
            byte >> 4
        }
    });
}

/// Q4_K's nibbles at byte 48 on, and value `l` of group `g`'s fifth bit in bit `g` of byte `16 + l`.
fn q5_k(block: &[u8], out: &mut [f32]) {
    let (high, packed) = (&block[16..48], &block[48..]);
    k_groups(block, out, |group, l| {
        let byte = packed[group / 2 * 32 + l];
        let low = if group % 2 == 0 {
            byte & 0x0f
        } else {
            byte >> 4
        };
        low | ((high[l] >> group) & 1) << 4
    });
}

/// `d × scale × (q - 32)` for 6-bit `q`: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8
/// scales of 16 values each, then `d`.
fn q6_k(block: &[u8], out: &mut [f32]) {
    let (low, rest) = block.split_at(128);
    let (high, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(16);
    let d = f16_at(d, 0);
    for half in 0..2 {
        let (low, high) = (&low[half * 64..][..64], &high[half * 32..][..32]);
        let scales = &scales[half * 8..][..8];
        let out = &mut out[half * 128..][..128];
        for l in 0..32 {
            let six = |nibble: u8, pair: u8| i32::from(nibble | (pair & 3) << 4) - 32;
            let q = [
                six(low[l] & 0x0f, high[l]),
                six(low[l + 32] & 0x0f, high[l] >> 2),
                six(low[l] >> 4, high[l] >> 4),
                six(low[l + 32] >> 4, high[l] >> 6),
            ];
            for (quarter, q) in q.into_iter().enumerate() {
                let scale = f32::from(scales[l / 16 + 2 * quarter] as i8);
                out[l + 32 * quarter] = d * scale * q as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One super-block built value by value: the 6-bit value at each position from its nibble
    /// and bit pair, each group of 16 with its own scale.
    #[test]
    fn q6_k_dequantizes_as_llama_cpp() {
        let mut block = vec![0u8; 210];
        let mut expected = [0.0f32; 256];
        let d = f16::from_f32(0.5);
        block[208..].copy_from_slice(&d.to_le_bytes());
        for (i, scale) in block[192..208].iter_mut().enumerate() {
            *scale = (i as i8 * 3 - 20) as u8;
        }
        for (i, expected) in expected.iter_mut().enumerate() {
            // Value i sits in half h, quarter q, position l of its quarter.
            let (h, q, l) = (i / 128, i % 128 / 32, i % 32);
            let six = ((i * 7 + 3) % 64) as u8;
            let low_byte = h * 64 + l + if q % 2 == 1 { 32 } else { 0 };
            let nibble_shift = if q >= 2 { 4 } else { 0 };
            block[low_byte] |= (six & 0x0f) << nibble_shift;
            block[128 + h * 32 + l] |= (six >> 4) << (2 * q);
            let scale = f32::from(block[192 + h * 8 + l / 16 + 2 * q] as i8);
            *expected = 0.5 * scale * (f32::from(six) - 32.0);
        }
        let mut out = vec![0.0; 256];
        WidenedFormat::Q6_K.dequantize(&block, &mut out);
        assert_eq!(out, expected);
    }
}
