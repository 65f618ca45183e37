"""The official Anthropic Python SDK against harmony-proxy's `POST /v1/messages` (and
`/v1/messages/count_tokens`) and its mock upstream: plain calls, raw event streams (checked
event by event), the `messages.stream` helper, a two-turn tool loop that sends the SDK's own
content blocks back (with the thinking text, and with only its signature), and errors."""
import json
import os
import urllib.request

import anthropic
import pytest

# The SDK adds `/v1/messages` itself: the base URL is the proxy's root.
client = anthropic.Anthropic(base_url=os.environ["PROXY_URL"], api_key="x", max_retries=0, timeout=30.0)
MODEL = "gpt-oss-20b"
MAX_TOKENS = 1000
TOOLS = [
    {"name": "get_weather", "description": "Weather for a city",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                      "required": ["city", "unit"]}},
]

# What the mock's scenarios say (src/mock/).
HELLO_REASONING = "The user says hello. Reply briefly and warmly."
HELLO = "Hello! How can I help you today?"
WEATHER_REASONING = "Need the weather tool for Paris."
PREAMBLE = "I'll check the weather."
PARIS = {"city": "Paris", "unit": "celsius"}
# A two-step mock script (the step is the number of tool results after the last user
# message): step 0 is `scenario:weather`'s model output, step 1 answers from the tool result.
WEATHER_TEXT = (
    "<|channel|>analysis<|message|>Need the weather tool for Paris.<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>I'll check the weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    '{"city":"Paris","unit":"celsius"}'
)
ANSWER_REASONING = "The tool says 18C and sunny."
ANSWER = "It is 18C and sunny in Paris."
ANSWER_TEXT = (
    "<|channel|>analysis<|message|>" + ANSWER_REASONING + "<|end|>"
    "<|start|>assistant<|channel|>final<|message|>" + ANSWER
)
TWO_STEPS = json.dumps({"mock": {"steps": [{"text": WEATHER_TEXT}, {"text": ANSWER_TEXT}]}})
TOOL_RESULT = "18C and sunny"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAghR7OQAAAABJRU5ErkJggg=="


def mock_stats():
    with urllib.request.urlopen(os.environ["MOCK_URL"].removesuffix("/v1") + "/mock/stats") as r:
        return json.load(r)


def check_events(events):
    """The rules a streamed Message must keep, whatever it says: `message_start` first (an
    empty assistant message), content blocks started at consecutive indexes from 0 one at a
    time, each delta inside its open block and of its kind, a `signature_delta` before a
    thinking block stops, then one `message_delta` with a stop_reason and `message_stop`
    last. Returns the message the events add up to (an `anthropic.types.Message`)."""
    assert events, "no events"
    types = [e.type for e in events]
    assert types[0] == "message_start", types
    assert types[-1] == "message_stop", types
    assert types[-2] == "message_delta", types
    assert types.count("message_start") == types.count("message_delta") == types.count("message_stop") == 1, types
    start = events[0].message
    assert start.type == "message" and start.role == "assistant" and start.content == [], start
    assert start.id.startswith("msg_"), start.id
    assert start.stop_reason is None, start
    blocks, open_index, signed = [], None, False
    json_bufs = {}
    for e in events[1:-2]:
        if e.type == "content_block_start":
            assert open_index is None, f"block {len(blocks)} starts while {open_index} is open: {types}"
            assert e.index == len(blocks), f"block index {e.index}, expected {len(blocks)}"
            open_index = e.index
            blocks.append(e.content_block.to_dict())
            kind = e.content_block.type
            assert kind in ("thinking", "text", "tool_use"), kind
            if kind == "thinking":
                assert e.content_block.thinking == "" and e.content_block.signature == "", e.content_block
                signed = False
            elif kind == "text":
                assert e.content_block.text == "", e.content_block
            else:
                assert e.content_block.input == {}, e.content_block
                json_bufs[e.index] = ""
        elif e.type == "content_block_delta":
            assert e.index == open_index, f"a delta for block {e.index} while {open_index} is open"
            block, d = blocks[e.index], e.delta
            want = {"thinking_delta": "thinking", "signature_delta": "thinking", "text_delta": "text", "input_json_delta": "tool_use"}[d.type]
            assert block["type"] == want, f"{d.type} in a {block['type']} block"
            if d.type == "thinking_delta":
                assert not signed, "thinking after the signature"
                block["thinking"] += d.thinking
            elif d.type == "signature_delta":
                assert d.signature, "an empty signature"
                block["signature"] = d.signature
                signed = True
            elif d.type == "text_delta":
                block["text"] += d.text
            else:
                json_bufs[e.index] += d.partial_json
        elif e.type == "content_block_stop":
            assert e.index == open_index, f"stop of block {e.index} while {open_index} is open"
            if blocks[e.index]["type"] == "thinking":
                assert signed, "a thinking block stopped without a signature_delta"
            if blocks[e.index]["type"] == "tool_use":
                blocks[e.index]["input"] = json.loads(json_bufs[e.index]) if json_bufs[e.index] else {}
            open_index = None
        else:
            pytest.fail(f"unexpected event {e.type} between message_start and message_delta: {types}")
    assert open_index is None, f"block {open_index} never stopped"
    delta = events[-2]
    assert delta.delta.stop_reason in ("end_turn", "tool_use", "max_tokens", "stop_sequence"), delta
    assert isinstance(delta.usage.output_tokens, int) and delta.usage.output_tokens >= 0, delta.usage
    message = start.to_dict()
    message.update(content=blocks, stop_reason=delta.delta.stop_reason, stop_sequence=delta.delta.stop_sequence)
    message["usage"].update({k: v for k, v in delta.usage.to_dict().items() if v is not None})
    return anthropic.types.Message.model_validate(message)


