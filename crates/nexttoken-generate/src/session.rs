use burn::tensor::{Int, Tensor, TensorData, try_read_sync};
use nexttoken_model::{CacheRow, Chunk, Gpt2, KvCache, token_tensor};
// std's `Instant` panics in a browser; this is std's elsewhere.
use web_time::Instant;

use crate::sampling::{greedy_ids, ids_of};
use crate::{GenerateError, GenerationConfig, GenerationStats, Sampler, Selection};

/// A row of a [`Session`], as [`Session::add`] named it. Ids order as their rows were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId(u64);

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced its end-of-text id (kept as its last token).
    Eos,
    /// It reached `max_new_tokens`.
    Length,
    /// Its text reached one of its stop strings (see [`crate::TextSession`]).
    Stop,
}

impl FinishReason {
    /// The name `--json` and the server report: `eos`, `length` or `stop`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
            Self::Stop => "stop",
        }
    }
}

/// A token's log-probability and the most likely alternatives at its step, from the log-softmax
/// of the model's logits before any sampling setting touched them (as OpenAI reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    pub logprob: f32,
    /// The `n` most likely ids and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What one row got from a [`Session::step`].
#[derive(Debug, Clone, PartialEq)]
pub struct RowToken {
    pub row: RowId,
    pub id: u32,
    /// With [`GenerationConfig::logprobs`] set.
    pub logprobs: Option<Logprobs>,
    /// Set on the row's last token; the row has then left the session.
    pub finish: Option<FinishReason>,
}

/// One [`Session::step`]: a token for every row that was live.
#[derive(Debug)]
pub struct SessionStep {
    pub tokens: Vec<RowToken>,
    /// The logits each token was selected from, row `i` for `tokens[i]`: `[tokens.len(), v]`.
    pub logits: Tensor<2>,
}

/// A generation that a caller advances one step at a time: the loop of [`crate::generate`],
/// opened up.
///
/// The session owns its rows (ids so far, settings, random streams), one KV cache for all of
/// them and the timings. Rows may have prompts of any lengths; rows can be
/// [added](Session::add) between steps, join the batch at the next step, and be
/// [cancelled](Session::cancel) at any step; a row leaves by itself at its end-of-text id or
/// its `max_new_tokens`. Each row's ids are those it would get generated alone.
///
/// A step is one forward pass for every row (see [`Session::step`]): *plan* (the decoding rows'
/// next ids, then prompts or chunks of prompts), *forward*, *select* each row's next id, *append*
/// it. With [`Session::with_prefill_chunk`], prompts go in chunks of at most that many tokens a
/// step, so that a long prompt does not stall the decoding rows for its whole length; a row
/// whose prompt is not all in the cache yet gets no token that step. With a bounded cache
/// ([`Session::with_kv_cache`]), a row waits to start until the cache can hold its whole
/// generation.
///
/// When a row's sequence outgrows the context, it sees only its last `context_length` ids, as
/// the book's loop crops them: from then on its window is read again every step (GPT-2's
/// positions are absolute), while the other rows go on from the cache.
///
/// ```
/// use burn::tensor::Device;
/// use nexttoken_generate::{GenerationConfig, Session};
/// use nexttoken_model::Gpt2Config;
///
/// let device = Device::flex();
/// let model = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, ..Gpt2Config::gpt2() }.init(&device);
/// let mut session = Session::new(&model);
/// let short = session.add(vec![15496], &GenerationConfig::new(4))?;
/// let long = session.add(vec![6109, 3626, 6100, 345], &GenerationConfig::new(2))?;
/// while !session.is_finished() {
///     for token in session.step()?.tokens {
///         println!("{:?} got {}", token.row, token.id);
///     }
/// }
/// # let _ = (short, long);
/// # Ok::<(), nexttoken_generate::GenerateError>(())
/// ```
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m Gpt2,
    kv_cache: bool,
    /// In the order they were added.
    rows: Vec<Row>,
    cache: KvCache,
    /// Most prompt tokens a step takes, all rows together (`None`: every prompt whole).
    prefill_chunk: Option<usize>,
    added: u64,
    stats: GenerationStats,
    /// Only ids below this are chosen (see [`Session::choosing_below`]).
    choosable: usize,
}

#[derive(Debug)]
struct Row {
    id: RowId,
    /// Prompt and generated ids; the last one is not in the cache yet.
    ids: Vec<u32>,
    generated: usize,
    max_new_tokens: usize,
    min_new_tokens: usize,
    eos_token_id: Option<u32>,
    stop_token_ids: Vec<u32>,
    sampler: Option<Sampler>,
    logprobs: Option<usize>,
    /// Its row of the cache, once it has one, and how many of its ids are there.
    cached: Option<(CacheRow, usize)>,
}

