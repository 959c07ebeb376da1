"""Shared helpers for the reference scripts: GPT-2's tokenizer from the files tiktoken-rs ships.

tiktoken-rs carries OpenAI's original GPT-2 `encoder.json` and `vocab.bpe` (Hugging Face's
`vocab.json` and `merges.txt`). Building Hugging Face's tokenizer from them keeps these scripts
offline and makes HF's tokenizer an independent check of nexttoken's tiktoken-based one.
"""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tiktoken_rs_assets() -> Path:
    metadata = json.loads(
        subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1"], cwd=ROOT
        )
    )
    for package in metadata["packages"]:
        if package["name"] == "tiktoken-rs":
            return Path(package["manifest_path"]).parent / "assets"
    raise SystemExit("tiktoken-rs is not in the workspace's dependency graph")


def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    assets = tiktoken_rs_assets()
    return GPT2TokenizerFast(
        vocab_file=str(assets / "encoder.json"),
        merges_file=str(assets / "vocab.bpe"),
        add_prefix_space=False,
    )
