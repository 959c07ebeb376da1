use std::time::Duration;

/// Where the time of one generation went, split as llama.cpp splits it: processing the prompt
/// (prefill, which also yields the first new token) and generating the rest (decode).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens processed by the first step, all rows together.
    pub prompt_tokens: usize,
    /// Time of the first step.
    pub prefill: Duration,
    /// Time of each later step, in order.
    pub decode_steps: Vec<Duration>,
    /// Tokens produced by the later steps, all rows together (finished rows don't count).
    pub decode_tokens: usize,
}

impl GenerationStats {
    /// Prompt processing speed.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        per_second(self.prompt_tokens, self.prefill)
    }

    /// Total time of the decode steps.
    pub fn decode(&self) -> Duration {
        self.decode_steps.iter().sum()
    }

    /// Generation speed, leaving out the first token, which the prefill produced.
    pub fn generated_tokens_per_s(&self) -> f64 {
        per_second(self.decode_tokens, self.decode())
    }

    /// Counts a step that took `elapsed` and made `tokens`: a step where some row read its
    /// prompt counts as prefill, any other as a decode step.
    pub(crate) fn record(&mut self, prefill: bool, elapsed: Duration, tokens: usize) {
        if prefill {
            self.prefill += elapsed;
        } else {
            self.decode_steps.push(elapsed);
            self.decode_tokens += tokens;
        }
    }
}

fn per_second(tokens: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        tokens as f64 / time.as_secs_f64()
    }
}
