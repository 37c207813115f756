"""Request validation: what the front runs before it opens a stream, and the worker again."""

from __future__ import annotations

import json

import pytest

from cairn.inference import openai

KINDS: dict[str, type[openai.ChatRequest | openai.CompletionRequest | openai.EmbeddingRequest]] = {
    "/chat/completions": openai.ChatRequest,
    "/completions": openai.CompletionRequest,
    "/embeddings": openai.EmbeddingRequest,
}


def check(path: str, raw: bytes) -> None:
    """What the front and the worker run on a request for the POST route `path`."""
    openai.parse(raw, KINDS[path]).check()


def body(**fields: object) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def test_a_valid_request_passes() -> None:
    check("/chat/completions", body(tools=[], logprobs=True, top_logprobs=2))


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/chat/completions", body(n=2), "n"),
        ("/chat/completions", body(foo=1), "foo"),
        (
            "/chat/completions",
            body(messages=[{"role": "user", "content": "x", "x": 1}]),
            "messages.0.x",
        ),
        ("/completions", json.dumps({"model": "m", "prompt": "x", "echo": True}).encode(), "echo"),
        (
            "/embeddings",
            json.dumps({"model": "m", "input": "x", "dimensions": 3}).encode(),
            "dimensions",
        ),
        ("/chat/completions", body(logit_bias={"a": 1}), "logit_bias"),
        ("/chat/completions", body(logit_bias={"\u00b2": 1}), "logit_bias"),  # a digit to str
        ("/chat/completions", body(logit_bias={"1": 101}), "logit_bias"),
    ],
)
def test_refusals_name_the_field(path: str, raw: bytes, param: str) -> None:
    with pytest.raises(openai.RequestError) as err:
        check(path, raw)
    assert err.value.param == param
