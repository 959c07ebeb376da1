use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use nexttoken_backend::Backend;

/// Text generation with GPT-2 models on burn.
#[derive(Debug, Parser)]
#[command(name = "nexttoken", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Continue one or more prompts greedily, streaming the text to stdout.
    Generate(GenerateArgs),
    /// List the backends: which are compiled in, and whether each can start on this machine.
    Info,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompts. Prompts that encode to the same number of tokens run as one batch.
    #[arg(required = true, value_name = "PROMPT")]
    pub prompts: Vec<String>,

    /// A Hugging Face GPT-2 checkpoint: a directory with config.json and model.safetensors, or
    /// the .safetensors file. Defaults to the small model bundled with nexttoken.
    #[arg(short, long, value_name = "PATH", env = "NEXTTOKEN_MODEL")]
    pub model: Option<PathBuf>,

    /// Most tokens to generate per prompt.
    #[arg(short = 'n', long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_tokens: u32,

    /// Keep generating after <|endoftext|> instead of stopping there.
    #[arg(long)]
    pub ignore_eos: bool,

    /// Compute backend: flex, ndarray, wgpu, vulkan, tch or cuda (`nexttoken info` lists the
    /// ones compiled in).
    #[arg(short, long, default_value = "flex", value_name = "NAME")]
    pub backend: Backend,

    /// Print one line of JSON per prompt (prompt, ids, text, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
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
    fn zero_new_tokens_is_rejected_by_the_parser() {
        let err = Cli::try_parse_from(["nexttoken", "generate", "-n", "0", "Hi"]).unwrap_err();
        assert!(err.to_string().contains("0"), "{err}");
    }
}
