//! The side-by-side table of every run: each side's tokens/s, its ratio to transformers, and
//! its spread over the rounds.

use std::collections::BTreeMap;

use super::Record;

/// One row per (threads, test, backend): the mean of the rounds' means, each round's mean ± std,
/// the ratio to transformers' mean, and the range of the per-round ratios.
pub(super) fn table(records: &[Record]) -> String {
    // Sorted by threads, then dtype, then pp before tg, then size, then batch size, then backend.
    type Key<'a> = (usize, &'a str, bool, usize, usize, &'a str, &'a str);
    let mut groups: BTreeMap<Key, Vec<&Record>> = BTreeMap::new();
    for record in records {
        let size = record.test[2..].parse().unwrap_or(0);
        let key = (
            record.requested_threads,
            record.dtype.as_str(),
            record.test.starts_with("tg"),
            size,
            record.batch_size,
            record.test.as_str(),
            record.backend.as_str(),
        );
        groups.entry(key).or_default().push(record);
    }
    let mean =
        |group: &[&Record]| group.iter().map(|r| r.tokens_per_s).sum::<f64>() / group.len() as f64;
    let mut out = String::from(
        "| threads | dtype | test | batch | backend | t/s | vs transformers | per-round ratios | rounds (mean ± std) | peak RSS |\n\
         | ------: | ----- | ---- | ----: | ------- | --: | --------------: | ---------------: | ------------------- | -------: |\n",
    );
    for (&(threads, dtype, is_tg, size, batch, test, backend), group) in &groups {
        let reference = groups.get(&(threads, dtype, is_tg, size, batch, test, "transformers"));
        let (ratio, range) = match reference {
            Some(reference) if backend != "transformers" => {
                let per_round: Vec<f64> = group
                    .iter()
                    .filter_map(|ours| {
                        let theirs = reference.iter().find(|r| r.round == ours.round)?;
                        Some(ours.tokens_per_s / theirs.tokens_per_s)
                    })
                    .collect();
                let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
                let high = per_round.iter().copied().fold(0.0, f64::max);
                (
                    format!("{:.2}x", mean(group) / mean(reference)),
                    format!("{low:.2}-{high:.2}x"),
                )
            }
            _ => ("-".into(), "-".into()),
        };
        let rounds: Vec<String> = group
            .iter()
            .map(|r| format!("{:.1} ± {:.1}", r.tokens_per_s, r.stddev))
            .collect();
        let rss = group
            .iter()
            .filter_map(|r| r.peak_rss_bytes)
            .max()
            .map_or("-".into(), |bytes| format!("{} MiB", bytes >> 20));
        out += &format!(
            "| {threads} | {dtype} | {test} | {batch} | {backend} | {:.2} | {ratio} | {range} | {} | {rss} |\n",
            mean(group),
            rounds.join(", ")
        );
    }
    out
}
