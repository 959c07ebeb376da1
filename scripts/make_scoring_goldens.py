"""Hugging Face references for prompt scoring and for the logits processors.

tests/goldens/scoring/prompts.json holds, for the tiny-trained fixture and the bundled model, each
prompt's ids and transformers' log-softmax at every position (the log-probability of the next
id, and the 5 most likely ids): what `TextGenerator::score` and the server's `echo` with
`logprobs` must give.

tests/goldens/scoring/processors.json holds seeded logits rows with a history, each with a set of
settings, and the probabilities after transformers' own processors in nexttoken's order:
`SequenceBiasLogitsProcessor` (OpenAI's logit_bias), `RepetitionPenaltyLogitsProcessor`,
OpenAI's presence and frequency penalties (written from OpenAI's formula: transformers has no
such processor), `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`,
`MinPLogitsWarper`, then a softmax.

tests/goldens/scoring/real_processors.safetensors does the same on real logits: the
last-position logits of the tiny-trained fixture and the bundled model for a few prompts (the
whole 50257-id vocabulary, the prompt as the history), under single settings and their
combinations in `generate`'s order, plus rows rounded to bfloat16 (as a bf16 model's logits are:
many ties) for top-k at a tied k-th value and min-p = 1 with the two best tied (min-p's boundary
is inclusive). Each case keeps the ids transformers keeps and their probabilities. It also holds
transformers' greedy `generate` with a repetition penalty, id for id. Settings whose top-p
boundary falls within 1e-4 of a cumulative sum, or whose min-p within 1e-4 (relative) of an
id's probability over the largest, are moved off it, so that float rounding cannot decide which
ids are kept. The probabilities are the float64 softmax of transformers' processed scores.

    python scripts/make_scoring_goldens.py     # with scripts/requirements.txt installed
"""

import json

import safetensors.torch
import torch
import transformers
from transformers import GPT2LMHeadModel
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from common import ROOT, gpt2_tokenizer

FORMAT_VERSION = 1
TOP = 5
PROMPTS = [
    "Every effort moves you",
    "ROMEO:\nBut soft, what light through yonder window breaks?",
    "Café, 日本語 and 🦀: the king",
]
MODELS = {
    "tiny-trained": ROOT / "tests" / "fixtures" / "tiny-trained",
    "nexttoken-tiny-shakespeare": ROOT / "models" / "nexttoken-tiny-shakespeare",
}


def scoring(tokenizer):
    models = {}
    for name, path in MODELS.items():
        model = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()
        cases = []
        for prompt in PROMPTS:
            ids = tokenizer(prompt)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double()
            logprobs = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logprobs[:-1], TOP, dim=-1)
            cases.append({
                "prompt": prompt,
                "ids": ids,
                # Position i scores id i + 1; the first id has nothing before it.
                "logprobs": [logprobs[i, ids[i + 1]].item() for i in range(len(ids) - 1)],
                "top_ids": top.indices.tolist(),
                "top_logprobs": top.values.tolist(),
            })
        models[name] = cases
    return models


def processed(logits, history, generated, setting):
    """`logits` after the processors `setting` asks for, in nexttoken's (and `generate`'s)
    order; `history` is the row's ids, the last of them `generated`."""
    ids = torch.tensor([history])
    scores = logits.clone().unsqueeze(0)
    if "logit_bias" in setting:
        bias = {(id,): value for id, value in setting["logit_bias"]}
        scores = SequenceBiasLogitsProcessor(sequence_bias=bias)(ids, scores)
    if "repeat_penalty" in setting:
        scores = RepetitionPenaltyLogitsProcessor(setting["repeat_penalty"])(ids, scores)
    presence = setting.get("presence_penalty", 0.0)
    frequency = setting.get("frequency_penalty", 0.0)
    if presence or frequency:
        # OpenAI: logit[j] -= count[j] * frequency + (count[j] > 0) * presence, over the
        # generated tokens.
        counts = torch.bincount(torch.tensor(generated), minlength=len(logits)).float()
        scores = scores - counts * frequency - (counts > 0).float() * presence
    if "temperature" in setting:
        scores = TemperatureLogitsWarper(setting["temperature"])(ids, scores)
    if "top_k" in setting:
        scores = TopKLogitsWarper(setting["top_k"])(ids, scores)
    if "top_p" in setting:
        scores = TopPLogitsWarper(setting["top_p"])(ids, scores)
    if "min_p" in setting:
        scores = MinPLogitsWarper(setting["min_p"])(ids, scores)
    return scores[0]


