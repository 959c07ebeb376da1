"""nexttoken from Python beside the nexttoken command and beside transformers, same threads.

Three measurements, alternating in each round so that the machine's drift falls on all sides:
- generate: one prompt, `-n` new tokens (end of text ignored), wall time of the call from
  Python (`Model.generate`, `GPT2LMHeadModel.generate(do_sample=False)`) and the command's own
  prefill + decode time (`nexttoken generate --json`), all without the load;
- score: the first `--texts` speeches of tinyshakespeare.txt, each text's log-likelihood in
  windows of the context (`Model.score`; transformers by examples/ray_score.py's
  TransformersScorer, the same recipe), texts/s and tokens/s.

    python benches/python_bench.py --model ~/.cache/nexttoken/gpt2-124m-random --threads 2
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "examples"))

PROMPT = "Every effort moves you forward, and the king speaks to his people of the war"


def timed(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="a Hugging Face GPT-2 folder (config.json, model.safetensors)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-n", type=int, default=128, help="new tokens per generate")
    parser.add_argument("--texts", type=int, default=200, help="texts to score")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cli", type=Path, default=ROOT / "target" / "release" / "nexttoken")
    parser.add_argument("--corpus", type=Path,
                        default=ROOT.parent / "shared" / "corpus" / "tinyshakespeare.txt")
    args = parser.parse_args()

    import torch
    from transformers import GPT2LMHeadModel

    import nexttoken
    from common import gpt2_tokenizer
    from ray_score import TransformersScorer

    torch.set_num_threads(args.threads)
    ours = nexttoken.Model.load(args.model, threads=args.threads)
    theirs = GPT2LMHeadModel.from_pretrained(args.model).eval()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        gpt2_tokenizer().save_pretrained(tokenizer_dir)
        scorer = TransformersScorer(str(args.model), args.threads, tokenizer=tokenizer_dir)
    texts = [s for s in args.corpus.read_text().split("\n\n") if s.strip()][: args.texts]
    tokens = sum(len(ours.tokenizer.encode(t)) for t in texts)
    prompt_ids = ours.tokenizer.encode(PROMPT)

    def cli_generate():
        out = subprocess.run(
            [str(args.cli), "generate", "--json", "-m", str(args.model), "-t", str(args.threads),
             "-n", str(args.n), "--ignore-eos", PROMPT],
            check=True, capture_output=True, text=True).stdout
        batch = json.loads(out.splitlines()[0])["timings"]["batch"]
        return (batch["prefill_ms"] + batch["decode_ms"]) / 1000

    def hf_generate():
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.n,
                            min_new_tokens=args.n, do_sample=False, pad_token_id=50256)

    results = {k: [] for k in ["python", "cli", "transformers", "score", "hf score"]}
    # First-call costs out of the timings.
    ours.generate(PROMPT, max_new_tokens=4)
    with torch.inference_mode():
        theirs(torch.tensor([prompt_ids]))
    for _ in range(args.rounds):
        results["python"].append(args.n / timed(
            lambda: ours.generate(PROMPT, max_new_tokens=args.n, ignore_eos=True))[0])
        results["cli"].append(args.n / cli_generate())
        results["transformers"].append(args.n / timed(hf_generate)[0])
        results["score"].append(timed(lambda: ours.score(texts))[0])
        results["hf score"].append(timed(lambda: [scorer.score(t) for t in texts])[0])

    def row(name, values, unit, peer=None):
        mean = statistics.mean(values)
        ratio = ""
        if peer:
            ratios = [v / p for v, p in zip(values, results[peer])]
            ratio = f"{min(ratios):.2f}-{max(ratios):.2f}x vs {peer}"
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {mean:.1f} {unit} | {rounds} | {ratio} |")

    print(f"model: {args.model}, {args.threads} thread(s), {args.rounds} rounds; generate: "
          f"{len(prompt_ids)}-token prompt + {args.n} tokens; score: {len(texts)} texts, "
          f"{tokens} tokens")
    print("| measurement | mean | rounds | ratio per round |")
    print("| --- | --: | --- | --: |")
    row("nexttoken Model.generate", results["python"], "tok/s", "cli")
    row("nexttoken generate (CLI)", results["cli"], "tok/s")
    row("transformers generate", results["transformers"], "tok/s")
    ratios = [p / t for p, t in zip(results["python"], results["transformers"])]
    print(f"| Model.generate vs transformers | | | {min(ratios):.2f}-{max(ratios):.2f}x |")
    results["score"] = [len(texts) / s for s in results["score"]]
    results["hf score"] = [len(texts) / s for s in results["hf score"]]
    row("nexttoken Model.score", results["score"], "texts/s", "hf score")
    row("transformers score", results["hf score"], "texts/s")


if __name__ == "__main__":
    main()
