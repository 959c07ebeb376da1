//! Perplexity over a text longer than the context, as transformers' recipe computes it
//! (<https://huggingface.co/docs/transformers/perplexity>): windows of the context, `stride`
//! apart, each scoring only the ids the windows before it did not, each of those predicted from
//! up to a window of ids before it. With a stride below the window every id but the first is
//! scored exactly once; with a stride of a whole window, each window's first id has nothing
//! before it in the window and is not scored, as in transformers' loop.

use crate::session::logprobs;
use crate::{GenerateError, TextGenerator};

/// The scored ids' negative log-likelihoods, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// `-log p(id | the window's ids before it)`, natural log, one per scored id.
    pub nll: Vec<f64>,
    /// How many windows (forward passes) scored them.
    pub windows: usize,
}

impl Perplexity {
    /// `exp(mean nll)`.
    pub fn value(&self) -> f64 {
        self.mean().exp()
    }

    /// The standard error of [`Perplexity::value`], carried from the mean's (`ppl × se(nll)`),
    /// as llama-perplexity reports it.
    pub fn uncertainty(&self) -> f64 {
        let n = self.nll.len() as f64;
        if self.nll.len() < 2 {
            return f64::NAN;
        }
        let mean = self.mean();
        let variance = self.nll.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        self.value() * (variance / n).sqrt()
    }

    fn mean(&self) -> f64 {
        self.nll.iter().sum::<f64>() / self.nll.len() as f64
    }
}

impl TextGenerator {
    /// Whether [`TextGenerator::perplexity`] takes windows of `window` ids `stride` apart, before
    /// any text is scored.
    ///
    /// # Errors
    /// [`GenerateError::InvalidWindows`] for a window past the context or a zero or too long
    /// stride.
    pub fn check_windows(&self, window: usize, stride: usize) -> Result<(), GenerateError> {
        let context = self.model().context_length();
        let invalid = |reason: String| GenerateError::InvalidWindows { reason };
        if window < 2 || window > context {
            return Err(invalid(format!(
                "a window of {window} ids: it must hold 2 to {context} (the context)"
            )));
        }
        if stride == 0 || stride > window {
            return Err(invalid(format!(
                "a stride of {stride}: it must be 1 to the window's {window}"
            )));
        }
        Ok(())
    }

