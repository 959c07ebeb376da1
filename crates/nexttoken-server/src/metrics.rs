//! `GET /metrics`: counters, gauges and histograms in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::admission::Counts;

/// How a request ended, for `nexttoken_requests_total{outcome=...}`.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Every choice finished.
    Completed,
    /// The client went away first.
    Cancelled,
    /// Refused before it ran: a bad request (4xx).
    Invalid,
    /// Refused because the queue was full (429) or the server was stopping (503).
    Rejected,
    /// The generation failed (500).
    Failed,
}

/// The `outcome` labels, in [`Outcome`]'s order.
const OUTCOMES: [&str; 5] = ["completed", "cancelled", "invalid", "rejected", "failed"];

#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Requests accepted and not yet finished: waiting or running.
    pub in_flight: AtomicU64,
    /// Rows in the running batch.
    pub batch_rows: AtomicU64,
    /// Requests whose client went away while they waited in the queue.
    pub abandoned_in_queue: AtomicU64,
    /// Generation steps, and rows they generated for: their ratio is the mean batch.
    steps: AtomicU64,
    step_rows: AtomicU64,
    /// The most rows one step generated for.
    peak_batch_rows: AtomicU64,
    /// KV cache blocks held by rows, and the cache's bound (0: none).
    kv_blocks_used: AtomicU64,
    kv_blocks_max: AtomicU64,
    pub time_to_first_token: Histogram,
    /// The time of each generation step, which every running row waits for per token.
    pub token_latency: Histogram,
}

/// Upper bounds, in seconds, of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
}

impl Metrics {
    pub fn finished(&self, outcome: Outcome) {
        self.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One generation step for `rows` rows.
    pub fn step(&self, rows: usize) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.peak_batch_rows
            .fetch_max(rows as u64, Ordering::Relaxed);
    }

    /// The KV cache's blocks in use and its bound, as a session reports them.
    pub fn record_kv_cache(&self, (used, max): (usize, Option<usize>)) {
        self.kv_blocks_used.store(used as u64, Ordering::Relaxed);
        self.kv_blocks_max
            .store(max.unwrap_or(0) as u64, Ordering::Relaxed);
    }

    /// The text of `/metrics`, with the admission's counts as they are now.
    pub fn render(&self, admission: Counts) -> String {
        let mut out = String::new();
        out += "# HELP nexttoken_requests_total Completion requests by how they ended.\n\
                # TYPE nexttoken_requests_total counter\n";
        for (index, name) in OUTCOMES.iter().enumerate() {
            let count = self.requests[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "nexttoken_requests_total{{outcome=\"{name}\"}} {count}"
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, kind: &str, value: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "nexttoken_prompt_tokens_total",
            "Prompt tokens processed.",
            "counter",
            &self.prompt_tokens,
        );
        counter(
            &mut out,
            "nexttoken_generated_tokens_total",
            "Tokens generated.",
            "counter",
            &self.generated_tokens,
        );
        counter(
            &mut out,
            "nexttoken_requests_in_flight",
            "Requests accepted and not finished.",
            "gauge",
            &self.in_flight,
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: usize| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "nexttoken_queue_depth",
            "Requests waiting for room in the batch.",
            admission.waiting,
        );
        gauge(
            &mut out,
            "nexttoken_batch_rows_taken",
            "Rows of the batch taken: generating, or accepted to join at the next step.",
            admission.rows,
        );
        counter(
            &mut out,
            "nexttoken_batch_size",
            "Rows in the running batch.",
            "gauge",
            &self.batch_rows,
        );
        counter(
            &mut out,
            "nexttoken_batch_size_peak",
            "The most rows one generation step has run.",
            "gauge",
            &self.peak_batch_rows,
        );
        counter(
            &mut out,
            "nexttoken_steps_total",
            "Generation steps run.",
            "counter",
            &self.steps,
        );
        counter(
            &mut out,
            "nexttoken_step_rows_total",
            "Rows generated for, summed over the steps (over nexttoken_steps_total: the mean batch).",
            "counter",
            &self.step_rows,
        );
        counter(
            &mut out,
            "nexttoken_queue_abandoned_total",
            "Requests whose client went away while they waited; their place was freed at once.",
            "counter",
            &self.abandoned_in_queue,
        );
        counter(
            &mut out,
            "nexttoken_kv_cache_blocks_used",
            "KV cache blocks (16 positions of every layer each) held by running rows.",
            "gauge",
            &self.kv_blocks_used,
        );
        counter(
            &mut out,
            "nexttoken_kv_cache_blocks_max",
            "The KV cache's bound in blocks (--kv-cache-mib); 0: it grows with the batch.",
            "gauge",
            &self.kv_blocks_max,
        );
        let (used, max) = (
            self.kv_blocks_used.load(Ordering::Relaxed),
            self.kv_blocks_max.load(Ordering::Relaxed),
        );
        let usage = if max == 0 {
            0.0
        } else {
            used as f64 / max as f64
        };
        let _ = writeln!(
            out,
            "# HELP nexttoken_kv_cache_usage_ratio KV cache blocks in use over the bound (0 \
             without one), as vLLM's gpu_cache_usage_perc and llama-server's \
             kv_cache_usage_ratio.\n# TYPE nexttoken_kv_cache_usage_ratio gauge\n\
             nexttoken_kv_cache_usage_ratio {usage}"
        );
        self.time_to_first_token.render(
            &mut out,
            "nexttoken_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
        );
        self.token_latency.render(
            &mut out,
            "nexttoken_token_latency_seconds",
            "The time of each generation step: the wait for every running row's next token.",
        );
        out
    }
}
