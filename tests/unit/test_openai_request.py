"""Request validation the front can run before it opens a stream: the worker's own checks."""

from __future__ import annotations

import json

import pytest

from cairn.inference import openai


def body(**fields: object) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def test_a_valid_request_passes() -> None:
    openai.check_request("/chat/completions", body(tools=[], logprobs=True, top_logprobs=2))


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
        openai.check_request(path, raw)
    assert err.value.param == param


def test_other_paths_are_not_checked() -> None:
    openai.check_request("/models", b"not json")