def processors():
    generator = torch.Generator().manual_seed(7)
    vocab = 512
    cases = []
    settings = [
        {"logit_bias": [[3, -100.0], [7, 5.0], [11, 2.5]]},
        {"repeat_penalty": 1.3},
        {"presence_penalty": 0.7, "frequency_penalty": 0.4},
        {"presence_penalty": -0.5, "frequency_penalty": -0.25},
        {"temperature": 0.7, "top_k": 40},
        {"temperature": 1.3, "top_p": 0.9},
        {"top_k": 50, "top_p": 0.8},
        {"temperature": 0.8, "min_p": 0.05},
        {"min_p": 0.2},
        {"logit_bias": [[5, 3.0]], "repeat_penalty": 1.2, "presence_penalty": 0.3,
         "frequency_penalty": 0.2, "temperature": 0.9, "top_k": 60, "top_p": 0.95, "min_p": 0.02},
    ]
    for index, setting in enumerate(settings):
        spread = [1.0, 3.0, 6.0][index % 3]
        logits = torch.randn(vocab, generator=generator) * spread
        prompt = torch.randint(0, vocab, (12,), generator=generator).tolist()
        generated = torch.randint(0, 40, (9,), generator=generator).tolist()
        history = prompt + generated
        probabilities = torch.softmax(processed(logits, history, generated, setting), dim=-1)
        cases.append({
            "settings": setting,
            "logits": logits.tolist(),
            "prompt": prompt,
            "generated": generated,
            "probabilities": probabilities.tolist(),
        })
    return {"cases": cases}


REAL_PROMPTS = ["Every effort moves you", "ROMEO:\nBut soft, what light"]
REAL_SETTINGS = [
    {"repeat_penalty": 1.3},
    {"temperature": 0.7},
    {"temperature": 1.8},
    {"top_k": 40},
    {"top_p": 0.9},
    {"min_p": 0.05},
    {"top_k": 50, "top_p": 0.8},
    {"top_k": 5, "top_p": 0.99},
    {"temperature": 0.8, "min_p": 0.1},
    {"temperature": 1.5, "min_p": 0.02},
    {"temperature": 1.5, "top_k": 100, "top_p": 0.95, "min_p": 0.02},
    {"repeat_penalty": 1.2, "temperature": 0.9, "top_k": 60, "top_p": 0.95, "min_p": 0.05},
]


def warp(logits, history, setting):
    """transformers' processors in `generate`'s order, then a softmax."""
    scores = processed(logits, history, [], setting)
    # The softmax of the processed scores in float64: PyTorch's float32 softmax over 50257 ids
    # is itself up to 5e-5 off (its sum loses the tail's low bits), more than the 1e-6 the
    # comparison allows.
    return torch.softmax(scores.double(), dim=-1), scores


def boundary_margin(logits, history, setting, name):
    """How near a filter's boundary an id is: for top-p the distance from p of the cumulative
    sums, for min-p the relative distance from min_p of the probabilities over the largest."""
    order = ["repeat_penalty", "temperature", "top_k", "top_p", "min_p"]
    before = {k: v for k, v in setting.items() if order.index(k) < order.index(name)}
    probs, _ = warp(logits, history, before)
    probs = probs.sort(descending=True).values
    if name == "top_p":
        return (probs.cumsum(0) - setting["top_p"]).abs().min().item()
    ratios = probs[probs > 0] / probs[0]
    return ((ratios - setting["min_p"]).abs() / setting["min_p"]).min().item()


