"""Writes a randomly initialised GPT-2 checkpoint of a published size, in Hugging Face's format.

Speed does not depend on the weights' values, and no model hub is reachable from the machines
nexttoken is developed on, so its speed comparisons (`cargo xtask speed`) use these. The file is
what `GPT2LMHeadModel.save_pretrained` writes for a real GPT-2 (config.json, model.safetensors).

    python scripts/make_random_checkpoint.py --size gpt2 OUT_DIR
"""

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="gpt2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("out_dir")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(GPT2Config(**SIZES[args.size])).eval()
    model.save_pretrained(args.out_dir, safe_serialization=True)
    print(f"{args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters -> {args.out_dir}")


if __name__ == "__main__":
    main()
