//! What the machine's own limits say of the speeds: each decode against the memory's read
//! bandwidth (per round, and around its own run), each prefill against the cores' multiply-add
//! rate, two threads against one, and half precision against float32 of the same round.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::Record;

/// Bytes a batch-1 decode step reads for the weights in `dtype`. Float weights are
/// `n_params` values of the dtype; quantized ones (`q8_0`, `q4_0`) hold the blocks' matrices in
/// their format, the head (the token embedding) in Q8_0 as nexttoken keeps it, and the rest
/// (position embedding, norms, biases) in float32, counted from the `shape` where known.
pub(super) fn weight_bytes(dtype: &str, n_params: u64, shape: Option<&Shape>) -> f64 {
    let n_params = n_params as f64;
    let per_value = |dtype: &str| match dtype {
        "f32" => 4.0,
        "q8_0" => 34.0 / 32.0,
        "q4_0" => 18.0 / 32.0,
        _ => 2.0,
    };
    match shape {
        Some(shape) if dtype.starts_with('q') => {
            let c = shape.n_embd as f64;
            let matrices = shape.n_layer as f64 * 12.0 * c * c;
            let head = shape.vocab_size as f64 * c;
            matrices * per_value(dtype)
                + head * per_value("q8_0")
                + (n_params - matrices - head) * per_value("f32")
        }
        _ => n_params * per_value(dtype),
    }
}

/// One of a [`Probe`]'s figures.
pub(super) type Reading = fn(&Probe) -> f64;

/// What [`crate::probe`] measured in one round.
pub(super) struct Probe {
    pub(super) read_gb_per_s: f64,
    pub(super) sustained_gb_per_s: f64,
    pub(super) gflop_per_s: f64,
}

/// For each dtype and thread count: the read bandwidth, the batch-1 decode bound it gives for
/// these weights, and each side's batch-1 decode as a share of it, overall and round by round.
pub(super) fn decode_bounds(
    records: &[Record],
    probes: &BTreeMap<usize, Vec<Probe>>,
    weight_bytes: impl Fn(&str) -> f64,
) -> String {
    let dtypes: BTreeSet<&str> = records.iter().map(|r| r.dtype.as_str()).collect();
    let mut out = String::new();
    for dtype in dtypes {
        let weight_bytes = weight_bytes(dtype);
        let bound = |gb_per_s: f64| gb_per_s * 1e9 / weight_bytes;
        out += &format!(
            "\n{dtype} weights: {:.0} MB read per generated token (batch 1)\n",
            weight_bytes / 1e6
        );
        for (&threads, probes) in probes {
            let readings: [(&str, Reading); 2] = [
                ("read bandwidth", |p| p.read_gb_per_s),
                ("  sustained over 3 s", |p| p.sustained_gb_per_s),
            ];
            for (how, read) in readings {
                let measured: Vec<f64> = probes.iter().map(read).collect();
                let bounds: Vec<f64> = measured.iter().copied().map(bound).collect();
                out += &format!(
                    "{threads} thread(s): {how} {:.1} GB/s (rounds: {}), bound {:.1} t/s;{}\n",
                    mean(&measured),
                    one_decimal(&measured),
                    mean(&bounds),
                    shares(records, (dtype, threads), is_decode, of_round(&bounds))
                );
            }
            let around = around_runs(records, (dtype, threads));
            if let (Some(lowest), Some(highest)) = (
                around.iter().copied().reduce(f64::min),
                around.iter().copied().reduce(f64::max),
            ) {
                out += &format!(
                    "{threads} thread(s):   around each run {:.1} GB/s \
                     (runs: {lowest:.1}-{highest:.1}), bound {:.1} t/s;{}\n",
                    mean(&around),
                    bound(mean(&around)),
                    shares(records, (dtype, threads), is_decode, |r| {
                        r.around_gb_per_s.map(bound)
                    })
                );
            }
        }
        out += &thread_scaling(records, probes, dtype);
    }
    out
}

