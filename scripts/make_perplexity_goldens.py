"""Hugging Face references for `nexttoken perplexity`.

tests/goldens/scoring/perplexity.json holds, for the bundled model and a text no fixture or
training run used (the first 12,000 characters of ../shared/corpus/the-verdict.txt, Edith
Wharton's "The Verdict"), transformers' perplexity by its own recipe
(https://huggingface.co/docs/transformers/perplexity): windows of `window` ids `stride` apart,
each scoring (labels not -100) the ids the windows before it did not, predicted from the window's
ids before them; the loss as the mean of the scored ids' negative log-likelihoods, in float64
from the model's float32 logits.

    python scripts/make_perplexity_goldens.py     # with scripts/requirements.txt installed
"""

import hashlib
import json
import math

import torch
from transformers import GPT2LMHeadModel

from common import ROOT, gpt2_tokenizer

TEXT = ROOT.parent / "shared" / "corpus" / "the-verdict.txt"
CHARACTERS = 12_000
MODEL = ROOT / "models" / "nexttoken-tiny-shakespeare"
SETTINGS = [(256, 128), (256, 256), (100, 37)]


def perplexity(model, ids, window, stride):
    nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        trg_len = end - prev_end
        input_ids = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logits = model(input_ids).logits[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        # Position i predicts id i + 1; the labels kept are the last trg_len of the window
        # (the window's first id is never a target).
        for i in range(end - begin - 1):
            target = begin + i + 1
            if target >= end - trg_len:
                nll -= logprobs[i, ids[target]].item()
                scored += 1
        prev_end = end
        if end == len(ids):
            break
    return nll, scored


def main():
    text = TEXT.read_text(encoding="utf-8")[:CHARACTERS]
    ids = gpt2_tokenizer()(text)["input_ids"]
    model = GPT2LMHeadModel.from_pretrained(MODEL, dtype=torch.float32).eval()
    cases = []
    for window, stride in SETTINGS:
        nll, scored = perplexity(model, ids, window, stride)
        cases.append({
            "window": window,
            "stride": stride,
            "scored": scored,
            "mean_nll": nll / scored,
            "perplexity": math.exp(nll / scored),
        })
    out = ROOT / "tests" / "goldens" / "scoring" / "perplexity.json"
    out.write_text(json.dumps({
        "model": "nexttoken-tiny-shakespeare",
        "text": "../shared/corpus/the-verdict.txt",
        "characters": CHARACTERS,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "tokens": len(ids),
        "cases": cases,
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
