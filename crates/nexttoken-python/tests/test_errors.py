"""Bad input raises the Python exception a user expects, with the CLI's message."""

import pytest

import nexttoken
from conftest import ROOT


def test_a_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nexttoken.Model.load(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="config.json"):
        nexttoken.Model.load(tmp_path)


def test_corrupt_weights_name_the_file(tmp_path):
    config = ROOT / "models" / "nexttoken-tiny-shakespeare" / "config.json"
    (tmp_path / "config.json").write_text(config.read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ValueError, match="model.safetensors"):
        nexttoken.Model.load(tmp_path)


@pytest.mark.parametrize("settings,match", [
    (dict(backend="cuda9"), "unknown backend `cuda9`"),
    (dict(backend="wgpu"), "backend `wgpu` is not in the Python package"),
    (dict(threads=0), "threads must be 1 or more, got 0"),
    (dict(threads=-2), "threads must be 0 or more, got -2"),
    (dict(dtype="q3_k"), "unknown dtype `q3_k`"),
    (dict(gguf_file="model.gguf"), "--gguf-file model.gguf names a file in a repo or folder"),
])
def test_bad_load_settings_are_value_errors(settings, match):
    with pytest.raises(ValueError, match=match):
        nexttoken.Model.load(**settings)


def test_threads_are_set_once_per_process(model):
    nexttoken.Model.load(threads=2)  # the size it has: fine
    with pytest.raises(ValueError, match="already runs 2 CPU threads"):
        nexttoken.Model.load(threads=3)


@pytest.mark.parametrize("settings,error,match", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be at least 1"),
    (dict(max_new_tokens=-5), ValueError, "max_new_tokens must be 0 or more, got -5"),
    (dict(max_new_tokens=2**70), ValueError, "max_new_tokens must be at most 18446744073709551615"),
    (dict(max_new_tokens="many"), TypeError, "max_new_tokens must be a whole number"),
    (dict(temperature="hot"), TypeError, "temperature must be a number, got 'hot'"),
    (dict(stop=3), TypeError, "stop must be a string or a list of strings"),
    (dict(stop_token_ids=[-1]), TypeError, "stop_token_ids must be a list of token ids"),
    (dict(seed=2**64), ValueError, "seed must be at most 18446744073709551615"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(top_p=1.5), ValueError, "top-p"),
    (dict(top_k=0), ValueError, "top-k"),
    (dict(seed=-1), ValueError, "seed must be 0 or more, got -1"),
    (dict(repetition_penalty=0.0), ValueError, "penalty"),
    (dict(max_tokens=5), TypeError, "unexpected keyword argument 'max_tokens'"),
    (dict(max_tokens=None), TypeError, "unexpected keyword argument 'max_tokens'"),
])
def test_bad_generation_settings_raise(model, settings, error, match):
    with pytest.raises(error, match=match):
        model.generate("Hello", **settings)
    with pytest.raises(error, match=match):
        model.stream("Hello", **settings)


def test_bad_ids_and_windows_are_value_errors(model):
    with pytest.raises(ValueError, match="token id 50257"):
        model.logits([1, 50257])
    with pytest.raises(ValueError, match="prompt 1 holds token id 50257"):
        model.logits([[1, 2], [3, 50257]])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        model.logits([])
    with pytest.raises(ValueError, match="one length"):
        model.logits([[1, 2], [3]])
    with pytest.raises(ValueError, match="context"):
        model.logits(list(range(model.context_length + 1)))
    with pytest.raises(ValueError, match="window"):
        model.score("To be, or not to be", context=model.context_length + 1)
    with pytest.raises(ValueError, match="stride"):
        model.score("To be, or not to be", stride=0)
    # Checked before any text is scored, a text of one token included.
    with pytest.raises(ValueError, match="stride"):
        model.score("x", stride=0)
    with pytest.raises(ValueError, match="context must be 0 or more"):
        model.score("x", context=-1)
