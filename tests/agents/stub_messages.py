#!/usr/bin/env python3
"""A stand-in for the proxy's `POST /v1/messages` (Anthropic Messages API), enough for
tests/agents/claude.sh.

Stdlib only. It answers the `agent-shell` scenario the way the proxy's mock upstream does
(src/mock/): a user prompt containing `scenario:agent-shell` gets a `thinking`
block (with a `signature`) and a `tool_use` block calling the client's shell tool; a request
whose last user message holds a `tool_result` gets the final answer, which says what the
command printed and whether the thinking block of the first turn came back in the history.
`POST /v1/messages/count_tokens` answers `{"input_tokens": N}`. Anything else is a 404.
Every request is appended to --log as one JSON line (method, path, headers, body, and the
status answered), so a client's requests can be read afterwards.

    python3 stub_messages.py --port 0 --log /tmp/requests.jsonl
    -> prints "stub listening on http://127.0.0.1:PORT"   (clients append /v1/messages)

To see what a client needs from the stream, leave pieces out: --no-ping,
--no-start-usage (message_start without usage), --no-block-stop (no content_block_stop),
--no-signature (no signature_delta), --no-delta-usage (message_delta without usage),
--no-message-stop (the stream ends after message_delta), --no-message-delta (the stream ends
after the last content block), --cut (the stream ends after the first content block),
--no-message-start, --error-event (an in-band `error` event after message_start, then the
stream ends), --http-error STATUS (answer every POST /v1/messages with that status and an
Anthropic error body). --faults-on-answer applies these to the final answer only (not to the
tool-call turn).
"""
import argparse
import base64
import itertools
import json
import re
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

THINKING = "I will run the shell tool to write the marker file."
THINKING_MARK = "I will run the shell tool"
COMMAND = "echo harmony-proxy-was-here > {file} && echo marker-written"
MODEL = "gpt-oss-20b"
# Shell tools, in the order the mock upstream looks for them; Claude Code's is `Bash`.
SHELL_TOOLS = ["exec_command", "shell", "Bash", "bash", "run_shell_command", "run_commands",
               "execute_command", "shell_command"]

_ids = itertools.count(1)
_log_lock = threading.Lock()


def new_id(prefix):
    return f"{prefix}_{int(time.time() * 1000):x}{next(_ids):04d}"


def signature_for(text):
    """An opaque-looking signature that still tells which thinking text it belongs to."""
    return base64.b64encode(json.dumps({"stub": "harmony-proxy", "thinking": text}).encode()).decode()


def signed_text(signature):
    try:
        return json.loads(base64.b64decode(signature)).get("thinking", "")
    except (ValueError, TypeError, AttributeError):
        return ""


def blocks(message):
    """A message's content as a list of blocks (a string becomes one text block)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def text_of(content):
    """The text of a tool_result's content (a string, or its text blocks joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def thinking_came_back(messages):
    """How the first turn's thinking came back: 'text', 'signature', 'both' or None."""
    for m in messages:
        if m.get("role") != "assistant":
            continue
        for b in blocks(m):
            if b.get("type") != "thinking":
                continue
            has_text = THINKING_MARK in (b.get("thinking") or "")
            has_sig = THINKING_MARK in signed_text(b.get("signature") or "")
            if has_text or has_sig:
                return "both" if has_text and has_sig else "text" if has_text else "signature"
    return None


def shell_input(tools, command):
    """(name, input) for the client's shell tool, or None when it declared none."""
    by_name = {t.get("name"): t for t in tools or [] if isinstance(t, dict)}
    for name in SHELL_TOOLS:
        if name not in by_name:
            continue
        props = (by_name[name].get("input_schema") or {}).get("properties") or {}
        if name == "exec_command":
            return name, {"cmd": command}
        if name == "run_commands":
            return name, {"commands": [command]}
        if props.get("command", {}).get("type") == "array":
            return name, {"command": ["bash", "-lc", command]}
        args = {"command": command}
        if "description" in props:
            args["description"] = "write the marker file"
        return name, args
    return None


