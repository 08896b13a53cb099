"""orjson behind `shared.jsoncodec`, giving what `json.dumps(value, default=str)` gave."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from shared import jsoncodec

pytestmark = pytest.mark.unit


def standard(value: object) -> object:
    return json.loads(json.dumps(value, default=str))


@pytest.mark.parametrize(
    "value",
    [
        {"id": uuid4(), "at": datetime(2026, 11, 27, 7, 0, tzinfo=UTC), "n": [1, 2.5, None, True]},
        {1: "a non-string key", "text": 'é \u2028 \x00 quotes " and \\ backslashes'},
        {"huge": 2**70, "negative huge": -(2**80)},  # beyond 64 bits: orjson refuses, json takes it
    ],
)
def test_the_same_document_as_the_standard_library(value: object) -> None:
    assert jsoncodec.loads(jsoncodec.dumps(value)) == standard(value)
    assert jsoncodec.dumps_text(value) == jsoncodec.dumps(value).decode()


@pytest.mark.parametrize("text", [b"{bad", b"\xff\xfe", b"", b"NaN", b'{"a": 1} trailing'])
def test_what_is_not_json_is_a_value_error(text: bytes) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(text)
