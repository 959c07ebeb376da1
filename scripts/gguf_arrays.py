"""Dumps what llama.cpp's own GGUF reader (gguf-py, in llama.cpp's sources) reads from a GGUF file.

For nexttoken-gguf's test on files llama.cpp's tools wrote (crates/nexttoken-gguf/tests/
llama_cpp_files.rs): every tensor's bytes as a U8 safetensors tensor under its GGUF name, and in
the safetensors metadata, `tensors` (each tensor's ggml type id and shape, fastest dimension
first, in file order) and `metadata` (every key's GGUF value types and value), as JSON.

    python scripts/gguf_arrays.py FILE.gguf OUT.safetensors [--llama-cpp DIR]

DIR is where `scripts/install-backends.sh llama-cpp-sources` put llama.cpp (default
~/.cache/nexttoken/llama.cpp); run this with the hf environment (numpy, safetensors).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from common import add_llama_cpp_argument, use_llama_cpps_gguf_py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    add_llama_cpp_argument(parser)
    args = parser.parse_args()
    use_llama_cpps_gguf_py(args.llama_cpp)
    from gguf import GGUFReader

    reader = GGUFReader(args.gguf)
    arrays, tensors = {}, []
    for tensor in reader.tensors:
        arrays[tensor.name] = np.frombuffer(tensor.data.tobytes(), dtype=np.uint8)
        tensors.append(
            {
                "name": tensor.name,
                "type": int(tensor.tensor_type),
                "shape": [int(n) for n in tensor.shape],
            }
        )
    metadata = {}
    for name, field in reader.fields.items():
        # The reader's own entries for the header's counts and version, not keys in the file.
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        metadata[name] = {"types": [int(t) for t in field.types], "value": value}
    save_file(
        arrays,
        str(args.out),
        metadata={"tensors": json.dumps(tensors), "metadata": json.dumps(metadata)},
    )


if __name__ == "__main__":
    main()