impl Row {
    /// Whether the row may not end yet: its end-of-text and stop ids are banned this step.
    fn bans_stopping(&self) -> bool {
        self.generated < self.min_new_tokens
            && (self.eos_token_id.is_some() || !self.stop_token_ids.is_empty())
    }

    /// Whether its id is chosen on the host, from the logits read back.
    fn chooses_on_host(&self) -> bool {
        self.sampler.is_some() || self.logprobs.is_some() || self.bans_stopping()
    }

    /// Ids not in the cache yet: its prompt (or what is left of it), or its last id.
    fn uncached(&self) -> usize {
        self.ids.len() - self.cached.map_or(0, |(_, len)| len)
    }

    /// The longest the row can grow: its cache's share when it starts.
    fn longest(&self, context: usize) -> usize {
        (self.ids.len() + self.max_new_tokens - self.generated).min(context)
    }
}

/// What a step runs (see [`Session::plan`]), as indices into the session's rows: rows through
/// the cache, each with its next ids (all that are not cached, or a chunk of a prompt), and
/// rows that read their whole window without one.
#[derive(Debug, Default)]
struct Plan {
    chunks: Vec<(usize, usize)>,
    windows: Vec<usize>,
}

impl Plan {
    /// The rows that get a token this step, in the order of the forward pass's logits: each
    /// chunk that brings its row's ids up to date, then the windows.
    fn yielding(&self, rows: &[Row]) -> Vec<usize> {
        let done = self
            .completing(rows)
            .map(|position| self.chunks[position].0);
        done.chain(self.windows.iter().copied()).collect()
    }

    /// The positions in `chunks` of those that bring their row's ids up to date.
    fn completing<'p>(&'p self, rows: &'p [Row]) -> impl Iterator<Item = usize> + 'p {
        let chunks = self.chunks.iter().enumerate();
        chunks
            .filter(|&(_, &(row, taken))| taken == rows[row].uncached())
            .map(|(position, _)| position)
    }
}

impl<'m> From<&'m Gpt2> for Session<'m> {
    fn from(model: &'m Gpt2) -> Self {
        Session::new(model)
    }
}

impl<'m> Session<'m> {
    /// An empty session on `model`, with a KV cache.
    pub fn new(model: &'m Gpt2) -> Self {
        Self {
            model,
            kv_cache: true,
            rows: Vec::new(),
            cache: KvCache::new(),
            prefill_chunk: None,
            added: 0,
            stats: GenerationStats::default(),
            choosable: model.vocab_size(),
        }
    }

    /// Chooses only ids below `ids`: a checkpoint whose vocabulary is padded past its
    /// tokenizer's (50304 rows for GPT-2's 50257 ids, for faster matrix products) has logits
    /// for ids no tokenizer can decode. Log-probabilities are over the same ids.
    pub fn choosing_below(mut self, ids: usize) -> Self {
        self.choosable = ids.clamp(1, self.model.vocab_size());
        self
    }

