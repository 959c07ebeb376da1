"""A completion through OpenAI's official Python client, against `nexttoken serve`.

Asks the server at BASE_URL for one greedy completion non-streamed and the same one streamed
(with usage), and prints one JSON line: both texts, the finish reasons and the usage, for the
caller to check (crates/nexttoken-server/tests/server.rs runs it).

    python scripts/openai_client_check.py http://127.0.0.1:8080/v1 MODEL "PROMPT" MAX_TOKENS
"""

import json
import sys

import openai
from openai import OpenAI


def main():
    base_url, model, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = OpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=60)
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                      temperature=0)
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.text)
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    try:
        client.completions.create(model="no-such-model", prompt=prompt, max_tokens=1)
        error = None
    except openai.NotFoundError as e:
        error = {"status": e.status_code, "message": e.message}
    print(json.dumps({
        "openai": openai.__version__,
        "text": whole.choices[0].text,
        "finish_reason": whole.choices[0].finish_reason,
        "usage": whole.usage.model_dump(),
        "streamed_text": "".join(pieces),
        "streamed_finish_reason": finish,
        "streamed_usage": usage,
        "unknown_model_error": error,
    }))


if __name__ == "__main__":
    main()
