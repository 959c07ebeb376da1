//! Choosing the next id by drawing from the logits, with the settings users know from Hugging
//! Face transformers, llama.cpp and OpenAI's API: OpenAI's `logit_bias` is added first, then
//! transformers' order (its `GenerationMixin._get_logits_processor`) applies: repetition
//! penalty, OpenAI's presence and frequency penalties, then temperature, top-k, top-p and min-p,
//! then a draw from the softmax of what is left.
//!
//! A logit that is NaN counts as removed, and `+inf` logits share all the probability, so no
//! draw ever reads a NaN distribution.
//!
//! Each [`Sampler`] owns its random stream (ChaCha8, whose output is fixed by its algorithm, so a
//! seed gives the same draws on every platform and every version), so a row's tokens depend on
//! its own seed and logits only, never on what else is in the batch.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Temperatures below this are greedy, as vLLM treats them (its `_SAMPLING_EPS`): dividing
/// the logits by a tiny temperature overflows them to infinities, and the distribution to NaN.
pub const MIN_TEMPERATURE: f32 = 1e-5;

/// Sampling settings. The defaults change nothing: temperature 1, every filter and penalty off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits: below 1 sharpens the distribution, above 1 flattens it. 0 (and
    /// anything below [`MIN_TEMPERATURE`]) is greedy: the most likely id after the penalties
    /// and the bias, as transformers' greedy search applies its `repetition_penalty` too.
    pub temperature: f32,
    /// Keep only the `k` most likely ids (ties with the k-th kept, as transformers keeps them).
    pub top_k: Option<usize>,
    /// Keep the most likely ids whose probabilities add up to at least `p` (nucleus sampling).
    pub top_p: Option<f32>,
    /// Keep the ids at least `min_p` times as likely as the most likely one.
    pub min_p: Option<f32>,
    /// Divides the positive logits (multiplies the negative ones) of ids already in the
    /// sequence, as transformers' `repetition_penalty` does; 1 is off.
    pub repeat_penalty: f32,
    /// How many of the last ids the penalty looks at (llama.cpp's `repeat_last_n`); `None`: the
    /// whole sequence, prompt included, as transformers does.
    pub repeat_last_n: Option<usize>,
    /// Subtracted once from the logit of every id already generated (OpenAI's
    /// `presence_penalty`: the prompt does not count); 0 is off.
    pub presence_penalty: f32,
    /// Subtracted from the logit of every generated id as many times as it was generated
    /// (OpenAI's `frequency_penalty`); 0 is off.
    pub frequency_penalty: f32,
    /// Added to the logits of these ids before anything else (OpenAI's `logit_bias`: -100
    /// bans an id, 100 all but forces it). Ids past the vocabulary are ignored.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: 1.0,
            repeat_last_n: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// These settings at `temperature`, or where it is left out, at the temperature a user of
    /// the command line or the Python package means: 1 (transformers') if a filter (top-k,
    /// top-p, min-p) asks for sampling, else 0, greedy (llama.cpp's `--temp 0`, transformers'
    /// `do_sample=False`).
    pub fn at_temperature_or_filters_default(self, temperature: Option<f32>) -> Self {
        let filtering = self.top_k.is_some() || self.top_p.is_some() || self.min_p.is_some();
        Self {
            temperature: temperature.unwrap_or(if filtering { 1.0 } else { 0.0 }),
            ..self
        }
    }

    /// Whether these settings pick what greedy decoding picks: a temperature below
    /// [`MIN_TEMPERATURE`], no penalty and no bias (the filters keep the most likely id), so a
    /// row needs no sampler.
    fn is_greedy(&self) -> bool {
        !self.is_random() && !self.changes_logits()
    }

    /// Whether ids are drawn at random (a temperature of at least [`MIN_TEMPERATURE`]).
    fn is_random(&self) -> bool {
        self.temperature >= MIN_TEMPERATURE
    }

    /// Whether a penalty or a bias changes the logits before anything is chosen.
    fn changes_logits(&self) -> bool {
        self.repeat_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
    }

    /// Checks that the values mean something.
    ///
    /// # Errors
    /// The first setting at fault, with what it takes.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if self.top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(SamplingError::TopP(p));
        }
        if let Some(p) = self.min_p.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err(SamplingError::MinP(p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(SamplingError::RepeatPenalty(self.repeat_penalty));
        }
        if !self.presence_penalty.is_finite() {
            return Err(SamplingError::PresencePenalty(self.presence_penalty));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(SamplingError::FrequencyPenalty(self.frequency_penalty));
        }
        if let Some(&(id, bias)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return Err(SamplingError::LogitBias { id, bias });
        }
        Ok(())
    }
}