def via_create(**kw):
    return client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, **kw)


def via_raw_stream(**kw):
    events = list(client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, stream=True, **kw))
    return check_events(events)


def via_helper(**kw):
    with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, **kw) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    texts = [b.text for b in final.content if b.type == "text"]
    assert text == "".join(texts), "text_stream differs from the final message's text"
    return final


HOW = pytest.mark.parametrize("call", [via_create, via_raw_stream, via_helper], ids=["create", "raw-stream", "stream-helper"])


def check_message(msg):
    """What every finished Message has: its type and role, a `msg_` id, no Harmony markup,
    signed thinking blocks, `toolu_` tool ids, and integer usage."""
    assert msg.type == "message" and msg.role == "assistant", msg
    assert msg.id.startswith("msg_"), msg.id
    assert msg.model == MODEL, msg.model
    assert "<|" not in json.dumps(msg.to_dict()), "Harmony markup reached the client"
    for b in msg.content:
        if b.type == "thinking":
            assert isinstance(b.signature, str) and b.signature, b
        if b.type == "tool_use":
            assert b.id.startswith("toolu_"), b.id
    ids = [b.id for b in msg.content if b.type == "tool_use"]
    assert len(set(ids)) == len(ids), ids
    for n in (msg.usage.input_tokens, msg.usage.output_tokens):
        assert isinstance(n, int) and n >= 0, msg.usage


@HOW
def test_hello_gives_a_thinking_block_then_the_answer(call):
    msg = call(messages=[{"role": "user", "content": "scenario:hello"}])
    check_message(msg)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == HELLO_REASONING
    assert msg.content[1].text == HELLO
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None


@HOW
def test_weather_gives_thinking_a_preamble_and_a_tool_use(call):
    msg = call(messages=[{"role": "user", "content": "scenario:weather"}], tools=TOOLS)
    check_message(msg)
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.content[0].thinking == WEATHER_REASONING
    assert msg.content[1].text == PREAMBLE
    tu = msg.content[2]
    assert tu.name == "get_weather"
    assert tu.input == PARIS
    assert msg.stop_reason == "tool_use"


@pytest.mark.parametrize("call", [via_create, via_raw_stream], ids=["create", "raw-stream"])
def test_an_answer_cut_by_length_stops_with_max_tokens(call):
    script = json.dumps({"mock": {"text": "<|channel|>final<|message|>Hello there", "finish": "length"}})
    msg = call(messages=[{"role": "user", "content": script}])
    check_message(msg)
    assert msg.stop_reason == "max_tokens"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hello there"


def check_second_turn_sent(reasoning=True):
    """The mock's last chat request: the assistant turn with its call and (unless `reasoning`
    is False) turn 1's reasoning, then the tool's result for that call."""
    sent = mock_stats()["last_request"]["messages"]
    calls = [m for m in sent if m.get("role") == "assistant" and m.get("tool_calls")]
    assert len(calls) == 1, sent
    (tc,) = calls[0]["tool_calls"]
    assert tc["function"]["name"] == "get_weather" and json.loads(tc["function"]["arguments"]) == PARIS, tc
    if reasoning:
        assert WEATHER_REASONING in (calls[0].get("reasoning_content") or ""), calls[0]
    else:
        assert WEATHER_REASONING not in json.dumps(calls[0]), calls[0]
    tools = [m for m in sent if m.get("role") == "tool"]
    assert len(tools) == 1 and tools[0]["tool_call_id"] == tc["id"], sent
    assert TOOL_RESULT in json.dumps(tools[0]["content"]), tools[0]
    assert sent.index(tools[0]) > sent.index(calls[0]), sent


