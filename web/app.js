// The page around nexttoken-web: loads a checkpoint onto WebGPU (or the CPU), streams the
// generated text in, and shows the speeds. URL parameters preset the form, for links and
// tests: backend=auto|webgpu|cpu, prompt=..., max_new_tokens=N, autorun=1 (load and generate).
// window.nexttoken exposes the state (status, backend, summary, error, notice) to tests.
import init, { Generator } from "./pkg/nexttoken_web.js";

// burn's WebGPU kernels (cubecl 0.11) declare `enable subgroups;` in their WGSL, but wgpu 30's
// browser backend never asks the device for the "subgroups" feature (its feature table lacks
// it), so the browser rejects every matrix product. Asking for it here, where the adapter has
// it, makes the kernels valid; an adapter without it is refused in `webgpuProblem`.
if (globalThis.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = function (descriptor = {}) {
    const required = [...(descriptor.requiredFeatures ?? [])];
    if (this.features.has("subgroups") && !required.includes("subgroups")) {
      required.push("subgroups");
    }
    return requestDevice.call(this, { ...descriptor, requiredFeatures: required });
  };
}

// Some of those kernels call subgroupShuffle where Chromium's uniformity analysis cannot prove
// every invocation of the subgroup takes part (Naga, wgpu's native compiler, does not check):
// Chromium rejected the matrix product of a 20-token prompt. WGSL lets a module turn that rule
// off, and the kernels run as they do natively.
if (globalThis.GPUDevice) {
  const createShaderModule = GPUDevice.prototype.createShaderModule;
  const directive = "enable subgroups;\n";
  GPUDevice.prototype.createShaderModule = function (descriptor) {
    const code = descriptor.code.includes(directive)
      ? descriptor.code.replace(directive, `${directive}diagnostic(off, subgroup_uniformity);\n`)
      : descriptor.code;
    return createShaderModule.call(this, { ...descriptor, code });
  };
}

// Why this browser's WebGPU cannot run the model, or null when it can; and what the adapter
// says it is.
let adapterName = null;
async function webgpuProblem() {
  if (!navigator.gpu) {
    return "this browser has no WebGPU (navigator.gpu is missing)";
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    return "this browser's WebGPU offers no adapter (no usable GPU, or WebGPU is turned off)";
  }
  const info = adapter.info ?? {};
  adapterName = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ");
  if (!adapter.features.has("subgroups")) {
    return "this WebGPU adapter lacks the subgroups feature that burn's kernels need";
  }
  return null;
}

const BUNDLED = "models/nexttoken-tiny-shakespeare";
const $ = (id) => document.getElementById(id);
const state = (window.nexttoken = {
  status: "starting",
  backend: null,
  notice: null,
  error: null,
  summary: null,
  firstTokenMs: null,
});

let generator = null;
let stopRequested = false;

function setStatus(status, text) {
  state.status = status;
  $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  state.error = message;
  setStatus("error", "failed: see the message above");
}

function showNotice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
  state.notice = message;
}

function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`could not fetch ${url}: HTTP ${response.status}`);
  }
  return response;
}

// The checkpoint to load: the bundled one, served beside the page, or the user's two files.
async function checkpoint() {
  const source = document.querySelector("input[name=source]:checked").value;
  if (source === "bundled") {
    const [weights, config] = await Promise.all([
      fetchOk(`${BUNDLED}/model.safetensors`).then(async (r) => new Uint8Array(await r.arrayBuffer())),
      fetchOk(`${BUNDLED}/config.json`).then((r) => r.text()),
    ]);
    return { name: `${BUNDLED}/model.safetensors`, weights, config };
  }
  const files = Array.from($("files").files);
  const weightsFile = files.find((f) => f.name.endsWith(".safetensors"));
  const configFile = files.find((f) => f.name.endsWith(".json"));
  if (!weightsFile || !configFile) {
    throw new Error(
      "pick two files: the checkpoint's model.safetensors and its config.json (hold Ctrl or Shift to select both)",
    );
  }
  return {
    name: weightsFile.name,
    weights: new Uint8Array(await weightsFile.arrayBuffer()),
    config: await configFile.text(),
  };
}

