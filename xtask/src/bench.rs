//! `cargo xtask bench`: the criterion benchmarks in benches/, once as a smoke test or measured,
//! with criterion baselines and critcmp to show what a change did to them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::{append_to, cache_dir, cargo, cpu_features, run, target_dir};

/// critcmp's version, installed into ~/.cache/nexttoken/tools on first use.
const CRITCMP_VERSION: &str = "0.1.8";

#[derive(Args)]
pub struct BenchArgs {
    /// Measure (criterion's full runs) instead of running each benchmark once.
    #[arg(long)]
    measure: bool,
    /// Shorter measurements (0.5 s warm-up, 2 s per benchmark): a noisier but quick run.
    #[arg(long)]
    quick: bool,
    /// Keep the measurements as this criterion baseline (implies --measure).
    #[arg(long, value_name = "NAME")]
    save_baseline: Option<String>,
    /// Then print critcmp's comparison of that baseline with this earlier one, e.g. `main`.
    #[arg(long, value_name = "NAME", requires = "save_baseline")]
    compare_to: Option<String>,
    /// Also append the comparison, as markdown, to this file (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long, value_name = "FILE", requires = "compare_to")]
    summary: Option<PathBuf>,
    /// Only the benchmarks whose id matches this regex, e.g. `flex` or `decode_step`.
    filter: Option<String>,
}

pub fn run_benches(root: &Path, args: &BenchArgs) -> Result<()> {
    let mut command = cargo(root);
    command.args([
        "bench",
        "--bench",
        "generation",
        "--features",
        &cpu_features(),
        "--",
    ]);
    if let Some(filter) = &args.filter {
        command.arg(filter);
    }
    if let Some(name) = &args.save_baseline {
        command.args(["--save-baseline", name]);
    } else if !args.measure && !args.quick {
        command.arg("--test");
    }
    if args.quick {
        command.args(["--warm-up-time", "0.5", "--measurement-time", "2"]);
    }
    run(&mut command)?;

    let (Some(new), Some(old)) = (&args.save_baseline, &args.compare_to) else {
        return Ok(());
    };
    let critcmp = critcmp(root)?;
    let target = target_dir(root)?;
    let baselines = Command::new(&critcmp)
        .arg("--target-dir")
        .arg(&target)
        .arg("--baselines")
        .output()
        .context("running critcmp")?;
    if !String::from_utf8_lossy(&baselines.stdout)
        .lines()
        .any(|line| line.trim() == old)
    {
        let note = format!(
            "no criterion baseline `{old}` under {}: nothing to compare `{new}` with yet",
            target.display()
        );
        eprintln!("{note}");
        if let Some(path) = &args.summary {
            append_to(path, &format!("### criterion\n\n{note}\n\n"))?;
        }
        return Ok(());
    }
    let mut critcmp = Command::new(critcmp);
    critcmp
        .arg("--target-dir")
        .arg(&target)
        .args(["--color", "never", old, new]);
    if let Some(filter) = &args.filter {
        critcmp.args(["--filter", filter]);
    }
    eprintln!("$ {critcmp:?}");
    let output = critcmp.output().context("running critcmp")?;
    anyhow::ensure!(
        output.status.success(),
        "critcmp failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    println!("{table}");
    if let Some(path) = &args.summary {
        append_to(
            path,
            &format!(
                "### criterion: `{new}` against `{old}`\n\n(time per iteration; the lower the \
                 better, 1.00 is the faster of the two)\n\n```\n{table}```\n\n"
            ),
        )?;
    }
    Ok(())
}

/// critcmp, installed with cargo on first use.
fn critcmp(root: &Path) -> Result<PathBuf> {
    let path = cache_dir()
        .context("no HOME: cannot place critcmp")?
        .join("tools/bin/critcmp");
    if !path.exists() {
        let tools = path
            .parent()
            .and_then(Path::parent)
            .context("critcmp's path")?;
        run(cargo(root)
            .args([
                "install",
                "critcmp",
                "--locked",
                "--version",
                CRITCMP_VERSION,
            ])
            .arg("--root")
            .arg(tools))
        .context("installing critcmp from crates.io")?;
    }
    Ok(path)
}
