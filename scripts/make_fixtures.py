"""Makes nexttoken's test fixtures: tiny GPT-2 checkpoints and Hugging Face reference outputs.

For each model it records, per prompt, the ids Hugging Face's GPT-2 tokenizer gives, the greedy
ids of the book's loop (crop to the context, last position, softmax, argmax, append) run on
Hugging Face's GPT2LMHeadModel, the top logits and top-2 margin of every step, and the full
last-position logits of the first step. Where no cropping happens, the loop is checked against
`model.generate(do_sample=False)` as well.

    python scripts/make_fixtures.py --corpus ../shared/corpus        # or: cargo xtask goldens

Batches of prompts of different lengths (`ragged_*` cases) are checked against each row's own
loop and, where no row passes the context, against Hugging Face's left-padded batched
`generate(do_sample=False)`; one stops a row at end-of-text while the others go on, one has rows
pass the context at different steps.

The single-prompt cases are recorded again with the model loaded in float16 and in bfloat16
(`torch_dtype=`, as `nexttoken --dtype` converts at load): tests/goldens/half/<model>.<dtype>.json.
In half precision Hugging Face's cached `generate` and the uncached loop may part at a near-tie;
the loop's ids are the reference, and such a case is reported.

Writes tests/fixtures/<model>/ (checkpoints) and tests/goldens/<model>.json + .logits.safetensors.
"""

import argparse
import json
from pathlib import Path

import safetensors.torch
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from common import ROOT, gpt2_tokenizer, train

FORMAT_VERSION = 1
NEW_TOKENS = 24
EOT = 50256

PROMPTS = {
    "one_token": "The",
    "few_tokens": "Every effort moves you",
    "hello": "Hello, I am",
    "unicode": "Café, 日本語 and 🦀🚀: ",
    "end_of_text": "<|endoftext|>First Citizen:",
}
# Long enough to pass every fixture's context length, so the loop must crop from step 0.
LONG_PROMPT = " ".join(f"Line {i} of the play, and the king speaks." for i in range(40))
BATCH = ["Every effort moves you", "Hello, I am"]  # 4 tokens each


def tiny_config(**sizes):
    return GPT2Config(
        vocab_size=50257, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=EOT, eos_token_id=EOT, **sizes,
    )


def make_random(out: Path):
    torch.manual_seed(0)
    # A wide initializer spreads the logits, so greedy choices are not near-ties.
    config = tiny_config(n_layer=2, n_head=2, n_embd=16, n_positions=32, initializer_range=0.3)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)


def make_trained(out: Path, corpus: Path, tokenizer, seconds: float):
    torch.manual_seed(1)
    config = tiny_config(n_layer=2, n_head=4, n_embd=32, n_positions=64)
    model = GPT2LMHeadModel(config)
    data = torch.tensor(tokenizer.encode((corpus / "the-verdict.txt").read_text()), dtype=torch.long)
    train(model, data, seconds=seconds, lr=1e-2, block=64)
    model.save_pretrained(out, safe_serialization=True)


# Ids whose logits every half-precision step records beside its top five: "!", ".", "\n", " the"
# and end-of-text, so that a kernel wrong away from the top shows too.
FIXED_IDS = [0, 13, 198, 262, EOT]


@torch.no_grad()
def reference_loop(model, ids: torch.Tensor, steps: int, f32_model=None):
    """The book's generate_text_simple, on Hugging Face's model, recording every step.

    With `f32_model` (the same checkpoint in float32, `model` in half precision) each step also
    records, on the loop's own ids (so every step is teacher-forced on Hugging Face's choices),
    the half-precision logits of its top five and FIXED_IDS and float32's for the same ids: the
    size of the dtype's own error there, which the tests turn into that step's tolerance."""
    context = model.config.n_positions
    records, first_logits = [], None
    for _ in range(steps):
        window = ids[:, -context:]
        logits = model(window).logits[:, -1, :]
        if first_logits is None:
            first_logits = logits.clone()
        probs = torch.softmax(logits, dim=-1)
        next_ids = torch.argmax(probs, dim=-1, keepdim=True)
        top = torch.topk(logits, 5, dim=-1)
        record = {
            "topk": [[[int(i), float(v)] for i, v in zip(row_i, row_v)]
                     for row_i, row_v in zip(top.indices, top.values)],
            "top2_gap": [float(row[0] - row[1]) for row in top.values],
        }
        if f32_model is not None:
            wide = f32_model(window).logits[:, -1, :]
            record["forced"] = []
            for row, row_top in enumerate(top.indices.tolist()):
                chosen = list(dict.fromkeys(row_top + FIXED_IDS))
                record["forced"].append({
                    "ids": chosen,
                    "half": logits[row, chosen].float().tolist(),
                    "f32": wide[row, chosen].tolist(),
                })
        records.append(record)
        ids = torch.cat([ids, next_ids], dim=1)
    return ids, records, first_logits


