"""Every answer the proxy gives, validated against each API's published schema (the files of
tests/schemas/, derived from the documents they name): every response object and every
streamed event, for every recorded upstream stream of tests/fixtures, on all three APIs,
streamed and not; plus the shapes no fixture reaches (echoed tools and formats, tool calls of
each kind, errors before and after the stream began).

Responses is checked against OpenAI's document and against Open Responses. Where the two
disagree and no answer can satisfy both, the proxy follows OpenAI's API (Codex and the SDKs
read it) and the Open Responses check skips exactly what `OPEN_RESPONSES_DIFFERS` lists; where
the proxy must say what OpenAI's document has no word for, `OPENAI_DIFFERS` lists it."""
import json
import os
import pathlib
import urllib.error
import urllib.request

import jsonschema
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE = os.environ["PROXY_URL"]
FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("*.sse"))
CHAT_MODELS = ["gpt-oss", "text-gpt-oss", "ide-gpt-oss"]  # harmony, text-tools, ide-tools


def validator(name, definition):
    schema = json.loads((ROOT / "tests" / "schemas" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]})


CHAT = {d: validator("chat.openai", d) for d in ["ChatCompletion", "ChatCompletionChunk", "Error"]}
RESPONSES = {
    doc: {d: validator(f"responses.{doc}", d) for d in ["Response", "StreamEvent", "Error"]}
    for doc in ["openai", "openresponses"]
}
MESSAGES = {d: validator("messages.anthropic", d) for d in ["Message", "StreamEvent", "ErrorResponse"]}

# Open Responses (2026-04-24) against OpenAI's API, where one answer cannot satisfy both:
# OpenAI names the reasoning text events `response.reasoning_text.*` (Codex reads those),
# and Open Responses has no custom tools (Codex's freeform `apply_patch`).
OPEN_RESPONSES_DIFFERS = {
    "events": {"response.reasoning_text.delta", "response.reasoning_text.done", "response.custom_tool_call_input.done"},
    "items": {"custom_tool_call"},
    "tools": {"custom"},
}
# OpenAI's document (2.3.0) lists the codes of `response.error.code`; a prompt too long for
# the context is `context_length_exceeded`, the code Codex stops on, which it does not list.
OPENAI_DIFFERS = {"error_codes": {"context_length_exceeded"}}


def errors_of(v, instance):
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(instance)]


def post(path, body):
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def sse_data(raw):
    """The JSON of each `data:` line (`[DONE]` left out), with the `event:` name before it."""
    out, name = [], None
    for line in raw.decode().splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = line[len("data: "):]
            if data != "[DONE]":
                out.append((name, json.loads(data)))
            name = None
    return out


def raw_script(path):
    return json.dumps({"mock": {"raw": path.read_text()}})


# ---- Chat Completions ---------------------------------------------------------------------

def check_chat(status, raw, stream, where):
    problems = []
    if stream and status == 200:
        events = sse_data(raw)
        assert events, f"{where}: no events"
        for _, ev in events:
            problems += errors_of(CHAT["Error"] if "error" in ev else CHAT["ChatCompletionChunk"], ev)
    else:
        body = json.loads(raw)
        problems += errors_of(CHAT["ChatCompletion"] if status == 200 else CHAT["Error"], body)
    assert not problems, f"{where}:\n" + "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_chat_answers_for_every_fixture_validate(fixture):
    for model in CHAT_MODELS:
        for stream in (True, False):
            body = {"model": model, "stream": stream, "stream_options": {"include_usage": True} if stream else None,
                    "messages": [{"role": "user", "content": raw_script(fixture)}]}
            body = {k: v for k, v in body.items() if v is not None}
            status, raw = post("/v1/chat/completions", body)
            check_chat(status, raw, stream, f"{fixture.stem} {model} stream={stream}")


# ---- Responses ----------------------------------------------------------------------------