def tool_loop(call, assistant_content, tool_id=None, reasoning=True):
    """Turn 1 asks for the tool; turn 2 sends back `assistant_content(first.content)` and the
    tool's result, and must get the answer. `tool_id` renames the call in turn 2 (its
    tool_use and tool_result): the proxy's reasoning memory, keyed by the ids it issued, then
    cannot find the turn, and only the thinking block can bring its reasoning back."""
    user = {"role": "user", "content": TWO_STEPS}
    first = call(messages=[user], tools=TOOLS)
    check_message(first)
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.stop_reason == "tool_use"
    tu = first.content[2]
    assert tu.input == PARIS
    content = assistant_content(first.content)
    if tool_id is not None:
        content = [b if isinstance(b, dict) else b.to_dict() for b in content]
        assert content[2]["type"] == "tool_use"
        content[2]["id"] = tool_id
    history = [
        user,
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id or tu.id, "content": TOOL_RESULT}]},
    ]
    second = call(messages=history, tools=TOOLS)
    check_message(second)
    assert [b.type for b in second.content] == ["thinking", "text"]
    assert second.content[0].thinking == ANSWER_REASONING
    assert second.content[1].text == ANSWER
    assert second.stop_reason == "end_turn"
    check_second_turn_sent(reasoning)


@HOW
def test_a_tool_result_goes_back_with_the_assistant_content_as_returned(call):
    # The SDK's own content blocks go back as they came (the documented
    # `{"role": "assistant", "content": response.content}`): thinking with its signature,
    # the preamble text, the tool_use.
    tool_loop(call, lambda content: content)


def emptied(content):
    """The assistant content with the thinking block's text left out, its signature kept."""
    blocks = [b.to_dict() for b in content]
    assert blocks[0]["type"] == "thinking" and blocks[0]["signature"]
    blocks[0]["thinking"] = ""
    return blocks


@HOW
@pytest.mark.parametrize("ids", ["as-returned", "client-renamed"])
def test_a_thinking_block_with_only_its_signature_still_brings_the_reasoning_back(call, ids):
    # Clients may drop the thinking text and keep the signature: the proxy opens it. With the
    # ids it issued, its reasoning memory could bring the reasoning back on its own; with
    # ids it never saw, only the signature can (the next test is the control).
    tool_loop(call, emptied, tool_id=None if ids == "as-returned" else f"toolu_client_{call.__name__}")


def test_a_signature_that_does_not_open_is_ignored_not_an_error():
    # The control for the test above: the same loop with a forged signature (and ids the
    # proxy's reasoning memory does not know) answers, and no reasoning reaches the model.
    def forged(content):
        blocks = emptied(content)
        blocks[0]["signature"] = "forged-" + blocks[0]["signature"]
        return blocks

    tool_loop(via_create, forged, tool_id="toolu_client_forged", reasoning=False)


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_request_without_max_tokens_is_a_400(stream):
    before = mock_stats()["requests"]
    with pytest.raises(anthropic.BadRequestError) as e:
        # `omit` gets past the SDK's own check for the argument and leaves it out of the body.
        client.messages.create(model=MODEL, max_tokens=anthropic.omit, messages=[{"role": "user", "content": "scenario:hello"}], stream=stream)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "error", e.value.body
    assert e.value.body["error"]["type"] == "invalid_request_error", e.value.body
    assert "max_tokens" in e.value.message, e.value.message
    assert mock_stats()["requests"] == before, "nothing reaches the model"


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_an_image_block_is_a_400_saying_gpt_oss_reads_text_only(stream):
    before = mock_stats()["requests"]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, stream=stream,
                               messages=[{"role": "user", "content": [{"type": "text", "text": "scenario:hello"}, image]}])
    assert e.value.status_code == 400
    assert e.value.body["error"]["type"] == "invalid_request_error", e.value.body
    assert "gpt-oss reads text only" in e.value.message, e.value.message
    assert mock_stats()["requests"] == before, "nothing reaches the model"


def test_count_tokens_counts_the_prompt():
    before = mock_stats()["requests"]
    msgs = [{"role": "user", "content": "What is the weather in Oslo?"}]
    plain = client.messages.count_tokens(model=MODEL, messages=msgs)
    assert isinstance(plain.input_tokens, int) and plain.input_tokens > 0, plain
    more = client.messages.count_tokens(model=MODEL, messages=msgs, system="Be brief.", tools=TOOLS)
    assert more.input_tokens > plain.input_tokens, (plain, more)
    assert mock_stats()["requests"] == before, "counting asks no model"
