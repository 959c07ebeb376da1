"""Type stubs of nexttoken's native module (crates/nexttoken-python/src)."""

import os
from typing import Iterator, Literal, Optional, Sequence, TypedDict, Union, overload

from typing_extensions import Unpack

import numpy as np
import numpy.typing as npt

__version__: str
BUILT_IN_MODEL: str

class Tokenizer:
    """GPT-2's byte-level BPE tokenizer: the same ids as transformers' GPT2TokenizerFast."""

    def __init__(self) -> None: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def eos_token_id(self) -> int: ...

class TokenLogprob:
    @property
    def id(self) -> int: ...
    @property
    def logprob(self) -> float: ...
    @property
    def top(self) -> list[tuple[int, float]]: ...

class Completion:
    @property
    def text(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def prompt_ids(self) -> list[int]: ...
    @property
    def ids(self) -> list[int]: ...
    @property
    def finish_reason(self) -> Optional[Literal["eos", "length", "stop"]]: ...
    @property
    def logprobs(self) -> list[TokenLogprob]: ...

class Score:
    @property
    def tokens(self) -> int: ...
    @property
    def scored(self) -> int: ...
    @property
    def log_likelihood(self) -> float: ...
    @property
    def perplexity(self) -> float: ...
    @property
    def token_logprobs(self) -> Optional[list[float]]: ...

class Stream(Iterator[str]):
    @property
    def completion(self) -> Optional[Completion]: ...
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Stream": ...
    def __exit__(self, *exception: object) -> None: ...

class GenerationSettings(TypedDict, total=False):
    """`generate`'s and `stream`'s keywords; `None` or leaving one out is its default."""

    max_new_tokens: Optional[int]  # 50
    temperature: Optional[float]  # 0 (greedy), 1 with a top_k/top_p/min_p filter
    top_k: Optional[int]
    top_p: Optional[float]
    min_p: Optional[float]
    repetition_penalty: Optional[float]  # 1.0: off
    seed: Optional[int]  # a random one
    stop: Union[str, Sequence[str], None]
    stop_token_ids: Optional[Sequence[int]]
    logprobs: Optional[int]
    ignore_eos: Optional[bool]  # False

class Model:
    @property
    def name(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @staticmethod
    def load(
        name_or_path: Union[str, os.PathLike[str], None] = None,
        *,
        dtype: Optional[Literal["f32", "f16", "bf16", "q8_0", "q4_0"]] = None,
        backend: Literal["flex"] = "flex",  # the package is built with flex only
        threads: Optional[int] = None,
        revision: Optional[str] = None,
        gguf_file: Optional[str] = None,
    ) -> "Model": ...
    # A str is a Sequence[str] too: the first overload that matches wins, as typeshed's do.
    @overload
    def generate(  # type: ignore[overload-overlap]
        self,
        prompts: str,
        /,
        **settings: Unpack[GenerationSettings],
    ) -> Completion: ...
    @overload
    def generate(
        self,
        prompts: Sequence[str],
        /,
        **settings: Unpack[GenerationSettings],
    ) -> list[Completion]: ...
    def stream(
        self,
        prompt: str,
        /,
        **settings: Unpack[GenerationSettings],
    ) -> Stream: ...
    @overload
    def score(  # type: ignore[overload-overlap]
        self,
        texts: str,
        /,
        *,
        context: Optional[int] = None,
        stride: Optional[int] = None,
        token_logprobs: bool = False,
    ) -> Score: ...
    @overload
    def score(
        self,
        texts: Sequence[str],
        /,
        *,
        context: Optional[int] = None,
        stride: Optional[int] = None,
        token_logprobs: bool = False,
    ) -> list[Score]: ...
    def logits(
        self, ids: Union[Sequence[int], Sequence[Sequence[int]]]
    ) -> npt.NDArray[np.float32]: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def context_length(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def eos_token_id(self) -> int: ...
