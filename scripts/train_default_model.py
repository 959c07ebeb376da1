"""Trains nexttoken's bundled default model: a small GPT-2 on public-domain text.

The corpus is Shakespeare (tinyshakespeare) plus Edith Wharton's "The Verdict" (1908), both
in ../shared/corpus/ and not copied into the repository. The result is saved in Hugging Face
format (config.json + model.safetensors, float32), exactly as a GPT-2 checkpoint would be.

    python scripts/train_default_model.py --corpus ../shared/corpus --out models/nexttoken-tiny-shakespeare
"""

import argparse
import math
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from common import gpt2_tokenizer


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))

    # The output head is tied to the token embedding and costs ~90% of the compute at this
    # width. Most of the 50257 ids never occur in the corpus, so most of training computes the
    # softmax over the ids that do occur; a final phase over the full vocabulary then pushes
    # the never-seen ids down so greedy decoding never picks them.
    used = torch.unique(data)
    remap = torch.full((config.vocab_size,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    print(f"ids in corpus: {len(used)} of {config.vocab_size}")

    batch, block = 16, 128
    budget = args.minutes * 60
    full_vocab_from = 0.85 * budget
    start = time.time()
    step = 0
    model.train()
    while (elapsed := time.time() - start) < budget:
        # Cosine decay over the time budget, after a short warm-up.
        progress = min(1.0, elapsed / budget)
        lr = 3e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - block - 1, (batch,))
        x = torch.stack([data[s:s + block] for s in starts])
        y = torch.stack([data[s + 1:s + block + 1] for s in starts])
        hidden = model.transformer(input_ids=x).last_hidden_state
        if elapsed < full_vocab_from:
            logits = hidden @ model.transformer.wte.weight[used].T
            targets = remap[y]
        else:
            logits = model.lm_head(hidden)
            targets = y
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {lr:.2e}  {elapsed:6.0f}s", flush=True)
        step += 1

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    prompt = tokenizer.encode("Every effort moves you", return_tensors="pt")
    out = model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=eot)
    print(repr(tokenizer.decode(out[0])))


if __name__ == "__main__":
    main()
