//! Whole distributions against a base run, as `llama-perplexity --kl-divergence-base FILE`
//! (save) and `--kl-divergence` (compare) do it: the base run (f32, say) writes every scored
//! id's log-probabilities over the vocabulary, and a later run on the same text and windows (a
//! quantized model, say) reports the mean KL divergence from the base and how often both put
//! the same id on top.
//!
//! A base file is a header (magic, version, row width, window, stride, the text's ids) and one
//! row per scored id: the row's smallest log-probability and step as f32, its most likely id
//! (exact: two ids closer than a step would round alike), then each log-probability as a 16-bit
//! step count above the smallest. A GPT-2 row spans at most ~40 nats, so a step is under 0.001
//! nats; a read row is renormalized before it is used. All numbers are little-endian.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const MAGIC: &[u8; 8] = b"NTKLBASE";
const VERSION: u32 = 1;
/// A row's smallest log-probability, step and most likely id.
const ROW_HEADER: usize = 12;

/// What a base run was made from; a comparison needs the same.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// Logits per row: the vocabulary the model chooses from.
    pub width: usize,
    pub window: usize,
    pub stride: usize,
    pub ids: Vec<u32>,
}

/// Writes a base run's rows as they are scored.
pub struct BaseWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// One row's log-probabilities and bytes, kept from row to row.
    logprobs: Vec<f64>,
    row: Vec<u8>,
    /// The first failed write: the scoring callback cannot return one.
    error: Option<std::io::Error>,
}

impl BaseWriter {
    pub fn create(path: &Path, scoring: &Scoring) -> Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("creating the KL-divergence base {}", path.display()))?;
        let mut writer = Self {
            out: BufWriter::new(file),
            path: path.to_owned(),
            logprobs: Vec::with_capacity(scoring.width),
            row: Vec::with_capacity(ROW_HEADER + 2 * scoring.width),
            error: None,
        };
        let mut header = Vec::with_capacity(32 + 4 * scoring.ids.len());
        header.extend_from_slice(MAGIC);
        for number in [VERSION, to_u32(scoring.width)?, to_u32(scoring.window)?] {
            header.extend_from_slice(&number.to_le_bytes());
        }
        header.extend_from_slice(&to_u32(scoring.stride)?.to_le_bytes());
        header.extend_from_slice(&(scoring.ids.len() as u64).to_le_bytes());
        for id in &scoring.ids {
            header.extend_from_slice(&id.to_le_bytes());
        }
        record(&mut writer.out, &mut writer.error, &header);
        Ok(writer)
    }

    pub fn push(&mut self, logits: &[f32]) {
        log_softmax(logits, &mut self.logprobs);
        let logprobs = &self.logprobs;
        let (low, high) = logprobs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), &x| {
                (low.min(x), high.max(x))
            });
        let step = (high - low) / f64::from(u16::MAX);
        self.row.clear();
        self.row.extend_from_slice(&(low as f32).to_le_bytes());
        self.row.extend_from_slice(&(step as f32).to_le_bytes());
        self.row
            .extend_from_slice(&(first_largest(logprobs) as u32).to_le_bytes());
        // Steps from the f32 `low` and `step` a reader gets back, not from the f64 ones.
        let (low, step) = (f64::from(low as f32), f64::from(step as f32));
        for &x in logprobs {
            let steps = if step > 0.0 {
                ((x - low) / step).round().clamp(0.0, f64::from(u16::MAX)) as u16
            } else {
                0
            };
            self.row.extend_from_slice(&steps.to_le_bytes());
        }
        record(&mut self.out, &mut self.error, &self.row);
    }

    pub fn finish(mut self) -> Result<()> {
        let flushed = match self.error.take() {
            Some(error) => Err(error),
            None => self.out.flush(),
        };
        flushed.with_context(|| format!("writing the KL-divergence base {}", self.path.display()))
    }
}

/// Compares a run's rows with a base file's, row by row as they are scored.
pub struct BaseComparison {
    input: BufReader<File>,
    path: PathBuf,
    bytes: Vec<u8>,
    /// The base's row and this run's, kept from row to row.
    base: Vec<f64>,
    run: Vec<f64>,
    rows: usize,
    /// The first problem met while scoring: the scoring callback cannot return one.
    error: Option<anyhow::Error>,
    pub divergence: KlDivergence,
}

