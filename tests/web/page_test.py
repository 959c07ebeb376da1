"""The browser page (web/, crates/nexttoken-web) in a real headless Chromium, driven by Playwright.

Run by `cargo xtask web --test`, which builds the page and the native binary first. Checks:
- on WebGPU (Chromium's SwiftShader adapter: Vulkan on the CPU) and on the CPU backend, the page
  generates every single-prompt case of tests/goldens/nexttoken-tiny-shakespeare.json greedily,
  and its ids equal the native flex build's (`nexttoken generate --json`) and Hugging Face's;
- without WebGPU, "WebGPU, else CPU" falls back to the CPU with a visible notice, and "WebGPU
  only" shows an error;
- bad input shows its message in the page: a file that is not safetensors, a config of another
  model, a missing config.json.
Prints the id table and the figures, and writes a screenshot of the page after a generation.
"""

import argparse
import functools
import http.server
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests/goldens/nexttoken-tiny-shakespeare.json"
BUNDLED = ROOT / "models/nexttoken-tiny-shakespeare"
# Chromium's WebGPU on a machine without a GPU: SwiftShader's Vulkan, which headless Chromium
# offers only when asked.
WEBGPU = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-features=Vulkan"]
# Generous: SwiftShader compiles every kernel on the CPU the first time.
TIMEOUT_MS = 600_000

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def serve(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def wait_until_settled(page, statuses):
    page.wait_for_function(
        f"window.nexttoken && {json.dumps(statuses)}.includes(window.nexttoken.status)",
        timeout=TIMEOUT_MS,
    )
    return page.evaluate("window.nexttoken")


def open_page(browser, url, console):
    page = browser.new_page(viewport={"width": 900, "height": 900})
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"page error: {error}"))
    page.goto(url)
    return page


def generate(page, prompt, new_tokens):
    """Fills the form and clicks Generate, as a user would; the page's state after it."""
    page.fill("#prompt", prompt)
    page.fill("#max_new_tokens", str(new_tokens))
    page.evaluate("window.nexttoken.status = 'asked'")
    # The click returns once the page has handled it, and the page's first step runs on its
    # thread: on SwiftShader a new prompt length compiles kernels for tens of seconds.
    page.click("#generate", timeout=TIMEOUT_MS)
    return wait_until_settled(page, ["done", "error"])


def native_ids(nexttoken, prompt, new_tokens):
    output = subprocess.run(
        [nexttoken, "generate", "--json", "-n", str(new_tokens), "--backend", "flex", prompt],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.splitlines()[0])["ids"]


def run_backend(browser, base, backend, cases, new_tokens, console):
    """Every case on one page: load once (autorun does the first case), then the form."""
    first = cases[0]
    url = (
        f"{base}/?backend={backend}&autorun=1&max_new_tokens={new_tokens}"
        f"&prompt={quote(first['prompts'][0])}"
    )
    page = open_page(browser, url, console)
    state = wait_until_settled(page, ["done", "error"])
    if state["status"] == "error":
        check(False, f"{backend}: the page failed: {state['error']}")
        return page, {}, state
    results = {first["name"]: state}
    for case in cases[1:]:
        results[case["name"]] = generate(page, case["prompts"][0], new_tokens)
    return page, results, state


def bad_input(browser, base, console):
    page = open_page(browser, f"{base}/?backend=cpu", console)
    wait_until_settled(page, ["ready", "error"])
    config = BUNDLED / "config.json"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        not_safetensors = tmp / "model.safetensors"
        not_safetensors.write_text("<html>404 Not Found</html>")
        llama = tmp / "config.json"
        llama.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32}))
        other = ROOT / "tests/fixtures/hub-configs/gpt2.config.json"
        cases = [
            ("a file that is not safetensors", [not_safetensors, config], "safetensors"),
            ("a config of another architecture", [BUNDLED / "model.safetensors", llama], "config"),
            ("GPT-2 124M's config beside the bundled weights", [BUNDLED / "model.safetensors", other], "config"),
            ("no config.json", [BUNDLED / "model.safetensors"], "config.json"),
        ]
        for what, files, expected in cases:
            page.set_input_files("#files", [str(f) for f in files])
            page.click("#load")
            state = wait_until_settled(page, ["ready", "error"])
            shown = page.inner_text("#error") if page.is_visible("#error") else ""
            check(
                state["status"] == "error" and expected in shown,
                f"bad input, {what}: the page says {shown!r}",
            )


