//! The page's side of the crate: what JavaScript calls.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use burn::tensor::{DType, Device};
use nexttoken_generate::{GenerationConfig, SamplingParams, Selection, TextGenerator, TextSession};
use nexttoken_model::{Checkpoint, Gpt2Config};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::fit;

/// Runs when the module loads: a Rust panic shows its message in the console, not only
/// "unreachable".
#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A GPT-2 checkpoint loaded on a device, ready to generate.
#[wasm_bindgen]
pub struct Generator {
    inner: Rc<TextGenerator>,
    backend: String,
}

#[wasm_bindgen]
impl Generator {
    /// Loads a checkpoint, the bytes of its `model.safetensors` and the text of its
    /// `config.json`, onto `backend`: `"webgpu"` or `"cpu"`. `name` stands for the file in
    /// error messages. Rejects with an `Error` whose message names the problem and whose
    /// `name` says whose it is: `WebGpuError` (no WebGPU, a model too large for the device:
    /// the CPU may still run it) or `ModelError` (a file that is not safetensors, a config of
    /// another model).
    pub async fn load(
        weights: Vec<u8>,
        config_json: String,
        name: String,
        backend: String,
    ) -> Result<Generator, JsValue> {
        let mut checkpoint = Checkpoint::from_bytes(&name, weights, &config_json)
            .map_err(|e| named_error("ModelError", e))?;
        let (device, description) = match backend.as_str() {
            "webgpu" => webgpu(checkpoint.config()).await?,
            "cpu" => (Device::flex(), "CPU (burn-flex, wasm SIMD128)".to_owned()),
            other => {
                return Err(JsError::new(&format!(
                    "unknown backend {other:?}: use \"webgpu\" or \"cpu\""
                ))
                .into());
            }
        };
        // float32 everywhere: WebGPU's f16 is an optional feature, and bf16 has none.
        let model = checkpoint
            .load_as(&device, DType::F32)
            .map_err(|e| named_error("ModelError", e))?;
        let config = checkpoint.config().clone();
        Ok(Generator {
            inner: Rc::new(
                TextGenerator::new(model, config).map_err(|e| named_error("ModelError", e))?,
            ),
            backend: description,
        })
    }

    /// Where the model runs, for the page to show: `WebGPU (<adapter>)` or the CPU.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// The model's number of parameters.
    #[wasm_bindgen(getter)]
    pub fn parameters(&self) -> f64 {
        self.inner.config().num_parameters() as f64
    }

    /// The model's context length, in tokens.
    #[wasm_bindgen(getter)]
    pub fn context_length(&self) -> usize {
        self.inner.config().n_positions
    }

    /// Generates a continuation of `prompt`. `options` is the JSON of [`Options`] (greedy
    /// unless `temperature` is above 0). `on_text(text)` receives each new piece of text as it
    /// forms whole characters; if it returns a promise the next step waits for it, and if it
    /// returns (or resolves to) `false` the generation stops there. Resolves to the JSON of a
    /// [`Summary`].
    pub fn generate(
        &self,
        prompt: String,
        options: String,
        on_text: js_sys::Function,
    ) -> js_sys::Promise {
        let generator = Rc::clone(&self.inner);
        wasm_bindgen_futures::future_to_promise(async move {
            let options: Options = serde_json::from_str(&options)
                .map_err(|e| JsError::new(&format!("invalid generation options: {e}")))?;
            let summary = generate(&generator, &prompt, &options, &on_text).await?;
            let json = serde_json::to_string(&summary)
                .map_err(|e| JsError::new(&format!("cannot describe the result: {e}")))?;
            Ok(JsValue::from_str(&json))
        })
    }
}

/// What [`Generator::generate`] is asked to do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    pub max_new_tokens: usize,
    /// 0 (the default) is greedy.
    #[serde(default)]
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub seed: u64,
}

/// What [`Generator::generate`] made, and how fast.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    /// `eos`, `length`, or `stopped` when `on_text` ended it.
    pub finish: String,
    pub prompt_tokens_per_s: f64,
    pub generated_tokens_per_s: f64,
}