// Loads onto the chosen backend. "auto" takes WebGPU when the browser has it and falls back to
// the CPU, with a notice, when it does not or when the device cannot hold the model.
async function loadOnto(choice, model) {
  const load = (backend) => Generator.load(model.weights, model.config, model.name, backend);
  if (choice === "cpu") {
    return load("cpu");
  }
  const why = await webgpuProblem();
  if (why) {
    if (choice === "webgpu") {
      throw new Error(`${why}: choose the CPU backend, or a browser with WebGPU enabled`);
    }
    showNotice(`${why}: running on the CPU instead, which is slower`);
    return load("cpu");
  }
  try {
    return await load("webgpu");
  } catch (error) {
    if (choice === "webgpu" || error.name !== "WebGpuError") {
      throw error;
    }
    showNotice(`${messageOf(error)}. Running on the CPU instead.`);
    return load("cpu");
  }
}

async function loadModel() {
  $("generate").disabled = true;
  $("error").hidden = true;
  state.error = null;
  showNotice(null);
  generator?.free();
  generator = null;
  setStatus("loading", "loading the model…");
  const started = performance.now();
  try {
    const model = await checkpoint();
    generator = await loadOnto($("backend").value, model);
    const loadMs = performance.now() - started;
    state.backend =
      generator.backend === "WebGPU" && adapterName
        ? `WebGPU (${adapterName})`
        : generator.backend;
    $("stat-backend").textContent = state.backend;
    const millions = (generator.parameters / 1e6).toFixed(1);
    const megabytes = (model.weights.length / 2 ** 20).toFixed(1);
    $("stat-model").textContent =
      `${model.name}: ${millions}M parameters, ${megabytes} MiB, context ${generator.context_length}`;
    $("stat-load").textContent = `${loadMs.toFixed(0)} ms`;
    $("generate").disabled = false;
    setStatus("ready", "ready");
  } catch (error) {
    showError(messageOf(error));
  }
}

function options() {
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  return {
    max_new_tokens: number("max_new_tokens") ?? 64,
    temperature: number("temperature") ?? 0,
    top_k: number("top_k"),
    top_p: number("top_p"),
    min_p: number("min_p"),
    repeat_penalty: number("repeat_penalty"),
    seed: number("seed") ?? 0,
  };
}

// Hands the thread back to the browser so that it paints the text so far: at most every 30 ms,
// through a task (setTimeout would be clamped to 4 ms a call).
let lastYield = 0;
function yieldToBrowser() {
  if (performance.now() - lastYield < 30) {
    return null;
  }
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      lastYield = performance.now();
      resolve(true);
    };
    channel.port2.postMessage(null);
  });
}

async function generate() {
  if (!generator) {
    return;
  }
  stopRequested = false;
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("error").hidden = true;
  state.summary = null;
  const output = $("output");
  output.replaceChildren();
  const prompt = $("prompt").value;
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  const generated = document.createTextNode("");
  output.append(promptSpan, generated);
  setStatus("generating", "generating…");
  const started = performance.now();
  let first = null;
  try {
    const summary = JSON.parse(
      await generator.generate(prompt, JSON.stringify(options()), (text) => {
        if (first === null) {
          first = performance.now();
        }
        generated.appendData(text);
        return stopRequested ? false : yieldToBrowser();
      }),
    );
    state.summary = summary;
    state.firstTokenMs = first === null ? null : first - started;
    // performance.now() counts from the start of the page's navigation.
    // The page's figure counts from the start of its navigation: only the first generation's.
    const firstOfPage = state.pageToFirstTokenMs === undefined;
    if (firstOfPage) {
      state.pageToFirstTokenMs = first;
    }
    $("stat-first").textContent =
      first === null
        ? "–"
        : `${(first - started).toFixed(0)} ms after asking` +
          (firstOfPage ? `, ${first.toFixed(0)} ms after the page started loading` : "");
    $("stat-prompt").textContent =
      `${summary.prompt_ids.length} tokens, ${summary.prompt_tokens_per_s.toFixed(1)} tokens/s`;
    $("stat-generated").textContent =
      `${summary.ids.length} tokens, ${summary.generated_tokens_per_s.toFixed(1)} tokens/s (${summary.finish})`;
    setStatus("done", "done");
  } catch (error) {
    showError(messageOf(error));
  } finally {
    $("generate").disabled = generator === null;
    $("stop").disabled = true;
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  for (const id of ["backend", "prompt", "max_new_tokens"]) {
    if (params.has(id)) {
      $(id).value = params.get(id);
    }
  }
  $("load").onclick = loadModel;
  $("generate").onclick = generate;
  $("stop").onclick = () => {
    stopRequested = true;
  };
  $("files").onchange = () => {
    document.querySelector("input[name=source][value=files]").checked = true;
  };
  try {
    await init();
  } catch (error) {
    showError(`the WebAssembly module did not load: ${messageOf(error)}`);
    return;
  }
  await loadModel();
  if (params.get("autorun") === "1" && generator) {
    await generate();
  }
}

main();