def golden_case(model, tokenizer, name, prompts, logits_out, exact=True, f32_model=None):
    encoded = [tokenizer.encode(p) for p in prompts]
    ids = torch.tensor(encoded, dtype=torch.long)
    full, records, first_logits = reference_loop(model, ids, NEW_TOKENS, f32_model)
    greedy = full[:, ids.shape[1]:]
    if ids.shape[1] <= model.config.n_positions - NEW_TOKENS:
        # No cropping: Hugging Face's own generate must agree with the loop.
        model.generation_config.eos_token_id = None
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                            do_sample=False, pad_token_id=EOT)
        agree = torch.equal(hf[:, ids.shape[1]:], greedy)
        assert agree or not exact, f"{name}: generate disagrees with the loop"
        if not agree:
            print(f"    {name}: in {model.dtype} generate parts from the loop at a near-tie")
    logits_out[name] = first_logits.float().contiguous()
    gaps = [gap for record in records for gap in record["top2_gap"]]
    return {
        "name": name,
        "prompts": prompts,
        "input_ids": encoded,
        "greedy_ids": greedy.tolist(),
        "steps": records,
        "top2_gap_min": min(gaps),
        "crops": ids.shape[1] > model.config.n_positions,
    }


def prefix_prompt(tokenizer, tokens: int) -> str:
    """The first `tokens` tokens of LONG_PROMPT as text that encodes back to exactly them."""
    ids = tokenizer.encode(LONG_PROMPT)[:tokens]
    text = tokenizer.decode(ids)
    assert tokenizer.encode(text) == ids, f"a {tokens}-token prefix does not round-trip"
    return text


@torch.no_grad()
def hf_batched_greedy(model, encoded, eos):
    """Hugging Face's own batched generate, left-padded as it pads for generation."""
    longest = max(len(row) for row in encoded)
    ids = torch.tensor([[EOT] * (longest - len(row)) + row for row in encoded], dtype=torch.long)
    mask = torch.tensor([[0] * (longest - len(row)) + [1] * len(row) for row in encoded])
    model.generation_config.eos_token_id = eos
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                         pad_token_id=EOT, eos_token_id=eos)
    rows = []
    for row in out[:, longest:].tolist():
        # A finished row is padded after its end-of-text id.
        rows.append(row[:row.index(eos) + 1] if eos is not None and eos in row else row)
    return rows


def ragged_case(model, tokenizer, name, prompts, logits_out, eos=None, f32_model=None):
    """Rows of different lengths in one batch. The reference for each row is the book's loop on
    that row alone (stopping at `eos`); where no row passes the context it must equal Hugging
    Face's left-padded batched generate (in float32: in half precision the two may part at a
    near-tie). Steps after a row stopped hold nothing for it."""
    encoded = [tokenizer.encode(p) for p in prompts]
    context = model.config.n_positions
    rows, records, firsts = [], [], []
    for row in encoded:
        full, row_records, first = reference_loop(model, torch.tensor([row]), NEW_TOKENS, f32_model)
        new = full[0, len(row):].tolist()
        if eos is not None and eos in new:
            new = new[:new.index(eos) + 1]
        rows.append(new)
        records.append(row_records[:len(new)])
        firsts.append(first[0])
    crossing = [len(row) + NEW_TOKENS > context for row in encoded]
    if not any(crossing) and f32_model is None:
        assert hf_batched_greedy(model, encoded, eos) == rows, f"{name}: batched generate disagrees"
    logits_out[name] = torch.stack(firsts).float().contiguous()
    steps = []
    for step in range(NEW_TOKENS):
        topk = [r[step]["topk"][0] if step < len(r) else [] for r in records]
        gaps = [r[step]["top2_gap"][0] if step < len(r) else None for r in records]
        steps.append({"topk": topk, "top2_gap": gaps})
        if f32_model is not None:
            steps[-1]["forced"] = [r[step]["forced"][0] if step < len(r) else None for r in records]
    gaps = [gap for step in steps for gap in step["top2_gap"] if gap is not None]
    return {
        "name": name,
        "prompts": prompts,
        "input_ids": encoded,
        "greedy_ids": rows,
        "eos_token_id": eos,
        "steps": steps,
        "top2_gap_min": min(gaps),
        "crops": any(len(row) > context for row in encoded),
        "crosses_context": crossing,
    }


