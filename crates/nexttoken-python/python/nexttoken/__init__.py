"""nexttoken: GPT-2 text generation and scoring in Rust, from Python.

The same generator and scorer as the ``nexttoken`` command: greedy ids equal to transformers'
``generate(do_sample=False)``, sampling with transformers' settings, perplexity as
``nexttoken perplexity`` computes it. Every call that runs the model releases the GIL.

    >>> import nexttoken
    >>> model = nexttoken.Model.load()          # the small model built into nexttoken
    >>> model.generate("Every effort moves you", max_new_tokens=8).text
    >>> for text in model.stream("ROMEO:", max_new_tokens=20):
    ...     print(text, end="", flush=True)
    >>> model.score(["To be, or not to be"])[0].perplexity
"""

from ._nexttoken import (
    BUILT_IN_MODEL,
    Completion,
    Model,
    Score,
    Stream,
    Tokenizer,
    TokenLogprob,
    __version__,
)

__all__ = [
    "BUILT_IN_MODEL",
    "Completion",
    "Model",
    "Score",
    "Stream",
    "Tokenizer",
    "TokenLogprob",
    "__version__",
]
