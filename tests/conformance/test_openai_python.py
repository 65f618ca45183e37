"""The official OpenAI Python SDK against harmony-proxy (and its mock upstream), in every
tool-bridge mode: plain calls, raw streaming, and the `chat.completions.stream` helper."""
import json
import os
import re

import openai
import pytest

client = openai.OpenAI(api_key="sk-conformance", base_url=os.environ["PROXY_URL"] + "/v1", max_retries=0)
MARKUP = re.compile(r"<\|[a-z_]+\|>")
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "read_file", "description": "Read a file",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
]
FINAL_ONLY, TEXT, IDE = "gpt-oss-20b", "text-gpt-oss-20b", "ide-gpt-oss-20b"


def ask(text):
    return [{"role": "user", "content": text}]


def via_helper(model, text):
    with client.chat.completions.stream(model=model, messages=ask(text), tools=TOOLS) as s:
        for _ in s:
            pass
        return s.get_final_completion()


def via_create(model, text):
    return client.chat.completions.create(model=model, messages=ask(text), tools=TOOLS)


def via_raw_stream(model, text):
    """Assembles chunks by hand, as IDE agents do, checking chunk-level rules on the way."""
    content, reasoning, calls, finish, ids = "", "", {}, None, set()
    for chunk in client.chat.completions.create(model=model, messages=ask(text), tools=TOOLS, stream=True):
        ids.add(chunk.id)
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        d = ch.delta
        assert not (d.content and d.tool_calls), "content and tool_calls in one chunk"
        content += d.content or ""
        reasoning += (d.model_extra or {}).get("reasoning_content") or ""
        for tc in d.tool_calls or []:
            if tc.index not in calls:
                assert tc.id and tc.id.startswith("call_") and tc.function.name, "a call needs id and name first"
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        if ch.finish_reason:
            assert finish is None, "two finish chunks"
            finish = ch.finish_reason
    assert len(ids) == 1, "one id per response"
    return content, reasoning, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("call", [via_helper, via_create], ids=["stream-helper", "create"])
def test_openai_tool_calls(call):
    comp = call(IDE, "scenario:weather")
    choice = comp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert calls[0].id.startswith("call_") and calls[0].type == "function"
    assert not MARKUP.search(choice.message.content or "")


@pytest.mark.parametrize("call", [via_helper, via_create], ids=["stream-helper", "create"])
def test_two_calls_get_their_own_index_and_id(call):
    calls = call(IDE, "scenario:two-tools").choices[0].message.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == [{"path": "a.txt"}, {"path": "b.txt"}]
    assert [c.function.name for c in calls] == ["read_file", "read_file"]
    assert len({c.id for c in calls}) == 2


def test_raw_stream_reasoning_preamble_and_call():
    content, reasoning, calls, finish = via_raw_stream(IDE, "scenario:weather")
    assert content == "I'll check the weather."
    assert reasoning == "Need the weather tool for Paris."
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Paris", "unit": "celsius"})]
    assert finish == "tool_calls"


@pytest.mark.parametrize("call", [via_helper, via_create], ids=["stream-helper", "create"])
def test_final_only_drops_tools_and_reasoning(call):
    comp = call(FINAL_ONLY, "scenario:hello")
    m = comp.choices[0].message
    assert m.content == "Hello! How can I help you today?"
    assert not m.tool_calls
    assert comp.choices[0].finish_reason == "stop"
    comp = call(FINAL_ONLY, "scenario:weather")
    assert not comp.choices[0].message.tool_calls and comp.choices[0].finish_reason == "stop"
    assert not MARKUP.search(comp.choices[0].message.content or "")


@pytest.mark.parametrize("call", [via_helper, via_create], ids=["stream-helper", "create"])
def test_text_mode_writes_calls_into_content(call):
    m = call(TEXT, "scenario:weather").choices[0].message
    assert m.content == '\n[tool:get_weather] {"city":"Paris","unit":"celsius"}\n'
    assert not m.tool_calls


def test_usage_when_asked():
    chunks = list(client.chat.completions.create(model=FINAL_ONLY, messages=ask("hi"), stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert chunks[-1].choices == []


def test_errors_reach_the_sdk_as_openai_errors():
    lost = openai.OpenAI(api_key="sk-conformance", base_url=os.environ["PROXY_URL"] + "/nope", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        lost.chat.completions.create(model=FINAL_ONLY, messages=ask("hi"))
    assert e.value.code == "not_found"


def mock_last_request():
    import urllib.request
    with urllib.request.urlopen(os.environ["MOCK_URL"].removesuffix("/v1") + "/mock/stats") as r:
        return json.load(r)["last_request"]


def agent_turn(messages, stream):
    if stream:
        with client.chat.completions.stream(model=IDE, messages=messages, tools=TOOLS) as s:
            for _ in s:
                pass
            return s.get_final_completion()
    return client.chat.completions.create(model=IDE, messages=messages, tools=TOOLS)


@pytest.mark.parametrize("turns", [2, 3])
@pytest.mark.parametrize("stream", [True, False], ids=["stream-helper", "create"])
def test_an_agent_loop_sends_the_sdk_message_back_and_goes_on(turns, stream):
    """The SDK's own message object (preamble as content, reasoning, calls) goes back each
    turn; the mock, like llama.cpp's template, answers 500 to content beside reasoning in a
    tool-call turn, so every turn succeeding proves the proxy repaired the history."""
    messages = ask("scenario:weather")
    for _ in range(turns):
        msg = agent_turn(messages, stream).choices[0].message
        assert [t.function.name for t in msg.tool_calls] == ["get_weather"]
        messages.append(msg)
        for t in msg.tool_calls:
            messages.append({"role": "tool", "tool_call_id": t.id, "content": "18 C, clear"})
    sent = mock_last_request()["messages"]
    tool_turns = [m for m in sent if m.get("role") == "assistant" and m.get("tool_calls")]
    assert len(tool_turns) == turns - 1
    for m in tool_turns:
        assert not (m.get("content") and m.get("reasoning_content")), m
        assert m["reasoning_content"].startswith("Need the weather tool for Paris."), m


def test_reasoning_the_agent_dropped_is_given_back_to_the_model():
    first = agent_turn(ask("scenario:weather"), False).choices[0].message
    # An agent that keeps only what it shows: no reasoning field.
    bare = {"role": "assistant", "content": None,
            "tool_calls": [{"id": t.id, "type": "function", "function": {"name": t.function.name, "arguments": t.function.arguments}} for t in first.tool_calls]}
    messages = ask("scenario:weather") + [bare, {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "18 C"}]
    agent_turn(messages, False)
    sent = mock_last_request()["messages"]
    assert sent[1]["reasoning_content"] == "Need the weather tool for Paris."
