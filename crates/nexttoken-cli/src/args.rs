use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use nexttoken_backend::Backend;
use nexttoken_load::{Dtype, ModelSource};

/// Text generation with GPT-2 models on burn.
#[derive(Debug, Parser)]
#[command(name = "nexttoken", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Continue one or more prompts greedily, streaming the text to stdout.
    #[command(
        after_help = "Examples:\n  nexttoken generate \"Every effort moves you\"\n  \
        nexttoken generate --model gpt2 -n 40 \"Hello, I am\"\n  \
        echo \"Hello\" | nexttoken generate --no-echo --json"
    )]
    Generate(GenerateArgs),
    /// Measure prompt processing (ppN) and text generation (tgN) speed, as llama-bench does.
    Bench(BenchArgs),
    /// Serve OpenAI's completions API over HTTP, batching concurrent requests together.
    #[command(after_help = "Examples:\n  nexttoken serve --model gpt2\n  \
        curl http://127.0.0.1:8080/v1/completions -H 'Content-Type: application/json' \\\n    \
        -d '{\"prompt\": \"Hello, I am\", \"max_tokens\": 20, \"temperature\": 0}'")]
    Serve(ServeArgs),
    /// Score a text: its perplexity over windows of the context, as transformers' recipe and
    /// llama-perplexity compute it.
    #[command(after_help = "Examples:\n  nexttoken perplexity -f wiki.test.raw\n  \
        nexttoken perplexity --model gpt2 --dtype q8_0 -f book.txt --context 1024 --stride 512\n  \
        nexttoken perplexity -f book.txt --kl-divergence-base f32.kld\n  \
        nexttoken perplexity -f book.txt --dtype q4_0 --kl-divergence-base f32.kld --kl-divergence")]
    Perplexity(PerplexityArgs),
    /// List the backends: which are compiled in, and whether each can start on this machine.
    Info,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. The default accepts local clients only; 0.0.0.0 accepts anyone
    /// who can reach this machine (set --api-key then).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    #[command(flatten)]
    pub model: ModelArgs,

    /// The model's name in requests and /v1/models. Default: the checkpoint's name.
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,

    /// Compute backend: flex, ndarray, wgpu, vulkan, tch or cuda.
    #[arg(short, long, default_value = "flex", value_name = "NAME")]
    pub backend: Backend,

    /// Most completions (all requests' choices) generated at once.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,

    /// Most prompt tokens one generation step takes beside the running streams' next tokens:
    /// a long prompt joins over several steps instead of stalling every stream for its whole
    /// length (vLLM's chunked prefill); shorter prompts go first. With no stream running,
    /// prompts go whole.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub prefill_chunk: u32,

    /// Memory for the KV cache, in MiB: a request starts only once its prompt and all its
    /// max_tokens fit beside the running ones' (it waits in the batch until then), so the
    /// cache never grows past this. Default: no bound (at most --max-batch rows of the
    /// model's context).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_cache_mib: Option<u64>,

    /// Compute every prompt whole: by default, requests whose prompts start alike (a system
    /// prompt, few-shot examples) reuse the cached keys and values of that prefix, 16 tokens
    /// at a time, as vLLM's automatic prefix caching does.
    #[arg(long)]
    pub no_prefix_caching: bool,

    /// Most requests waiting for room in the batch; more get 429 with Retry-After. 0: none
    /// wait (requests that fit in the batch still run).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_queue: u32,

    /// Require `Authorization: Bearer KEY` on every request but /health. Repeatable: any of
    /// the keys is accepted.
    #[arg(
        long,
        value_name = "KEY",
        env = "NEXTTOKEN_API_KEY",
        hide_env_values = true,
        value_parser = api_key
    )]
    pub api_key: Vec<String>,

    /// Read API keys from FILE, one a line (blank lines and lines starting with # skipped),
    /// as --api-key takes them.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Let web pages from ORIGIN (e.g. https://example.com) call the server from a browser
    /// (CORS). Repeatable.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,

    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub body_limit: u64,

    /// Seconds a client may take to send a request's headers, and its body: slow clients
    /// cannot hold connections open.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = seconds)]
    pub read_timeout: f64,

    /// A request that has generated for this many seconds ends with what it has
    /// (finish_reason `length`). Default: no limit.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub request_time_limit: Option<f64>,

    /// After Ctrl-C or SIGTERM, seconds running requests may take to finish before each
    /// ends with an error; a second Ctrl-C stops at once.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = seconds)]
    pub shutdown_grace: f64,

    /// How log lines (one per request, and errors) are written to stderr; RUST_LOG filters
    /// them (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// CPU threads for the CPU backends' kernels.
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line each.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// An API key: not empty, which would lock every client out.
fn api_key(value: &str) -> Result<String, String> {
    let key = value.trim();
    if key.is_empty() {
        return Err(
            "an empty API key would lock every client out: give a key, or unset \
                    NEXTTOKEN_API_KEY"
                .into(),
        );
    }
    if key.chars().any(char::is_whitespace) {
        return Err("an API key cannot hold white space".into());
    }
    Ok(key.to_string())
}