    /// The perplexity of `ids` in windows of `window` ids (at most the context), `stride` apart
    /// (at most `window`). `logits(row, id)` sees each scored id with the logits that predicted
    /// it (over the ids the tokenizer can decode), in the order the ids are scored, for a
    /// comparison of whole distributions (KL divergence); `progress(done, windows)` runs after
    /// each window.
    ///
    /// # Errors
    /// [`GenerateError::InvalidWindows`] for a window past the context, a zero or too long
    /// stride, or fewer than two ids; the errors of [`TextGenerator::score`].
    pub fn perplexity(
        &self,
        ids: &[u32],
        window: usize,
        stride: usize,
        mut logits: impl FnMut(&[f32], u32),
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Perplexity, GenerateError> {
        self.check_windows(window, stride)?;
        if ids.len() < 2 {
            return Err(GenerateError::InvalidWindows {
                reason: format!("{} id(s) to score: perplexity needs at least 2", ids.len()),
            });
        }
        // transformers' loop: a window from each stride until one reaches the end.
        let mut starts = vec![0];
        while starts[starts.len() - 1] + window < ids.len() {
            starts.push(starts[starts.len() - 1] + stride);
        }
        let mut nll = Vec::with_capacity(ids.len() - 1);
        let mut scored_to = 0;
        for (done, &begin) in starts.iter().enumerate() {
            let end = (begin + window).min(ids.len());
            // The rows predict ids begin + 1 .. end; the window keeps those not yet scored.
            let rows = self.next_id_logits(&ids[begin..end])?;
            let fresh = (end - scored_to).min(end - begin - 1);
            for (row, &next) in rows
                .iter()
                .skip(end - begin - 1 - fresh)
                .zip(&ids[end - fresh..])
            {
                nll.push(-f64::from(logprobs(row, next, 0).logprob));
                logits(row, next);
            }
            scored_to = end;
            progress(done + 1, starts.len());
        }
        Ok(Perplexity {
            nll,
            windows: starts.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> TextGenerator {
        TextGenerator::new(crate::tiny_model(16), crate::tiny_config(16)).expect("tiny")
    }

    /// `-log p(ids[j])` as the window `[begin, end)` predicts it.
    fn nll_in(generator: &TextGenerator, ids: &[u32], [begin, end]: [usize; 2], j: usize) -> f64 {
        let logprobs = generator.score(&ids[begin..end], 0).expect("scores");
        -f64::from(logprobs[j - begin - 1].logprob)
    }

    /// Nine ids in windows of 4, stride 2 (transformers' loop): [0, 4) scores ids 1-3, [2, 6)
    /// ids 4-5, [4, 8) ids 6-7, [6, 9) id 8.
    #[test]
    fn each_id_is_scored_once_by_the_first_window_that_reaches_it() {
        let generator = generator();
        let ids = [1u32, 5, 3, 9, 2, 14, 7, 0, 11];
        let (mut calls, mut rows) = (Vec::new(), Vec::new());
        let got = generator
            .perplexity(
                &ids,
                4,
                2,
                |row, id| rows.push((row.to_vec(), id)),
                |done, all| calls.push((done, all)),
            )
            .expect("scores");
        let windows = [
            [0, 4],
            [0, 4],
            [0, 4],
            [2, 6],
            [2, 6],
            [4, 8],
            [4, 8],
            [6, 9],
        ];
        let expected: Vec<f64> = windows
            .iter()
            .enumerate()
            .map(|(i, &window)| nll_in(&generator, &ids, window, i + 1))
            .collect();
        assert_eq!(got.nll, expected);
        // Each scored id's row of logits, in order: the row its nll came from.
        let from_rows: Vec<f64> = rows
            .iter()
            .zip(&ids[1..])
            .map(|((row, id), &expected_id)| {
                assert_eq!(*id, expected_id);
                -f64::from(logprobs(row, *id, 0).logprob)
            })
            .collect();
        assert_eq!(from_rows, expected);
        assert_eq!(got.windows, 4);
        assert_eq!(calls, [(1, 4), (2, 4), (3, 4), (4, 4)]);
        let mean = expected.iter().sum::<f64>() / 8.0;
        assert!((got.value() - mean.exp()).abs() < 1e-12);
        assert!(got.uncertainty() > 0.0);
    }

    /// Windows that do not overlap: each window's first id is predicted by nothing in it.
    #[test]
    fn a_whole_window_stride_leaves_each_window_s_first_id_out() {
        let generator = generator();
        let ids = [1u32, 5, 3, 9, 2, 14, 7];
        let got = generator
            .perplexity(&ids, 3, 3, |_, _| {}, |_, _| {})
            .expect("scores");
        let windows = [([0, 3], 1), ([0, 3], 2), ([3, 6], 4), ([3, 6], 5)];
        let mut expected: Vec<f64> = windows
            .iter()
            .map(|&(window, j)| nll_in(&generator, &ids, window, j))
            .collect();
        assert_eq!(got.windows, 3, "[0, 3), [3, 6), [6, 7)");
        // [6, 7) holds one id: nothing in it is predicted.
        assert_eq!(got.nll, std::mem::take(&mut expected));
    }

    #[test]
    fn one_window_scores_every_id_but_the_first() {
        let generator = generator();
        let ids = [4u32, 8, 15, 13, 2];
        let got = generator
            .perplexity(&ids, 16, 8, |_, _| {}, |_, _| {})
            .expect("scores");
        let all = generator.score(&ids, 0).expect("scores");
        let expected: Vec<f64> = all.iter().map(|l| -f64::from(l.logprob)).collect();
        assert_eq!((got.nll, got.windows), (expected, 1));
    }

    #[test]
    fn windows_that_cannot_score_are_refused() {
        let generator = generator();
        let ids = [1u32, 2, 3];
        for (window, stride, says) in [
            (17, 4, "a window of 17 ids: it must hold 2 to 16"),
            (1, 1, "a window of 1 ids"),
            (8, 0, "a stride of 0"),
            (8, 9, "a stride of 9: it must be 1 to the window's 8"),
        ] {
            let error = generator
                .perplexity(&ids, window, stride, |_, _| {}, |_, _| {})
                .expect_err("refused")
                .to_string();
            assert!(error.contains(says), "{error}");
        }
        let error = generator
            .perplexity(&ids[..1], 8, 4, |_, _| {}, |_, _| {})
            .expect_err("one id");
        assert!(error.to_string().contains("at least 2"), "{error}");
    }
}
