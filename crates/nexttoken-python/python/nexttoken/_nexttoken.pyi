"""Type stubs of nexttoken's native module (crates/nexttoken-python/src)."""

import os
from typing import Iterator, Literal, Optional, Sequence, Union, overload

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
    id: int
    logprob: float
    top: list[tuple[int, float]]

class Completion:
    text: str
    prompt: str
    prompt_ids: list[int]
    ids: list[int]
    finish_reason: Optional[Literal["eos", "length", "stop"]]
    logprobs: list[TokenLogprob]

class Score:
    tokens: int
    scored: int
    log_likelihood: float
    perplexity: float
    token_logprobs: Optional[list[float]]

class Stream(Iterator[str]):
    completion: Optional[Completion]
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...

class Model:
    name: str
    backend: str
    dtype: str
    @staticmethod
    def load(
        name_or_path: Union[str, os.PathLike[str], None] = None,
        *,
        dtype: Optional[Literal["f32", "f16", "bf16", "q8_0", "q4_0"]] = None,
        backend: str = "flex",
        threads: Optional[int] = None,
        revision: Optional[str] = None,
        gguf_file: Optional[str] = None,
    ) -> "Model": ...
    @overload
    def generate(
        self,
        prompts: str,
        /,
        *,
        max_new_tokens: int = 50,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stop_token_ids: Optional[Sequence[int]] = None,
        logprobs: Optional[int] = None,
        ignore_eos: bool = False,
    ) -> Completion: ...
    @overload
    def generate(
        self,
        prompts: Sequence[str],
        /,
        *,
        max_new_tokens: int = 50,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stop_token_ids: Optional[Sequence[int]] = None,
        logprobs: Optional[int] = None,
        ignore_eos: bool = False,
    ) -> list[Completion]: ...
    def stream(
        self,
        prompt: str,
        /,
        *,
        max_new_tokens: int = 50,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stop_token_ids: Optional[Sequence[int]] = None,
        logprobs: Optional[int] = None,
        ignore_eos: bool = False,
    ) -> Stream: ...
    @overload
    def score(
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
