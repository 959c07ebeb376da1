"""`Model.score` and `Model.logits` against transformers' log-probabilities and perplexity."""

import hashlib

import numpy as np
import pytest

from conftest import ROOT, golden, missing

PROMPTS = golden("scoring/prompts.json")["models"]["nexttoken-tiny-shakespeare"]
PERPLEXITY = golden("scoring/perplexity.json")


@pytest.mark.parametrize("case", PROMPTS, ids=lambda case: case["prompt"][:20])
def test_token_logprobs_equal_transformers(model, case):
    score = model.score(case["prompt"], token_logprobs=True)
    assert model.tokenizer.encode(case["prompt"]) == case["ids"]
    assert score.tokens == len(case["ids"])
    assert score.scored == len(case["ids"]) - 1
    assert score.token_logprobs == pytest.approx(case["logprobs"], abs=1e-4)
    assert score.log_likelihood == pytest.approx(sum(case["logprobs"]), abs=1e-4)
    assert score.perplexity == pytest.approx(np.exp(-np.mean(case["logprobs"])), rel=1e-4)


def verdict_text():
    path = ROOT / PERPLEXITY["text"]
    if not path.is_file():
        missing(f"{path} is missing: ../shared/corpus sits beside the repository in CI")
    text = path.read_text()[: PERPLEXITY["characters"]]
    assert hashlib.sha256(text.encode()).hexdigest() == PERPLEXITY["sha256"]
    return text


@pytest.mark.parametrize("case", PERPLEXITY["cases"],
                         ids=lambda case: f"window{case['window']}-stride{case['stride']}")
def test_windowed_perplexity_equals_transformers_recipe(model, case):
    text = verdict_text()
    score = model.score(text, context=case["window"], stride=case["stride"])
    assert score.tokens == PERPLEXITY["tokens"]
    assert score.scored == case["scored"]
    assert -score.log_likelihood / score.scored == pytest.approx(case["mean_nll"], rel=1e-4)
    assert score.perplexity == pytest.approx(case["perplexity"], rel=1e-4)


def test_a_list_scores_each_text_as_alone(model):
    texts = ["To be, or not to be", "ROMEO:\nBut soft", "x", ""]
    scores = model.score(texts)
    assert [s.tokens for s in scores] == [len(model.tokenizer.encode(t)) for t in texts]
    for text, score in zip(texts[:2], scores):
        alone = model.score(text)
        assert score.log_likelihood == alone.log_likelihood
    # Nothing to score in a text of one token or none: no likelihood, perplexity NaN.
    for score in scores[2:]:
        assert score.scored == 0 and score.log_likelihood == 0 and np.isnan(score.perplexity)
    assert scores[0].token_logprobs is None


def test_logits_are_every_positions_over_the_vocabulary(model):
    ids = model.tokenizer.encode("Every effort moves you")
    logits = model.logits(ids)
    assert logits.shape == (len(ids), model.vocab_size) and logits.dtype == np.float32
    # The last position predicts the first greedy id; row i predicts ids[i + 1].
    assert int(logits[-1].argmax()) == model.generate("Every effort moves you",
                                                       max_new_tokens=1).ids[0]
    score = model.score("Every effort moves you", token_logprobs=True)
    rows = logits[:-1].astype(np.float64)
    log_softmax = rows - rows.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    picked = log_softmax[np.arange(len(ids) - 1), ids[1:]]
    assert picked == pytest.approx(score.token_logprobs, abs=1e-4)
    batch = model.logits([ids, ids[::-1]])
    assert batch.shape == (2, len(ids), model.vocab_size)
    np.testing.assert_allclose(batch[0], logits, atol=1e-5)
    np.testing.assert_allclose(batch[1], model.logits(ids[::-1]), atol=1e-5)
    logits[0, 0] = 1.0  # an array the caller owns
