//! Where `generate`'s prompts come from: arguments, stdin and files, as llama-cli takes them.

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result, bail};

use crate::args::GenerateArgs;

/// The prompts from the arguments, `-` (stdin) and `-f FILE`s, in that order; stdin alone
/// when there are none and it is not a terminal. One trailing newline is dropped from stdin
/// and files, as llama-cli drops it, since an editor or `echo` adds it.
pub(super) fn read_prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    let stdin = || -> Result<String> {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the prompt from stdin")?;
        Ok(without_final_newline(text))
    };
    if args.prompts.iter().filter(|p| *p == "-").count() > 1 {
        bail!("`-` (stdin) is given more than once: stdin holds one prompt");
    }
    let mut prompts = Vec::new();
    for prompt in &args.prompts {
        prompts.push(if prompt == "-" {
            stdin()?
        } else {
            prompt.clone()
        });
    }
    for file in &args.prompt_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the prompt file {}", file.display()))?;
        prompts.push(without_final_newline(text));
    }
    if prompts.is_empty() {
        if std::io::stdin().is_terminal() {
            bail!(
                "no prompt: give one as an argument, from a file with -f FILE, or on stdin \
                 (`echo \"Hello\" | nexttoken generate`)"
            );
        }
        prompts.push(stdin()?);
    }
    if let Some(index) = prompts.iter().position(String::is_empty) {
        bail!(
            "prompt {} is empty: give it at least one character of text",
            index + 1
        );
    }
    Ok(prompts)
}

/// The prompt as printed before its continuation: nothing under `--no-echo`.
pub(super) fn echoed(prompt: &str, no_echo: bool) -> &str {
    if no_echo { "" } else { prompt }
}

fn without_final_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}