def ragged_cases(model, tokenizer, logits, f32_model=None):
    context = model.config.n_positions
    cases = [
        ragged_case(model, tokenizer, "ragged_one_token_beside_long",
                    ["The", prefix_prompt(tokenizer, min(20, context - NEW_TOKENS))], logits,
                    f32_model=f32_model),
        ragged_case(model, tokenizer, "ragged_three_lengths",
                    ["Hello, I am", "The", PROMPTS["unicode"]], logits, f32_model=f32_model),
    ]
    # End-of-text in the middle: an id some row produces from its third step on and another
    # row never produces, so that one row stops early while another runs to the end.
    prompts = ["Every effort moves you", "The", "Hello, I am"]
    alone = ragged_case(model, tokenizer, "probe", prompts, {})["greedy_ids"]

    def lengths(eos):
        return [row.index(eos) + 1 if eos in row else NEW_TOKENS for row in alone]

    eos = next(id for row in alone for id in row[2:]
               if min(lengths(id)) < NEW_TOKENS and max(lengths(id)) == NEW_TOKENS)
    case = ragged_case(model, tokenizer, "ragged_early_end_of_text", prompts, logits, eos=eos,
                       f32_model=f32_model)
    lengths = [len(row) for row in case["greedy_ids"]]
    assert min(lengths) < NEW_TOKENS and max(lengths) == NEW_TOKENS, lengths
    cases.append(case)
    # Rows that pass the context at different steps (after 4 and 12 new ids), and one that never does.
    case = ragged_case(model, tokenizer, "ragged_crossing_context",
                       [prefix_prompt(tokenizer, context - 4), "The",
                        prefix_prompt(tokenizer, context - 12)], logits, f32_model=f32_model)
    assert case["crosses_context"] == [True, False, True] and not case["crops"]
    cases.append(case)
    return cases


HALF = {"f16": torch.float16, "bf16": torch.bfloat16}


def write_goldens(model_dir: Path, model_name: str, tokenizer, dtype: str = "f32"):
    torch_dtype = HALF.get(dtype, torch.float32)
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch_dtype).eval()
    exact = dtype == "f32"
    f32_model = None if exact else GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    cases, logits = [], {}
    for name, prompt in PROMPTS.items():
        cases.append(golden_case(model, tokenizer, name, [prompt], logits, exact, f32_model))
    cases.append(golden_case(model, tokenizer, "past_context", [LONG_PROMPT], logits, exact, f32_model))
    cases.append(golden_case(model, tokenizer, "batch_of_two", BATCH, logits, exact, f32_model))
    cases.extend(ragged_cases(model, tokenizer, logits, f32_model))
    if exact:
        goldens = ROOT / "tests" / "goldens"
        stem = model_name
    else:
        goldens = ROOT / "tests" / "goldens" / "half"
        stem = f"{model_name}.{dtype}"
    goldens.mkdir(parents=True, exist_ok=True)
    doc = {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "model_dir": str(model_dir.relative_to(ROOT)),
        "context_length": model.config.n_positions,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": dtype,
        "new_tokens": NEW_TOKENS,
        "cases": cases,
    }
    (goldens / f"{stem}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    safetensors.torch.save_file(logits, goldens / f"{stem}.logits.safetensors",
                                metadata={"format_version": str(FORMAT_VERSION)})
    (goldens / f"{stem}.logits.safetensors").chmod(0o644)
    worst = min(case["top2_gap_min"] for case in cases)
    print(f"  {stem}: {len(cases)} cases, smallest top-2 margin {worst:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--train-seconds", type=float, default=90.0)
    parser.add_argument("--skip-checkpoints", action="store_true",
                        help="keep the existing checkpoints, only recompute the goldens")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = gpt2_tokenizer()
    fixtures = ROOT / "tests" / "fixtures"
    models = {
        "tiny-random": fixtures / "tiny-random",
        "tiny-trained": fixtures / "tiny-trained",
        "nexttoken-tiny-shakespeare": ROOT / "models" / "nexttoken-tiny-shakespeare",
    }
    if not args.skip_checkpoints:
        print("making tiny-random")
        make_random(models["tiny-random"])
        print("training tiny-trained")
        make_trained(models["tiny-trained"], args.corpus, tokenizer, args.train_seconds)
    for name, path in models.items():
        if (path / "model.safetensors").exists():
            # The random fixture's 16-wide logits are flat: in half precision many of its steps
            # are exact ties, which prove nothing about a kernel.
            for dtype in ["f32", *(HALF if name != "tiny-random" else [])]:
                write_goldens(path, name, tokenizer, dtype)
        else:
            print(f"  {name}: no checkpoint at {path}, skipped")


if __name__ == "__main__":
    main()
