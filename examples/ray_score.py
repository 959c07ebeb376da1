"""Score a corpus with GPT-2 on a Ray cluster: each text's log-likelihood and perplexity, as
`nexttoken perplexity` computes them, written beside the texts as Parquet.

Ray Data reads the corpus (JSON lines or Parquet, a `text` column and any others), hands batches
to a pool of actors that each load the model once, and writes each row back with `tokens`,
`scored`, `log_likelihood` and `perplexity` added. A worker that dies mid-job is restarted and
its batch run again, so every row comes out once. The same script runs on a laptop (a local
cluster) and on a cluster (`--address auto` on one of its nodes, or `ray://HEAD:10001`):

    pip install ./crates/nexttoken-python "ray[data]"
    python examples/ray_score.py corpus.jsonl scores/ --model gpt2 --actors 4 --threads 2

`--scorer transformers` runs the same job with Hugging Face transformers as the scorer (the
same windows, the same arithmetic), what a Ray user would write without nexttoken.
"""

import argparse
import math
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import ray

class NexttokenScorer:
    """One model per actor, loaded once; each batch's texts scored in order."""

    def __init__(self, model: Optional[str], threads: int, context: Optional[int] = None,
                 stride: Optional[int] = None):
        import nexttoken

        self.model = nexttoken.Model.load(model, threads=threads)
        self.windows = dict(context=context, stride=stride)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        scores = self.model.score(list(batch["text"]), **self.windows)
        return with_scores(batch, [(s.tokens, s.scored, s.log_likelihood) for s in scores])


class TransformersScorer:
    """The same scores from transformers' GPT2LMHeadModel: the perplexity recipe of its
    documentation, windows of `context` tokens `stride` apart, each token scored once."""

    def __init__(self, model: str, threads: int, context: Optional[int] = None,
                 stride: Optional[int] = None, tokenizer: Optional[str] = None):
        import torch
        from transformers import AutoTokenizer, GPT2LMHeadModel

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = GPT2LMHeadModel.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        positions = self.model.config.n_positions
        self.window = positions if context is None else context
        self.stride = max(self.window // 2, 1) if stride is None else stride
        # nexttoken's checks (TextGenerator::check_windows), so that both refuse the same.
        if not 2 <= self.window <= positions:
            raise ValueError(f"a window of {self.window} ids: it must hold 2 to {positions}")
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"a stride of {self.stride}: it must be 1 to the window's {self.window}")

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return with_scores(batch, [self.score(text) for text in batch["text"]])

    def score(self, text: str):
        torch = self.torch
        ids = self.tokenizer(text).input_ids
        log_likelihood, scored, scored_up_to = 0.0, 0, 0
        if len(ids) < 2:
            return len(ids), 0, 0.0
        for begin in range(0, len(ids), self.stride):
            end = min(begin + self.window, len(ids))
            with torch.inference_mode():
                logits = self.model(torch.tensor([ids[begin:end]])).logits[0].double()
            logprobs = logits[:-1].log_softmax(-1)
            targets = torch.tensor(ids[begin + 1:end])
            picked = logprobs[torch.arange(len(targets)), targets]
            first = max(scored_up_to - begin, 1) - 1  # positions before it were scored already
            log_likelihood += picked[first:].sum().item()
            scored += len(targets) - first
            scored_up_to = end
            if end == len(ids):
                break
        return len(ids), scored, log_likelihood


def with_scores(batch: Dict[str, np.ndarray], scores) -> Dict[str, np.ndarray]:
    tokens, scored, log_likelihood = (np.array(column) for column in zip(*scores)) if scores \
        else (np.array([]), np.array([]), np.array([]))
    batch["tokens"] = tokens.astype(np.int64)
    batch["scored"] = scored.astype(np.int64)
    batch["log_likelihood"] = log_likelihood.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        batch["perplexity"] = np.where(scored > 0, np.exp(-log_likelihood / np.maximum(scored, 1)),
                                       math.nan)
    return batch


SCORERS = {"nexttoken": NexttokenScorer, "transformers": TransformersScorer}


def score_corpus(source: str, destination: str, *, scorer=NexttokenScorer, actors: int = 2,
                 threads: int = 1, batch_size: int = 32, **scorer_args) -> ray.data.Dataset:
    """Reads `source` (.jsonl/.json or .parquet), scores its `text` column on `actors` actors of
    `threads` threads, writes Parquet files into `destination` (a new or empty folder, or a
    remote URI); the dataset it wrote."""
    if "://" not in destination and Path(destination).is_dir() and any(Path(destination).iterdir()):
        raise ValueError(f"{destination} is not empty: its files would be read back as scores")
    reader = ray.data.read_parquet if source.endswith(".parquet") else ray.data.read_json
    # Reading and writing take no CPU of their own: with every CPU an actor's, they would
    # wait for one forever.
    scored = reader(source, num_cpus=0).map_batches(
        scorer,
        fn_constructor_kwargs=dict(threads=threads, **scorer_args),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=threads,
        # A dead actor is started again and its batch run again, a few times: a batch that kills
        # every actor it meets (out of memory) ends the job instead of looping forever.
        max_restarts=4,
        max_task_retries=4,
    )
    scored.write_parquet(destination, ray_remote_args={"num_cpus": 0})
    return ray.data.read_parquet(destination)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a .jsonl or .parquet corpus with a `text` column")
    parser.add_argument("destination", help="a folder for the scored rows (Parquet)")
    parser.add_argument("--model", default=None,
                        help="a Hub id or a folder (default: nexttoken's built-in model)")
    parser.add_argument("--scorer", choices=sorted(SCORERS), default="nexttoken")
    parser.add_argument("--tokenizer", default=None,
                        help="transformers only: where the tokenizer is, if not with the model")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per actor")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context", type=int, default=None,
                        help="tokens per window (default: the model's context)")
    parser.add_argument("--stride", type=int, default=None,
                        help="tokens between windows (default: half a window)")
    parser.add_argument("--address", default=None,
                        help="a running cluster (`auto`, `ray://HOST:10001`); default: a local one")
    args = parser.parse_args()
    if args.scorer == "transformers" and args.model is None:
        parser.error("--scorer transformers needs --model (a folder or Hub id)")
    ray.init(address=args.address)
    extra = dict(tokenizer=args.tokenizer) if args.scorer == "transformers" else {}
    start = time.monotonic()
    written = score_corpus(
        args.source, args.destination, scorer=SCORERS[args.scorer], actors=args.actors,
        threads=args.threads, batch_size=args.batch_size, model=args.model,
        context=args.context, stride=args.stride, **extra,
    )
    seconds = time.monotonic() - start
    rows = written.count()
    tokens = int(written.sum("tokens"))
    print(f"{rows} texts, {tokens} tokens scored by {args.scorer} on {args.actors} actors of "
          f"{args.threads} thread(s) in {seconds:.1f} s: {rows / seconds:.1f} texts/s, "
          f"{tokens / seconds:.0f} tokens/s -> {Path(args.destination)}")


if __name__ == "__main__":
    main()
