//! Project chores: `cargo xtask <task>`. Run without a task for the list.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "nexttoken's project tasks", arg_required_else_help = true)]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the Hugging Face reference data in tests/goldens (needs scripts/requirements.txt).
    Goldens {
        /// Python with torch and transformers installed (see scripts/requirements.txt).
        #[arg(long, default_value = "python3", env = "NEXTTOKEN_PYTHON")]
        python: PathBuf,
        /// Folder with tinyshakespeare.txt and the-verdict.txt.
        #[arg(long, default_value = "../shared/corpus")]
        corpus: PathBuf,
        /// Also re-create the tiny checkpoints (their goldens change with them).
        #[arg(long)]
        new_checkpoints: bool,
    },
}

fn main() -> Result<()> {
    let root = project_root();
    match Xtask::parse().task {
        Task::Goldens {
            python,
            corpus,
            new_checkpoints,
        } => {
            let mut command = Command::new(&python);
            command
                .current_dir(&root)
                .arg("scripts/make_fixtures.py")
                .arg("--corpus")
                .arg(&corpus);
            if !new_checkpoints {
                command.arg("--skip-checkpoints");
            }
            run(&mut command).with_context(|| {
                format!("running scripts/make_fixtures.py with {}", python.display())
            })
        }
    }
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("$ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