/// From the fewest threads to each other count: how the read bandwidth grew, and each side's
/// batch-1 decode in this dtype (more threads can only speed decode as far as the memory lets).
pub(super) fn thread_scaling(
    records: &[Record],
    probes: &BTreeMap<usize, Vec<Probe>>,
    dtype: &str,
) -> String {
    let bandwidth =
        |probes: &[Probe], read: Reading| mean(&probes.iter().map(read).collect::<Vec<_>>());
    let decode = |threads: usize| {
        let mut sides: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for record in batch_one(records, (dtype, threads), is_decode) {
            sides
                .entry(&record.backend)
                .or_default()
                .push(record.tokens_per_s);
        }
        sides
    };
    let mut counts = probes.iter();
    let Some((&fewest, base_probes)) = counts.next() else {
        return String::new();
    };
    let base = decode(fewest);
    let mut out = String::new();
    for (&threads, probes) in counts {
        let sides: String = decode(threads)
            .iter()
            .filter_map(|(backend, speeds)| {
                let before = base.get(backend)?;
                Some(format!(" {backend} {:.2}x", mean(speeds) / mean(before)))
            })
            .collect();
        let growth = |read: Reading| bandwidth(probes, read) / bandwidth(base_probes, read);
        let around = |threads: usize| {
            let around = around_runs(records, (dtype, threads));
            (!around.is_empty()).then(|| mean(&around))
        };
        let around = match (around(fewest), around(threads)) {
            (Some(before), Some(after)) => format!(", around the runs {:.2}x", after / before),
            _ => String::new(),
        };
        out += &format!(
            "threads {fewest} -> {threads}: read bandwidth {:.2}x \
             (sustained {:.2}x{around});{sides}\n",
            growth(|p| p.read_gb_per_s),
            growth(|p| p.sustained_gb_per_s)
        );
    }
    out
}

/// For each thread count and prompt length: the multiply-add rate, the float32 prefill bound it
/// gives for this model, and each side's batch-1 float32 prefill as a share of it (a bf16
/// product on AVX-512 BF16 does twice float32's multiply-adds an instruction: no bound here).
pub(super) fn prefill_bounds(
    records: &[Record],
    probes: &BTreeMap<usize, Vec<Probe>>,
    shape: &Shape,
) -> String {
    let prompts: BTreeSet<usize> = records
        .iter()
        .filter(|r| r.dtype == "f32")
        .filter_map(|r| r.test.strip_prefix("pp")?.parse().ok())
        .collect();
    let mut out = String::new();
    for prompt in prompts {
        let flops = shape.prefill_flops_per_token(prompt);
        out += &format!(
            "\nf32 prefill: {:.1} MFLOP per token of a {prompt}-token prompt (products, attention, \
             the head at the last position)\n",
            flops / 1e6
        );
        for (&threads, probes) in probes {
            let measured: Vec<f64> = probes.iter().map(|p| p.gflop_per_s).collect();
            let bounds: Vec<f64> = measured.iter().map(|rate| rate * 1e9 / flops).collect();
            let test = format!("pp{prompt}");
            out += &format!(
                "{threads} thread(s): float32 multiply-adds {:.1} GFLOP/s (rounds: {}), bound {:.0} t/s;{}\n",
                mean(&measured),
                one_decimal(&measured),
                mean(&bounds),
                shares(records, ("f32", threads), |t| t == test, of_round(&bounds))
            );
        }
    }
    out
}

/// The batch-1 records of the tests `test` picks, in this dtype at these threads.
pub(super) fn batch_one<'a>(
    records: &'a [Record],
    (dtype, threads): (&'a str, usize),
    test: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = &'a Record> {
    records.iter().filter(move |r| {
        r.requested_threads == threads && r.dtype == dtype && r.batch_size == 1 && test(&r.test)
    })
}

pub(super) fn is_decode(test: &str) -> bool {
    test.starts_with("tg")
}

/// A record's bound: its round's (`bounds[round]`).
pub(super) fn of_round(bounds: &[f64]) -> impl Fn(&Record) -> Option<f64> + '_ {
    |record| bounds.get(record.round as usize).copied()
}

/// The bandwidth read around each batch-1 decode run in this dtype at these threads ([`Around`]).
pub(super) fn around_runs(records: &[Record], (dtype, threads): (&str, usize)) -> Vec<f64> {
    batch_one(records, (dtype, threads), is_decode)
        .filter_map(|r| r.around_gb_per_s)
        .collect()
}

