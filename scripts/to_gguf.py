"""Converts a GPT-2 checkpoint folder to GGUF with llama.cpp's own converter, for the peer runs.

A nexttoken checkpoint folder holds `model.safetensors` and `config.json`; llama.cpp's
`convert_hf_to_gguf.py` also wants the tokenizer files beside them. They come from the files
tiktoken-rs ships (scripts/common.py), so the GGUF carries the same GPT-2 vocabulary and merges.

    python scripts/to_gguf.py CHECKPOINT_DIR OUT.gguf [--outtype f32|f16|bf16] [--llama-cpp DIR]

DIR is where `scripts/install-backends.sh llama-cpp` put llama.cpp (default
~/.cache/nexttoken/llama.cpp); run this with the Python environment that has transformers
(`scripts/install-backends.sh hf`).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import gpt2_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0"])
    parser.add_argument(
        "--llama-cpp", type=Path, default=Path.home() / ".cache/nexttoken/llama.cpp"
    )
    args = parser.parse_args()

    converter = args.llama_cpp / "src" / "convert_hf_to_gguf.py"
    if not converter.is_file():
        sys.exit(f"{converter} is missing: run scripts/install-backends.sh llama-cpp first")
    for name in ("model.safetensors", "config.json"):
        if not (args.checkpoint / name).is_file():
            sys.exit(f"{args.checkpoint / name} is missing: expected a GPT-2 checkpoint folder")

    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        (staging / "model.safetensors").symlink_to((args.checkpoint / "model.safetensors").resolve())
        # The converter reads the context length from `n_ctx`, which the Hub's GPT-2 configs
        # carry beside `n_positions` but transformers no longer writes.
        config = json.loads((args.checkpoint / "config.json").read_text())
        config.setdefault("n_ctx", config["n_positions"])
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        gpt2_tokenizer().save_pretrained(staging)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(converter), str(staging), "--outfile", str(args.out),
             "--outtype", args.outtype],
            check=True,
        )


if __name__ == "__main__":
    main()
