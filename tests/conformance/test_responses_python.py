"""The official OpenAI Python SDK and the OpenAI Agents SDK against harmony-proxy's
`POST /v1/responses` (and its mock upstream): plain calls, raw event streams (checked event
by event), the `responses.stream` helper, a two-turn tool loop sent back by hand, errors,
and an Agents SDK `Runner` loop through `OpenAIResponsesModel`, non-streamed and streamed."""
import asyncio
import json
import os
import urllib.request

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

BASE_URL = os.environ["PROXY_URL"] + "/v1"
client = openai.OpenAI(api_key="sk-conformance", base_url=BASE_URL, max_retries=0)
MODEL = "gpt-oss-20b"
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                    "required": ["city", "unit"], "additionalProperties": False}},
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
ANSWER = "It is 18C and sunny in Paris."
ANSWER_TEXT = (
    "<|channel|>analysis<|message|>The tool says 18C and sunny.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>" + ANSWER
)
TWO_STEPS = json.dumps({"mock": {"steps": [{"text": WEATHER_TEXT}, {"text": ANSWER_TEXT}]}})
TOOL_RESULT = "18C and sunny"

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}
LIFECYCLE = {"response.created", "response.in_progress", "response.completed", "response.failed", "response.incomplete"}


def mock_stats():
    with urllib.request.urlopen(os.environ["MOCK_URL"].removesuffix("/v1") + "/mock/stats") as r:
        return json.load(r)


def check_events(events):
    """The rules a streamed Response must keep, whatever it says: consecutive sequence
    numbers from 0, `response.created` first and `response.completed` last (and no other
    terminal event), one response id, every `output_item.added` closed by one
    `output_item.done` with the same output_index and item id, no delta outside its item,
    every text delta's content part announced first, deltas adding up to the done item, and
    the completed output equal to the done items."""
    assert events, "no events"
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events))), types
    assert types[0] == "response.created", types
    assert types[-1] == "response.completed", types
    assert sum(t in TERMINAL for t in types) == 1, types
    assert len({e.response.id for e in events if e.type in LIFECYCLE}) == 1, "one response id"
    added, done, parts, texts, reasoning, args = {}, {}, set(), {}, {}, {}
    for e in events:
        if e.type == "response.output_item.added":
            assert e.output_index not in added, f"output_index {e.output_index} added twice"
            assert e.item.id, "an added item has an id"
            added[e.output_index] = e.item
            # Parts the item opens with exist already; others need a content_part.added.
            parts.update((e.output_index, c) for c in range(len(getattr(e.item, "content", None) or [])))
            continue
        if e.type == "response.output_item.done":
            assert e.output_index in added, f"done before added: {e.output_index}"
            assert e.output_index not in done, f"output_index {e.output_index} done twice"
            assert (e.item.id, e.item.type) == (added[e.output_index].id, added[e.output_index].type)
            done[e.output_index] = e.item
            continue
        if not hasattr(e, "output_index"):
            continue
        # Item-scoped events (content parts, text, reasoning, arguments) stay inside their item.
        assert e.output_index in added and e.output_index not in done, f"{e.type} outside its item"
        if hasattr(e, "item_id"):
            assert e.item_id == added[e.output_index].id, f"{e.type} names another item"
        key = (e.output_index, getattr(e, "content_index", 0))
        if e.type == "response.content_part.added":
            parts.add(key)
        elif e.type == "response.output_text.delta":
            # Both SDKs' stream helpers index the part (Node's for reasoning text too): it
            # must have been announced.
            assert key in parts, "output_text.delta before its content_part.added"
            texts[key] = texts.get(key, "") + e.delta
        elif e.type == "response.output_text.done":
            assert e.text == texts.get(key, ""), "output_text.done differs from its deltas"
        elif e.type == "response.reasoning_text.delta":
            assert key in parts, "reasoning_text.delta before its content_part.added"
            reasoning[key] = reasoning.get(key, "") + e.delta
        elif e.type == "response.function_call_arguments.delta":
            args[e.output_index] = args.get(e.output_index, "") + e.delta
    assert sorted(added) == list(range(len(added))), f"output indexes {sorted(added)}"
    assert sorted(done) == sorted(added), "every added item is done"
    for (i, c), text in texts.items():
        assert done[i].content[c].text == text, "output_text deltas differ from the done item"
    for (i, c), text in reasoning.items():
        assert done[i].content[c].text == text, "reasoning_text deltas differ from the done item"
    for i, a in args.items():
        assert done[i].arguments == a, "argument deltas differ from the done item"
    final = events[-1].response
    assert [o.to_dict() for o in final.output] == [done[i].to_dict() for i in sorted(done)]
    return final


