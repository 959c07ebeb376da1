/// A tensor's storage type: ggml's `ggml_type`, by the id a GGUF file stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // ggml's names, as users see them in llama.cpp's output
pub enum TensorType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    /// A type this reader has no size for (the IQ and ternary kinds, newer ones): its id and
    /// ggml's name where known.
    Other(u32, &'static str),
}

/// ggml's ids of the types this reader has sizes for, in id order.
const KNOWN: [(u32, TensorType); 20] = {
    use TensorType::*;
    [
        (0, F32),
        (1, F16),
        (2, Q4_0),
        (3, Q4_1),
        (6, Q5_0),
        (7, Q5_1),
        (8, Q8_0),
        (9, Q8_1),
        (10, Q2_K),
        (11, Q3_K),
        (12, Q4_K),
        (13, Q5_K),
        (14, Q6_K),
        (15, Q8_K),
        (24, I8),
        (25, I16),
        (26, I32),
        (27, I64),
        (28, F64),
        (30, BF16),
    ]
};

/// ggml's names of the types it has and this reader has no sizes for.
const OTHERS: [(u32, &str); 13] = [
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (40, "NVFP4"),
];

impl TensorType {
    pub fn from_id(id: u32) -> Self {
        if let Some(&(_, kind)) = KNOWN.iter().find(|(known, _)| *known == id) {
            return kind;
        }
        let name = OTHERS
            .iter()
            .find(|(other, _)| *other == id)
            .map_or("unknown", |&(_, name)| name);
        TensorType::Other(id, name)
    }

    /// The id a GGUF file stores.
    pub fn id(self) -> u32 {
        match self {
            TensorType::Other(id, _) => id,
            known => KNOWN
                .iter()
                .find(|(_, kind)| *kind == known)
                .map(|&(id, _)| id)
                .expect("every named type is in KNOWN"),
        }
    }

    /// Values per block and bytes per block (1 value for the plain types), from ggml's
    /// `ggml-common.h`; `None` for [`TensorType::Other`].
    pub fn block(self) -> Option<(usize, usize)> {
        use TensorType::*;
        Some(match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            F64 | I64 => (1, 8),
            I8 => (1, 1),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            Other(..) => return None,
        })
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorType::Other(id, name) => write!(f, "{name} (ggml type {id})"),
            known => write!(f, "{known:?}"),
        }
    }
}