impl BaseComparison {
    /// Opens `path` for a run scoring `scoring`; refuses a base made from anything else.
    pub fn open(path: &Path, scoring: &Scoring) -> Result<Self> {
        let name = path.display();
        let file = File::open(path).with_context(|| {
            format!(
                "opening the KL-divergence base {name} (make it first: the same command with \
                 --kl-divergence-base {name} and without --kl-divergence, on the base model)"
            )
        })?;
        let length = file.metadata()?.len();
        let mut input = BufReader::new(file);
        let mut fixed = [0u8; 32];
        input
            .read_exact(&mut fixed)
            .ok()
            .filter(|()| &fixed[..8] == MAGIC)
            .with_context(|| format!("{name} is not a nexttoken KL-divergence base"))?;
        let number = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4"));
        if number(8) != VERSION {
            bail!(
                "{name} is a KL-divergence base of version {}; this nexttoken reads version \
                 {VERSION}: make the base again",
                number(8)
            );
        }
        let count = u64::from_le_bytes(fixed[24..32].try_into().expect("8"));
        if count.saturating_mul(4) > length.saturating_sub(32) {
            bail!("{name} is truncated: its header lists {count} ids");
        }
        let mut ids = vec![0u8; count as usize * 4];
        input
            .read_exact(&mut ids)
            .with_context(|| format!("{name} is truncated in its ids"))?;
        let base = Scoring {
            width: number(12) as usize,
            window: number(16) as usize,
            stride: number(20) as usize,
            ids: ids
                .chunks_exact(4)
                .map(|id| u32::from_le_bytes(id.try_into().expect("4")))
                .collect(),
        };
        let differs = if base.width != scoring.width {
            Some(format!(
                "rows of {} logits, this model's have {}",
                base.width, scoring.width
            ))
        } else if (base.window, base.stride) != (scoring.window, scoring.stride) {
            Some(format!(
                "--context {} --stride {}, this run --context {} --stride {}",
                base.window, base.stride, scoring.window, scoring.stride
            ))
        } else if base.ids != scoring.ids {
            Some(format!(
                "a text of {} ids, this run's text differs ({} ids)",
                base.ids.len(),
                scoring.ids.len()
            ))
        } else {
            None
        };
        if let Some(differs) = differs {
            bail!("{name} was made with {differs}: compare the same text and windows");
        }
        Ok(Self {
            input,
            path: path.to_owned(),
            bytes: vec![0; ROW_HEADER + 2 * scoring.width],
            base: Vec::with_capacity(scoring.width),
            run: Vec::with_capacity(scoring.width),
            rows: 0,
            error: None,
            divergence: KlDivergence::default(),
        })
    }

    pub fn push(&mut self, logits: &[f32], next: u32) {
        if self.error.is_some() {
            return;
        }
        if self.input.read_exact(&mut self.bytes).is_err() {
            self.error = Some(anyhow::anyhow!(
                "{} is truncated: it ends after {} rows",
                self.path.display(),
                self.rows
            ));
            return;
        }
        self.rows += 1;
        let top = decode_row(&self.bytes, &mut self.base);
        log_softmax(logits, &mut self.run);
        self.divergence
            .push(&self.base, top, &self.run, next as usize);
    }

    /// The comparison, once every row has been pushed.
    pub fn finish(mut self) -> Result<KlDivergence> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.input.read(&mut [0u8])? != 0 {
            bail!(
                "{} holds more rows than the {} this run scored: it was not made from this \
                 text and windows",
                self.path.display(),
                self.rows
            );
        }
        Ok(self.divergence)
    }
}

/// Per scored id: KL(base ‖ run), whether the two agree on the most likely id, and the base's
/// log-likelihood of the id.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KlDivergence {
    pub divergences: Vec<f64>,
    pub same_top: usize,
    pub base_nll: Vec<f64>,
}

impl KlDivergence {
    /// `base` and `run` are log-probabilities over the same ids; `base_top` is the base's most
    /// likely id.
    fn push(&mut self, base: &[f64], base_top: usize, run: &[f64], next: usize) {
        let divergence: f64 = base.iter().zip(run).map(|(&p, &q)| p.exp() * (p - q)).sum();
        // Rounding can leave a hair below zero for equal distributions.
        self.divergences.push(divergence.max(0.0));
        self.same_top += usize::from(base_top == first_largest(run));
        self.base_nll.push(-base[next]);
    }

    pub fn mean(&self) -> f64 {
        self.divergences.iter().sum::<f64>() / self.divergences.len() as f64
    }

