"""Trains nexttoken's bundled default model: a small GPT-2 on public-domain text.

The corpus is Shakespeare (tinyshakespeare) plus Edith Wharton's "The Verdict" (1908), both
in ../shared/corpus/ and not copied into the repository. The result is saved in Hugging Face
format (config.json + model.safetensors, float32), exactly as a GPT-2 checkpoint would be.

    python scripts/train_default_model.py --corpus ../shared/corpus --out models/nexttoken-tiny-shakespeare
"""

import argparse
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from common import gpt2_tokenizer, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    parser.add_argument("--verdict-repeats", type=int, default=8,
                        help="how often The Verdict is repeated, so its style is learnt too")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    tokenizer = gpt2_tokenizer()
    eot = tokenizer.eos_token_id
    shakespeare = (args.corpus / "tinyshakespeare.txt").read_text(encoding="utf-8")
    verdict = (args.corpus / "the-verdict.txt").read_text(encoding="utf-8")
    ids = tokenizer.encode(shakespeare) + [eot]
    for _ in range(args.verdict_repeats):
        ids += tokenizer.encode(verdict) + [eot]
    data = torch.tensor(ids, dtype=torch.long)
    print(f"corpus: {len(data)} tokens")

    config = GPT2Config(
        n_layer=4, n_head=4, n_embd=128, n_positions=256, vocab_size=50257,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=eot, eos_token_id=eot,
    )
    model = GPT2LMHeadModel(config)
    print(f"parameters: {model.num_parameters() / 1e6:.2f}M")
    train(model, data, seconds=args.minutes * 60, lr=3e-3)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    prompt = tokenizer.encode("Every effort moves you", return_tensors="pt")
    out = model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=eot)
    print(repr(tokenizer.decode(out[0])))


if __name__ == "__main__":
    main()
