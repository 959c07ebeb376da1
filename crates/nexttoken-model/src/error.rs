use std::path::PathBuf;

/// Why a model could not be loaded. Each message names the file or tensor at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model path {path} does not exist: pass a directory holding a Hugging Face GPT-2 \
         checkpoint (config.json and model.safetensors) or the .safetensors file itself"
    )]
    NotFound { path: PathBuf },

    #[error(
        "no model.safetensors in {dir}: download the checkpoint's model.safetensors (Hugging \
         Face: `hf download gpt2 model.safetensors config.json --local-dir {dir}`)"
    )]
    NoWeights { dir: PathBuf },

    // Not `source`: the message says it already, and an error chain would say it twice.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path} is not a usable GPT-2 config.json: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    #[error(
        "no config.json beside {weights}, and a width of n_embd={n_embd} matches none of the \
         GPT-2 sizes, so the number of heads is unknown: put the checkpoint's config.json next \
         to the weights"
    )]
    NoConfig { weights: PathBuf, n_embd: usize },

    #[error(
        "{path} is not a valid safetensors file (truncated or corrupt?): {reason}; \
         download it again"
    )]
    CorruptWeights { path: PathBuf, reason: String },

    #[error("{path} has no tensor `{name}`: is this a GPT-2 checkpoint?")]
    MissingTensor { path: PathBuf, name: String },

    #[error(
        "tensor `{name}` in {path} has shape {found:?} but the config needs {expected:?}: \
         the weights and config.json come from different models"
    )]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "config.json says {field} = {config} but the weights in {path} have {field} = {weights}: \
         use the config.json that came with these weights"
    )]
    ConfigMismatch {
        path: PathBuf,
        field: &'static str,
        config: usize,
        weights: usize,
    },

    #[error(
        "tensor `{name}` in {path} is {dtype}, but nexttoken loads float weights (f32, f16, \
         bf16, f64): save the checkpoint with float weights (e.g. `model.float().save_pretrained(..)`)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{path} holds tensor `{name}`, which GPT-2 does not have: is this a GPT-2 checkpoint?")]
    UnexpectedTensor { path: PathBuf, name: String },

    #[error(
        "{path} holds PyTorch pickle weights, which nexttoken does not read: convert them to \
         safetensors first (in Python: `GPT2LMHeadModel.from_pretrained(dir).save_pretrained(dir, \
         safe_serialization=True)`, or the Hub's \"convert to safetensors\" Space)"
    )]
    PytorchWeights { path: PathBuf },

    #[error("{path} is not a usable model.safetensors.index.json: {reason}")]
    InvalidIndex { path: PathBuf, reason: String },

    #[error("{index} lists the shard {shard}, which is missing: download every shard it names")]
    MissingShard { index: PathBuf, shard: PathBuf },

    #[error(
        "{path} holds an lm_head.weight that differs from wte.weight: GPT-2 ties its output \
         head to the token embedding, and nexttoken does not run untied heads"
    )]
    UntiedHead { path: PathBuf },

    #[error(
        "--dtype {quantization} runs on the flex backend only (its integer kernels are \
         nexttoken's own): use --backend flex, or a float dtype (f32, f16, bf16) on this backend"
    )]
    QuantizedOffFlex { quantization: &'static str },

    #[error("the model's weights are quantized already: quantize a float model")]
    AlreadyQuantized,

    #[error(
        "tensor `{name}` has rows of {k} values, not a whole number of {quantization}'s \
         32-value blocks: quantize a model whose widths are multiples of 32 (every GPT-2 size's are)"
    )]
    NotQuantizable {
        name: String,
        k: usize,
        quantization: &'static str,
    },

    /// The file's own message names it and what is wrong.
    #[error("{error}")]
    Gguf { error: String },

    #[error(
        "{path} is a GGUF of the `{architecture}` architecture; nexttoken runs GPT-2 (`gpt2`) \
         only: convert a GPT-2 checkpoint with llama.cpp's convert_hf_to_gguf.py"
    )]
    GgufArchitecture { path: PathBuf, architecture: String },

    #[error(
        "tensor `{name}` in {path} is {kind}, which nexttoken does not read: use a GGUF of \
         f32, f16, bf16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K tensors \
         (llama-quantize IN.gguf OUT.gguf q8_0)"
    )]
    GgufTensorType {
        path: PathBuf,
        name: String,
        kind: String,
    },

    #[error(
        "{path} has an output.weight ({output}) that is not its token_embd.weight ({embedding}): \
         GPT-2 ties its head to the token embedding, and nexttoken runs tied heads only; \
         quantize with `llama-quantize --output-tensor-type {embedding_lower} IN.gguf OUT.gguf \
         {embedding_lower}`", embedding_lower = embedding.to_lowercase()
    )]
    GgufUntiedHead {
        path: PathBuf,
        output: String,
        embedding: String,
    },
}