    /// The standard error of the mean.
    pub fn uncertainty(&self) -> f64 {
        let n = self.divergences.len() as f64;
        let mean = self.mean();
        let variance = self
            .divergences
            .iter()
            .map(|x| (x - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        (variance / n).sqrt()
    }

    /// The value below which `fraction` of the divergences lie (nearest rank).
    pub fn quantile(&self, fraction: f64) -> f64 {
        let mut sorted = self.divergences.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (fraction * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    /// The share of ids whose most likely next id is the base's, with its standard error.
    pub fn same_top_share(&self) -> (f64, f64) {
        let n = self.divergences.len() as f64;
        let share = self.same_top as f64 / n;
        (share, (share * (1.0 - share) / n).sqrt())
    }

    pub fn base_perplexity(&self) -> f64 {
        (self.base_nll.iter().sum::<f64>() / self.base_nll.len() as f64).exp()
    }
}

fn to_u32(value: usize) -> Result<u32> {
    u32::try_from(value).context("a KL-divergence base holds sizes below 2^32")
}

/// Writes `bytes` unless an earlier write failed, keeping the first failure for `finish`.
fn record(out: &mut BufWriter<File>, error: &mut Option<std::io::Error>, bytes: &[u8]) {
    if error.is_none()
        && let Err(failed) = out.write_all(bytes)
    {
        *error = Some(failed);
    }
}

fn log_softmax(logits: &[f32], into: &mut Vec<f64>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let normalizer = f64::from(max) + sum.ln();
    into.clear();
    into.extend(logits.iter().map(|&x| f64::from(x) - normalizer));
}

/// A stored row's log-probabilities, renormalized (the 16-bit steps shift each a little), and
/// its most likely id.
fn decode_row(bytes: &[u8], into: &mut Vec<f64>) -> usize {
    let float = |at: usize| f64::from(f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")));
    let (low, step) = (float(0), float(4));
    into.clear();
    into.extend(
        bytes[ROW_HEADER..]
            .chunks_exact(2)
            .map(|steps| low + step * f64::from(u16::from_le_bytes([steps[0], steps[1]]))),
    );
    let max = into.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let normalizer = max + into.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
    into.iter_mut().for_each(|x| *x -= normalizer);
    u32::from_le_bytes(bytes[8..12].try_into().expect("4")) as usize
}

fn first_largest(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_softmax_of(logits: &[f32]) -> Vec<f64> {
        let mut out = Vec::new();
        log_softmax(logits, &mut out);
        out
    }

    fn scoring(width: usize) -> Scoring {
        Scoring {
            width,
            window: 8,
            stride: 4,
            ids: vec![3, 1, 4, 1, 5],
        }
    }

    fn kl(p: &[f64], q: &[f64]) -> f64 {
        p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum()
    }

    #[test]
    fn a_saved_row_reads_back_within_its_step() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("base.kld");
        let logits = [2.0f32, -1.5, 0.25, -30.0, 7.0, 7.0];
        let mut writer = BaseWriter::create(&path, &scoring(6)).expect("created");
        writer.push(&logits);
        writer.finish().expect("written");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 32 + 5 * 4 + ROW_HEADER + 2 * 6);
        let mut read = Vec::new();
        // The first of the two largest, exactly.
        assert_eq!(decode_row(&bytes[52..], &mut read), 4);
        let exact = log_softmax_of(&logits);
        let step = (exact[4] - exact[3]) / 65535.0;
        for (got, want) in read.iter().zip(&exact) {
            assert!((got - want).abs() <= step, "{got} vs {want}");
        }
        // The largest and the smallest are exact ends of the range.
        let steps = &bytes[52 + ROW_HEADER..];
        assert_eq!(u16::from_le_bytes([steps[6], steps[7]]), 0);
        assert_eq!(u16::from_le_bytes([steps[8], steps[9]]), u16::MAX);
    }

    #[test]
    fn a_run_against_its_own_base_diverges_by_its_rounding_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("base.kld");
        let rows = [[1.0f32, 2.0, 3.0, -4.0], [0.5, 0.5, -8.0, 6.0]];
        let mut writer = BaseWriter::create(&path, &scoring(4)).expect("created");
        rows.iter().for_each(|row| writer.push(row));
        writer.finish().expect("written");

        let mut same = BaseComparison::open(&path, &scoring(4)).expect("opened");
        same.push(&rows[0], 2);
        same.push(&rows[1], 0);
        let same = same.finish().expect("compared");
        assert!(same.mean() < 1e-9, "{}", same.mean());
        assert_eq!(same.same_top_share(), (1.0, 0.0));
        let p0 = log_softmax_of(&rows[0]);
        let p1 = log_softmax_of(&rows[1]);
        let base_ppl = ((-p0[2] - p1[0]) / 2.0).exp();
        // Each stored log-probability is within a step (~2e-4 nats here) of its value.
        assert!((same.base_perplexity() / base_ppl - 1.0).abs() < 1e-3);

        // Another run: the divergence is the definition's, and the second row's top moved.
        let other = [[1.0f32, 2.0, 3.0, -4.0], [0.5, 7.0, -8.0, 6.0]];
        let mut comparison = BaseComparison::open(&path, &scoring(4)).expect("opened");
        comparison.push(&other[0], 2);
        comparison.push(&other[1], 0);
        let got = comparison.finish().expect("compared");
        let probs =
            |row: &[f32]| -> Vec<f64> { log_softmax_of(row).iter().map(|x| x.exp()).collect() };
        let want = kl(&probs(&rows[1]), &probs(&other[1]));
        assert!(
            (got.divergences[1] / want - 1.0).abs() < 1e-3,
            "{got:?} vs {want}"
        );
        assert_eq!(got.same_top_share().0, 0.5);
        assert_eq!(got.quantile(1.0), got.divergences[1]);
        assert_eq!(got.quantile(0.5), got.divergences[0]);
    }

    #[test]
    fn a_base_of_other_windows_text_or_length_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("base.kld");
        let mut writer = BaseWriter::create(&path, &scoring(4)).expect("created");
        writer.push(&[1.0, 2.0, 3.0, 4.0]);
        writer.finish().expect("written");
        let refused = |scoring: Scoring| {
            BaseComparison::open(&path, &scoring)
                .err()
                .expect("refused")
                .to_string()
        };
        let mut other = scoring(4);
        other.stride = 2;
        assert!(refused(other).contains("--context 8 --stride 4, this run --context 8 --stride 2"));
        let mut other = scoring(4);
        other.ids[0] = 9;
        assert!(refused(other).contains("this run's text differs"));
        assert!(refused(scoring(5)).contains("rows of 4 logits, this model's have 5"));

        // One row stored, two scored; then one stored, none scored.
        let mut short = BaseComparison::open(&path, &scoring(4)).expect("opened");
        short.push(&[1.0, 2.0, 3.0, 4.0], 1);
        short.push(&[1.0, 2.0, 3.0, 4.0], 1);
        let error = short.finish().expect_err("truncated").to_string();
        assert!(error.contains("truncated: it ends after 1 rows"), "{error}");
        let long = BaseComparison::open(&path, &scoring(4)).expect("opened");
        let error = long.finish().expect_err("extra rows").to_string();
        assert!(
            error.contains("more rows than the 0 this run scored"),
            "{error}"
        );
    }

    #[test]
    fn the_statistics_are_their_definitions() {
        let kl = KlDivergence {
            divergences: vec![0.1, 0.6, 0.3, 0.2],
            same_top: 3,
            base_nll: vec![1.0, 2.0, 3.0, 2.0],
        };
        let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        close(kl.mean(), 0.3);
        // Sample variance (0.04 + 0.09 + 0 + 0.01) / 3, over 4 values.
        close(kl.uncertainty(), (0.14 / 3.0 / 4.0f64).sqrt());
        assert_eq!(kl.quantile(0.5), 0.2);
        assert_eq!(kl.quantile(0.99), 0.6);
        assert_eq!(kl.quantile(0.0), 0.1);
        let (share, error) = kl.same_top_share();
        close(share, 0.75);
        close(error, (0.75 * 0.25 / 4.0f64).sqrt());
        close(kl.base_perplexity(), 2.0f64.exp());
    }

    /// A base with no rows is its header alone: its ids fill the file to the last byte.
    #[test]
    fn a_base_of_ids_alone_opens() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("base.kld");
        BaseWriter::create(&path, &scoring(4))
            .expect("created")
            .finish()
            .expect("written");
        let comparison = BaseComparison::open(&path, &scoring(4)).expect("opens");
        assert!(comparison.finish().expect("no rows").divergences.is_empty());
    }