/// A sampling setting that means nothing, and what it takes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature must be 0 (greedy) or more, got {0}")]
    Temperature(f32),
    #[error("top-k must be at least 1")]
    TopK,
    #[error("top-p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min-p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("the repeat penalty must be greater than 0 (1 is off), got {0}")]
    RepeatPenalty(f32),
    #[error("the presence penalty must be a finite number, got {0}")]
    PresencePenalty(f32),
    #[error("the frequency penalty must be a finite number, got {0}")]
    FrequencyPenalty(f32),
    #[error("the logit bias of id {id} must be a finite number, got {bias}")]
    LogitBias { id: u32, bias: f32 },
}

/// How a row chooses its next id.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Selection {
    /// The most likely id: the argmax of the softmax, taken on the device.
    #[default]
    Greedy,
    /// Through a [`Sampler`] with these settings, seeded per row.
    Sample(SamplingParams),
}

impl Selection {
    /// The selection `params` make, checked: [`Selection::Greedy`] where they pick what greedy
    /// decoding picks (a temperature below [`MIN_TEMPERATURE`], no penalty, no bias; the filters
    /// keep the most likely id), else [`Selection::Sample`]. The CLI, the server and the page
    /// all build their settings through this.
    ///
    /// # Errors
    /// [`SamplingError`]: the first setting at fault.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(if params.is_greedy() {
            Self::Greedy
        } else {
            Self::Sample(params)
        })
    }

    /// Whether ids are drawn at random, so that a seed changes them.
    pub fn is_random(&self) -> bool {
        matches!(self, Self::Sample(params) if params.is_random())
    }
}