def check_response_object(doc, r, problems):
    if doc == "openresponses":
        # Skip only what cannot be satisfied alongside OpenAI's API (see the module doc).
        r = dict(r)
        r["output"] = [i for i in r.get("output", []) if i.get("type") not in OPEN_RESPONSES_DIFFERS["items"]]
        r["tools"] = [t for t in r.get("tools", []) if t.get("type") not in OPEN_RESPONSES_DIFFERS["tools"]]
    if doc == "openai" and (r.get("error") or {}).get("code") in OPENAI_DIFFERS["error_codes"]:
        r = dict(r, error=dict(r["error"], code="server_error"))
    problems += [f"response: {p}" for p in errors_of(RESPONSES[doc]["Response"], r)]


def check_responses(status, raw, stream, where):
    for doc in RESPONSES:
        problems = []
        if stream and status == 200:
            events = sse_data(raw)
            assert events and events[-1][1]["type"] in ("response.completed", "response.failed", "response.incomplete", "error"), where
            for name, ev in events:
                assert name == ev["type"], f"{where}: event {name} carries {ev['type']}"
                if doc == "openresponses":
                    if ev["type"] in OPEN_RESPONSES_DIFFERS["events"]:
                        continue
                    if ev.get("item", {}).get("type") in OPEN_RESPONSES_DIFFERS["items"]:
                        continue
                if "response" in ev:
                    check_response_object(doc, ev["response"], problems)
                    ev = dict(ev, response=RESPONSE_STUB[doc])
                problems += [f"{ev['type']}: {p}" for p in errors_of(RESPONSES[doc]["StreamEvent"], ev)]
        elif status == 200:
            check_response_object(doc, json.loads(raw), problems)
        else:
            problems += errors_of(RESPONSES[doc]["Error"], json.loads(raw))
        assert not problems, f"{where} ({doc}):\n" + "\n".join(sorted(set(problems)))


# The embedded response is checked on its own (above); the event around it with this stand-in.
_, _stub = post("/v1/responses", {"model": "gpt-oss-20b", "input": "hi"})
RESPONSE_STUB = {doc: json.loads(_stub) for doc in RESPONSES}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_responses_answers_for_every_fixture_validate(fixture):
    for stream in (True, False):
        status, raw = post("/v1/responses", {"model": "gpt-oss-20b", "stream": stream, "input": raw_script(fixture)})
        check_responses(status, raw, stream, f"{fixture.stem} stream={stream}")


# ---- Messages -----------------------------------------------------------------------------

def check_messages(status, raw, stream, where):
    problems = []
    if stream and status == 200:
        events = sse_data(raw)
        assert events and events[-1][1]["type"] in ("message_stop", "error"), where
        for name, ev in events:
            assert name == ev["type"], f"{where}: event {name} carries {ev['type']}"
            problems += [f"{ev['type']}: {p}" for p in errors_of(MESSAGES["StreamEvent"], ev)]
    else:
        body = json.loads(raw)
        problems += errors_of(MESSAGES["Message"] if status == 200 else MESSAGES["ErrorResponse"], body)
    assert not problems, f"{where}:\n" + "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_messages_answers_for_every_fixture_validate(fixture):
    for stream in (True, False):
        body = {"model": "gpt-oss-20b", "stream": stream, "max_tokens": 1024, "messages": [{"role": "user", "content": raw_script(fixture)}]}
        status, raw = post("/v1/messages", body)
        check_messages(status, raw, stream, f"{fixture.stem} stream={stream}")


# ---- What no fixture reaches ----------------------------------------------------------------

CALL = ("<|channel|>analysis<|message|>Need a tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather "
        "<|constrain|>json<|message|>{\"city\":\"Paris\"}")
PATCH = ("<|channel|>analysis<|message|>Edit the file.<|end|><|start|>assistant<|channel|>commentary to=functions.apply_patch "
         "<|constrain|>json<|message|>{\"input\":\"*** Begin Patch\\n*** End Patch\"}")