    /// A write that fails (a full disk) is reported when the base is finished, not lost.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_base_that_cannot_be_written_is_an_error() {
        let path = Path::new("/dev/full");
        let mut writer = BaseWriter::create(path, &scoring(4)).expect("opens");
        writer.push(&[1.0, 2.0, 3.0, 4.0]);
        let error = writer.finish().expect_err("no space").to_string();
        assert!(
            error.contains("writing the KL-divergence base /dev/full"),
            "{error}"
        );
    }

    #[test]
    fn files_that_are_not_bases_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("base.kld");
        let open = |bytes: &[u8]| {
            std::fs::write(&path, bytes).expect("written");
            BaseComparison::open(&path, &scoring(4))
                .err()
                .expect("refused")
                .to_string()
        };
        assert!(open(b"GGUF and more bytes than a header holds").contains("not a nexttoken KL"));
        let mut header = MAGIC.to_vec();
        for number in [2u32, 4, 8, 4] {
            header.extend_from_slice(&number.to_le_bytes());
        }
        header.extend_from_slice(&5u64.to_le_bytes());
        assert!(open(&header).contains("version 2; this nexttoken reads version 1"));
        header[8] = 1;
        assert!(open(&header).contains("truncated: its header lists 5 ids"));
        let missing = BaseComparison::open(&dir.path().join("none.kld"), &scoring(4))
            .err()
            .expect("missing")
            .to_string();
        assert!(missing.contains("--kl-divergence-base"), "{missing}");
    }
}
