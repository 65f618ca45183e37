#!/usr/bin/env python3
"""The client side of the real-llama-server suite: the official OpenAI Python SDK, driven by
tests/e2e/real_llama.rs.

Reads one job as JSON on stdin and prints one JSON result per line on stdout:
  {"base_url": "http://127.0.0.1:PORT/v1",
   "requests": [{"name": ..., "body": {model, messages, stream, tools?, ...}}, ...],
   "agents":   [{"name": ..., "model": ..., "stream": bool, "user": ..., "tools": [...],
                 "tool_result": ...}, ...]}

A request's result is what an application gets from the SDK: content, reasoning (the
`reasoning_content` / `reasoning` extra fields), tool calls (id, name, arguments), the finish
reason, and for streams whether any chunk carried content and tool calls together (Continue
drops tool calls then) and the stream's raw bytes as the SDK read them (`raw`, each byte one
Latin-1 character: the Rust side checks them against the client contract without asking
again). An API error is reported with its status instead.

An agent runs two turns the way SDK users write them: turn 1 with the tools declared; the
assistant message goes back as the SDK's own message object (non-streamed: the completion's
`choices[0].message`; streamed: the `chat.completions.stream` helper's final message), with
whatever fields it carries, followed by the tool result; turn 2 must answer.
"""
import json
import sys

import openai

try:
    import httpx2 as httpx   # the HTTP client openai 3.x is built on
except ImportError:
    import httpx


class _Tee(httpx.SyncByteStream):
    """A response body that keeps a copy of every byte it hands the SDK."""

    def __init__(self, inner, sink):
        self.inner, self.sink = inner, sink

    def __iter__(self):
        for chunk in self.inner:
            self.sink.append(chunk)
            yield chunk

    def close(self):
        self.inner.close()


class TeeTransport(httpx.HTTPTransport):
    """Records the raw body of the last response (`last`), as it came off the socket."""

    last = []

    def handle_request(self, request):
        resp = super().handle_request(request)
        TeeTransport.last = []
        resp.stream = _Tee(resp.stream, TeeTransport.last)
        return resp


def extra(obj, *names):
    """An extra field the SDK kept from the JSON (reasoning is not in the typed model)."""
    ex = getattr(obj, "model_extra", None) or {}
    for n in names:
        if ex.get(n):
            return n, ex[n]
    return None, None


def result_of_completion(c):
    ch = c.choices[0]
    m = ch.message
    field, reasoning = extra(m, "reasoning_content", "reasoning")
    return {
        "ok": True,
        "content": m.content,
        "reasoning": reasoning or "",
        "reasoning_field": field,
        "tool_calls": [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in (m.tool_calls or [])],
        "finish_reason": ch.finish_reason,
    }


def run_stream(client, body):
    content, reasoning, field, calls, finish, mixed, chunks, ids = "", "", None, {}, None, False, 0, set()
    for chunk in client.chat.completions.create(**body):
        chunks += 1
        ids.add(chunk.id)
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        d = ch.delta
        if d.content and d.tool_calls:
            mixed = True
        content += d.content or ""
        f, r = extra(d, "reasoning_content", "reasoning")
        if r:
            reasoning += r
            field = f
        for t in d.tool_calls or []:
            call = calls.setdefault(t.index, {"id": None, "name": "", "arguments": ""})
            if t.id:
                call["id"] = t.id
            if t.function and t.function.name:
                call["name"] += t.function.name
            if t.function and t.function.arguments:
                call["arguments"] += t.function.arguments
        if ch.finish_reason:
            finish = ch.finish_reason
    return {
        "ok": True,
        "content": content,
        "reasoning": reasoning,
        "reasoning_field": field,
        "tool_calls": [calls[i] for i in sorted(calls)],
        "finish_reason": finish,
        "mixed_chunk": mixed,
        "ids": len(ids),
        "raw": b"".join(TeeTransport.last).decode("latin-1"),
    }


def run_request(client, body):
    try:
        if body.get("stream"):
            return run_stream(client, body)
        return result_of_completion(client.chat.completions.create(**body))
    except openai.APIStatusError as e:
        return {"ok": False, "status": e.status_code, "error": str(e)[:500]}
    except openai.APIError as e:
        return {"ok": False, "status": None, "error": f"{type(e).__name__}: {str(e)[:500]}"}


def run_agent(client, a):
    messages = [{"role": "user", "content": a["user"]}]
    common = {"model": a["model"], "tools": a["tools"]}
    try:
        if a["stream"]:
            with client.chat.completions.stream(messages=messages, **common) as s:
                for _ in s:
                    pass
                first = s.get_final_completion()
        else:
            first = client.chat.completions.create(messages=messages, **common)
    except openai.APIError as e:
        return {"ok": False, "turn": 1, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    turn1 = result_of_completion(first)
    msg = first.choices[0].message
    if not msg.tool_calls:
        return {"ok": False, "turn": 1, "error": "turn 1 made no tool call", "turn1": turn1}
    messages.append(msg)  # the SDK's own object, as the OpenAI docs show
    for t in msg.tool_calls:
        messages.append({"role": "tool", "tool_call_id": t.id, "content": a["tool_result"]})
    sent = msg.model_dump(exclude_unset=True)
    try:
        second = client.chat.completions.create(messages=messages, **common)
    except openai.APIError as e:
        status = getattr(e, "status_code", None)
        return {"ok": False, "turn": 2, "status": status, "error": f"{type(e).__name__}: {str(e)[:500]}", "turn1": turn1, "sent": sent}
    return {"ok": True, "turn1": turn1, "sent": sent, "turn2": result_of_completion(second)}


def main():
    job = json.load(sys.stdin)
    client = openai.OpenAI(api_key="sk-real-llama", base_url=job["base_url"], max_retries=0, timeout=60,
                           http_client=httpx.Client(transport=TeeTransport(), timeout=60))
    for r in job.get("requests", []):
        print(json.dumps({"name": r["name"], **run_request(client, r["body"])}), flush=True)
    for a in job.get("agents", []):
        print(json.dumps({"name": a["name"], **run_agent(client, a)}), flush=True)


if __name__ == "__main__":
    main()