/// A number of seconds above 0.
fn seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() && seconds < 1e9 => Ok(seconds),
        _ => Err(format!(
            "expected a number of seconds above 0, got {value:?}"
        )),
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompts; `-` reads one from stdin (so does giving none, when stdin is a pipe).
    /// All prompts run as one batch, whatever their lengths (see --batch-size).
    #[arg(value_name = "PROMPT")]
    pub prompts: Vec<String>,

    /// Read a prompt from FILE (all of it, as one prompt), after the PROMPT arguments.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub prompt_files: Vec<PathBuf>,

    /// Print only the generated text, not the prompt before it.
    #[arg(long, alias = "no-display-prompt")]
    pub no_echo: bool,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Most tokens to generate per prompt.
    #[arg(short = 'n', long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,

    /// Keep generating after <|endoftext|> instead of stopping there.
    #[arg(long)]
    pub ignore_eos: bool,

    /// Stop a prompt's generation where its text reaches STRING, which is not printed (as
    /// OpenAI's `stop`). Repeatable; matched across token boundaries.
    #[arg(long, value_name = "STRING")]
    pub stop: Vec<String>,

    /// Run at most N prompts in one batch; the rest wait for the next batch.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,

    /// With --json: each generated token's log-probability and the N most likely alternatives
    /// at its step, from the model's logits before sampling settings apply.
    #[arg(long, value_name = "N", requires = "json")]
    pub logprobs: Option<usize>,

    /// Compute backend: flex, ndarray, wgpu, vulkan, tch or cuda (`nexttoken info` lists the
    /// ones compiled in).
    #[arg(short, long, default_value = "flex", value_name = "NAME")]
    pub backend: Backend,

    /// Print one line of JSON per prompt (prompt, ids, text, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,

    /// Write the logits every id was selected from to this safetensors file: per prompt N, a
    /// float32 tensor `logits.N` of shape [generated ids, vocab] (`cargo xtask compare` reads it).
    #[arg(long, value_name = "FILE")]
    pub save_logits: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// How each next token is chosen: greedy unless a temperature above 0 or a filter is given.
