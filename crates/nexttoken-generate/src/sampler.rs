//! Choosing the next id by drawing from the logits, with the settings users know from Hugging
//! Face transformers and llama.cpp, applied in transformers' order (its
//! `GenerationMixin._get_logits_processor`): repetition penalty, then temperature, top-k,
//! top-p and min-p, then a draw from the softmax of what is left.
//!
//! Each [`Sampler`] owns its random stream (ChaCha8, whose output is fixed by its algorithm, so a
//! seed gives the same draws on every platform and every version), so a row's tokens depend on
//! its own seed and logits only, never on what else is in the batch.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Sampling settings. The defaults change nothing: temperature 1, every filter off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits: below 1 sharpens the distribution, above 1 flattens it. 0 is
    /// greedy: the most likely id after the repeat penalty, as transformers' greedy search
    /// applies its `repetition_penalty` too.
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
        }
    }
}

impl SamplingParams {
    /// Whether these settings pick what greedy decoding picks: temperature 0 and no repeat
    /// penalty (the filters keep the most likely id), so a row needs no sampler.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repeat_penalty == 1.0
    }

    /// Checks that the values mean something.
    ///
    /// # Errors
    /// The setting at fault and what it takes.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be 0 (greedy) or more, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return Err("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(format!("top-p must be in (0, 1], got {p}"));
        }
        if let Some(p) = self.min_p.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err(format!("min-p must be in [0, 1], got {p}"));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(format!(
                "the repeat penalty must be greater than 0 (1 is off), got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
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
    /// # Panics
    /// If `params` are invalid ([`SamplingParams::validate`] says why): check them first.
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        if let Err(reason) = params.validate() {
            panic!("invalid sampling settings: {reason}");
        }
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next id, drawn from `logits` (one row, `[v]`) after the settings are applied;
    /// `history` is the row's ids so far (prompt and generated), for the repeat penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if self.params.temperature == 0.0 {
            let mut scores = logits.to_vec();
            self.penalize_repeats(&mut scores, history);
            return argmax(&scores);
        }
        let probs = self.probabilities(logits, history);
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

    /// Whether [`Sampler::sample`] draws at random (temperature above 0) rather than picking
    /// the most likely id.
    pub fn is_random(&self) -> bool {
        self.params.temperature > 0.0
    }

    /// The distribution [`Sampler::sample`] draws from at a temperature above 0: probabilities
    /// over the vocabulary, zero for the ids the filters removed.
    pub fn probabilities(&self, logits: &[f32], history: &[u32]) -> Vec<f32> {
        let mut scores = logits.to_vec();
        self.penalize_repeats(&mut scores, history);
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

/// The first index of the largest score, as `torch.argmax` picks.
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
/// linear selection: sorting all 50257 ids took 3.4 ms a step on the project's EPYC, where the
/// bundled model decodes a token in 1.5 ms (top-p 0.9 sampling went from 188 to 413 tokens/s).
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

/// Probabilities from scores, in float32 as the scores are; removed ids (−∞) get 0.
fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // A removed id's 0 without its `exp`: after top-k or top-p, most of the vocabulary.
    let exps: Vec<f32> = scores
        .iter()
        .map(|&s| match s {
            f32::NEG_INFINITY => 0.0,
            s => (s - max).exp(),
        })
        .collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax is 0.1, 0.2, 0.3, 0.4.
    fn logits() -> Vec<f32> {
        [1.0f32, 2.0, 3.0, 4.0].iter().map(|w| w.ln()).collect()
    }

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params, 42)
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
            counts[sampler.sample(&logits(), &[]) as usize] += 1;
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
        let probs = sampler.probabilities(&logits(), &[]);
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
        assert!((0..1000).all(|_| sampler.sample(&logits, &[]) == 1));
    }

    #[test]
    fn temperature_zero_is_greedy_after_the_penalty() {
        let greedy = |repeat_penalty| {
            let params = SamplingParams {
                temperature: 0.0,
                repeat_penalty,
                ..SamplingParams::default()
            };
            Sampler::new(params, 0).sample(&[0.5, 3.0, 2.9, -1.0], &[1])
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
        let probs = sampler.probabilities(&logits, &[0, 1, 0]);
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
        );
        let probs = windowed.probabilities(&logits, &[0, 1, 0]);
        assert_eq!(probs, softmax(&[1.0, -1.0, 1.0, 0.5]));
    }

    #[test]
    fn a_seed_fixes_the_draws() {
        let params = SamplingParams::default();
        let draw = |seed| {
            let mut sampler = Sampler::new(params.clone(), seed);
            (0..50)
                .map(|_| sampler.sample(&logits(), &[]))
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
        ];
        for (params, name) in cases {
            let err = params.validate().unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }
}
