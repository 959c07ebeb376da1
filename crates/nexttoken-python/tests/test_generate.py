"""`Model.generate` and `Model.stream` against transformers' greedy ids and the CLI's output."""

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest

from conftest import golden

GREEDY = golden("nexttoken-tiny-shakespeare.json")


@pytest.mark.parametrize("case", GREEDY["cases"], ids=lambda case: case["name"])
def test_greedy_ids_equal_hugging_face(model, case):
    assert [model.tokenizer.encode(p) for p in case["prompts"]] == case["input_ids"]
    # transformers ran without an end-of-text id, or with one of the case's own (an id the
    # model picks early), which vLLM's stop_token_ids give here: kept as the row's last.
    eos = case.get("eos_token_id")
    completions = model.generate(
        case["prompts"],
        max_new_tokens=GREEDY["new_tokens"],
        ignore_eos=True,
        stop_token_ids=[eos] if eos is not None else None,
    )
    assert [c.ids for c in completions] == case["greedy_ids"]
    assert [c.prompt_ids for c in completions] == case["input_ids"]


def run_cli(cli, prompts, *flags):
    out = subprocess.run(
        [str(cli), "generate", "--json", "-t", "2", *flags, *prompts],
        check=True, capture_output=True, text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


PROMPTS = ["Every effort moves you", "ROMEO:", "Café, 日本語"]


@pytest.mark.parametrize("flags,settings", [
    ([], {}),
    (["--temperature", "0.9", "--top-k", "40", "--seed", "7"], dict(temperature=0.9, top_k=40, seed=7)),
    (["--top-p", "0.8", "--repeat-penalty", "1.3", "--seed", "123"],
     dict(top_p=0.8, repetition_penalty=1.3, seed=123)),
    (["--min-p", "0.05", "--seed", "5", "--stop", "\n"], dict(min_p=0.05, seed=5, stop="\n")),
], ids=["greedy", "top-k", "top-p-penalty", "min-p-stop"])
def test_the_same_settings_give_the_clis_ids_and_text(model, cli, flags, settings):
    theirs = run_cli(cli, PROMPTS, "-n", "30", *flags)
    ours = model.generate(PROMPTS, max_new_tokens=30, **settings)
    assert [c.ids for c in ours] == [line["ids"] for line in theirs]
    assert [c.text for c in ours] == [line["text"] for line in theirs]
    assert [c.finish_reason for c in ours] == [line["finish_reason"] for line in theirs]


def test_sampling_depends_on_the_seed_and_only_on_it(model):
    draw = lambda seed: model.generate("ROMEO:", max_new_tokens=20, temperature=1.0, seed=seed).ids
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_one_prompt_gives_one_completion_and_a_list_a_list(model):
    one = model.generate("The", max_new_tokens=3)
    many = model.generate(["The"], max_new_tokens=3)
    assert isinstance(many, list) and len(many) == 1
    assert one.ids == many[0].ids and len(one.ids) == 3
    assert one.finish_reason == "length"
    assert one.text == model.tokenizer.decode(one.ids)


def log_softmax(row):
    row = row.astype(np.float64)
    return row - row.max() - np.log(np.exp(row - row.max()).sum())


def test_logprobs_are_the_models_distribution_at_each_step(model):
    completion = model.generate("Every effort moves you", max_new_tokens=6, logprobs=3)
    assert len(completion.logprobs) == 6
    ids = completion.prompt_ids + completion.ids
    logits = model.logits(ids[:-1])
    for step, entry in enumerate(completion.logprobs):
        expected = log_softmax(logits[len(completion.prompt_ids) - 1 + step])
        assert entry.id == completion.ids[step]
        assert entry.logprob == pytest.approx(expected[entry.id], abs=1e-4)
        assert [id for id, _ in entry.top] == list(np.argsort(-expected)[:3])
        assert entry.top[0][0] == entry.id, "greedy picks the most likely id"


def test_a_stop_string_ends_the_text_before_it(model):
    free = model.generate("ROMEO:", max_new_tokens=40, ignore_eos=True)
    stop = free.text[5:7]
    stopped = model.generate("ROMEO:", max_new_tokens=40, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]


def test_a_stream_yields_generates_text_piece_by_piece(model):
    whole = model.generate("ROMEO:", max_new_tokens=25)
    stream = model.stream("ROMEO:", max_new_tokens=25)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == whole.text
    assert stream.completion.ids == whole.ids
    assert stream.completion.finish_reason == whole.finish_reason
    assert list(stream) == [], "an exhausted stream stays exhausted"


def os_threads():
    return len(os.listdir("/proc/self/task"))


def test_leaving_a_stream_early_stops_its_generation(model):
    model.generate("x", max_new_tokens=2)  # the CPU thread pool is up before counting
    before = os_threads()
    stream = model.stream("ROMEO:", max_new_tokens=100_000, ignore_eos=True)
    for _ in stream:
        break
    assert os_threads() == before + 1, "the generation runs on a thread of its own"
    del stream
    deadline = time.monotonic() + 10
    while os_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os_threads() == before, "the generation thread ended"


def test_closing_a_stream_ends_its_generation_at_once(model):
    model.generate("x", max_new_tokens=2)
    before = os_threads()
    with model.stream("ROMEO:", max_new_tokens=100_000, ignore_eos=True) as stream:
        first = next(stream)
    assert first
    assert list(stream) == [] and stream.completion is None, "closed: nothing more"
    deadline = time.monotonic() + 10
    while os_threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os_threads() == before, "the generation thread ended though `stream` is alive"


def test_generate_lets_other_python_threads_run(model):
    done = threading.Event()

    def generate():
        model.generate("ROMEO:", max_new_tokens=200, ignore_eos=True)
        done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    ticks = 0
    while not done.is_set():
        time.sleep(0.001)
        ticks += 1
    worker.join()
    # Holding the GIL for the whole call would allow only the ticks before it started.
    assert ticks > 20