def real_processors(tokenizer):
    """Real logits rows, each under every setting; cases for ties in bfloat16."""
    tensors, cases, rows = {}, [], []
    for name, path in MODELS.items():
        model = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()
        for prompt in REAL_PROMPTS:
            history = tokenizer(prompt)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([history])).logits[0, -1].float()
            rows.append((f"{name}: {prompt!r}", logits, history))
    # A bf16 model's logits: rounded, so many ids share a value.
    name, logits, history = rows[0]
    rows.append((f"{name}, rounded to bfloat16", logits.bfloat16().float(), history))

    def add(row, setting):
        label, logits, history = rows[row]
        setting = dict(setting)
        # Off the boundaries by more than float32 rounding (1e-4; min-p = 1 with ties at the
        # top is the test of its boundary, and exact in any precision).
        while "top_p" in setting and boundary_margin(logits, history, setting, "top_p") < 1e-4:
            setting["top_p"] = round(setting["top_p"] - 0.001, 6)
        while setting.get("min_p", 1.0) < 1.0 and boundary_margin(logits, history, setting, "min_p") < 1e-4:
            setting["min_p"] = round(setting["min_p"] * 1.01, 6)
        probs, _ = warp(logits, history, setting)
        kept = torch.nonzero(probs > 0).flatten()
        index = len(cases)
        if len(kept) < len(probs):  # no ids: every id kept
            tensors[f"kept_ids.{index}"] = kept.to(torch.int32).contiguous()
        tensors[f"kept_probabilities.{index}"] = probs[kept].float().contiguous()
        cases.append({"row": row, "label": label, "settings": setting, "history": history})

    for row in range(len(rows) - 1):
        for setting in REAL_SETTINGS:
            # Settings that keep every id (400 KB each) on one prompt per model.
            keeps_all = set(setting) <= {"temperature", "repeat_penalty"}
            if not keeps_all or row % len(REAL_PROMPTS) == 0:
                add(row, setting)
    # Top-k whose k-th value is shared: transformers keeps every id at the k-th value.
    tied = len(rows) - 1
    values = rows[tied][1].sort(descending=True).values
    k = next(k for k in range(20, len(values)) if values[k - 1] == values[k])
    add(tied, {"top_k": k})
    add(tied, {"temperature": 0.7, "top_k": k, "top_p": 0.97})
    # min-p = 1 with the two best tied: the boundary is inclusive, both stay.
    label, logits, history = rows[tied]
    logits = logits.clone()
    best, second = logits.topk(2).indices.tolist()
    logits[second] = logits[best]
    rows.append((f"{label}, the two best made equal", logits, history))
    add(len(rows) - 1, {"min_p": 1.0})
    add(len(rows) - 1, {"temperature": 0.5, "min_p": 1.0})
    for index, (_, logits, _) in enumerate(rows):
        tensors[f"logits.{index}"] = logits.contiguous()
    return tensors, cases


@torch.no_grad()
def repetition_penalty_greedy(tokenizer):
    """transformers' greedy `generate` with a repetition penalty, on the trained fixture."""
    model = GPT2LMHeadModel.from_pretrained(MODELS["tiny-trained"], dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    cases = []
    for prompt, penalty in [("Every effort moves you", 1.3), ("The king", 1.15)]:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                             do_sample=False, repetition_penalty=penalty, pad_token_id=EOT)
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                               do_sample=False, pad_token_id=EOT)
        assert not torch.equal(out, plain), "the penalty should change the greedy ids"
        cases.append({"prompt_ids": ids[0].tolist(), "repeat_penalty": penalty,
                      "ids": out[0, ids.shape[1]:].tolist()})
    return cases


EOT = 50256


def main():
    goldens = ROOT / "tests" / "goldens" / "scoring"
    goldens.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "transformers": transformers.__version__,
            "torch": torch.__version__}
    scored = {**meta, "top": TOP, "models": scoring(gpt2_tokenizer())}
    (goldens / "prompts.json").write_text(json.dumps(scored) + "\n")
    (goldens / "processors.json").write_text(json.dumps({**meta, **processors()}) + "\n")
    tensors, cases = real_processors(gpt2_tokenizer())
    header = {**meta, "cases": cases, "repetition_penalty_greedy": repetition_penalty_greedy(gpt2_tokenizer())}
    safetensors.torch.save_file(tensors, goldens / "real_processors.safetensors",
                                metadata={"cases": json.dumps(header)})
    (goldens / "real_processors.safetensors").chmod(0o644)
    print(f"wrote tests/goldens/scoring/: prompts.json, processors.json and "
          f"real_processors.safetensors ({len(cases)} cases)")


if __name__ == "__main__":
    main()