/// Each side's batch-1 tokens/s over the tests `test` picks, in this dtype at these threads, as
/// a share of each record's `bound` (records without one left out): over all rounds, then
/// round by round: " flex 86% (rounds 84%, 88%) llama.cpp ...".
pub(super) fn shares(
    records: &[Record],
    (dtype, threads): (&str, usize),
    test: impl Fn(&str) -> bool,
    bound: impl Fn(&Record) -> Option<f64>,
) -> String {
    /// (tokens/s, bound) of each record.
    type Pairs = Vec<(f64, f64)>;
    let mut sides: BTreeMap<&str, BTreeMap<u32, Pairs>> = BTreeMap::new();
    for record in batch_one(records, (dtype, threads), test) {
        let Some(bound) = bound(record) else {
            continue;
        };
        sides
            .entry(record.backend.as_str())
            .or_default()
            .entry(record.round)
            .or_default()
            .push((record.tokens_per_s, bound));
    }
    let share = |pairs: &[(f64, f64)]| {
        let (speeds, bounds): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        format!("{:.0}%", 100.0 * mean(&speeds) / mean(&bounds))
    };
    sides
        .iter()
        .map(|(backend, rounds)| {
            let all: Vec<(f64, f64)> = rounds.values().flatten().copied().collect();
            let per_round: Vec<String> = rounds.values().map(|pairs| share(pairs)).collect();
            format!(
                " {backend} {} (rounds {})",
                share(&all),
                per_round.join(", ")
            )
        })
        .collect()
}