/// The settings apply in Hugging Face transformers' order (repeat penalty, temperature, top-k,
/// top-p, min-p), so they mean what they mean there.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sampling")]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy. Default: 0, or 1 when --top-k, --top-p or --min-p is
    /// given.
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub temperature: Option<f32>,

    /// Draw from the K most likely tokens only.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,

    /// Draw from the most likely tokens whose probabilities add up to P (nucleus sampling).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f32>,

    /// Draw from the tokens at least P times as likely as the most likely one.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub min_p: Option<f32>,

    /// Penalize tokens already in the text (transformers' repetition_penalty; 1 is off). Applies
    /// to greedy decoding too.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub repeat_penalty: f32,

    /// The repeat penalty looks at the last N tokens only (llama.cpp's repeat_last_n). Default:
    /// the whole text, prompt included, as transformers does.
    #[arg(long, value_name = "N")]
    pub repeat_last_n: Option<usize>,

    /// Seed of the random draws: the same seed gives the same text. Prompt i draws from seed + i,
    /// so its text does not depend on the other prompts. Default: a new seed every run (printed
    /// with the timings).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// How the model runs, for `generate` and `bench` alike.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Recompute the whole window at every step instead of keeping a KV cache (slower; the
    /// reference the cache is tested against).
    #[arg(long)]
    pub no_kv_cache: bool,

    /// CPU threads for the CPU backends' kernels (default: rayon's, every logical CPU, for flex
    /// and ndarray; libtorch's, the physical cores, for tch).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
}

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The text to score (UTF-8).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,

    /// Ids per window. Default: the model's context length.
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,

    /// Ids between windows' starts; each window scores the ids after the previous window's
    /// end, predicted from up to a window of ids before them. Default: half the window.
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,

    /// Save every scored id's distribution over the vocabulary to FILE (a base run, f32 say),
    /// or with --kl-divergence, compare this run's with FILE's: mean KL divergence and how
    /// often the most likely id is the same (as llama-perplexity's flags of these names).
    #[arg(long, value_name = "FILE")]
    pub kl_divergence_base: Option<PathBuf>,

    /// Compare with the base run in --kl-divergence-base instead of saving one.
    #[arg(long, requires = "kl_divergence_base")]
    pub kl_divergence: bool,

    /// Print one JSON object instead of the summary line.
    #[arg(long)]
    pub json: bool,

    /// Compute backend: flex, ndarray, wgpu, vulkan, tch or cuda.
    #[arg(short, long, default_value = "flex", value_name = "NAME")]
    pub backend: Backend,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Which checkpoint to run, for `generate` and `bench` alike.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GPT-2 checkpoint: a local folder with config.json and model.safetensors (or a sharded
    /// model.safetensors.index.json), the .safetensors file itself, or a Hugging Face Hub repo
    /// id (`gpt2`, `openai-community/gpt2-medium`), downloaded once into the Hugging Face cache
    /// (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply). A local path
    /// wins over a repo id of the same name. Default: the small model built into nexttoken.
    #[arg(short, long, value_name = "PATH|REPO", env = "NEXTTOKEN_MODEL")]
    pub model: Option<String>,

    /// The Hub revision of a repo id: a branch, tag or commit.
    #[arg(long, default_value = "main", value_name = "REV")]
    pub revision: String,

    /// A GGUF file in the --model repo or folder to load, as llama.cpp's --hf-file picks one of
    /// a GGUF repo's files (`--model ggml-org/gpt2-GGUF --gguf-file gpt2-q8_0.gguf`).
    #[arg(long, value_name = "NAME")]
    pub gguf_file: Option<String>,

    /// The precision to compute in, converting the weights as they load: f32, f16 or bf16;
    /// or q8_0 / q4_0, llama.cpp's 8- and 4-bit blocks, quantized as it quantizes them (the
    /// matrices and the token embedding; flex only, computing in float32). Default: the
    /// checkpoint's own, where the backend computes in it (else f32). Logits are float32
    /// whatever it is.
    #[arg(long, value_name = "TYPE")]
    pub dtype: Option<Dtype>,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        ModelSource {
            model: self.model.clone(),
            revision: self.revision.clone(),
            gguf_file: self.gguf_file.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Backends to measure, comma-separated.
    #[arg(
        short,
        long,
        default_value = "flex",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    pub backend: Vec<Backend>,

    /// Prompt lengths for the prompt-processing tests (ppN), comma-separated; 0 skips them.
    /// Default: 512, or the model's context length if shorter.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        value_name = "N"
    )]
    pub n_prompt: Option<Vec<usize>>,

    /// Tokens to generate in the text-generation tests (tgN), comma-separated; 0 skips them.
    /// A test may not run past the model's context length. Default: 128, or the model's
    /// context length if shorter.
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', value_name = "N")]
    pub n_gen: Option<Vec<usize>>,

    /// Rows generated together, comma-separated: each test runs with that many prompts in one
    /// batch and reports all rows' tokens per second together (as llama-batched-bench does).
    #[arg(
        long,
        default_value = "1",
        value_delimiter = ',',
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub batch_size: Vec<u32>,

    /// Timed repetitions of each test, after one untimed warm-up run.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub repetitions: u32,

    /// Print one line of JSON per test instead of the table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub run: RunArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_is_wrapped_to_the_terminal() {
        let mut command = Cli::command().term_width(80);
        // Building propagates the width to the subcommands.
        command.build();
        let help = command
            .find_subcommand_mut("generate")
            .unwrap()
            .render_long_help()
            .to_string();
        let longest = help.lines().map(|line| line.chars().count()).max().unwrap();
        assert!(
            longest <= 80,
            "a help line of {longest} characters:\n{help}"
        );
    }

    /// A negative value reaches the settings' own check (which names the setting), instead of
    /// clap's hint to write `-- -1`, which would make it a prompt.
    #[test]
    fn negative_numbers_are_values_not_flags() {
        let cli = Cli::try_parse_from(["nexttoken", "generate", "--temperature", "-1", "Hi"]);
        let Ok(Cli {
            command: Command::Generate(args),
        }) = cli
        else {
            panic!("{cli:?}");
        };
        assert_eq!(args.sampling.temperature, Some(-1.0));
        assert_eq!(args.prompts, ["Hi"]);
    }

    #[test]
    fn empty_api_keys_are_refused() {
        for key in ["", "  "] {
            let err = Cli::try_parse_from(["nexttoken", "serve", "--api-key", key]).unwrap_err();
            assert!(err.to_string().contains("lock every client out"), "{err}");
        }
        let cli = Cli::try_parse_from(["nexttoken", "serve", "--api-key", "a", "--api-key", "b"]);
        let Ok(Cli {
            command: Command::Serve(args),
        }) = cli
        else {
            panic!("{cli:?}");
        };
        assert_eq!(args.api_key, ["a", "b"]);
        for timeout in ["0", "-1", "nan", "soon"] {
            let parsed = Cli::try_parse_from(["nexttoken", "serve", "--read-timeout", timeout]);
            assert!(parsed.is_err(), "{timeout}");
        }
    }

    #[test]
    fn zero_new_tokens_is_rejected_by_the_parser() {
        let err = Cli::try_parse_from(["nexttoken", "generate", "-n", "0", "Hi"]).unwrap_err();
        assert!(err.to_string().contains("0"), "{err}");
    }
}