def plan(body):
    """The content blocks to answer with, and the stop reason."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    user_text = "\n".join(
        b.get("text", "") for m in messages if m.get("role") == "user"
        for b in blocks(m) if b.get("type") == "text")

    results = [b for b in blocks(last) if b.get("type") == "tool_result"] \
        if last.get("role") == "user" else []
    if results:
        output = text_of(results[-1].get("content"))
        printed = next((l.strip() for l in output.splitlines() if l.strip()), "")[:80]
        back = thinking_came_back(messages)
        text = (f"Done. The command printed: {printed}. "
                f"Turn-1 reasoning came back: {'yes' if back else 'no'}.")
        return [{"type": "text", "text": text}], "end_turn"

    if "scenario:agent-shell" in user_text and body.get("tools"):
        m = re.search(r"file:([A-Za-z0-9._-]+)", user_text)
        command = COMMAND.format(file=m.group(1).rstrip(".") if m else "proxied.txt")
        call = shell_input(body.get("tools"), command)
        if call is None:
            return [{"type": "text", "text": "No shell tool was declared."}], "end_turn"
        name, args = call
        return [
            {"type": "thinking", "thinking": THINKING, "signature": signature_for(THINKING)},
            {"type": "tool_use", "id": new_id("toolu"), "name": name, "input": args},
        ], "tool_use"

    return [{"type": "text", "text": "Hello from the stub."}], "end_turn"


class Stream:
    """Writes one Messages SSE stream."""

    def __init__(self, wfile, opts):
        self.wfile = wfile
        self.opts = opts

    def send(self, type_, **fields):
        data = json.dumps({"type": type_, **fields})
        self.wfile.write(f"event: {type_}\ndata: {data}\n\n".encode())
        self.wfile.flush()

    def block(self, index, block):
        """content_block_start with the block emptied, its deltas, content_block_stop."""
        if block["type"] == "thinking":
            self.send("content_block_start", index=index,
                      content_block={"type": "thinking", "thinking": "", "signature": ""})
            for piece in re.findall(r"\S+\s*", block["thinking"]):
                self.send("content_block_delta", index=index,
                          delta={"type": "thinking_delta", "thinking": piece})
            if not self.opts.no_signature:
                self.send("content_block_delta", index=index,
                          delta={"type": "signature_delta", "signature": block["signature"]})
        elif block["type"] == "tool_use":
            self.send("content_block_start", index=index, content_block={
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}})
            arguments = json.dumps(block["input"])
            for i in range(0, len(arguments), 24):
                self.send("content_block_delta", index=index,
                          delta={"type": "input_json_delta", "partial_json": arguments[i:i + 24]})
        else:
            self.send("content_block_start", index=index,
                      content_block={"type": "text", "text": ""})
            for piece in re.findall(r"\S+\s*", block["text"]):
                self.send("content_block_delta", index=index,
                          delta={"type": "text_delta", "text": piece})
        if not self.opts.no_block_stop:
            self.send("content_block_stop", index=index)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    opts = None

    def log_message(self, fmt, *args):  # quiet: requests go to --log
        pass

    def record(self, body, status):
        if not self.opts.log:
            return
        entry = {
            "time": time.time(), "method": self.command, "path": self.path, "status": status,
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
        if self.command != "HEAD":
            self.wfile.write(data)

    def not_found(self, body):
        self.record(body, 404)
        self.reply_json(404, {"type": "error", "error": {
            "type": "not_found_error", "message": f"{self.command} {self.path} not found"}})

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        encoding = self.headers.get("Content-Encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            raw = zlib.decompress(raw, 47)
        try:
            return raw, json.loads(raw or b"{}")
        except ValueError:
            return raw, {"unparsable": raw[:2000].decode(errors="replace")}

    def do_GET(self):
        self.not_found(None)

    do_HEAD = do_DELETE = do_PUT = do_PATCH = do_GET

    def do_POST(self):
        raw, body = self.read_body()
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/messages/count_tokens":
            self.record(body, 200)
            return self.reply_json(200, {"input_tokens": max(1, len(raw) // 4)})
        if path != "/v1/messages" or "unparsable" in body:
            return self.not_found(body)
        content, stop_reason = plan(body)
        input_tokens = max(1, len(raw) // 4)
        output_tokens = max(1, len(json.dumps(content)) // 4)
        message = {
            "id": new_id("msg"), "type": "message", "role": "assistant",
            "model": body.get("model", MODEL), "content": [], "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        faults = self.opts
        if self.opts.faults_on_answer and stop_reason == "tool_use":
            faults = argparse.Namespace(**{k: False for k in vars(self.opts)})
        self.record(body, faults.http_error or 200)
        if faults.http_error:
            return self.reply_json(faults.http_error, {"type": "error", "error": {
                "type": "api_error" if faults.http_error >= 500 else "invalid_request_error",
                "message": f"stub answers {faults.http_error}"}})
        if not body.get("stream"):
            message.update(content=content, stop_reason=stop_reason)
            message["usage"]["output_tokens"] = output_tokens
            return self.reply_json(200, message)
        if faults.no_start_usage:
            del message["usage"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        stream = Stream(self.wfile, faults)
        try:
            if not faults.no_message_start:
                stream.send("message_start", message=message)
            if faults.error_event:
                stream.send("error", error={"type": "overloaded_error", "message": "Overloaded"})
                return
            if not faults.no_ping:
                stream.send("ping")
            for index, block in enumerate(content):
                stream.block(index, block)
                if faults.cut:
                    return
            if faults.no_message_delta:
                return
            delta = {"delta": {"stop_reason": stop_reason, "stop_sequence": None}}
            if not faults.no_delta_usage:
                delta["usage"] = {"output_tokens": output_tokens}
            stream.send("message_delta", **delta)
            if not faults.no_message_stop:
                stream.send("message_stop")
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", help="append each request as a JSON line to this file")
    for flag in ("no-ping", "no-start-usage", "no-block-stop", "no-signature",
                 "no-delta-usage", "no-message-stop", "no-message-delta", "cut",
                 "no-message-start", "error-event", "faults-on-answer"):
        ap.add_argument(f"--{flag}", action="store_true")
    ap.add_argument("--http-error", type=int, default=0, metavar="STATUS")
    opts = ap.parse_args()
    Handler.opts = opts
    server = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
    server.daemon_threads = True
    print(f"stub listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
