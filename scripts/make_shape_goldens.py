"""Hugging Face references at GPT-2's real shapes, on weights made from a seed.

GPT-2 small's shape (12 layers of 768, 12 heads of 64, 1024 positions) and GPT-2 medium's head
count (16 heads of 64, 1024 wide) at a depth of 2: too large to keep in the repository (500 and
300 MB), so their weights come from a formula that this script and the tests
(`tests/conformance/shapes.rs`) both compute exactly: each value is a uniform draw of SplitMix64 (keyed by
the seed and the tensor's name) on a 24-bit grid, times a power of two, so float32 holds it
exactly and numpy and Rust agree bit for bit (the tests check a checksum of every tensor).

The scales are GPT-2's (about 0.02 for the layers), except that the token embedding's rows
(the output head, tied) come in three sizes, most at 1x, 1 in 64 at 2x and 1 in 4096 at 8x,
and the projections back into the residual stream are 8x larger. Random weights at one scale
give flat logits, where a tenth of the steps are near-ties in bfloat16; with a few large rows
the best id stands out (the top-2 margins are 10x the bfloat16 tolerance and more), and the
large projections keep a chosen token's own row from taking over the residual stream. The
loop often repeats an id; the logits checked are those of every position all the same.

For each dtype (f32, bf16, f16) it records the greedy loop of rows (a 1-token prompt, a
11-token one, and one of 1,023 tokens that passes the 1,024-token context at its third step)
and, at every step on the loop's own ids, the logits of the top five and a few fixed ids, with
float32's on the same ids for the half dtypes. Cases combine rows: each alone, and all of them
as one ragged batch. PyTorch's half-precision kernels on a CPU without AVX-512 take minutes for
a 1,024-token window, so this runs once (an hour) and the results are kept.

    python scripts/make_shape_goldens.py
"""

import json

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from common import ROOT, gpt2_tokenizer
from make_fixtures import EOT, FIXED_IDS

FORMAT_VERSION = 1
SEED = 20261205
SHAPES = {
    "gpt2-small-shape": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024),
    "gpt2-medium-heads": dict(n_layer=2, n_head=16, n_embd=1024, n_positions=1024),
}
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)


def fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def splitmix(key: int, count: int) -> np.ndarray:
    """The first `count` outputs of SplitMix64 started at `key`."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + np.arange(1, count + 1, dtype=np.uint64) * GAMMA
        z = (z ^ (z >> np.uint64(30))) * MIX_1
        z = (z ^ (z >> np.uint64(27))) * MIX_2
        return z ^ (z >> np.uint64(31))


def uniform(key: int, count: int) -> np.ndarray:
    """Uniform on [-1, 1) in steps of 2^-23: exact in float32."""
    top = (splitmix(key, count) >> np.uint64(40)).astype(np.float32)
    return (top - np.float32(2**23)) / np.float32(2**23)


def tensor_shapes(config: dict) -> dict:
    c, p, v = config["n_embd"], config["n_positions"], 50257
    shapes = {"transformer.wte.weight": [v, c], "transformer.wpe.weight": [p, c]}
    for layer in range(config["n_layer"]):
        h = f"transformer.h.{layer}"
        shapes |= {
            f"{h}.ln_1.weight": [c], f"{h}.ln_1.bias": [c],
            f"{h}.attn.c_attn.weight": [c, 3 * c], f"{h}.attn.c_attn.bias": [3 * c],
            f"{h}.attn.c_proj.weight": [c, c], f"{h}.attn.c_proj.bias": [c],
            f"{h}.ln_2.weight": [c], f"{h}.ln_2.bias": [c],
            f"{h}.mlp.c_fc.weight": [c, 4 * c], f"{h}.mlp.c_fc.bias": [4 * c],
            f"{h}.mlp.c_proj.weight": [4 * c, c], f"{h}.mlp.c_proj.bias": [c],
        }
    return shapes | {"transformer.ln_f.weight": [c], "transformer.ln_f.bias": [c]}


def tensor_values(name: str, shape: list) -> np.ndarray:
    """The formula the tests compute too (tests/conformance/shapes.rs)."""
    count = int(np.prod(shape))
    if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
        return np.ones(shape, dtype=np.float32)
    values = uniform(SEED ^ fnv1a(name), count)
    if name.endswith(".bias"):
        values *= np.float32(2**-5)
    elif name == "transformer.wpe.weight":
        values *= np.float32(2**-5)
    elif name == "transformer.wte.weight":
        rows = splitmix(SEED ^ fnv1a("transformer.wte.weight rows"), shape[0]) >> np.uint64(52)
        # 12 bits per row: 1 in 4096 at 8x, 1 in 64 at 2x.
        scale = np.where(rows == 0, 8.0, np.where(rows % 64 == 0, 2.0, 1.0)).astype(np.float32)
        values = values.reshape(shape) * scale[:, None] * np.float32(2**-4)
    elif name.endswith("c_proj.weight"):
        # Outputs large beside the embedding, so that the residual stream is not mostly the
        # input token's row (a large row would then predict itself).
        values *= np.float32(2**-2)
    else:
        values *= np.float32(2**-5)
    return values.reshape(shape)


def checksum(values: np.ndarray) -> str:
    """Σ bits(value_i) · (i + 1) mod 2^64 over the float32 bit patterns, as hex: cheap in numpy
    and in Rust, and independent of the order of the sum."""
    bits = np.ascontiguousarray(values, dtype="<f4").reshape(-1).view("<u4").astype(np.uint64)
    with np.errstate(over="ignore"):
        weights = np.arange(1, len(bits) + 1, dtype=np.uint64)
        return f"{int((bits * weights).sum(dtype=np.uint64)):016x}"


def make_model(config: dict):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0, bos_token_id=EOT, eos_token_id=EOT,
                                       **config)).eval()
    state, sums = {}, {}
    for name, shape in tensor_shapes(config).items():
        values = tensor_values(name, shape)
        sums[name] = checksum(values)
        state[name.removeprefix("transformer.")] = torch.from_numpy(values)
    model.transformer.load_state_dict(state, strict=True)
    model.tie_weights()
    return model, sums


def prompt_rows(tokenizer):
    long_text = " ".join(f"Line {i} of the play, and the king speaks." for i in range(120))
    long_ids = tokenizer.encode(long_text)[:1023]
    assert len(long_ids) == 1023
    return {
        "one_token": (tokenizer.encode("The"), 8),
        "eleven_tokens": (tokenizer.encode("Every effort moves you, and the king speaks of it"), 8),
        "crossing_context": (long_ids, 3),
    }


@torch.no_grad()
def greedy_row(model, wide, ids, steps):
    """The loop on one row, cached where the window only grows, recomputed once it slides."""
    context = model.config.n_positions
    records, chosen_ids, past = [], [], None
    ids = list(ids)
    for _ in range(steps):
        window = ids[-context:]
        # The head only at the last position (`logits_to_keep`): at 1,024 positions it is most
        # of the work.
        if past is not None and len(ids) <= context:
            out = model(torch.tensor([window[-1:]]), past_key_values=past, use_cache=True,
                        logits_to_keep=1)
        else:
            out = model(torch.tensor([window]), use_cache=len(ids) < context, logits_to_keep=1)
        past = out.past_key_values if len(ids) < context else None
        logits = out.logits[0, -1].float()
        top = torch.topk(logits, 5)
        chosen = list(dict.fromkeys(top.indices.tolist() + FIXED_IDS))
        record = {"ids": chosen, "logits": logits[chosen].tolist(),
                  "top2_gap": float(top.values[0] - top.values[1])}
        if wide is not None:
            record["f32"] = wide(window)[chosen].tolist()
        records.append(record)
        next_id = int(top.indices[0])
        chosen_ids.append(next_id)
        ids.append(next_id)
    return chosen_ids, records


def main():
    tokenizer = gpt2_tokenizer()
    rows = prompt_rows(tokenizer)
    out_dir = ROOT / "tests" / "goldens" / "shapes"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, config in SHAPES.items():
        model, sums = make_model(config)
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

        @torch.no_grad()
        def wide(window):
            return model(torch.tensor([window]), logits_to_keep=1).logits[0, -1]

        dtypes = {}
        for dtype, torch_dtype in DTYPES.items():
            half = model if dtype == "f32" else GPT2LMHeadModel(model.config).eval()
            if dtype != "f32":
                half.load_state_dict(model.state_dict())
                half = half.to(torch_dtype)
            recorded = {}
            for row, (ids, steps) in rows.items():
                greedy, records = greedy_row(half, None if dtype == "f32" else wide, ids, steps)
                gaps = [r["top2_gap"] for r in records]
                print(f"  {dtype} {row}: smallest top-2 margin {min(gaps):.3f}", flush=True)
                recorded[row] = {"greedy_ids": greedy, "steps": records}
            dtypes[dtype] = recorded
        doc = {
            "format_version": FORMAT_VERSION,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "seed": SEED,
            "config": config,
            "checksums": sums,
            "prompts": {row: ids for row, (ids, _) in rows.items()},
            "cases": {**{row: [row] for row in rows}, "ragged": list(rows)},
            "dtypes": dtypes,
        }
        (out_dir / f"{name}.json").write_text(json.dumps(doc) + "\n")


if __name__ == "__main__":
    main()
