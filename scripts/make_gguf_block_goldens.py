"""Writes what llama.cpp's gguf-py widens GGUF's other block formats to, for nexttoken-cpu's test.

For each of Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K (the formats nexttoken reads by widening):
a few blocks of pseudo-random bytes, each block's f16 scales (and minimums) set to ordinary
values of both signs, and gguf-py's `dequantize` of them (llama.cpp's own Python reference of
`dequantize_row_*`), as tests/goldens/gguf-blocks.safetensors: `NAME.bytes` (U8) and
`NAME.values` (F32), NAME as llama.cpp spells the type (`q4_K`).

    python scripts/make_gguf_block_goldens.py [--llama-cpp DIR]

DIR is where `scripts/install-backends.sh llama-cpp-sources` put llama.cpp (default
~/.cache/nexttoken/llama.cpp); run this with the hf environment (numpy, safetensors).
"""

import argparse
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from common import add_llama_cpp_argument, use_llama_cpps_gguf_py

OUT = Path(__file__).resolve().parent.parent / "tests/goldens/gguf-blocks.safetensors"

# name: (ggml type name, bytes a block, offsets of the block's f16 scale and minimum)
FORMATS = {
    "q4_1": ("Q4_1", 20, [0, 2]),
    "q5_0": ("Q5_0", 22, [0]),
    "q5_1": ("Q5_1", 24, [0, 2]),
    "q4_K": ("Q4_K", 144, [0, 2]),
    "q5_K": ("Q5_K", 176, [0, 2]),
    "q6_K": ("Q6_K", 210, [208]),
}
BLOCKS = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llama_cpp_argument(parser)
    args = parser.parse_args()
    use_llama_cpps_gguf_py(args.llama_cpp)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rng = np.random.default_rng(35)
    arrays = {}
    for name, (ggml, size, f16s) in FORMATS.items():
        blocks = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for at in f16s:
            scales = rng.uniform(-0.05, 0.05, size=BLOCKS).astype(np.float16)
            blocks[:, at : at + 2] = scales.view(np.uint8).reshape(BLOCKS, 2)
        data = blocks.reshape(-1)
        arrays[f"{name}.bytes"] = data
        values = dequantize(data, GGMLQuantizationType[ggml]).astype(np.float32)
        arrays[f"{name}.values"] = values.reshape(-1)
    save_file(arrays, OUT)
    print(f"{len(FORMATS)} formats, {BLOCKS} blocks each -> {OUT}")


if __name__ == "__main__":
    main()