    /// Takes at most `tokens` prompt tokens a step, all rows together (at least 1), while some
    /// row is decoding, so that its steps stay short: vLLM's chunked prefill. The rest of a
    /// prompt waits for the next steps; prompts with fewer tokens left go first. A step with no
    /// row decoding takes the prompts whole.
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = Some(tokens.max(1));
        self
    }

    /// Keeps the rows' keys and values in `cache` (a bounded one: [`KvCache::with_max_blocks`]):
    /// a row starts only once the cache can hold its prompt and all its new tokens beside the
    /// rows already running, which then never run out of blocks.
    pub fn with_kv_cache(mut self, cache: KvCache) -> Self {
        self.cache = cache;
        self
    }

    /// The cache's blocks in use, and the most it may hold (if bounded).
    pub fn kv_cache_blocks(&self) -> (usize, Option<usize>) {
        (self.cache.used_blocks(), self.cache.max_blocks())
    }

    /// Reads every row's whole window every step instead of keeping a KV cache: the book's
    /// loop, kept as the reference the cache is tested against.
    pub fn without_kv_cache(mut self) -> Self {
        self.kv_cache = false;
        self
    }

    /// Adds a row continuing `prompt`, generated as `config` says (its `seed` is this row's);
    /// it joins the batch at the next step.
    ///
    /// # Errors
    /// [`GenerateError`] for `max_new_tokens == 0`, invalid sampling settings, an empty prompt,
    /// an id outside the model's vocabulary (the error's `index` is the row's number), or a
    /// generation longer than a bounded cache can ever hold.
    pub fn add(
        &mut self,
        prompt: Vec<u32>,
        config: &GenerationConfig,
    ) -> Result<RowId, GenerateError> {
        let index = self.added as usize;
        if config.max_new_tokens == 0 {
            return Err(GenerateError::ZeroMaxNewTokens);
        }
        let sampler = match &config.selection {
            Selection::Greedy => None,
            Selection::Sample(params) => Some(Sampler::new(params.clone(), config.seed)?),
        };
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        let vocab_size = self.model.vocab_size();
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(GenerateError::TokenOutOfRange {
                index,
                id,
                vocab_size,
            });
        }
        let context = self.model.context_length();
        let longest = (prompt.len().saturating_add(config.max_new_tokens)).min(context);
        if let Some(max) = self.cache.max_blocks()
            && KvCache::blocks_for(longest) > max
        {
            return Err(GenerateError::KvCacheTooSmall {
                positions: longest,
                needed: KvCache::blocks_for(longest),
                blocks: max,
            });
        }
        let id = RowId(self.added);
        self.added += 1;
        self.rows.push(Row {
            id,
            ids: prompt,
            generated: 0,
            max_new_tokens: config.max_new_tokens,
            min_new_tokens: config.min_new_tokens,
            eos_token_id: config.eos_token_id,
            stop_token_ids: config.stop_token_ids.clone(),
            sampler,
            logprobs: config.logprobs,
            cached: None,
        });
        Ok(id)
    }

    /// Stops `row` now; it gets no more tokens. Returns whether it was still live.
    pub fn cancel(&mut self, row: RowId) -> bool {
        let Some(index) = self.rows.iter().position(|r| r.id == row) else {
            return false;
        };
        self.remove(&[index]);
        true
    }

    /// Whether no row is left to step.
    pub fn is_finished(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows still generating, those added since the last step included.
    pub fn live_rows(&self) -> usize {
        self.rows.len()
    }

    /// Where the time went so far.
    pub fn stats(&self) -> &GenerationStats {
        &self.stats
    }

    /// Advances every live row by one token. With no live rows it returns no tokens.
    ///
    /// # Errors
    /// [`GenerateError::ReadBack`] if the logits cannot be read from the device, or cannot be
    /// read without waiting where nothing may block (WebGPU in a browser: use
    /// [`Session::step_async`] there; the session cannot go on after that error).
    pub fn step(&mut self) -> Result<SessionStep, GenerateError> {
        try_read_sync(self.step_async()).unwrap_or_else(|| {
            Err(GenerateError::ReadBack {
                reason: "the device's results cannot be waited for here (WebGPU in a \
                         browser): step with `step_async`"
                    .into(),
            })
        })
    }

    /// [`Session::step`], awaiting the device's results instead of blocking on them: the way
    /// to step in a browser, where WebGPU hands results back only to the event loop.
    ///
    /// # Errors
    /// As [`Session::step`].
    pub async fn step_async(&mut self) -> Result<SessionStep, GenerateError> {
        let start = Instant::now();
        if self.rows.is_empty() {
            let device = self.model.wte.weight.device();
            return Ok(SessionStep {
                tokens: Vec::new(),
                logits: Tensor::zeros([0, self.model.vocab_size()], &device),
            });
        }
        let prefill = self.rows.iter().any(|row| row.generated == 0);
        let plan = self.plan();
        let yielding = plan.yielding(&self.rows);
        let logits = self.forward(&plan).await?;
        let tokens = self.select(&logits, &yielding).await?;
        self.stats.record(prefill, start.elapsed(), tokens.len());
        let finished: Vec<usize> = tokens
            .iter()
            .zip(&yielding)
            .filter_map(|(token, &row)| token.finish.map(|_| row))
            .collect();
        self.remove(&finished);
        Ok(SessionStep { tokens, logits })
    }

    /// Who runs how this step. Rows whose next id would pass the context leave the cache and
    /// read their whole window (all rows do without a cache). Rows in the cache run their
    /// uncached ids: a decoding row its last id, a prompt (or the rest of one) within the
    /// step's prompt budget, the fewest tokens left first. Rows not started yet start when the
    /// cache can hold their whole generation beside the running rows' (a bounded cache).
    fn plan(&mut self) -> Plan {
        let context = self.model.context_length();
        let mut plan = Plan::default();
        let mut prompts = Vec::new();
        for (index, row) in self.rows.iter_mut().enumerate() {
            if !self.kv_cache || row.ids.len() > context {
                if let Some((slot, _)) = row.cached.take() {
                    self.cache.remove_row(slot);
                }
                plan.windows.push(index);
            } else if row.uncached() == 1 && row.cached.is_some() {
                plan.chunks.push((index, 1));
            } else {
                prompts.push(index);
            }
        }
        prompts.sort_by_key(|&index| self.rows[index].uncached());
        // Blocks the running rows may still take, which a starting row may not count on.
        let promised: usize = self
            .rows
            .iter()
            .filter_map(|row| {
                let (slot, _) = row.cached?;
                let held = KvCache::blocks_for(self.cache.row_len(slot));
                Some(KvCache::blocks_for(row.longest(context)).saturating_sub(held))
            })
            .sum();
        let mut available = self.cache.free_blocks().saturating_sub(promised);
        // The budget keeps decoding rows' steps short; with none decoding, nobody waits on the
        // step, and a prompt goes whole (in chunks, each would read the weights again).
        let decoding = !plan.chunks.is_empty() || !plan.windows.is_empty();
        let mut budget = match (self.prefill_chunk, decoding) {
            (Some(tokens), true) => tokens,
            _ => usize::MAX,
        };
        let mut admitting = true;
        for index in prompts {
            if budget == 0 {
                break;
            }
            let row = &mut self.rows[index];
            if row.cached.is_none() {
                let needed = KvCache::blocks_for(row.longest(context));
                if !admitting || needed > available {
                    // Later rows wait too (one that fits must not overtake it for ever), but
                    // rows already started go on: their blocks are promised, and a waiting
                    // row may need theirs.
                    admitting = false;
                    continue;
                }
                available -= needed;
                // The blocks of a prefix another row computed are taken, not computed again.
                row.cached = Some(self.cache.add_row_after_prefix(&row.ids));
            }
            let taken = row.uncached().min(budget);
            budget -= taken;
            plan.chunks.push((index, taken));
        }
        plan
    }

    /// One forward pass for the planned rows: the chunks through the cache, the windows from
    /// scratch. The logits of the rows that get a token (see [`Plan::yielding`]), in that
    /// order: `[rows, v]`.
    async fn forward(&mut self, plan: &Plan) -> Result<Tensor<2>, GenerateError> {
        let model = self.model;
        let device = model.wte.weight.device();
        let context = model.context_length();
        self.stats.prompt_tokens += plan
            .chunks
            .iter()
            .filter(|&&(row, _)| self.rows[row].generated == 0)
            .map(|&(_, taken)| taken)
            .sum::<usize>();
        let mut logits = Vec::with_capacity(2);
        if !plan.chunks.is_empty() {
            let chunks: Vec<Chunk> = plan
                .chunks
                .iter()
                .map(|&(index, taken)| {
                    let row = &self.rows[index];
                    let (slot, cached) = row.cached.expect("planned rows are in the cache");
                    Chunk::new(slot, &row.ids[cached..cached + taken])
                })
                .collect();
            let all = model.forward_chunks(&chunks, &mut self.cache);
            let done: Vec<i64> = plan.completing(&self.rows).map(|p| p as i64).collect();
            for &(index, taken) in &plan.chunks {
                if let Some((_, cached)) = &mut self.rows[index].cached {
                    *cached += taken;
                }
            }
            if done.len() == plan.chunks.len() {
                logits.push(all);
            } else if !done.is_empty() {
                let done = Tensor::<1, Int>::from_data(
                    TensorData::new(done.clone(), [done.len()]),
                    &device,
                );
                logits.push(all.select(0, done));
            }
        }
        if !plan.windows.is_empty() {
            let windows: Vec<&[u32]> = plan
                .windows
                .iter()
                .map(|&index| {
                    let ids = &self.rows[index].ids;
                    &ids[ids.len().saturating_sub(context)..]
                })
                .collect();
            self.stats.prompt_tokens += plan
                .windows
                .iter()
                .zip(&windows)
                .filter(|&(&row, _)| self.rows[row].generated == 0)
                .map(|(_, window)| window.len())
                .sum::<usize>();
            let same_length = windows.iter().all(|w| w.len() == windows[0].len());
            if same_length {
                logits.push(model.forward_last(token_tensor(&windows, &device)));
            } else {
                logits.push(model.prefill(&windows, &mut KvCache::new()));
            }
        }
        match logits.len() {
            0 => return Ok(Tensor::zeros([0, model.vocab_size()], &device)),
            1 => return Ok(logits.remove(0)),
            _ => {}
        }
        // Joined on the host: on wgpu, `Tensor::cat` of the two groups' logits gave rows of
        // another step's values under some of cubecl's autotuned kernels (a cache of its
        // choices from one CI run made it happen every time). This runs only on the steps some
        // row reads its window.
        let mut host = Vec::new();
        for part in logits {
            host.extend(read_back(part).await?);
        }
        let rows = host.len() / model.vocab_size();
        Ok(Tensor::from_data(
            TensorData::new(host, [rows, model.vocab_size()]),
            &device,
        ))
    }

    /// Picks the next id of each of the rows at `yielding` from `logits` (`[yielding, v]`, in
    /// that order) and appends it.
    async fn select(
        &mut self,
        logits: &Tensor<2>,
        yielding: &[usize],
    ) -> Result<Vec<RowToken>, GenerateError> {
        if yielding.is_empty() {
            return Ok(Vec::new());
        }
        let vocab = self.model.vocab_size();
        let choosable = self.choosable;
        let logits = if choosable < vocab {
            logits.clone().slice([0..yielding.len(), 0..choosable])
        } else {
            logits.clone()
        };
        // Greedy rows take the device's argmax, as they always have; the host reads the
        // logits only when some row samples, bans ids or reports log-probabilities.
        let any_greedy = yielding.iter().any(|&i| !self.rows[i].chooses_on_host());
        let greedy = match any_greedy {
            true => Some(read_ids(greedy_ids(logits.clone())).await?),
            false => None,
        };
        let any_on_host = yielding.iter().any(|&i| self.rows[i].chooses_on_host());
        let host = match any_on_host {
            true => Some(read_back(logits).await?),
            false => None,
        };
        let mut tokens = Vec::with_capacity(yielding.len());
        for (index, &row_index) in yielding.iter().enumerate() {
            let row = &mut self.rows[row_index];
            let scores = host
                .as_ref()
                .map(|host| &host[index * choosable..(index + 1) * choosable]);
            let id = match (row.chooses_on_host(), scores, &greedy) {
                (true, Some(scores), _) => choose_on_host(row, scores)?,
                (false, _, Some(greedy)) => greedy[index],
                _ => unreachable!("every row has the logits it chooses from"),
            };
            let logprobs = row
                .logprobs
                .zip(scores)
                .map(|(n, scores)| logprobs(scores, id, n));
            row.ids.push(id);
            row.generated += 1;
            let finish = if Some(id) == row.eos_token_id {
                Some(FinishReason::Eos)
            } else if row.stop_token_ids.contains(&id) {
                Some(FinishReason::Stop)
            } else if row.generated == row.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            tokens.push(RowToken {
                row: row.id,
                id,
                logprobs,
                finish,
            });
        }
        Ok(tokens)
    }

    /// Takes the rows at `indices` out of the session and the cache.
    fn remove(&mut self, indices: &[usize]) {
        for &index in indices {
            if let Some((slot, _)) = self.rows[index].cached.take() {
                self.cache.remove_row(slot);
            }
        }
        let mut index = 0;
        self.rows.retain(|_| {
            let keep = !indices.contains(&index);
            index += 1;
            keep
        });
    }
}