def via_create(**kw):
    return client.responses.create(model=MODEL, **kw)


def via_raw_stream(**kw):
    events = list(client.responses.create(model=MODEL, stream=True, **kw))
    return check_events(events)


def via_helper(**kw):
    with client.responses.stream(model=MODEL, **kw) as s:
        for _ in s:
            pass
        return s.get_final_response()


HOW = pytest.mark.parametrize("call", [via_create, via_raw_stream, via_helper], ids=["create", "raw-stream", "stream-helper"])


def check_response(resp):
    """What every finished Response has: its object, one id, `completed`, no Harmony markup,
    items with distinct ids, and the five usage integers."""
    assert resp.object == "response" and isinstance(resp.id, str) and resp.id
    assert resp.status == "completed"
    assert "<|" not in json.dumps(resp.to_dict()), "Harmony markup reached the client"
    ids = [o.id for o in resp.output]
    assert all(ids) and len(set(ids)) == len(ids), ids
    u = resp.usage
    assert u is not None, "usage"
    for n in (u.input_tokens, u.output_tokens, u.total_tokens, u.input_tokens_details.cached_tokens, u.output_tokens_details.reasoning_tokens):
        assert isinstance(n, int) and n >= 0, u
    assert u.total_tokens == u.input_tokens + u.output_tokens and u.total_tokens > 0, u


def reasoning_of(item):
    assert item.type == "reasoning"
    assert item.summary == []
    assert item.content and all(c.type == "reasoning_text" for c in item.content), item
    return "".join(c.text for c in item.content)


def text_of(item):
    assert item.type == "message" and item.role == "assistant", item
    assert item.content and all(c.type == "output_text" for c in item.content), item
    return "".join(c.text for c in item.content)


@HOW
def test_hello_gives_reasoning_then_the_answer(call):
    resp = call(input="scenario:hello")
    check_response(resp)
    assert [o.type for o in resp.output] == ["reasoning", "message"]
    assert reasoning_of(resp.output[0]) == HELLO_REASONING
    assert text_of(resp.output[1]) == HELLO
    assert resp.output_text == HELLO


@HOW
def test_weather_gives_reasoning_preamble_and_a_function_call(call):
    resp = call(input="scenario:weather", tools=TOOLS)
    check_response(resp)
    assert [o.type for o in resp.output] == ["reasoning", "message", "function_call"]
    assert reasoning_of(resp.output[0]) == WEATHER_REASONING
    assert text_of(resp.output[1]) == PREAMBLE
    fc = resp.output[2]
    assert fc.name == "get_weather"
    assert fc.call_id.startswith("call_")
    assert json.loads(fc.arguments) == PARIS
    if call is via_helper:
        # The helper parses a strict tool's arguments itself.
        assert fc.parsed_arguments == PARIS


