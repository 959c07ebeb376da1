//! The comparison written out: the markdown table, `compare.json`, `compare.md` and the chart.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;

use super::{Measure, Report, Speed};
use crate::chart::{self, Bar, Panel};
use crate::{CpuBackend, append_to};

/// Prints the table and writes compare.json, compare.md and compare.svg into `out`, and the
/// table to the end of `summary`.
pub(super) fn write_outputs(
    report: &Report,
    out: &Path,
    repetitions: u32,
    summary: Option<&Path>,
) -> Result<()> {
    let table = table(report);
    println!("{table}");
    if let Some(path) = summary {
        append_to(path, &format!("### cargo xtask compare\n\n{table}\n"))?;
    }
    let write = |name: &str, contents: String| {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    write("compare.md", table)?;
    write("compare.json", serde_json::to_string_pretty(report)? + "\n")?;

    let panel = |pick: fn(&Speed) -> &Option<Measure>| {
        let mut title = String::new();
        let bars = report
            .backends
            .iter()
            .filter_map(|b| {
                let measure = pick(b.speed.as_ref()?).as_ref()?;
                title.clone_from(&measure.test);
                let color = CpuBackend::value_variants()
                    .iter()
                    .position(|backend| backend.name() == b.backend)
                    .unwrap_or_default();
                Some(Bar {
                    label: b.backend.to_string(),
                    color,
                    mean: measure.tokens_per_s,
                    stddev: measure.stddev,
                })
            })
            .collect();
        Panel { title, bars }
    };
    let panels = [panel(|s| &s.prompt), panel(|s| &s.generation)];
    let model = report.model.file_name().unwrap_or(report.model.as_os_str());
    let skipped = report.skipped();
    let mut caption = format!(
        "{}: tokens/s per backend (mean ± std of {repetitions} runs; checked build)",
        model.to_string_lossy()
    );
    if !skipped.is_empty() {
        let _ = write!(caption, "; skipped: {}", skipped.join(", "));
    }
    chart::write_svg(&out.join("compare.svg"), &caption, &panels)?;
    eprintln!(
        "wrote compare.json, compare.md and compare.svg to {}",
        out.display()
    );
    Ok(())
}

/// The report as a markdown table, with a line saying what was compared.
pub(super) fn table(report: &Report) -> String {
    let test_name = |pick: fn(&Speed) -> &Option<Measure>, default: &str| {
        report
            .backends
            .iter()
            .find_map(|b| Some(pick(b.speed.as_ref()?).as_ref()?.test.clone()))
            .unwrap_or_else(|| default.to_string())
    };
    let mut out = format!(
        "model: {}; {} prompts × {} ids, greedy; logits tolerance {:e} (relative); threads: {}\n\n",
        report.model.display(),
        report.prompts.len(),
        report.new_tokens,
        report.tolerance,
        report
            .threads
            .map_or("each backend's default".to_string(), |t| t.to_string()),
    );
    let _ = writeln!(
        out,
        "| backend | ids vs {} | logits max abs | logits mean abs | agrees | load | {} t/s | {} t/s | peak RSS |",
        report.reference,
        test_name(|s| &s.prompt, "pp"),
        test_name(|s| &s.generation, "tg"),
    );
    out += "| ------- | ---------- | -------------: | --------------: | ------ | ---: | ------: | ------: | -------: |\n";
    for backend in &report.backends {
        let (Some(outputs), Some(speed)) = (&backend.outputs, &backend.speed) else {
            let reason = backend.skipped.as_deref().unwrap_or("did not run");
            let _ = writeln!(
                out,
                "| {} | skipped: {} | | | | | | | |",
                backend.backend,
                reason.replace('|', "\\|")
            );
            continue;
        };
        let ids = match &outputs.first_difference {
            _ if backend.backend == report.reference => "(reference)".to_string(),
            None if outputs.ids_identical => "identical".to_string(),
            None => "different lengths".to_string(),
            Some(d) => format!(
                "differ at prompt {}, step {} (margin {:.1e})",
                d.prompt, d.step, d.reference_margin
            ),
        };
        let measure = |m: &Option<Measure>| {
            m.as_ref().map_or("-".to_string(), |m| {
                format!("{:.1} ± {:.1}", m.tokens_per_s, m.stddev)
            })
        };
        let difference = |value: f32| match value {
            0.0 => "0".to_string(),
            value => format!("{value:.1e}"),
        };
        let _ = writeln!(
            out,
            "| {} | {ids} | {} | {} | {} | {:.0} ms | {} | {} | {} |",
            backend.backend,
            difference(outputs.logits_max_abs),
            difference(outputs.logits_mean_abs),
            if outputs.agrees { "yes" } else { "**no**" },
            speed.load_ms,
            measure(&speed.prompt),
            measure(&speed.generation),
            speed
                .peak_rss_bytes
                .map_or("-".to_string(), |bytes| format!("{} MiB", bytes >> 20)),
        );
    }
    out
}