/// A row's next id from its logits on the host: its sampler's choice, or the most likely id,
/// after banning its stop ids while it is shorter than its `min_new_tokens`.
fn choose_on_host(row: &mut Row, scores: &[f32]) -> Result<u32, GenerateError> {
    if scores.iter().all(|&s| s.is_nan() || s == f32::NEG_INFINITY) {
        return Err(GenerateError::NoFiniteLogits {
            index: row.id.0 as usize,
        });
    }
    let mut banned;
    let scores = if row.bans_stopping() {
        banned = scores.to_vec();
        for &id in row.eos_token_id.iter().chain(&row.stop_token_ids) {
            if let Some(score) = banned.get_mut(id as usize) {
                *score = f32::NEG_INFINITY;
            }
        }
        &banned[..]
    } else {
        scores
    };
    let id = match &mut row.sampler {
        Some(sampler) => sampler.sample(scores, &row.ids, row.generated),
        // The first of the largest, as the device's argmax picks; NaN never wins.
        None => {
            let mut best = 0;
            for (id, &score) in scores.iter().enumerate() {
                if score > scores[best] || scores[best].is_nan() {
                    best = id;
                }
            }
            best as u32
        }
    };
    Ok(id)
}

/// A tensor's values on the host, as float32.
pub(crate) async fn read_back(tensor: Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    let data = tensor.into_data_async().await.map_err(read_error)?;
    data.try_into_vec_as::<f32>().map_err(read_error)
}