/// A seed for a request that names none: a fresh one each call, from the operating system's
/// random source (through the standard library's hasher keys).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Draws ids for one row: its settings and its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler whose draws are fixed by `seed`.
    ///
    /// # Errors
    /// [`SamplingError`] if a setting means nothing.
    pub fn new(params: SamplingParams, seed: u64) -> Result<Self, SamplingError> {
        params.validate()?;
        Ok(Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The next id, drawn from `logits` (one row, `[v]`) after the settings are applied;
    /// `history` is the row's ids so far, the last `generated` of them generated (the repeat
    /// penalty looks at all of them, the presence and frequency penalties at the generated).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], generated: usize) -> u32 {
        if !self.params.is_random() {
            return argmax(&self.adjusted(logits, history, generated));
        }
        let probs = self.probabilities(logits, history, generated);
        // 53 random bits: a uniform draw in [0, 1).
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut cumulative = 0.0;
        let mut last = 0;
        for (id, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cumulative += f64::from(p);
                last = id;
                if u < cumulative {
                    return id as u32;
                }
            }
        }
        // Rounding left the sum just below 1 and u above it: the last possible id.
        last as u32
    }

    /// The distribution [`Sampler::sample`] draws from when it draws at random: probabilities
    /// over the vocabulary, zero for the ids the filters removed (and for NaN logits).
    pub fn probabilities(&self, logits: &[f32], history: &[u32], generated: usize) -> Vec<f32> {
        let mut scores = self.adjusted(logits, history, generated);
        let temperature = self.params.temperature;
        if temperature != 1.0 {
            scores.iter_mut().for_each(|s| *s /= temperature);
        }
        if let Some(k) = self.params.top_k {
            top_k(&mut scores, k);
        }
        if let Some(p) = self.params.top_p {
            top_p(&mut scores, p);
        }
        if let Some(p) = self.params.min_p {
            min_p(&mut scores, p);
        }
        softmax(&scores)
    }

    /// The logits after the bias and the penalties, NaN turned into a removed id.
    fn adjusted(&self, logits: &[f32], history: &[u32], generated: usize) -> Vec<f32> {
        let mut scores: Vec<f32> = logits
            .iter()
            .map(|&s| if s.is_nan() { f32::NEG_INFINITY } else { s })
            .collect();
        for &(id, bias) in &self.params.logit_bias {
            if let Some(score) = scores.get_mut(id as usize) {
                *score += bias;
            }
        }
        self.penalize_repeats(&mut scores, history);
        self.penalize_generated(
            &mut scores,
            &history[history.len().saturating_sub(generated)..],
        );
        scores
    }

    /// OpenAI's presence and frequency penalties: `logit[j] -= count[j] * frequency +
    /// (count[j] > 0) * presence`, counting the generated ids.
    fn penalize_generated(&self, scores: &mut [f32], generated: &[u32]) {
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if presence == 0.0 && frequency == 0.0 {
            return;
        }
        let mut ids = generated.to_vec();
        ids.sort_unstable();
        for run in ids.chunk_by(|a, b| a == b) {
            if let Some(score) = scores.get_mut(run[0] as usize) {
                *score -= run.len() as f32 * frequency + presence;
            }
        }
    }

    fn penalize_repeats(&self, scores: &mut [f32], history: &[u32]) {
        let penalty = self.params.repeat_penalty;
        if penalty == 1.0 {
            return;
        }
        let window = match self.params.repeat_last_n {
            Some(n) => &history[history.len().saturating_sub(n)..],
            None => history,
        };
        // Each id once, however often it appeared (transformers gathers, then scatters).
        let mut ids = window.to_vec();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            if let Some(score) = scores.get_mut(id as usize) {
                *score = if *score < 0.0 {
                    *score * penalty
                } else {
                    *score / penalty
                };
            }
        }
    }
}

/// The first index of the largest score, as `torch.argmax` picks (the scores hold no NaN).
fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (id, &score) in scores.iter().enumerate() {
        if score > scores[best] {
            best = id;
        }
    }
    best as u32
}

/// Removes every score below the k-th largest.
fn top_k(scores: &mut [f32], k: usize) {
    if k >= scores.len() {
        return;
    }
    // Selecting the k-th largest is linear; sorting 50257 scores every step is not.
    let mut scratch = scores.to_vec();
    let (_, &mut kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    scores
        .iter_mut()
        .filter(|s| **s < kth)
        .for_each(|s| *s = f32::NEG_INFINITY);
}

/// Keeps the most likely ids whose probabilities reach `p`, as transformers' `TopPLogitsWarper`
/// does: it drops ids in ascending order while their cumulative probability stays at or below
/// `1 - p`, which drops exactly the ids whose more likely ids already add up to `p` (up to float
/// rounding at the boundary), and always keeps the most likely one. Only the kept ids and the
/// first dropped one need ordering, so the most likely are taken in growing batches, each a
/// linear selection: sorting all 50257 ids took longer than a small model's whole decode step.
fn top_p(scores: &mut [f32], p: f32) {
    let probs = softmax(scores);
    let more_likely = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]);
    // In float64: summed from the top, float32 reaches 1 before the least likely ids are in,
    // and p = 1 (which drops only ids of probability 0) would drop them.
    let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
    let most_dropped = 1.0 - f64::from(p);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let mut batch = 64;
    let mut above = 0.0f64;
    let mut ranked = 0;
    loop {
        let taken = batch.min(order.len());
        if taken < order.len() {
            order[ranked..].select_nth_unstable_by(taken - 1 - ranked, more_likely);
        }
        order[ranked..taken].sort_unstable_by(more_likely);
        for rank in ranked..taken {
            if rank > 0 && total - above <= most_dropped {
                order[rank..]
                    .iter()
                    .for_each(|&id| scores[id] = f32::NEG_INFINITY);
                return;
            }
            above += f64::from(probs[order[rank]]);
        }
        ranked = taken;
        if taken == order.len() {
            return;
        }
        batch *= 8;
    }
}

