#!/usr/bin/env python3
"""A stand-in for the proxy's `POST /v1/responses`, enough for tests/agents/codex.sh.

Stdlib only. It answers the `agent-shell` scenario the way the proxy's mock upstream does
(src/mock/): a user prompt containing `scenario:agent-shell` gets a reasoning item
and a call to the client's shell tool; a request whose input ends with a
`function_call_output` gets the final answer, which says what the command printed and whether
the reasoning of the first turn came back in the input. Every request is appended to --log as
one JSON line (method, path, headers, body), so a client's requests can be read afterwards.

    python3 stub_responses.py --port 0 --log /tmp/requests.jsonl
    -> prints "stub listening on http://127.0.0.1:PORT/v1"

To see how a client copes with a bad stream: --no-completed (the stream ends without
response.completed), --no-added (deltas with no response.output_item.added before them).
"""
import argparse
import itertools
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REASONING = "I will run the shell tool to write the marker file."
REASONING_MARK = "I will run the shell tool"
COMMAND = "echo harmony-proxy-was-here > {file} && echo marker-written"
MODEL = "gpt-oss-20b"

_ids = itertools.count(1)
_log_lock = threading.Lock()


def new_id(prefix):
    return f"{prefix}_{int(time.time() * 1000):x}{next(_ids):04d}"


def text_of(item):
    """The text of an input item (a string, or its parts' texts joined)."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def shell_call(tools, command):
    """(name, arguments) for the client's shell tool, or None when it declared none."""
    by_name = {t.get("name"): t for t in tools or [] if isinstance(t, dict)}
    if "exec_command" in by_name:  # Codex 0.171: {cmd, ...}
        return "exec_command", {"cmd": command}
    if "shell" in by_name:  # older Codex model presets: {command: [argv]}
        return "shell", {"command": ["bash", "-lc", command]}
    if "shell_command" in by_name:
        return "shell_command", {"command": command}
    return None


def printed_line(output):
    """The first non-empty line of what the command printed. Codex wraps a command's output
    in a header (`Chunk ID: …`, `Wall time: …`, `Process exited with code 0`, …, `Output:`):
    the text after the `Output:` line is what the command printed."""
    lines = output.splitlines()
    if "Output:" in (l.strip() for l in lines):
        lines = lines[[l.strip() for l in lines].index("Output:") + 1:]
    return next((l.strip() for l in lines if l.strip()), "")[:80]


class Stream:
    """Writes one Responses SSE stream, numbering the events."""

    def __init__(self, wfile, opts):
        self.wfile = wfile
        self.opts = opts
        self.seq = 0

    def send(self, type_, **fields):
        event = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        data = json.dumps(event)
        self.wfile.write(f"event: {type_}\ndata: {data}\n\n".encode())
        self.wfile.flush()

    def item(self, index, item, deltas):
        """Sends one output item: added, its deltas, done. `deltas` = (event type, text)."""
        opening = dict(item)
        if item["type"] == "message":
            opening["content"] = []
        elif item["type"] == "reasoning":
            opening["content"] = []
        elif item["type"] == "function_call":
            opening["arguments"] = ""
        opening["status"] = "in_progress"
        if not self.opts.no_added:
            self.send("response.output_item.added", output_index=index, item=opening)
        for type_, text in deltas:
            fields = {"item_id": item["id"], "output_index": index, "delta": text}
            if type_ != "response.function_call_arguments.delta":
                fields["content_index"] = 0
            self.send(type_, **fields)
        self.send("response.output_item.done", output_index=index, item=item)


def plan(body):
    """The output items for a request, as (item, deltas) pairs, and the input token count."""
    items = body.get("input") or []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    last = items[-1] if items else {}
    user_texts = [text_of(i) for i in items if i.get("role") == "user"]
    prompt = user_texts[-1] if user_texts else ""

    if last.get("type") == "function_call_output":
        output = last.get("output")
        if not isinstance(output, str):
            output = json.dumps(output)
        printed = printed_line(output)
        came_back = any(
            i.get("type") == "reasoning" and REASONING_MARK in json.dumps(i.get("content"))
            for i in items
        )
        text = (
            f"Done. The command printed: {printed}. "
            f"Turn-1 reasoning came back: {'yes' if came_back else 'no'}."
        )
        return [message(text)]

    if "scenario:agent-shell" in prompt:
        m = re.search(r"file:(\S+)", prompt)
        command = COMMAND.format(file=m.group(1) if m else "marker.txt")
        call = shell_call(body.get("tools"), command)
        if call is None:
            return [message("No shell tool was declared.")]
        name, args = call
        arguments = json.dumps(args)
        reasoning = {
            "type": "reasoning", "id": new_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": REASONING}],
        }
        call = {
            "type": "function_call", "id": new_id("fc"), "call_id": new_id("call"),
            "name": name, "arguments": arguments, "status": "completed",
        }
        return [
            (reasoning, [("response.reasoning_text.delta", REASONING)]),
            (call, [("response.function_call_arguments.delta", arguments)]),
        ]

    return [message("Hello from the stub.")]


def message(text):
    """An assistant message item, streamed a word at a time."""
    msg = {
        "type": "message", "id": new_id("msg"), "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    return msg, [("response.output_text.delta", w) for w in re.findall(r"\S+\s*", text)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    opts = None

    def log_message(self, fmt, *args):  # quiet: requests go to --log
        pass

    def record(self, body):
        if not self.opts.log:
            return
        entry = {
            "time": time.time(), "method": self.command, "path": self.path,
            "headers": dict(self.headers.items()), "body": body,
        }
        with _log_lock, open(self.opts.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def reply_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.record(None)
        path = self.path.split("?")[0]
        if path.rstrip("/") != "/v1/models":
            return self.reply_json(404, {"error": {"message": "not found", "type": "not_found"}})
        return self.reply_json(200, {"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.headers.get("Content-Encoding", "").lower() == "zstd":
            self.record({"unreadable": "zstd body", "bytes": len(raw)})
            return self.reply_json(415, {"error": {"message": "zstd body", "type": "invalid_request_error"}})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.record({"unparsable": raw[:2000].decode(errors="replace")})
            return self.reply_json(400, {"error": {"message": "bad JSON", "type": "invalid_request_error"}})
        self.record(body)
        if self.path.split("?")[0].rstrip("/") != "/v1/responses":
            return self.reply_json(404, {"error": {"message": "not found", "type": "not_found"}})

        response = {
            "id": new_id("resp"), "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "model": body.get("model", MODEL), "output": [],
            "usage": None, "error": None, "incomplete_details": None,
        }
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        stream = Stream(self.wfile, self.opts)
        try:
            stream.send("response.created", response=dict(response))
            stream.send("response.in_progress", response=dict(response))
            output = []
            for index, (item, deltas) in enumerate(plan(body)):
                stream.item(index, item, deltas)
                output.append(item)
            if self.opts.no_completed:
                return
            input_tokens = len(raw) // 4
            output_tokens = sum(len(json.dumps(i)) for i in output) // 4
            response.update(status="completed", output=output, usage={
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 12},
                "total_tokens": input_tokens + output_tokens,
            })
            stream.send("response.completed", response=response)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", help="append each request as a JSON line to this file")
    ap.add_argument("--no-completed", action="store_true")
    ap.add_argument("--no-added", action="store_true")
    opts = ap.parse_args()
    Handler.opts = opts
    server = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
    server.daemon_threads = True
    print(f"stub listening on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
