"""The provider documentation's examples, run through the official SDK against the gateway."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from support import MODEL, describe, make_async_client, make_png

pytestmark = pytest.mark.timeout(30)


def test_non_streaming_chat_completion(client):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe this gateway in one sentence."}],
    )
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == describe(1, "Describe this gateway in one sentence.")
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_streaming_chat_completion(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream me a description."}],
        stream=True,
    )
    deltas: list[str] = []
    finish_reasons: list[str] = []
    chunks = 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason is not None:
                finish_reasons.append(choice.finish_reason)
    assert "".join(deltas) == describe(1, "Stream me a description.")
    assert len(deltas) > 1, "the answer should arrive in several deltas"
    assert finish_reasons == ["stop"]


def test_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count my tokens"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == describe(1, "count my tokens")
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.total_tokens > 0


def test_async_streaming_chat_completion(gateway):
    async def run() -> tuple[str, list[str]]:
        client = make_async_client(gateway.base_url)
        try:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "async, please"}],
                stream=True,
            )
            text = ""
            finishes: list[str] = []
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    if choice.finish_reason is not None:
                        finishes.append(choice.finish_reason)
            return text, finishes
        finally:
            await client.close()

    text, finishes = asyncio.run(run())
    assert text == describe(1, "async, please")
    assert finishes == ["stop"]


def test_system_prompt_text_and_base64_png(client):
    png = make_png(7, 5)
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a careful image describer."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": data_uri}},
                ],
            },
        ],
    )
    answer = completion.choices[0].message.content
    assert f"#1 image/png 7x5 ({len(png)} bytes)" in answer
    assert answer == describe(2, "What is in this image?", [f"image/png 7x5 ({len(png)} bytes)"])


def test_several_images_in_one_message(client):
    a, b = make_png(3, 2), make_png(64, 48, (0, 128, 255))
    content = [{"type": "text", "text": "Compare these."}] + [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(p).decode(), "detail": "low"}}
        for p in (a, b)
    ]
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert completion.choices[0].message.content == describe(
        1, "Compare these.", [f"image/png 3x2 ({len(a)} bytes)", f"image/png 64x48 ({len(b)} bytes)"]
    )


def test_sampling_parameters_arrive_upstream_unchanged(recording_client, recording_upstream, sent):
    completion = recording_client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi."},
        ],
        temperature=0.35,
        max_tokens=17,
        top_p=0.9,
        stop=["END", "\n\n"],
    )
    assert completion.choices[0].message.content == "recorded"
    assert len(recording_upstream.requests) == 1
    got = recording_upstream.requests[0]
    assert got.method == "POST"
    assert got.target == "/v1/chat/completions"
    body = got.json()
    assert body["temperature"] == 0.35
    assert body["max_tokens"] == 17
    assert body["top_p"] == 0.9
    assert body["stop"] == ["END", "\n\n"]
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi."},
    ]
    assert got.body == sent.last, "the upstream must receive exactly the bytes the SDK sent"
    assert json.loads(sent.last) == body
