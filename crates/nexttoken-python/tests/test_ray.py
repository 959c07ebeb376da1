"""examples/ray_score.py on a local Ray cluster: two actors of one thread each score a few
hundred texts; every row comes out once with the scores `Model.score` gives in this process,
also when an actor dies mid-job."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, missing

sys.path.insert(0, str(ROOT / "examples"))


@pytest.fixture(scope="module")
def ray_score():
    try:
        import ray
    except ImportError:
        missing("ray is not installed: pip install './crates/nexttoken-python[ray]'")
    import ray_score

    # The workers cannot import the example by name: its classes travel by value, as a
    # script's own (its __main__) do.
    ray.cloudpickle.register_pickle_by_value(ray_score)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray_score
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 300 speeches of tinyshakespeare.txt, one JSON line each, with an id."""
    path = ROOT.parent / "shared" / "corpus" / "tinyshakespeare.txt"
    if not path.is_file():
        missing(f"{path} is missing: ../shared/corpus sits beside the repository in CI")
    speeches = [s for s in path.read_text().split("\n\n") if s.strip()][:300]
    file = tmp_path_factory.mktemp("corpus") / "speeches.jsonl"
    file.write_text("".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(speeches)))
    return file, speeches


def check_every_row_once_with_its_score(written, speeches, model):
    rows = written.to_pandas().sort_values("id")
    assert list(rows["id"]) == list(range(len(speeches))), "no text lost or duplicated"
    assert list(rows["text"]) == speeches
    expected = model.score(speeches)
    assert list(rows["tokens"]) == [s.tokens for s in expected]
    assert list(rows["scored"]) == [s.scored for s in expected]
    np.testing.assert_allclose(rows["log_likelihood"], [s.log_likelihood for s in expected],
                               rtol=1e-6)
    np.testing.assert_allclose(rows["perplexity"], [s.perplexity for s in expected], rtol=1e-6)


def test_the_cluster_scores_every_text_as_one_process_does(ray_score, corpus, tmp_path, model):
    file, speeches = corpus
    written = ray_score.score_corpus(str(file), str(tmp_path / "scores"), actors=2, threads=1,
                                     batch_size=16, model=None)
    check_every_row_once_with_its_score(written, speeches, model)


def test_an_actor_killed_mid_job_still_gives_every_row_once(ray_score, corpus, tmp_path, model):
    file, speeches = corpus
    killed = tmp_path / "killed"

    class DyingOnce(ray_score.NexttokenScorer):
        """Ends its process in the middle of the corpus, the first time it gets there."""

        def __call__(self, batch):
            if batch["id"].min() >= len(speeches) // 2 and not killed.exists():
                killed.touch()
                os._exit(1)
            return super().__call__(batch)

    written = ray_score.score_corpus(str(file), str(tmp_path / "scores"), scorer=DyingOnce,
                                     actors=2, threads=1, batch_size=16, model=None)
    assert killed.exists(), "an actor died"
    check_every_row_once_with_its_score(written, speeches, model)
