"""Shared helpers for the reference scripts: GPT-2's tokenizer from the files tiktoken-rs ships.

tiktoken-rs carries OpenAI's original GPT-2 `encoder.json` and `vocab.bpe` (Hugging Face's
`vocab.json` and `merges.txt`). Building Hugging Face's tokenizer from them keeps these scripts
offline and makes HF's tokenizer an independent check of nexttoken's tiktoken-based one.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def registry_crate(name: str) -> Path:
    """The source folder of a crate in the workspace's dependency graph (cargo's registry)."""
    metadata = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1"], cwd=ROOT
        )
    )
    for package in metadata["packages"]:
        if package["name"] == name:
            return Path(package["manifest_path"]).parent
    raise SystemExit(f"{name} is not in the workspace's dependency graph")


def add_llama_cpp_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--llama-cpp", type=Path, default=Path.home() / ".cache/nexttoken/llama.cpp"
    )


def use_llama_cpps_gguf_py(llama_cpp: Path) -> None:
    """Make `import gguf` load the gguf-py of llama.cpp's checked-out sources.

    PyPI's `gguf` can lag or lead the llama.cpp build the tests compare against; the reference
    arrays must come from the same sources as the tools that wrote the files.
    """
    gguf_py = llama_cpp / "src" / "gguf-py"
    if not (gguf_py / "gguf").is_dir():
        sys.exit(f"{gguf_py} is missing: run scripts/install-backends.sh llama-cpp-sources first")
    sys.path.insert(0, str(gguf_py))


def tiktoken_rs_assets() -> Path:
    return registry_crate("tiktoken-rs") / "assets"


def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    assets = tiktoken_rs_assets()
    return GPT2TokenizerFast(
        vocab_file=str(assets / "encoder.json"),
        merges_file=str(assets / "vocab.bpe"),
        add_prefix_space=False,
    )


def train(model, data, seconds: float, lr: float, batch: int = 16, block: int = 128, log_every: int = 50):
    """Trains a GPT2LMHeadModel on a 1-D tensor of ids for a wall-clock budget.

    The output head is tied to the token embedding and costs ~90% of the compute of a small
    model. Most of the 50257 ids never occur in a small corpus, so most of the time the softmax
    runs over the ids that do occur; the last 15% runs over the full vocabulary, which pushes
    the never-seen ids down so that greedy decoding never picks them.
    """
    import math
    import time

    import torch

    used = torch.unique(data)
    remap = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    block = min(block, model.config.n_positions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    start, step = time.time(), 0
    model.train()
    while (elapsed := time.time() - start) < seconds:
        # Cosine decay over the budget, after a short warm-up.
        progress = min(1.0, elapsed / seconds)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        starts = torch.randint(0, len(data) - block - 1, (batch,))
        x = torch.stack([data[s:s + block] for s in starts])
        y = torch.stack([data[s + 1:s + block + 1] for s in starts])
        hidden = model.transformer(input_ids=x).last_hidden_state
        if progress < 0.85:
            logits, targets = hidden @ model.transformer.wte.weight[used].T, remap[y]
        else:
            logits, targets = model.lm_head(hidden), y
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed:6.0f}s", flush=True)
        step += 1
    model.eval()
    print(f"trained {step} steps ({len(used)} distinct ids), final loss {loss.item():.3f}")