/// Each nexttoken backend's batch-1 decode in half precision against its own float32 and
/// llama.cpp's f16, round by round (the machine's speed moves between rounds, not within one):
/// "tg128, 2 thread(s), flex bf16: 1.85x flex f32 (rounds 1.80x, 1.90x), ...".
pub(super) fn half_precision(records: &[Record]) -> String {
    type Key<'a> = (usize, &'a str, &'a str, &'a str);
    let mut groups: BTreeMap<Key, Vec<&Record>> = BTreeMap::new();
    let decode = |r: &&Record| r.batch_size == 1 && is_decode(&r.test);
    for record in records.iter().filter(decode).filter(|r| {
        r.dtype != "f32" && !["transformers", "llama.cpp"].contains(&r.backend.as_str())
    }) {
        let key = (
            record.requested_threads,
            record.test.as_str(),
            record.backend.as_str(),
            record.dtype.as_str(),
        );
        groups.entry(key).or_default().push(record);
    }
    let mut out = String::new();
    for ((threads, test, backend, dtype), group) in groups {
        let mut line = format!("{test}, {threads} thread(s), {backend} {dtype}:");
        for (peer, peer_dtype) in [(backend, "f32"), ("llama.cpp", "f16")] {
            let ratios: Vec<f64> = group
                .iter()
                .filter_map(|ours| {
                    let theirs = records.iter().filter(decode).find(|r| {
                        (r.requested_threads, r.test.as_str(), r.round)
                            == (threads, test, ours.round)
                            && (r.backend.as_str(), r.dtype.as_str()) == (peer, peer_dtype)
                    })?;
                    Some(ours.tokens_per_s / theirs.tokens_per_s)
                })
                .collect();
            if ratios.is_empty() {
                continue;
            }
            let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
            line += &format!(
                " {:.2}x {peer} {peer_dtype} (rounds {}),",
                mean(&ratios),
                rounds.join(", ")
            );
        }
        if let Some(line) = line.strip_suffix(',') {
            out += &format!("{line}\n");
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("\nhalf-precision decode against float32 and llama.cpp's f16, same rounds:\n{out}")
}

pub(super) fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

pub(super) fn one_decimal(values: &[f64]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
    values.join(", ")
}

/// The sizes of a GPT-2 checkpoint that its prefill's flops depend on (its `config.json`).
#[derive(Debug, Deserialize)]
pub(super) struct Shape {
    n_layer: usize,
    n_embd: usize,
    vocab_size: usize,
}

impl Shape {
    pub(super) fn of(checkpoint: &Path) -> Result<Self> {
        let path = checkpoint.join("config.json");
        let json = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))
    }

    /// Flops per token of a `prompt`-token prefill, two a multiply-add: each layer's four
    /// products (12 c² weights), each position's attention over itself and the positions
    /// before it (scores and weighted values, 2 c a key: 2 c (prompt + 1) a position on
    /// average), and the output head at the last position only, as every side computes it.
    pub(super) fn prefill_flops_per_token(&self, prompt: usize) -> f64 {
        let c = self.n_embd as f64;
        let per_layer = 2.0 * 12.0 * c * c + 2.0 * c * (prompt as f64 + 1.0);
        let head = 2.0 * c * self.vocab_size as f64 / prompt.max(1) as f64;
        self.n_layer as f64 * per_layer + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_prefills_512_tokens_at_179_mflop_a_token() {
        let shape = Shape {
            n_layer: 12,
            n_embd: 768,
            vocab_size: 50257,
        };
        // Products 24 * 768^2 = 14.16M and attention 2 * 768 * 513 = 0.79M a layer, 12 layers;
        // the head 2 * 768 * 50257 / 512 = 0.15M.
        let flops = shape.prefill_flops_per_token(512);
        assert!((flops - 179.48e6).abs() < 0.01e6, "{flops}");
    }

    /// GPT-2 small (124,439,808 parameters): 84.9M in the blocks' matrices, 38.6M in the
    /// token embedding, 0.9M in the rest.
    #[test]
    fn quantized_weights_count_each_part_in_its_format() {
        let shape = Shape {
            n_layer: 12,
            n_embd: 768,
            vocab_size: 50257,
        };
        let n = 124_439_808;
        let megabytes = |dtype| weight_bytes(dtype, n, Some(&shape)) / 1e6;
        assert_eq!(megabytes("f32"), 497.759232);
        assert_eq!(megabytes("bf16"), 248.879616);
        let matrices = 12.0 * 12.0 * 768.0 * 768.0;
        let head = 50257.0 * 768.0;
        let rest = (n as f64 - matrices - head) * 4.0;
        let q8 = (matrices + head) * 34.0 / 32.0 + rest;
        let q4 = matrices * 18.0 / 32.0 + head * 34.0 / 32.0 + rest;
        assert!((megabytes("q8_0") - q8 / 1e6).abs() < 1e-9);
        assert!((megabytes("q4_0") - q4 / 1e6).abs() < 1e-9);
        assert!((q4 / 1e6 - 92.4).abs() < 0.1, "{}", q4 / 1e6);
        // Without the shape, every value in the format.
        assert_eq!(weight_bytes("q4_0", 32, None), 18.0);
    }

    fn decode(backend: &str, dtype: &str, round: u32, tokens_per_s: f64) -> Record {
        Record {
            backend: backend.into(),
            test: "tg128".into(),
            batch_size: 1,
            n_params: Some(100_000_000),
            threads: Some(2),
            load_ms: 0.0,
            tokens_per_s,
            stddev: 0.0,
            samples_tokens_per_s: vec![tokens_per_s],
            peak_rss_bytes: None,
            dtype: dtype.into(),
            round,
            requested_threads: 2,
            around_gb_per_s: None,
        }
    }

    #[test]
    fn decode_is_set_against_each_round_s_own_bound_and_half_precision_against_the_same_round() {
        let records = [
            decode("flex", "f32", 0, 80.0),
            decode("flex", "bf16", 0, 150.0),
            decode("llama.cpp", "f16", 0, 125.0),
            decode("flex", "f32", 1, 50.0),
            decode("flex", "bf16", 1, 100.0),
            decode("llama.cpp", "f16", 1, 125.0),
        ];
        // 400 and 200 MB a token; 40 then 25 GB/s: f32 bounds 100 and 62.5 t/s.
        let probes = BTreeMap::from([(
            2,
            vec![
                Probe {
                    read_gb_per_s: 40.0,
                    sustained_gb_per_s: 20.0,
                    gflop_per_s: 100.0,
                },
                Probe {
                    read_gb_per_s: 25.0,
                    sustained_gb_per_s: 20.0,
                    gflop_per_s: 100.0,
                },
            ],
        )]);
        let bounds = decode_bounds(&records, &probes, |dtype| {
            weight_bytes(dtype, 100_000_000, None)
        });
        assert!(bounds.contains("f32 weights: 400 MB"), "{bounds}");
        // Records from before the probes around each run have no line for them.
        assert!(!bounds.contains("around"), "{bounds}");
        // f32: 65 of a mean bound of 81.25 = 80%; rounds 80 of 100 and 50 of 62.5.
        assert!(bounds.contains("flex 80% (rounds 80%, 80%)"), "{bounds}");
        // bf16: 125 of 162.5 = 77%; rounds 150 of 200 and 100 of 125.
        assert!(bounds.contains("flex 77% (rounds 75%, 80%)"), "{bounds}");
        // Sustained 20 GB/s in both rounds: f32 bound 50 t/s, 65 of it 130%; rounds 160%, 100%.
        assert!(
            bounds.contains(
                "sustained over 3 s 20.0 GB/s (rounds: 20.0, 20.0), bound 50.0 t/s; flex 130% \
                 (rounds 160%, 100%)"
            ),
            "{bounds}"
        );
        let one_thread = [
            decode("flex", "f32", 0, 50.0),
            decode("flex", "f32", 1, 40.0),
        ];
        let probes = BTreeMap::from([
            (
                1,
                vec![Probe {
                    read_gb_per_s: 20.0,
                    sustained_gb_per_s: 10.0,
                    gflop_per_s: 50.0,
                }],
            ),
            (
                2,
                vec![Probe {
                    read_gb_per_s: 30.0,
                    sustained_gb_per_s: 20.0,
                    gflop_per_s: 100.0,
                }],
            ),
        ]);
        let records: Vec<Record> = one_thread
            .into_iter()
            .map(|r| Record {
                requested_threads: 1,
                ..r
            })
            .chain(records.iter().cloned())
            .collect();
        let scaling = thread_scaling(&records, &probes, "f32");
        // 45 -> 65 t/s, 20 -> 30 GB/s.
        assert_eq!(
            scaling,
            "threads 1 -> 2: read bandwidth 1.50x (sustained 2.00x); flex 1.44x\n"
        );
        let half = half_precision(&records);
        assert!(
            half.contains(
                "tg128, 2 thread(s), flex bf16: 1.94x flex f32 (rounds 1.88x, 2.00x), \
                 1.00x llama.cpp f16 (rounds 1.20x, 0.80x)"
            ),
            "{half}"
        );
    }

    #[test]
    fn decode_is_set_against_the_bandwidth_read_around_its_own_run() {
        let around = |record: Record, gb_per_s: f64| Record {
            around_gb_per_s: Some(gb_per_s),
            ..record
        };
        let records = [
            around(decode("flex", "bf16", 0, 150.0), 40.0),
            around(decode("flex", "bf16", 1, 100.0), 25.0),
            Record {
                requested_threads: 1,
                ..around(decode("flex", "bf16", 0, 90.0), 26.0)
            },
        ];
        let probe = || Probe {
            read_gb_per_s: 50.0,
            sustained_gb_per_s: 50.0,
            gflop_per_s: 100.0,
        };
        let probes = BTreeMap::from([(1, vec![probe()]), (2, vec![probe(), probe()])]);
        let bounds = decode_bounds(&records, &probes, |dtype| {
            weight_bytes(dtype, 100_000_000, None)
        });
        // 200 MB a token: 40 and 25 GB/s bound 200 and 125 t/s; 150 and 100 of them, 125 of
        // 162.5 over both.
        assert!(
            bounds.contains(
                "2 thread(s):   around each run 32.5 GB/s (runs: 25.0-40.0), bound 162.5 t/s; \
                 flex 77% (rounds 75%, 80%)\n"
            ),
            "{bounds}"
        );
        // 32.5 against 26 GB/s around the runs, 125 against 90 t/s.
        assert!(
            bounds.contains(
                "threads 1 -> 2: read bandwidth 1.00x (sustained 1.00x, around the runs 1.25x); \
                 flex 1.39x\n"
            ),
            "{bounds}"
        );
    }
}
