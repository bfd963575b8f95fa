"""The official SDKs, pointed at Envoy, see keyguard's answers as their own error types.

OpenAI sends `Authorization: Bearer`, Anthropic sends `x-api-key`; retries are off so a
429 or 5xx surfaces at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import HttpStack, Key

pytestmark = pytest.mark.e2e

MODELS = "gpt-4o-mini,claude-3-5-haiku,text-embedding-3-small,whisper-1"
HELLO_OPENAI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
HELLO_ANTHROPIC: list[MessageParam] = [{"role": "user", "content": "Hello"}]


class OpenAIFactory:
    """OpenAI clients for keys; all closed when the test ends (no unclosed sockets)."""

    def __init__(self, stack: HttpStack) -> None:
        self.stack = stack
        self.clients: list[openai.OpenAI] = []

    def __call__(self, key: Key | str) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=f"{self.stack.base_url}/v1",
            api_key=key.key if isinstance(key, Key) else key,
            max_retries=0,
            timeout=10.0,
        )
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


class AnthropicFactory:
    def __init__(self, stack: HttpStack) -> None:
        self.stack = stack
        self.clients: list[anthropic.Anthropic] = []

    def __call__(self, key: Key | str) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            base_url=self.stack.base_url,
            api_key=key.key if isinstance(key, Key) else key,
            max_retries=0,
            timeout=10.0,
        )
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def oai(stack: HttpStack) -> Iterator[OpenAIFactory]:
    factory = OpenAIFactory(stack)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def claude(stack: HttpStack) -> Iterator[AnthropicFactory]:
    factory = AnthropicFactory(stack)
    try:
        yield factory
    finally:
        factory.close()


def _chat(client: openai.OpenAI, model: str = "gpt-4o-mini") -> str | None:
    completion = client.chat.completions.create(model=model, messages=HELLO_OPENAI)
    return completion.choices[0].message.content


def _message(client: anthropic.Anthropic, model: str = "claude-3-5-haiku") -> str:
    message = client.messages.create(model=model, max_tokens=32, messages=HELLO_ANTHROPIC)
    block = message.content[0]
    assert block.type == "text"
    return block.text


# --------------------------------------------------------------------------- OpenAI


def test_openai_allowed_calls(stack: HttpStack, oai: OpenAIFactory) -> None:
    client = oai(stack.key("--quota", "100", "--models", MODELS))
    assert _chat(client)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO_OPENAI
    )
    echo = raw.http_response.json()["_echo"]["headers"]
    assert "authorization" not in echo and echo["x-keyguard-key-type"] == "standard"
    assert client.embeddings.create(model="text-embedding-3-small", input="hi").data
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", b"RIFF" + bytes(64))
    )
    assert text.text
    chunks = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO_OPENAI, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_openai_401(stack: HttpStack, oai: OpenAIFactory) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        _chat(oai("sk-" + "0" * 40))
    assert err.value.status_code == 401
    assert err.value.code == "invalid_api_key"
    assert err.value.response.headers["x-keyguard-reason"] == "invalid_api_key"


def test_openai_403(stack: HttpStack, oai: OpenAIFactory) -> None:
    client = oai(stack.key("--quota", "100", "--models", MODELS))
    with pytest.raises(openai.PermissionDeniedError) as err:
        _chat(client, "gpt-4o")
    assert err.value.code == "model_not_allowed"


def test_openai_429(stack: HttpStack, oai: OpenAIFactory) -> None:
    client = oai(stack.key("--unlimited", "--rpm", "1"))
    assert _chat(client)
    with pytest.raises(openai.RateLimitError) as err:
        _chat(client)
    assert err.value.code == "rate_limit_exceeded"
    assert int(err.value.response.headers["retry-after"]) >= 1


def test_openai_402(stack: HttpStack, oai: OpenAIFactory) -> None:
    client = oai(stack.key("--quota", "0"))
    with pytest.raises(openai.APIStatusError) as err:
        _chat(client)
    assert err.value.status_code == 402
    assert err.value.code == "insufficient_quota"
    assert err.value.type == "insufficient_quota"
    assert "quota" in str(err.value.body).lower()


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_allowed_calls(stack: HttpStack, claude: AnthropicFactory) -> None:
    client = claude(
        stack.key("--type", "subscription", "--quota", "100", "--cycle", "30d", "--models", MODELS)
    )
    assert _message(client)
    raw = client.messages.with_raw_response.create(
        model="claude-3-5-haiku",
        max_tokens=32,
        messages=HELLO_ANTHROPIC,
    )
    echo = raw.http_response.json()["_echo"]["headers"]
    assert "x-api-key" not in echo and echo["x-keyguard-key-type"] == "subscription"
    with client.messages.stream(
        model="claude-3-5-haiku",
        max_tokens=32,
        messages=HELLO_ANTHROPIC,
    ) as stream:
        assert stream.get_final_text()


def _error_type(err: anthropic.APIStatusError) -> str:
    body = err.body
    assert isinstance(body, dict), body
    error = body["error"]
    assert isinstance(error, dict), body
    return str(error["type"])


def test_anthropic_401(claude: AnthropicFactory) -> None:
    with pytest.raises(anthropic.AuthenticationError) as err:
        _message(claude("sk-" + "0" * 40))
    assert _error_type(err.value) == "authentication_error"
    assert err.value.response.headers["x-keyguard-reason"] == "invalid_api_key"


def test_anthropic_403(stack: HttpStack, claude: AnthropicFactory) -> None:
    client = claude(stack.key("--quota", "100", "--models", MODELS))
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        _message(client, "claude-3-opus")
    assert _error_type(err.value) == "permission_error"


def test_anthropic_429(stack: HttpStack, claude: AnthropicFactory) -> None:
    client = claude(stack.key("--unlimited", "--rpm", "1"))
    assert _message(client)
    with pytest.raises(anthropic.RateLimitError) as err:
        _message(client)
    assert _error_type(err.value) == "rate_limit_error"


def test_anthropic_402(stack: HttpStack, claude: AnthropicFactory) -> None:
    client = claude(stack.key("--quota", "0"))
    with pytest.raises(anthropic.APIStatusError) as err:
        _message(client)
    assert err.value.status_code == 402
    assert _error_type(err.value) == "billing_error"
    assert "quota" in err.value.message.lower()