def test_message_items_of_every_role_reach_the_model():
    resp = via_create(instructions="Be brief.", input=[
        {"role": "system", "content": "You are a test."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi there.", "annotations": []}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "scenario:hello"}]},
    ])
    check_response(resp)
    assert resp.output_text == HELLO
    sent = mock_stats()["last_request"]["messages"]
    said = json.dumps(sent)
    for text in ("Be brief.", "You are a test.", "Answer in English.", "Hi there."):
        assert text in said, (text, sent)
    assert sent[-1]["role"] == "user" and "scenario:hello" in json.dumps(sent[-1]["content"])
    assert any(m["role"] == "assistant" and "Hi there." in json.dumps(m.get("content")) for m in sent), sent


@pytest.mark.parametrize("stream", [False, True], ids=["create", "raw-stream"])
def test_a_function_call_output_goes_back_and_the_answer_comes(stream):
    call = via_raw_stream if stream else via_create
    user = {"role": "user", "content": TWO_STEPS}
    first = call(input=[user], tools=TOOLS)
    check_response(first)
    fc = first.output[-1]
    assert fc.type == "function_call" and json.loads(fc.arguments) == PARIS
    # The SDK's own output items go back as they came (the documented `input += output`).
    history = [user, *first.output, {"type": "function_call_output", "call_id": fc.call_id, "output": TOOL_RESULT}]
    second = call(input=history, tools=TOOLS)
    check_response(second)
    assert [o.type for o in second.output] == ["reasoning", "message"]
    assert second.output_text == ANSWER

    sent = mock_stats()["last_request"]["messages"]
    calls = [m for m in sent if m.get("role") == "assistant" and m.get("tool_calls")]
    assert len(calls) == 1, sent
    (tc,) = calls[0]["tool_calls"]
    assert tc["function"]["name"] == "get_weather" and json.loads(tc["function"]["arguments"]) == PARIS
    tools = [m for m in sent if m.get("role") == "tool"]
    assert len(tools) == 1 and tools[0]["tool_call_id"] == tc["id"], sent
    assert TOOL_RESULT in json.dumps(tools[0]["content"])
    # Turn 1's reasoning reached the model with its call (in whichever field the pipeline uses).
    rest = {k: v for k, v in calls[0].items() if k != "tool_calls"}
    assert WEATHER_REASONING in json.dumps(rest), calls[0]


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_request_without_model_is_a_400_naming_it(stream):
    before = mock_stats()["requests"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(input="scenario:hello", stream=stream)
    assert e.value.status_code == 400
    assert "model" in e.value.message.lower(), e.value.message
    assert mock_stats()["requests"] == before, "nothing reaches the model"


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_an_image_input_is_a_400(stream):
    before = mock_stats()["requests"]
    image = {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAghR7OQAAAABJRU5ErkJggg=="}
    with pytest.raises(openai.BadRequestError) as e:
        via_create(input=[{"role": "user", "content": [{"type": "input_text", "text": "scenario:hello"}, image]}], stream=stream)
    assert e.value.status_code == 400
    assert mock_stats()["requests"] == before, "nothing reaches the model"


# The OpenAI Agents SDK: an Agent with one function tool, its model the proxy's Responses API.
set_tracing_disabled(True)


def weather_agent(ran):
    @function_tool
    def get_weather(city: str, unit: str) -> str:
        """Weather for a city."""
        ran.append({"city": city, "unit": unit})
        return TOOL_RESULT

    model = OpenAIResponsesModel(model=MODEL, openai_client=openai.AsyncOpenAI(base_url=BASE_URL, api_key="x", max_retries=0))
    return Agent(name="weather", instructions="Use the tool for the weather.", tools=[get_weather], model=model)


def check_agent_run(result, ran):
    assert result.final_output == ANSWER
    assert ran == [PARIS], "the tool ran once"
    kinds = [i.type for i in result.new_items]
    assert kinds.count("tool_call_item") == 1 and kinds.count("tool_call_output_item") == 1, kinds
    assert kinds[-1] == "message_output_item", kinds
    assert len(result.raw_responses) == 2
    sent = mock_stats()["last_request"]["messages"]
    calls = [m for m in sent if m.get("role") == "assistant" and m.get("tool_calls")]
    assert len(calls) == 1 and calls[0]["tool_calls"][0]["function"]["name"] == "get_weather", sent
    assert WEATHER_REASONING in json.dumps({k: v for k, v in calls[0].items() if k != "tool_calls"}), calls[0]
    assert any(m.get("role") == "tool" and TOOL_RESULT in json.dumps(m.get("content")) for m in sent), sent


def test_agents_sdk_runner_run():
    ran = []
    result = asyncio.run(Runner.run(weather_agent(ran), TWO_STEPS, max_turns=3))
    check_agent_run(result, ran)


def test_agents_sdk_runner_run_streamed():
    ran = []

    async def go():
        result = Runner.run_streamed(weather_agent(ran), TWO_STEPS, max_turns=3)
        raw, items = [], []
        async for ev in result.stream_events():
            if ev.type == "raw_response_event":
                raw.append(ev.data)
            elif ev.type == "run_item_stream_event":
                items.append(ev.name)
        return result, raw, items

    result, raw, items = asyncio.run(go())
    check_agent_run(result, ran)
    assert "tool_called" in items and "tool_output" in items, items
    # Each model call's events, as the SDK received them, keep the stream rules too.
    runs, cur = [], []
    for e in raw:
        if e.type == "response.created" and cur:
            runs.append(cur)
            cur = []
        cur.append(e)
    runs.append(cur)
    assert len(runs) == 2
    for r in runs:
        check_events(r)