/// Keeps the ids at least `p` times as likely as the most likely one (transformers'
/// `MinPLogitsWarper`, which always keeps the most likely id).
fn min_p(scores: &mut [f32], p: f32) {
    let probs = softmax(scores);
    let top = probs.iter().copied().fold(0.0f32, f32::max);
    let threshold = p * top;
    for (score, &prob) in scores.iter_mut().zip(&probs) {
        if prob < threshold {
            *score = f32::NEG_INFINITY;
        }
    }
}

/// Probabilities from scores (no NaN), in float32 as the scores are; removed ids (−∞) get 0.
/// Ids at +∞ share everything. If every id is removed (a row of NaN or −∞ logits, which the
/// session refuses before it samples), all get 0.
fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max.is_infinite() {
        let top = scores.iter().filter(|&&s| s == max).count() as f32;
        let share = if max == f32::INFINITY { 1.0 / top } else { 0.0 };
        return scores
            .iter()
            .map(|&s| if s == max { share } else { 0.0 })
            .collect();
    }
    let mut probabilities = scores.to_vec();
    nexttoken_cpu::softmax_in_place(&mut probabilities);
    probabilities
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax is 0.1, 0.2, 0.3, 0.4.
    fn logits() -> Vec<f32> {
        [1.0f32, 2.0, 3.0, 4.0].iter().map(|w| w.ln()).collect()
    }

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params, 42).expect("valid settings")
    }

    #[test]
    fn a_left_out_temperature_is_greedy_unless_a_filter_asks_for_sampling() {
        let at = |params: SamplingParams, temperature| {
            params
                .at_temperature_or_filters_default(temperature)
                .temperature
        };
        let plain = SamplingParams::default();
        assert_eq!(at(plain.clone(), None), 0.0);
        assert_eq!(at(plain.clone(), Some(0.7)), 0.7);
        for filtered in [
            SamplingParams {
                top_k: Some(5),
                ..plain.clone()
            },
            SamplingParams {
                top_p: Some(0.9),
                ..plain.clone()
            },
            SamplingParams {
                min_p: Some(0.1),
                ..plain.clone()
            },
        ] {
            assert_eq!(at(filtered.clone(), None), 1.0);
            assert_eq!(at(filtered, Some(0.0)), 0.0);
        }
    }

    /// Pearson's chi-square statistic of `counts` against `expected` probabilities over `n`
    /// draws (ids with probability 0 must never be drawn).
    fn chi_square(counts: &[usize], expected: &[f64], n: usize) -> f64 {
        counts
            .iter()
            .zip(expected)
            .map(|(&count, &p)| {
                if p == 0.0 {
                    assert_eq!(count, 0, "an id the filters removed was drawn");
                    0.0
                } else {
                    let e = p * n as f64;
                    (count as f64 - e).powi(2) / e
                }
            })
            .sum()
    }

    /// Draws `n` ids from `logits` with `params` (fixed seed), and checks their frequencies
    /// against `expected` with a chi-square test at the 0.1% level. With a fixed seed the test
    /// is deterministic; a wrong distribution (a swapped filter, a wrong temperature) moves the
    /// statistic far past the critical value.
    fn assert_draws_follow(params: SamplingParams, expected: &[f64]) {
        let n = 20_000;
        let mut sampler = sampler(params.clone());
        let mut counts = vec![0; expected.len()];
        for _ in 0..n {
            counts[sampler.sample(&logits(), &[], 0) as usize] += 1;
        }
        let df = expected.iter().filter(|&&p| p > 0.0).count() - 1;
        // The chi-square distribution's 99.9% quantile for 1, 2 and 3 degrees of freedom (with
        // one possible id, chi_square checks that nothing else was drawn).
        let critical = [f64::INFINITY, 10.83, 13.82, 16.27][df];
        let statistic = chi_square(&counts, expected, n);
        assert!(
            statistic < critical,
            "{params:?}: counts {counts:?} against {expected:?}: chi-square {statistic:.2} >= {critical}"
        );
        let probs = sampler.probabilities(&logits(), &[], 0);
        for (p, e) in probs.iter().zip(expected) {
            assert!(
                (f64::from(*p) - e).abs() < 1e-6,
                "{probs:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn plain_sampling_follows_the_softmax() {
        assert_draws_follow(SamplingParams::default(), &[0.1, 0.2, 0.3, 0.4]);
    }

    #[test]
    fn temperature_scales_the_logits() {
        // Temperature 2: probabilities proportional to sqrt(1), sqrt(2), sqrt(3), sqrt(4).
        let roots: Vec<f64> = [1.0f64, 2.0, 3.0, 4.0].iter().map(|w| w.sqrt()).collect();
        let sum: f64 = roots.iter().sum();
        let expected: Vec<f64> = roots.iter().map(|r| r / sum).collect();
        let params = SamplingParams {
            temperature: 2.0,
            ..SamplingParams::default()
        };
        assert_draws_follow(params, &expected);
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        let params = SamplingParams {
            top_k: Some(2),
            ..SamplingParams::default()
        };
        assert_draws_follow(params, &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // 0.4 alone is below 0.5; with 0.3 the set reaches 0.7.
        let params = SamplingParams {
            top_p: Some(0.5),
            ..SamplingParams::default()
        };
        assert_draws_follow(params, &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
        // 0.9: 0.4 + 0.3 + 0.2 reaches it; the 0.1 id goes.
        let params = SamplingParams {
            top_p: Some(0.9),
            ..SamplingParams::default()
        };
        assert_draws_follow(params, &[0.0, 2.0 / 9.0, 3.0 / 9.0, 4.0 / 9.0]);
    }

    /// The batched selection keeps the ids transformers' way of sorting the whole vocabulary
    /// (ascending, dropping while the cumulative probability stays at or below 1 - p) keeps,
    /// here on vocabularies where thousands of ids stay (several batches).
    #[test]
    fn top_p_keeps_what_sorting_the_whole_vocabulary_keeps() {
        fn sorted_whole(scores: &mut [f32], p: f32) {
            let probs = softmax(scores);
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
            let mut cumulative = 0.0f32;
            for &id in &order[..order.len() - 1] {
                cumulative += probs[id];
                if cumulative > 1.0 - p {
                    break;
                }
                scores[id] = f32::NEG_INFINITY;
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for vocabulary in [10, 1000, 50257] {
            for spread in [0.5f32, 3.0, 20.0] {
                let logits: Vec<f32> = (0..vocabulary)
                    .map(|_| (rng.next_u32() >> 8) as f32 / (1 << 24) as f32 * spread)
                    .collect();
                for p in [0.05, 0.5, 0.9, 0.99, 1.0] {
                    let (mut batched, mut whole) = (logits.clone(), logits.clone());
                    top_p(&mut batched, p);
                    sorted_whole(&mut whole, p);
                    let kept = batched.iter().filter(|s| s.is_finite()).count();
                    assert!(kept >= 1);
                    assert_eq!(
                        batched, whole,
                        "{vocabulary} ids, spread {spread}, p {p}: {kept} kept"
                    );
                }
            }
        }
    }

    #[test]
    fn min_p_keeps_ids_near_the_most_likely() {
        // 0.6 x 0.4 = 0.24: the 0.3 and 0.4 ids stay.
        let params = SamplingParams {
            min_p: Some(0.6),
            ..SamplingParams::default()
        };
        assert_draws_follow(params, &[0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
    }

    /// transformers' order: temperature before top-p changes which ids top-p keeps.
    #[test]
    fn filters_apply_after_the_temperature() {
        // Temperature 0.5 squares the weights: 1, 4, 9, 16 (of 30). Top-p 0.5: 16/30 = 0.53
        // reaches it alone.
        let params = SamplingParams {
            temperature: 0.5,
            top_p: Some(0.5),
            ..SamplingParams::default()
        };
        assert_draws_follow(params, &[0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            top_k: Some(1),
            ..SamplingParams::default()
        };
        let mut sampler = sampler(params);
        let logits = [0.5, 3.0, 2.9, -1.0];
        assert!((0..1000).all(|_| sampler.sample(&logits, &[], 0) == 1));
    }

    #[test]
    fn temperature_zero_is_greedy_after_the_penalty() {
        let greedy = |repeat_penalty| {
            let params = SamplingParams {
                temperature: 0.0,
                repeat_penalty,
                ..SamplingParams::default()
            };
            Sampler::new(params, 0)
                .unwrap()
                .sample(&[0.5, 3.0, 2.9, -1.0], &[1], 0)
        };
        assert_eq!(greedy(1.0), 1);
        // 3.0 / 1.2 = 2.5 < 2.9.
        assert_eq!(greedy(1.2), 2);
    }

    #[test]
    fn the_repeat_penalty_follows_transformers() {
        let params = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::default()
        };
        let sampler = sampler(params);
        let logits = [2.0f32, -1.0, 1.0, 0.5];
        // Ids 0 and 1 were seen (0 twice): 2.0 / 2 and -1.0 x 2, once each.
        let probs = sampler.probabilities(&logits, &[0, 1, 0], 0);
        let expected = softmax(&[1.0, -2.0, 1.0, 0.5]);
        assert_eq!(probs, expected);
        // A window of the last id only: only id 0 is penalized.
        let windowed = Sampler::new(
            SamplingParams {
                repeat_penalty: 2.0,
                repeat_last_n: Some(1),
                ..SamplingParams::default()
            },
            42,
        )
        .unwrap();
        let probs = windowed.probabilities(&logits, &[0, 1, 0], 0);
        assert_eq!(probs, softmax(&[1.0, -1.0, 1.0, 0.5]));
    }

    /// vLLM's reading of a tiny temperature: greedy. Dividing by 1e-40 made every logit
    /// infinite, every probability NaN, and the draw id 0 every step.
    #[test]
    fn a_tiny_temperature_is_greedy() {
        for temperature in [1e-40f32, 1e-20, 1e-6] {
            let params = SamplingParams {
                temperature,
                ..SamplingParams::default()
            };
            assert_eq!(Selection::new(params.clone()), Ok(Selection::Greedy));
            let mut sampler = sampler(params);
            let logits = [0.5, 3.0, 2.9, -1.0];
            assert!((0..100).all(|_| sampler.sample(&logits, &[], 0) == 1));
        }
        let just_above = SamplingParams {
            temperature: MIN_TEMPERATURE,
            ..SamplingParams::default()
        };
        assert!(Selection::new(just_above).unwrap().is_random());
    }

    /// NaN logits are never drawn and never spread NaN into the others; `+inf` logits take
    /// all the probability, shared; `-inf` ones none.
    #[test]
    fn nan_and_infinite_logits_give_a_distribution() {
        let cases: [(&[f32], &[f64]); 4] = [
            (&[f32::NAN, 0.0, f32::NAN, 0.0], &[0.0, 0.5, 0.0, 0.5]),
            (
                &[1.0, f32::INFINITY, 2.0, f32::INFINITY],
                &[0.0, 0.5, 0.0, 0.5],
            ),
            (
                &[f32::NEG_INFINITY, 0.0, 0.0, f32::NEG_INFINITY],
                &[0.0, 0.5, 0.5, 0.0],
            ),
            (
                &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0],
                &[0.0, 1.0, 0.0, 0.0],
            ),
        ];
        for temperature in [0.5, 1.0] {
            for (logits, expected) in cases {
                let params = SamplingParams {
                    temperature,
                    top_p: Some(0.99),
                    min_p: Some(0.01),
                    ..SamplingParams::default()
                };
                let mut sampler = sampler(params);
                let probs = sampler.probabilities(logits, &[], 0);
                assert!(probs.iter().all(|p| p.is_finite()), "{logits:?}: {probs:?}");
                for (p, e) in probs.iter().zip(expected) {
                    assert!((f64::from(*p) - e).abs() < 1e-6, "{logits:?}: {probs:?}");
                }
                for _ in 0..200 {
                    let id = sampler.sample(logits, &[], 0) as usize;
                    assert!(expected[id] > 0.0, "{logits:?}: drew {id}");
                }
            }
        }
        // Greedy never picks a NaN, wherever it stands.
        let greedy = SamplingParams {
            temperature: 0.0,
            repeat_penalty: 1.5,
            ..SamplingParams::default()
        };
        let mut sampler = sampler(greedy);
        assert_eq!(sampler.sample(&[f32::NAN, -3.0, -2.0, f32::NAN], &[], 0), 2);
    }

    /// OpenAI's formula: `logit[j] -= count[j] * frequency + (count[j] > 0) * presence`, over
    /// the generated ids only (the prompt's do not count).
    #[test]
    fn presence_and_frequency_penalties_follow_openai() {
        let params = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::default()
        };
        let sampler = sampler(params);
        let logits = [2.0f32, -1.0, 1.0, 0.5];
        // History: a prompt of [3, 3], then generated [0, 2, 0].
        let history = [3, 3, 0, 2, 0];
        let probs = sampler.probabilities(&logits, &history, 3);
        let expected = softmax(&[2.0 - 2.0 * 0.25 - 0.5, -1.0, 1.0 - 0.25 - 0.5, 0.5]);
        assert_eq!(probs, expected);
        // A negative penalty rewards repeats.
        let rewarding = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                frequency_penalty: -4.0,
                ..SamplingParams::default()
            },
            0,
        );
        let mut rewarding = rewarding.unwrap();
        assert_eq!(rewarding.sample(&logits, &[3, 3, 1], 1), 1);
        assert_eq!(rewarding.sample(&logits, &[3, 3, 1], 0), 0);
    }

    /// OpenAI's logit_bias: added before everything, so -100 bans an id and 100 forces one,
    /// greedy or not; ids past the vocabulary are ignored.
    #[test]
    fn logit_bias_is_added_first() {
        let logits = [2.0f32, -1.0, 1.0, 0.5];
        let biased = |temperature, bias: Vec<(u32, f32)>| SamplingParams {
            temperature,
            logit_bias: bias,
            ..SamplingParams::default()
        };
        let mut greedy = sampler(biased(0.0, vec![(0, -100.0), (99, 5.0)]));
        assert!(!biased(0.0, vec![(0, -100.0)]).is_greedy());
        assert_eq!(greedy.sample(&logits, &[], 0), 2);
        let mut forced = sampler(biased(1.0, vec![(1, 100.0)]));
        assert!((0..500).all(|_| forced.sample(&logits, &[], 0) == 1));
        let probs = sampler(biased(1.0, vec![(3, 1.5)])).probabilities(&logits, &[], 0);
        assert_eq!(probs, softmax(&[2.0, -1.0, 1.0, 2.0]));
    }

    #[test]
    fn a_seed_fixes_the_draws() {
        let params = SamplingParams::default();
        let draw = |seed| {
            let mut sampler = Sampler::new(params.clone(), seed).unwrap();
            (0..50)
                .map(|_| sampler.sample(&logits(), &[], 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn invalid_settings_say_what_they_take() {
        let cases = [
            (
                SamplingParams {
                    temperature: -1.0,
                    ..SamplingParams::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_k: Some(0),
                    ..SamplingParams::default()
                },
                "top-k",
            ),
            (
                SamplingParams {
                    top_p: Some(1.5),
                    ..SamplingParams::default()
                },
                "top-p",
            ),
            (
                SamplingParams {
                    min_p: Some(-0.1),
                    ..SamplingParams::default()
                },
                "min-p",
            ),
            (
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..SamplingParams::default()
                },
                "repeat penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::NAN,
                    ..SamplingParams::default()
                },
                "presence penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: f32::INFINITY,
                    ..SamplingParams::default()
                },
                "frequency penalty",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(7, f32::NAN)],
                    ..SamplingParams::default()
                },
                "logit bias of id 7",
            ),
        ];
        for (params, name) in cases {
            let err = Selection::new(params.clone()).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(
                Sampler::new(params, 0).is_err(),
                "{name}: no panic, an error"
            );
        }
    }
}