/// Ids read back from the device (`[b, 1]`).
async fn read_ids(ids: Tensor<2, Int>) -> Result<Vec<u32>, GenerateError> {
    Ok(ids_of(&ids.into_data_async().await.map_err(read_error)?))
}

fn read_error(error: impl std::fmt::Debug) -> GenerateError {
    GenerateError::ReadBack {
        reason: format!("{error:?}"),
    }
}

/// The log-softmax of `scores` at `id`, and its `n` largest entries.
pub(crate) fn logprobs(scores: &[f32], id: u32, n: usize) -> Logprobs {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = scores.iter().map(|&s| f64::from(s - max).exp()).sum();
    let log_normalizer = max + sum.ln() as f32;
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    let n = n.min(scores.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |&a, &b| {
            scores[b as usize]
                .total_cmp(&scores[a as usize])
                .then(a.cmp(&b))
        });
    }
    let mut top: Vec<(u32, f32)> = order[..n]
        .iter()
        .map(|&id| (id, scores[id as usize] - log_normalizer))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Logprobs {
        logprob: scores[id as usize] - log_normalizer,
        top,
    }
}

/// One step as [`crate::Step`] shows it: each of the `rows` rows' id (`None` for rows that
/// got none) and `logits` put in row order, from `given`, the (row, id) pairs in the order the
/// session stepped them, which is its cache's.
pub(crate) fn in_row_order(
    rows: usize,
    given: &[(usize, u32)],
    logits: Tensor<2>,
) -> (Vec<Option<u32>>, Tensor<2>) {
    let mut ids = vec![None; rows];
    for &(row, id) in given {
        ids[row] = Some(id);
    }
    if given.is_sorted_by_key(|&(row, _)| row) {
        return (ids, logits);
    }
    let mut order: Vec<i64> = (0..given.len() as i64).collect();
    order.sort_by_key(|&i| given[i as usize].0);
    let index =
        Tensor::<1, Int>::from_data(TensorData::new(order, [given.len()]), &logits.device());
    (ids, logits.select(0, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplingParams;

    /// Runs one row of `prompt` to its end; its tokens.
    fn run(session: &mut Session, prompt: Vec<u32>, config: &GenerationConfig) -> Vec<RowToken> {
        session.add(prompt, config).unwrap();
        let mut tokens = Vec::new();
        while !session.is_finished() {
            tokens.extend(session.step().unwrap().tokens);
        }
        tokens
    }

    /// A padded vocabulary's extra ids are never chosen, sampled or greedy: the tokenizer
    /// cannot decode them (a sampled one failed every running request of the server).
    #[test]
    fn ids_past_the_choosable_ones_are_never_chosen() {
        let model = crate::tiny_model(64);
        let hot = GenerationConfig {
            selection: Selection::Sample(SamplingParams {
                temperature: 50.0,
                ..SamplingParams::default()
            }),
            seed: 3,
            logprobs: Some(20),
            ..GenerationConfig::new(60).without_eos()
        };
        let ids = |limit: usize, config: &GenerationConfig| -> Vec<RowToken> {
            let mut session = Session::new(&model).choosing_below(limit);
            run(&mut session, vec![1, 2, 3], config)
        };
        assert!(
            ids(16, &hot).iter().any(|t| t.id >= 12),
            "the test needs draws of 12..16"
        );
        for token in ids(12, &hot) {
            assert!(token.id < 12, "{token:?}");
            let logprobs = token.logprobs.unwrap();
            assert_eq!(logprobs.top.len(), 12);
            assert!(logprobs.top.iter().all(|&(id, _)| id < 12));
        }
        // Greedy: the most likely of the ids below the limit.
        let greedy = GenerationConfig::new(1).without_eos();
        let mut session = Session::new(&model);
        session.add(vec![1, 2, 3], &greedy).unwrap();
        let step = session.step().unwrap();
        let first = step.tokens[0].id as usize;
        let logits: Vec<f32> = step.logits.into_data().try_to_vec().unwrap();
        let limit = if first == 0 { 16 } else { first };
        let expected = (0..limit)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        let chosen = ids(limit, &greedy)[0].id;
        assert_eq!(chosen, expected, "logits {logits:?}");
    }

    /// `min_new_tokens` bans the end-of-text and stop ids until the row is that long; a stop
    /// id ends a row as end-of-text does, with [`FinishReason::Stop`].
    #[test]
    fn min_new_tokens_and_stop_ids() {
        let model = crate::tiny_model(64);
        let free = run(
            &mut Session::new(&model),
            vec![4, 5],
            &GenerationConfig::new(12).without_eos(),
        );
        let free: Vec<u32> = free.iter().map(|t| t.id).collect();
        let eos = free[0];
        let stopping = GenerationConfig {
            eos_token_id: Some(eos),
            ..GenerationConfig::new(12)
        };
        let tokens = run(&mut Session::new(&model), vec![4, 5], &stopping);
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].finish, Some(FinishReason::Eos));
        for min in [1, 3, 12] {
            let config = GenerationConfig {
                min_new_tokens: min,
                ..stopping.clone()
            };
            let tokens = run(&mut Session::new(&model), vec![4, 5], &config);
            assert!(tokens.len() >= min.min(12), "{min}: {tokens:?}");
            assert!(tokens[..min.min(tokens.len())].iter().all(|t| t.id != eos));
            if tokens.len() < 12 {
                assert_eq!(tokens.last().unwrap().id, eos);
            }
        }
        let stop_at = free[2];
        let config = GenerationConfig {
            stop_token_ids: vec![stop_at],
            ..GenerationConfig::new(12).without_eos()
        };
        let tokens = run(&mut Session::new(&model), vec![4, 5], &config);
        let at = free.iter().position(|&id| id == stop_at).unwrap();
        assert_eq!(tokens.len(), at + 1);
        assert_eq!(tokens.last().unwrap().finish, Some(FinishReason::Stop));
    }

    /// Each row's ids, run to the end in `session`, and the rows that got a token at each step.
    fn run_all(
        mut session: Session,
        rows: &[(Vec<u32>, GenerationConfig)],
    ) -> (Vec<Vec<u32>>, Vec<Vec<RowId>>) {
        let ids: Vec<RowId> = rows
            .iter()
            .map(|(prompt, config)| session.add(prompt.clone(), config).unwrap())
            .collect();
        let mut got = vec![Vec::new(); rows.len()];
        let mut steps = Vec::new();
        while !session.is_finished() {
            let step = session.step().unwrap();
            steps.push(step.tokens.iter().map(|t| t.row).collect());
            for token in step.tokens {
                got[ids.iter().position(|&id| id == token.row).unwrap()].push(token.id);
            }
        }
        (got, steps)
    }

    fn mixed_rows() -> Vec<(Vec<u32>, GenerationConfig)> {
        let sampled = GenerationConfig {
            selection: Selection::Sample(SamplingParams::default()),
            seed: 11,
            ..GenerationConfig::new(9).without_eos()
        };
        vec![
            (
                (0..40).map(|i| (i * 7 + 3) % 16).collect(),
                GenerationConfig::new(9).without_eos(),
            ),
            (vec![1, 2, 3], GenerationConfig::new(12).without_eos()),
            ((0..17).map(|i| (i * 5 + 1) % 16).collect(), sampled),
        ]
    }

    /// Prompts fed in chunks of 5 tokens a step beside a decoding row give every row the ids it
    /// gets with whole prompts (and alone), the prompt with fewer tokens left going first; with
    /// no row decoding, prompts go whole.
    #[test]
    fn chunked_prompts_give_the_ids_of_whole_ones() {
        let model = crate::tiny_model(64);
        let mut rows = mixed_rows();
        rows[1].1.max_new_tokens = 40;
        // The 3-token prompt first; the 40- and 17-token ones join once it decodes.
        let run = |mut session: Session| {
            let short = session.add(rows[1].0.clone(), &rows[1].1).unwrap();
            let mut steps = vec![session.step().unwrap()];
            let long = session.add(rows[0].0.clone(), &rows[0].1).unwrap();
            let mid = session.add(rows[2].0.clone(), &rows[2].1).unwrap();
            while !session.is_finished() {
                steps.push(session.step().unwrap());
            }
            let of = |row: RowId| -> Vec<u32> {
                let tokens = steps.iter().flat_map(|step| &step.tokens);
                tokens.filter(|t| t.row == row).map(|t| t.id).collect()
            };
            let first = |row: RowId| {
                let mut steps = steps.iter();
                steps.position(|s| s.tokens.iter().any(|t| t.row == row))
            };
            let ids = vec![of(long), of(short), of(mid)];
            (ids, [first(long), first(mid)])
        };
        let (whole, firsts) = run(Session::new(&model));
        assert_eq!(firsts, [Some(1), Some(1)]);
        let (chunked, firsts) = run(Session::new(&model).with_prefill_chunk(5));
        assert_eq!(chunked, whole);
        // 17 tokens: 5, 5, 5, 2 (steps 1-4); then 40: 3 at step 4, 5 a step after, the last 2
        // at step 12.
        assert_eq!(firsts, [Some(12), Some(4)]);
        for (row, (prompt, config)) in rows.iter().enumerate() {
            let (alone, _) = run_all(Session::new(&model), &[(prompt.clone(), config.clone())]);
            assert_eq!(whole[row], alone[0], "row {row}");
        }
        // Nothing decodes at the first step: every prompt goes whole.
        let (_, mut steps) = run_all(Session::new(&model).with_prefill_chunk(5), &rows);
        steps[0].sort();
        assert_eq!(steps[0], [RowId(0), RowId(1), RowId(2)]);
    }

    /// A bounded cache starts a row only when it can hold its whole generation: one row (the
    /// shorter prompt) runs, the other waits for it to finish and takes its freed blocks, with
    /// the ids it gets alone; a row that can never fit is refused.
    #[test]
    fn a_full_cache_queues_rows_and_reuses_their_blocks() {
        let model = crate::tiny_model(64);
        let config = GenerationConfig::new(10).without_eos();
        let rows = vec![
            (vec![1, 2, 3, 4, 5], config.clone()),
            (vec![6, 7], config.clone()),
        ];
        // 15 and 12 positions: one block each, and the cache holds one.
        let bounded = Session::new(&model).with_kv_cache(KvCache::with_max_blocks(1));
        let (queued, steps) = run_all(bounded, &rows);
        let (together, _) = run_all(Session::new(&model), &rows);
        assert_eq!(queued, together);
        let (short, long) = ([RowId(1)], [RowId(0)]);
        assert_eq!(steps[..10], [short; 10], "{steps:?}");
        assert_eq!(steps[10..], [long; 10], "{steps:?}");
        let mut session = Session::new(&model).with_kv_cache(KvCache::with_max_blocks(1));
        let error = session.add(vec![1; 10], &config).unwrap_err();
        assert!(
            matches!(
                error,
                GenerateError::KvCacheTooSmall {
                    needed: 2,
                    blocks: 1,
                    ..
                }
            ),
            "{error}"
        );
        session.add(vec![1; 6], &config).unwrap();
        session.step().unwrap();
        assert_eq!(session.kv_cache_blocks(), (1, Some(1)));
    }

    /// A row whose prompt starts with another's takes the cached blocks of that prefix instead
    /// of computing them, and gets the ids it gets without sharing, greedy and sampled.
    #[test]
    fn a_shared_prefix_is_computed_once_and_changes_no_id() {
        let model = crate::tiny_model(128);
        let prefix: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 16).collect();
        let with_tail = |tail: &[u32]| [&prefix[..], tail].concat();
        let sampled = GenerationConfig {
            selection: Selection::Sample(SamplingParams::default()),
            seed: 5,
            ..GenerationConfig::new(8).without_eos()
        };
        let run = |cache: KvCache| {
            let mut session = Session::new(&model).with_kv_cache(cache);
            let first = session.add(
                with_tail(&[1, 2, 3]),
                &GenerationConfig::new(8).without_eos(),
            );
            let mut ids = vec![session.step().unwrap().tokens[0].id];
            // Added once the first row's prompt is cached: it takes 2 of its 16-id blocks.
            let second = session.add(with_tail(&[4, 5]), &sampled).unwrap();
            let mut second_ids = Vec::new();
            while !session.is_finished() {
                for token in session.step().unwrap().tokens {
                    match token.row == second {
                        true => second_ids.push(token.id),
                        false => ids.push(token.id),
                    }
                }
            }
            let _ = first.unwrap();
            (ids, second_ids, session.stats().prompt_tokens)
        };
        let (first, second, computed) = run(KvCache::new());
        let (first_alone, second_alone, all) = run(KvCache::new().without_prefix_sharing());
        assert_eq!((first, second), (first_alone, second_alone));
        assert_eq!((all, computed), (43 + 42, 43 + 10));
    }

    /// A row that cannot start yet holds up no row that has started: the 80-token prompt,
    /// started beside a decoding row, goes on in chunks while a later, shorter prompt waits for
    /// its blocks (it sorts first, and once stopped every step's plan, leaving nothing to run).
    #[test]
    fn a_waiting_row_does_not_stop_a_started_prompt() {
        let model = crate::tiny_model(128);
        let cache = KvCache::with_max_blocks(8);
        let mut session = Session::new(&model)
            .with_kv_cache(cache)
            .with_prefill_chunk(64);
        let config = |new| GenerationConfig::new(new).without_eos();
        // 32 positions (2 blocks), then 96 (6 blocks), then 40 (3 blocks, which must wait).
        session.add(vec![1; 4], &config(28)).unwrap();
        session.step().unwrap();
        let long = session.add(vec![2; 80], &config(16)).unwrap();
        session.step().unwrap();
        let waiting = session.add(vec![3; 10], &config(30)).unwrap();
        let mut got = std::collections::HashMap::<RowId, usize>::new();
        for _ in 0..200 {
            if session.is_finished() {
                break;
            }
            for token in session.step().unwrap().tokens {
                *got.entry(token.row).or_default() += 1;
            }
        }
        assert!(session.is_finished(), "rows left: {}", session.live_rows());
        assert_eq!((got[&long], got[&waiting]), (16, 30));
    }

    /// A row whose logits are all NaN cannot choose: an error naming the row, not id 0.
    #[test]
    fn a_row_of_nan_logits_is_an_error() {
        let mut row = Row {
            id: RowId(7),
            ids: vec![1],
            generated: 0,
            max_new_tokens: 4,
            min_new_tokens: 0,
            eos_token_id: None,
            stop_token_ids: Vec::new(),
            sampler: None,
            logprobs: Some(1),
            cached: None,
        };
        let error = choose_on_host(&mut row, &[f32::NAN, f32::NEG_INFINITY]).unwrap_err();
        assert!(
            matches!(error, GenerateError::NoFiniteLogits { index: 7 }),
            "{error}"
        );
        assert_eq!(
            choose_on_host(&mut row, &[f32::NAN, -3.0, 1.0, f32::NAN]).unwrap(),
            2
        );
    }

    #[test]
    fn logprobs_are_the_log_softmax_and_its_largest_entries() {
        let scores = [1.0f32, 3.0, 2.0, 3.0];
        let normalizer = scores.iter().map(|s| s.exp()).sum::<f32>().ln();
        let got = logprobs(&scores, 2, 3);
        assert!((got.logprob - (2.0 - normalizer)).abs() < 1e-6);
        let ids: Vec<u32> = got.top.iter().map(|&(id, _)| id).collect();
        // Ties keep the lower id first, as torch.topk's sorted output does on CPU.
        assert_eq!(ids, [1, 3, 2]);
        for (id, logprob) in got.top {
            assert!((logprob - (scores[id as usize] - normalizer)).abs() < 1e-6);
        }
        assert!(logprobs(&scores, 0, 0).top.is_empty());
    }
}