def no_webgpu(playwright, chromium, base, console):
    # Headless Chromium without the flags: navigator.gpu is there, but it has no adapter.
    browser = playwright.chromium.launch(executable_path=chromium, headless=True)
    try:
        page = open_page(browser, f"{base}/?backend=auto&autorun=1&max_new_tokens=4", console)
        state = wait_until_settled(page, ["done", "error"])
        notice = page.inner_text("#notice") if page.is_visible("#notice") else ""
        check(
            state["status"] == "done" and "CPU" in (state["backend"] or "") and "CPU" in notice,
            f"no WebGPU, 'WebGPU, else CPU': ran on {state['backend']!r} with the notice {notice!r}",
        )
        page = open_page(browser, f"{base}/?backend=webgpu", console)
        state = wait_until_settled(page, ["ready", "error"])
        shown = page.inner_text("#error") if page.is_visible("#error") else ""
        check(
            state["status"] == "error" and "WebGPU" in shown,
            f"no WebGPU, 'WebGPU only': the page says {shown!r}",
        )
    finally:
        browser.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, required=True, help="the built page (cargo xtask web)")
    parser.add_argument("--nexttoken", type=Path, required=True, help="the native binary")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshot", type=Path, required=True)
    parser.add_argument("--results", type=Path, help="write the figures and ids here as JSON")
    args = parser.parse_args()

    goldens = json.loads(GOLDENS.read_text())
    new_tokens = goldens["new_tokens"]
    cases = [case for case in goldens["cases"] if len(case["prompts"]) == 1]
    server, base = serve(args.site)
    console = []
    figures = {}
    pages = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=WEBGPU)
        try:
            for backend in ["webgpu", "cpu"]:
                page, results, first = run_backend(browser, base, backend, cases, new_tokens, console)
                pages[backend] = results
                if not results:
                    continue
                check(
                    ("WebGPU" if backend == "webgpu" else "CPU") in first["backend"],
                    f"{backend}: the page runs on {first['backend']!r}",
                )
                decode = [r["summary"]["generated_tokens_per_s"] for r in results.values() if r.get("summary")]
                figures[backend] = {
                    "backend": first["backend"],
                    "page_load_to_first_token_ms": first["pageToFirstTokenMs"],
                    "first_token_ms": first["firstTokenMs"],
                    "prompt_tokens_per_s": first["summary"]["prompt_tokens_per_s"],
                    "generated_tokens_per_s_median": sorted(decode)[len(decode) // 2],
                }
                if backend == "webgpu":
                    generate(page, "Every effort moves you", 48)
                    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(args.screenshot), full_page=True)
                    print(f"screenshot: {args.screenshot}")
            bad_input(browser, base, console)
        finally:
            browser.close()
        no_webgpu(playwright, args.chromium, base, console)
    server.shutdown()

    print("\n| case | prompt ids | WebGPU page | CPU page | native flex | Hugging Face |")
    print("| --- | --: | --- | --- | --- | --- |")
    table = []
    for case in cases:
        hf = case["greedy_ids"][0]
        native = native_ids(args.nexttoken, case["prompts"][0], new_tokens)
        row = {"case": case["name"], "hugging_face": hf, "native_flex": native}
        marks = []
        for backend in ["webgpu", "cpu"]:
            state = pages.get(backend, {}).get(case["name"])
            summary = (state or {}).get("summary") or {}
            ids = summary.get("ids")
            row[backend] = ids
            check(
                summary.get("prompt_ids") == case["input_ids"][0],
                f"{backend} {case['name']}: prompt ids as Hugging Face's tokenizer's",
            )
            check(ids == native == hf, f"{backend} {case['name']}: ids equal native flex's and Hugging Face's")
            marks.append("same" if ids == hf else f"differs: {ids}")
        table.append(row)
        print(
            f"| {case['name']} | {len(case['input_ids'][0])} | {marks[0]} | {marks[1]} | "
            f"{'same' if native == hf else 'differs'} | {len(hf)} ids |"
        )
    print("\nfigures:", json.dumps(figures, indent=2))
    if args.results:
        args.results.write_text(json.dumps({"figures": figures, "ids": table}, indent=1))
    if failures:
        print("\nbrowser console:\n" + "\n".join(console[-40:]))
        print(f"\n{len(failures)} browser check(s) failed")
        sys.exit(1)
    print("\nall browser checks passed")


if __name__ == "__main__":
    main()
