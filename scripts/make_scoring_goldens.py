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

    python scripts/make_scoring_goldens.py     # with scripts/requirements.txt installed
"""

import json

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
        scores = logits.clone().unsqueeze(0)
        ids = torch.tensor([history])
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
            counts = torch.bincount(torch.tensor(generated), minlength=vocab).float()
            scores = scores - counts * frequency - (counts > 0).float() * presence
        if "temperature" in setting:
            scores = TemperatureLogitsWarper(setting["temperature"])(ids, scores)
        if "top_k" in setting:
            scores = TopKLogitsWarper(setting["top_k"])(ids, scores)
        if "top_p" in setting:
            scores = TopPLogitsWarper(setting["top_p"])(ids, scores)
        if "min_p" in setting:
            scores = MinPLogitsWarper(setting["min_p"])(ids, scores)
        probabilities = torch.softmax(scores[0], dim=-1)
        cases.append({
            "settings": setting,
            "logits": logits.tolist(),
            "prompt": prompt,
            "generated": generated,
            "probabilities": probabilities.tolist(),
        })
    return {"cases": cases}


def main():
    goldens = ROOT / "tests" / "goldens" / "scoring"
    goldens.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "transformers": transformers.__version__,
            "torch": torch.__version__}
    scored = {**meta, "top": TOP, "models": scoring(gpt2_tokenizer())}
    (goldens / "prompts.json").write_text(json.dumps(scored) + "\n")
    (goldens / "processors.json").write_text(json.dumps({**meta, **processors()}) + "\n")
    print("wrote tests/goldens/scoring/prompts.json and processors.json")


if __name__ == "__main__":
    main()