async fn generate(
    generator: &TextGenerator,
    prompt: &str,
    options: &Options,
    on_text: &js_sys::Function,
) -> Result<Summary, JsError> {
    let mut config = GenerationConfig {
        seed: options.seed,
        ..generator.generation_config(options.max_new_tokens)
    };
    let sampling = SamplingParams {
        temperature: options.temperature,
        top_k: options.top_k,
        top_p: options.top_p,
        min_p: options.min_p,
        repeat_penalty: options.repeat_penalty.unwrap_or(1.0),
        ..SamplingParams::default()
    };
    config.selection = Selection::new(sampling).map_err(|e| JsError::new(&e.to_string()))?;
    let prompt_ids = generator.tokenizer().encode(prompt);
    let mut session: TextSession<'_> = generator.session();
    session.add_ids(prompt_ids.clone(), &config, &[])?;
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut finish = "stopped".to_owned();
    'steps: while !session.is_finished() {
        let step = session.step_async().await;
        device_errors()?;
        for chunk in step?.chunks {
            ids.push(chunk.id);
            text.push_str(&chunk.text);
            if let Some(reason) = chunk.finish {
                finish = reason.as_str().to_owned();
            }
            if !chunk.text.is_empty() && !call(on_text, &chunk.text).await? {
                break 'steps;
            }
        }
    }
    let stats = session.stats();
    Ok(Summary {
        prompt_ids,
        ids,
        text,
        finish,
        prompt_tokens_per_s: stats.prompt_tokens_per_s(),
        generated_tokens_per_s: stats.generated_tokens_per_s(),
    })
}

/// Calls the page's `on_text(text)`, waits for it if it returns a promise, and says whether to
/// go on (anything but `false`).
async fn call(on_text: &js_sys::Function, text: &str) -> Result<bool, JsError> {
    let failed = |e: JsValue| JsError::new(&format!("on_text failed: {e:?}"));
    let returned = on_text
        .call1(&JsValue::NULL, &JsValue::from_str(text))
        .map_err(failed)?;
    let returned = match returned.dyn_into::<js_sys::Promise>() {
        Ok(promise) => JsFuture::from(promise).await.map_err(failed)?,
        Err(value) => value,
    };
    Ok(returned.as_bool() != Some(false))
}

thread_local! {
    /// The WebGPU device, its description and its largest buffer: burn's runtime is set up
    /// once per page, so later models reuse it.
    static WEBGPU: RefCell<Option<(Device, String, u64)>> = const { RefCell::new(None) };
}

/// burn's wgpu device on the browser's WebGPU, after checking that `config`'s largest tensor
/// fits in one of its buffers.
async fn webgpu(config: &Gpt2Config) -> Result<(Device, String), JsValue> {
    let known = WEBGPU.with_borrow(|known| known.clone());
    let (device, description, room) = match known {
        Some(known) => known,
        None => {
            let (device, setup) = Device::wgpu_options()
                .init_with_setup_async()
                .await
                .map_err(|e| {
                    named_error(
                        "WebGpuError",
                        format!(
                            "WebGPU could not start ({e}): this browser or its GPU does not \
                             offer it; run on the CPU instead"
                        ),
                    )
                })?;
            // A browser reports a kernel WebGPU rejects (or any other device error) only to
            // this handler; the kernel's results would be whatever its buffer held.
            setup
                .device
                .on_uncaptured_error(Arc::new(|error| record_device_error(error.to_string())));
            let limits = setup.device.limits();
            let room =
                u64::from(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size);
            let info = setup.adapter.get_info();
            // Browsers keep the adapter's name to themselves (the page adds what they tell).
            let description = match info.name.as_str() {
                "" => "WebGPU".to_owned(),
                name => format!("WebGPU ({name})"),
            };
            let known = (device, description, room);
            WEBGPU.set(Some(known.clone()));
            known
        }
    };
    fit::check(config, room).map_err(|message| named_error("WebGpuError", message))?;
    Ok((device, description))
}

/// A JavaScript `Error` with `name` set, so that the page can tell whose problem it is.
fn named_error(name: &str, message: impl std::fmt::Display) -> JsValue {
    let error = js_sys::Error::new(&message.to_string());
    error.set_name(name);
    error.into()
}

/// The first error WebGPU reported since the last [`device_errors`].
static DEVICE_ERROR: Mutex<Option<String>> = Mutex::new(None);

fn record_device_error(message: String) {
    web_sys::console::error_1(&JsValue::from_str(&message));
    if let Ok(mut first) = DEVICE_ERROR.lock() {
        first.get_or_insert(message);
    }
}

/// Fails with the first error WebGPU reported, if any: the step's results cannot be trusted.
fn device_errors() -> Result<(), JsError> {
    let reported = DEVICE_ERROR.lock().ok().and_then(|mut first| first.take());
    match reported {
        Some(message) => Err(JsError::new(&format!(
            "WebGPU reported an error, so this step's results cannot be trusted: {message}"
        ))),
        None => Ok(()),
    }
}