OVERFLOW = {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                      "type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096}}


def script(s):
    return json.dumps({"mock": s})


@pytest.mark.parametrize("stream", [True, False])
def test_responses_with_every_kind_of_tool_and_format_echoed_validate(stream):
    tools = [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "function", "name": "get_time", "description": "The time", "strict": True, "parameters": {"type": "object", "properties": {}}},
    ]
    for text in [None, {"format": {"type": "json_object"}}]:
        body = {"model": "gpt-oss-20b", "stream": stream, "input": script({"text": CALL}), "tools": tools,
                "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "high"}, "user": "u1"}
        if text:
            body["text"] = text
        status, raw = post("/v1/responses", body)
        assert status == 200, raw
        check_responses(status, raw, stream, f"function tools text={text}")
    # Codex's freeform apply_patch: a custom tool and a custom_tool_call item.
    body = {"model": "gpt-oss-20b", "stream": stream, "input": script({"text": PATCH}),
            "tools": [{"type": "custom", "name": "apply_patch", "description": "Edit files", "format": {"type": "text"}}]}
    status, raw = post("/v1/responses", body)
    assert status == 200 and b"custom_tool_call" in raw, raw
    check_responses(status, raw, stream, "custom tool")


@pytest.mark.parametrize("stream", [True, False])
def test_errors_before_and_after_the_stream_began_validate_on_every_api(stream):
    refused = script({"text": "x", "faults": [{"status": 400, "body": OVERFLOW}]})
    broken = script({"text": "<|channel|>final<|message|>Partial answer here.", "faults": [{"error_after": 2}]})
    cases = [
        ("/v1/chat/completions", {"model": "gpt-oss", "stream": stream, "messages": [{"role": "user", "content": refused}]}, check_chat),
        ("/v1/chat/completions", {"model": "gpt-oss", "stream": stream, "messages": [{"role": "user", "content": broken}]}, check_chat),
        ("/v1/chat/completions", {"model": "gpt-oss", "stream": stream, "messages": "not a list"}, check_chat),
        ("/v1/responses", {"model": "gpt-oss-20b", "stream": stream, "input": refused}, check_responses),
        ("/v1/responses", {"model": "gpt-oss-20b", "stream": stream, "input": broken}, check_responses),
        ("/v1/responses", {"model": "gpt-oss-20b", "stream": stream, "input": 7}, check_responses),
        ("/v1/messages", {"model": "gpt-oss-20b", "stream": stream, "max_tokens": 64, "messages": [{"role": "user", "content": refused}]}, check_messages),
        ("/v1/messages", {"model": "gpt-oss-20b", "stream": stream, "max_tokens": 64, "messages": [{"role": "user", "content": broken}]}, check_messages),
        ("/v1/messages", {"model": "gpt-oss-20b", "stream": stream, "max_tokens": 64, "messages": []}, check_messages),
    ]
    for path, body, check in cases:
        status, raw = post(path, body)
        where = f"{path} {json.dumps(body)[:120]} -> {status}"
        if body.get("messages") == [{"role": "user", "content": refused}] or body.get("input") == refused:
            # The prompt too long: the client's 400, but a streamed Responses request's failure.
            assert status == (200 if path == "/v1/responses" and stream else 400), where
            assert b"context_length_exceeded" in raw or b"prompt is too long" in raw, where
        check(status, raw, stream, where)


def test_tool_calls_validate_on_chat_and_messages():
    tools_chat = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    tools_messages = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    for stream in (True, False):
        body = {"model": "ide-gpt-oss", "stream": stream, "tools": tools_chat, "messages": [{"role": "user", "content": script({"text": CALL})}]}
        status, raw = post("/v1/chat/completions", body)
        assert b"get_weather" in raw, raw
        check_chat(status, raw, stream, f"chat tool call stream={stream}")
        body = {"model": "gpt-oss-20b", "stream": stream, "max_tokens": 256, "tools": tools_messages,
                "messages": [{"role": "user", "content": script({"text": CALL})}]}
        status, raw = post("/v1/messages", body)
        assert b"tool_use" in raw, raw
        check_messages(status, raw, stream, f"messages tool call stream={stream}")
