"""Hugging Face transformers' side of `nexttoken bench`: the same tests on the same checkpoint.

- ppN: `generate` with a prompt of N random ids and max_new_tokens=1 (the prefill), N / time;
- tgN: `generate` of N ids after a one-id prompt, greedy, use_cache=True, N / time.

With --batch-size B, each test runs B rows in one batch and reports B × N / time.

Each test runs once untimed, then -r times; one JSON line per test with nexttoken's fields
(`nexttoken bench --json`), so `cargo xtask speed` can put the two side by side.

    python benches/hf_bench.py --model DIR -p 512 -n 128 -r 5 -t 2 --batch-size 1,4,16
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face GPT-2 checkpoint directory")
    parser.add_argument("-p", "--n-prompt", default="512", help="prompt lengths, comma-separated")
    parser.add_argument("-n", "--n-gen", default="128", help="tokens to generate, comma-separated")
    parser.add_argument("--batch-size", default="1", help="rows per batch, comma-separated")
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"], help="the weights' dtype")
    parser.add_argument("-t", "--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype=DTYPES[args.dtype]).eval()
    load_ms = (time.perf_counter() - start) * 1e3
    vocab = model.config.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    name = os.path.basename(os.path.normpath(args.model))

    batches = [int(b) for b in args.batch_size.split(",")]
    tests = [("pp", int(n), b) for n in args.n_prompt.split(",") if int(n) > 0 for b in batches]
    tests += [("tg", int(n), b) for n in args.n_gen.split(",") if int(n) > 0 for b in batches]
    rng = np.random.default_rng(0)

    def run(kind, n, batch):
        prompt_len, new_tokens = (n, 1) if kind == "pp" else (1, n)
        ids = torch.tensor(rng.integers(0, vocab, size=(batch, prompt_len)), dtype=torch.long)
        begin = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=model.config.eos_token_id,
            )
        elapsed = time.perf_counter() - begin
        assert out.shape[1] == prompt_len + new_tokens, out.shape
        return batch * n / elapsed

    for kind, n, batch in tests:
        run(kind, n, batch)  # warm-up
        reset_peak_rss()
        samples = [run(kind, n, batch) for _ in range(args.repetitions)]
        record = {
            "model": name,
            "n_params": n_params,
            "backend": "transformers",
            "dtype": args.dtype,
            "threads": torch.get_num_threads(),
            "kv_cache": True,
            "test": f"{kind}{n}",
            "n_prompt": n if kind == "pp" else 1,
            "n_gen": 1 if kind == "pp" else n,
            "batch_size": batch,
            "repetitions": args.repetitions,
            "load_ms": load_ms,
            "tokens_per_s": statistics.fmean(samples),
            "stddev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "samples_tokens_per_s": samples,
            "peak_rss_bytes": peak_rss_bytes(),
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
