#!/usr/bin/env python3
"""Writes the tiny gpt-oss models of the real-llama-server suite and the manifest the Rust
tests read (tests/e2e/real_llama.rs). Called by prepare.sh:

    models.py --server BIN --template T.jinja --cache DIR --version V --root REPO [--verify]

Models (all with the real o200k_harmony tokenizer and llama.cpp's gpt-oss chat template; see
make_gguf.py for how the weights work):

  * the random model: noise, used for grammar-forced output and to tokenize;
  * one "script player" per scenario of scenarios.json: greedy decoding replays the
    scenario's `text` (what gpt-oss would emit after the prompt's `<|start|>assistant`);
  * the agent models: one script player per two-turn tool session (`agent`, `codex_agent`,
    `claude_agent`, `qwen_agent` in scenarios.json): `turn1` for the single-turn prompt,
    `turn2` once the prompt holds the tool result. `agent` runs on the suite's `user` and
    `tools`; `codex_agent`, `claude_agent` and `qwen_agent` on Codex CLI's, Claude Code's and
    Qwen Code's real first request (`prompt_file`: ~7.5k, ~10k and ~15.7k tokens of
    instructions and tools), with a longer context (`n_ctx`), more markers (8 heads), a
    turn 2 that depends on whether the turn-1 reasoning came back (`reasoning_marker`:
    `turn2` if so, else `turn2_no_reasoning`) and, for more states than the agent dims hold,
    a wider model (`n_embd`);
  * the effort player (`effort`): one answer when the prompt says `Reasoning: high`, another
    otherwise;
  * the forced-call player (`forced`): a call after the header harmony-render prefills for a
    `tool_choice`, prose after any other prompt.

How a script player decides: its next token is a function of
    (current token, which markers occur anywhere in the context, prompt included)
where the markers (at most 4, or the model's n_head) are token pieces chosen per script. Playing a text through
that function gives a state table; a text can be played only if no state needs two
different next tokens (repeated tokens are told apart by the markers seen before them),
and only if no marker occurs in the prompt (it would flip a flag before the text starts).
The agent's turn-2 states carry the result marker, which only the tool result brings into
the prompt; the turn-1 markers may or may not be in the turn-2 prompt depending on what the
client sends back (reasoning or not, preamble or not), so turn 2 is added for every subset
of them. Turn 2's own markers (`turn2_markers`, if its text repeats a token) must be in no
prompt at all.

Token ids come from llama.cpp itself: a llama-server on the random model answers /tokenize
and /apply-template (started only when some model is missing). Models are cached under
CACHE/real-llama-models/<sha256>.gguf, keyed by everything that shapes their weights, so a
rerun takes a second. --verify starts llama-server on every model and checks the tokens it
generates against the script (plus chat completions as an application sees them).
"""
import argparse
import glob
import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_gguf  # noqa: E402

# Bump when the weight construction or the state table changes: it renames every cached model.
SCRIPT_FORMAT = "harmony-proxy-script-player-2"
SCENARIO_DIMS = make_gguf.SMALL_DIMS
AGENT_DIMS = {"n_embd": 256, "n_ff_exp": 256}
AGENTS = ("agent", "codex_agent", "claude_agent", "qwen_agent")   # the two-turn session models (one code path)
TOOL_CALL_ID = "call_weather_1"
T0 = time.time()


def say(msg):
    print(f"   models [{time.time() - T0:5.1f}s] {msg}", flush=True)


def die(msg):
    print(f"models.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


def key_of(obj):
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())


def find_tiktoken():
    """o200k_base.tiktoken as shipped by the tiktoken-rs crate (newest version if several)."""
    home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    found = glob.glob(os.path.join(home, "registry", "src", "*", "tiktoken-rs-*", "assets", "o200k_base.tiktoken"))
    if not found:
        die(f"o200k_base.tiktoken not found under {home}/registry/src/*/tiktoken-rs-*/assets/ "
            "(the tiktoken-rs crate ships it): run `cargo fetch` first")

    def version(p):
        v = os.path.basename(os.path.dirname(os.path.dirname(p)))[len("tiktoken-rs-"):]
        return [int(x) if x.isdigit() else 0 for x in v.split(".")]
    return max(found, key=version)


# --- llama-server -----------------------------------------------------------------------

def free_port():
    """A free loopback port (llama-server cannot bind port 0 itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


class Server:
    """llama-server on 127.0.0.1 (ephemeral port), as a context manager."""

    def __init__(self, binary, model, log_path, extra=(), n_ctx=4096):
        self.binary, self.model, self.log_path, self.extra = binary, model, log_path, list(extra)
        self.n_ctx = n_ctx
        self.proc = self.log = self.url = None

    def __enter__(self):
        for _ in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            args = [self.binary, "-m", self.model, "--host", "127.0.0.1", "--port", str(port),
                    "-c", str(self.n_ctx), "-np", "1", "-t", "2", "--jinja"] + self.extra
            self.log = open(self.log_path, "w")
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
            try:
                if self._wait_healthy():
                    return self
            except BaseException:
                self.stop()
                raise
            self.stop()   # exited early, most likely the port was taken meanwhile: retry
        die(f"llama-server did not start; log {self.log_path}:\n{self._log_tail()}")

    def _wait_healthy(self, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"llama-server not healthy after {timeout}s; log {self.log_path}:\n{self._log_tail()}")

    def _log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-25:])
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def __exit__(self, *exc):
        self.stop()

    def post(self, path, body, timeout=120):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise HttpError(e.code, e.read().decode(errors="replace")) from None

    def tokenize(self, text):
        """[(id, piece)] exactly as llama.cpp tokenizes `text` (special tokens parsed). A piece
        that is not valid UTF-8 on its own comes back as a list of byte values."""
        toks = self.post("/tokenize", {"content": text, "add_special": False, "parse_special": True,
                                       "with_pieces": True})["tokens"]
        return [(t["id"], t["piece"]) for t in toks]

    def prompt(self, messages, tools=None, effort=None):
        """The chat-template-rendered prompt (with the generation prompt) for `messages`, with
        `Reasoning: EFFORT` when given (the template's default is medium)."""
        body = {"messages": messages}
        if tools:
            body["tools"] = tools
        if effort:
            body["reasoning_effort"] = effort
        return self.post("/apply-template", body)["prompt"]


# --- scripts ----------------------------------------------------------------------------

def show(pieces):
    return " ".join(repr(p) if isinstance(p, str) else f"<bytes {bytes(p).hex()}>" for p in pieces)


def marker_ids(name, toks, marker_texts):
    """The token id of each marker piece in `toks`."""
    out = []
    for m in marker_texts:
        ids = {t for t, p in toks if p == m}
        if not ids:
            die(f"{name}: marker {m!r} is not a token piece of the text; pieces: {show(p for _, p in toks)}")
        assert len(ids) == 1, (m, ids)
        out.append(ids.pop())
    return out


def play(states, where, prompt_last, prompt_flags, toks, markers):
    """Add the states that make the player emit `toks` ([(id, piece)]) after a prompt ending in
    `prompt_last` and holding the markers `prompt_flags`; die on a conflict."""
    flags, cur = frozenset(prompt_flags), prompt_last
    piece = {prompt_last: "assistant", **dict(toks)}
    for nxt, _ in toks:
        key = (cur, flags)
        if key in states and states[key][0] != nxt:
            die(f"{where}: conflicting states: after {piece[cur]!r} ({cur}) with markers "
                f"{[piece.get(m, m) for m in sorted(flags)]} the script needs {piece.get(states[key][0])!r} "
                f"({states[key][1]}) and {piece[nxt]!r} ({where}); add or change a marker, or reword")
        states.setdefault(key, (nxt, where))
        cur = nxt
        if nxt in markers:
            flags = flags | {nxt}


def check_prompt(name, srv, messages, tools, markers, must_have=()):
    """Tokenize the rendered prompt: it must end in `assistant`, hold none of the markers
    except `must_have` (which it must hold). Returns (last token id, markers present)."""
    toks = srv.tokenize(srv.prompt(messages, tools))
    ids = [t for t, _ in toks]
    if toks[-1][1] != "assistant":
        die(f"{name}: the prompt does not end in 'assistant': {show(p for _, p in toks[-5:])}")
    present = {m for m in markers if m in ids}
    for m in must_have:
        if m not in present:
            die(f"{name}: marker {m} is not in the prompt; prompt ends with {show(p for _, p in toks[-30:])}")
    return toks[-1][0], present


def agent_dims(agent):
    """The model dims of an agent session: AGENT_DIMS, plus 8 heads when it needs more than 4
    markers, the context it asks for (`n_ctx`) and the width (`n_embd`, also the feed-forward
    width: room for more known tokens and states)."""
    dims = dict(AGENT_DIMS)
    if "n_embd" in agent:
        dims["n_embd"] = dims["n_ff_exp"] = agent["n_embd"]
    if len(agent["turn1_markers"]) + len(agent.get("turn2_markers", [])) + 1 > make_gguf.N_HEAD:
        dims["n_head"] = 8
    if "n_ctx" in agent:
        dims["n_ctx"] = agent["n_ctx"]
    return dims


def agent_prompt(agent, spec, root):
    """(messages before turn 1, tools) of an agent session: the suite's `user` and `tools`, or
    the client's real ones from `prompt_file` (beside scenarios.json)."""
    if "prompt_file" not in agent:
        return [{"role": "user", "content": spec["user"]}], spec["tools"]
    with open(os.path.join(root, "tests", "real_llama", agent["prompt_file"])) as f:
        p = json.load(f)
    return p["messages"], p["tools"]


def agent_histories(agent, base):
    """Turn-2 message lists, as clients send turn 1 back after the messages `base` (llama.cpp's
    template rejects an assistant tool-call message with both content and reasoning: not
    tried; the preamble variant only when the session has a preamble)."""
    call = [{"id": TOOL_CALL_ID, "type": "function",
             "function": {"name": agent["tool"]["name"], "arguments": agent["tool"]["arguments"]}}]
    tool_msg = {"role": "tool", "tool_call_id": TOOL_CALL_ID, "content": agent["tool_result"]}
    out = {
        "reasoning+tool_calls": [*base, {"role": "assistant", "content": None, "reasoning_content": agent["reasoning"],
                                         "tool_calls": call}, tool_msg],
        "empty content+tool_calls": [*base, {"role": "assistant", "content": "", "tool_calls": call}, tool_msg],
    }
    if agent.get("preamble"):
        out["preamble content+tool_calls"] = [*base, {"role": "assistant", "content": agent["preamble"],
                                                      "tool_calls": call}, tool_msg]
    return out


def turn2_text(agent, reasoning_back):
    """What turn 2 says: `turn2`, or `turn2_no_reasoning` when the session tells the two apart
    and the turn-1 reasoning is not in the prompt."""
    if "reasoning_marker" in agent and not reasoning_back:
        return agent["turn2_no_reasoning"]
    return agent["turn2"]


def check_split(toks):
    """The multibyte scenario must split a multi-byte character across tokens: /tokenize
    gives such a token's piece as a list of byte values instead of a string."""
    split = [p for _, p in toks if not isinstance(p, str)]
    say(f"multibyte: {len(split)} of {len(toks)} tokens are not valid UTF-8 on their own: {show(split)}")
    if not split:
        die("multibyte: no token splits a multi-byte character; change its text")


def scenario_script(name, sc, srv, user, tools):
    toks = srv.tokenize(sc["text"])
    ids = [t for t, _ in toks]
    markers = marker_ids(name, toks, sc["markers"])
    if len(markers) > make_gguf.max_markers(SCENARIO_DIMS):
        die(f"{name}: at most {make_gguf.max_markers(SCENARIO_DIMS)} markers")
    last = None
    for with_tools in (False, True):
        l, present = check_prompt(f"{name} (tools={with_tools})", srv, [{"role": "user", "content": user}],
                                  tools if with_tools else None, markers)
        if present:
            die(f"{name}: markers {sorted(present)} occur in the single-turn prompt")
        assert last in (None, l)
        last = l
    states = {}
    play(states, name, last, (), toks, set(markers))
    if name == "multibyte":
        check_split(toks)
    return {"tokens": ids, "pieces": [p for _, p in toks], "markers": markers, "prompt_last": last,
            "states": states}


def agent_script(name, agent, srv, base, tools):
    t1 = srv.tokenize(agent["turn1"])
    t2 = srv.tokenize(agent["turn2"])
    m1 = marker_ids(f"{name} turn1", t1, agent["turn1_markers"])
    m2 = marker_ids(f"{name} turn2", t2, agent.get("turn2_markers", []))
    rm = m1[agent["turn1_markers"].index(agent["reasoning_marker"])] if "reasoning_marker" in agent else None
    histories = agent_histories(agent, base)
    # The result marker is looked up in a rendered turn-2 prompt (the template quotes the result).
    toks = srv.tokenize(srv.prompt(next(iter(histories.values())), tools))
    (result,) = marker_ids(f"{name} tool result in the turn-2 prompt", toks, [agent["result_marker"]])
    markers = m1 + m2 + [result]
    dims = agent_dims(agent)
    if len(markers) > make_gguf.max_markers(dims):
        die(f"{name}: at most {make_gguf.max_markers(dims)} markers (turn-1 + turn-2 markers + result marker)")
    last, present = check_prompt(f"{name} turn 1", srv, base, tools, markers)
    if present:
        die(f"{name}: markers {sorted(present)} occur in the turn-1 prompt")
    for hname, msgs in histories.items():
        l2, present = check_prompt(f"{name} turn 2 ({hname})", srv, msgs, tools, markers, must_have=[result])
        assert l2 == last
        if present & set(m2):
            die(f"{name}: turn-2 markers {sorted(present & set(m2))} occur in the turn-2 prompt ({hname})")
        say(f"{name} turn 2 ({hname}): prompt holds markers "
            f"{[agent['turn1_markers'][m1.index(m)] for m in m1 if m in present]} + {agent['result_marker']!r}")
    states = {}
    play(states, f"{name} turn1", last, (), t1, set(markers))
    texts = {}
    for n in range(len(m1) + 1):
        for subset in itertools.combinations(m1, n):
            text = turn2_text(agent, rm in subset)
            if text not in texts:
                texts[text] = srv.tokenize(text)
            play(states, f"{name} turn2 {sorted(subset)}", last, set(subset) | {result}, texts[text], set(markers))
    return {"turn1": [t for t, _ in t1], "turn2": [t for t, _ in t2], "markers": markers, "prompt_last": last,
            "states": states}


def effort_script(e, srv, user):
    """The effort player: `high`'s text after a prompt saying `Reasoning: high` (its
    `prompt_marker` piece is a marker only that prompt holds), `other`'s after any other.
    The prompt marker must be in no text (it would flip the flag mid-answer), and the other
    markers in no prompt."""
    u = [{"role": "user", "content": user}]
    toks = {k: srv.tokenize(e[k]["text"]) for k in ("high", "other")}
    markers = marker_ids("effort", toks["high"] + toks["other"], e["markers"])
    high_toks = srv.tokenize(srv.prompt(u, None, "high"))
    (pm,) = marker_ids("effort: the `Reasoning: high` prompt", high_toks, [e["prompt_marker"]])
    for k, t in toks.items():
        if pm in [i for i, _ in t]:
            die(f"effort: the prompt marker {e['prompt_marker']!r} occurs in the {k} text")
    all_markers = markers + [pm]
    last = None
    for effort in ("high", None, "low", "medium"):
        t = srv.tokenize(srv.prompt(u, None, effort))
        if t[-1][1] != "assistant":
            die(f"effort ({effort}): the prompt does not end in 'assistant'")
        present = {m for m in all_markers if m in [i for i, _ in t]}
        if present != ({pm} if effort == "high" else set()):
            die(f"effort ({effort or 'default'}): the prompt holds markers {sorted(present)}")
        assert last in (None, t[-1][0])
        last = t[-1][0]
    states = {}
    play(states, "effort high", last, {pm}, toks["high"], set(all_markers))
    play(states, "effort other", last, (), toks["other"], set(all_markers))
    return {"high": [t for t, _ in toks["high"]], "other": [t for t, _ in toks["other"]], "markers": all_markers,
            "prompt_last": last, "states": states}


def verify_effort(e, srv, user):
    u = [{"role": "user", "content": user}]
    for effort, k in (("high", "high"), ("medium", "other"), ("low", "other")):
        want = [t for t, _ in srv.tokenize(e[k]["text"])]
        check_ids(f"effort {effort} /completion", completion_ids(srv, srv.prompt(u, None, effort)), want, srv)
    say("effort: OK (high, medium and low prompts)")


def forced_script(f, srv, user, tools):
    """The forced-call player: `unforced` after a prompt ending in `assistant` (with tools
    declared or not), `text` after `required_prefill`, and the tail of `text` after
    `named_prefill` (whose last token is one of `text`'s). The marker (`final`) must be in no
    prompt and not in `text`."""
    u = [{"role": "user", "content": user}]
    toks = srv.tokenize(f["text"])
    unforced = srv.tokenize(f["unforced"]["text"])
    markers = marker_ids("forced", unforced, f["markers"])
    if set(markers) & {t for t, _ in toks}:
        die("forced: a marker occurs in the call text")
    last = None
    for tl in (None, tools):
        l, present = check_prompt(f"forced (tools={bool(tl)})", srv, u, tl, markers)
        if present:
            die(f"forced: markers {sorted(present)} occur in the prompt")
        assert last in (None, l)
        last = l
    required_last = srv.tokenize(f["required_prefill"])[-1][0]
    named_last = srv.tokenize(f["named_prefill"])[-1][0]
    ids = [t for t, _ in toks]
    if named_last not in ids:
        die(f"forced: the named prefill's last token {named_last} is not a token of the call text")
    states = {}
    play(states, "forced unforced", last, (), unforced, set(markers))
    play(states, "forced required", required_last, (), toks, set(markers))
    tail = toks[ids.index(named_last) + 1:]
    play(states, "forced named", named_last, (), tail, set(markers))
    return {"tokens": ids, "unforced": [t for t, _ in unforced], "markers": markers, "prompt_last": last,
            "states": states}


def verify_forced(f, srv, user, tools):
    """Each prompt as harmony-render sends it (here llama.cpp's template, plus the prefill)
    gives its text."""
    u = [{"role": "user", "content": user}]
    prompt = srv.prompt(u, tools)
    toks = [t for t, _ in srv.tokenize(f["text"])]
    named_last = srv.tokenize(f["named_prefill"])[-1][0]
    check_ids("forced: unforced /completion", completion_ids(srv, prompt), [t for t, _ in srv.tokenize(f["unforced"]["text"])], srv)
    check_ids("forced: required prefill /completion", completion_ids(srv, prompt + f["required_prefill"]), toks, srv)
    check_ids("forced: named prefill /completion", completion_ids(srv, prompt + f["named_prefill"]),
              toks[toks.index(named_last) + 1:], srv)
    say("forced: OK (unforced, required and named prefills)")


def write_script(path, script, vocab, template, dims, name):
    states = [(c, f, n) for (c, f), (n, _) in script["states"].items()]
    side = {k: v for k, v in script.items() if k != "states"}
    side["states"] = [{"cur": c, "flags": sorted(f), "next": n} for c, f, n in states]
    side_path = path[:-len(".gguf")] + ".script.json"   # for debugging: what the model plays
    with open(f"{side_path}.tmp{os.getpid()}", "w") as f:
        json.dump(side, f, ensure_ascii=False)
    os.replace(f"{side_path}.tmp{os.getpid()}", side_path)
    make_gguf.write_script_player(path, vocab, template, states, script["markers"], dims, f"tiny-gpt-oss-{name}")
    say(f"{name}: {len(states)} states, {len(script['markers'])} markers, "
        f"{os.path.getsize(path) / 1e6:.0f} MB -> {os.path.basename(path)}")


# --- verification -----------------------------------------------------------------------

def completion_ids(srv, prompt):
    r = srv.post("/completion", {"prompt": prompt, "n_predict": 200, "temperature": 0, "return_tokens": True,
                                 "cache_prompt": False})
    return r["tokens"]


def check_ids(what, got, want, srv):
    if got != want:
        pieces = lambda ids: show(p for _, p in srv.tokenize(srv.post("/detokenize", {"tokens": ids})["content"]))
        die(f"{what}: generated tokens differ from the script\n  want {want}\n  got  {got}\n"
            f"  want: {pieces(want)}\n  got:  {pieces(got)}")


def check_chat(what, srv, messages, tools, want):
    """Non-streamed chat completions (temperature 0) as an application sees them.

    want: {"reasoning", "content", "tool_calls": [(name, arguments)]}. The server runs with
    --reasoning-format none, where `content` is the raw text (minus headers llama.cpp's
    parser swallows): every expected text must be in it. The same request with the per-request
    "reasoning_format": "auto" must give exactly the expected reasoning_content, content and
    tool calls. Tool calls are only checked with tools declared (without, llama.cpp leaves the
    call text in content or drops it)."""
    body = {"messages": messages, "temperature": 0, "max_tokens": 200, "stream": False}
    if tools:
        body["tools"] = tools
    for fmt in ("none", "auto"):
        msg = srv.post("/v1/chat/completions", {**body, "reasoning_format": fmt})["choices"][0]["message"]
        got = {"reasoning": msg.get("reasoning_content") or "", "content": msg.get("content") or "",
               "tool_calls": [(c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls") or []]}
        if fmt == "none":
            ok = all(t in got["content"] for t in (want["reasoning"], want["content"]))
        else:
            ok = got["reasoning"] == want["reasoning"]
            if tools or not want["tool_calls"]:
                ok = ok and got["content"] == want["content"]
        if tools:
            ok = ok and got["tool_calls"] == want["tool_calls"]
        if not ok:
            die(f"{what}: chat completion (reasoning_format {fmt}) gave {json.dumps(msg, ensure_ascii=False)}, "
                f"want {json.dumps(want, ensure_ascii=False)}")


def verify_scenario(name, sc, srv, user, tools):
    toks = srv.tokenize(sc["text"])
    want = [t for t, _ in toks]
    if name == "multibyte":
        check_split(toks)
    u = [{"role": "user", "content": user}]
    parsed = {"reasoning": sc.get("reasoning", ""), "content": sc.get("preamble", "") + sc.get("final", ""),
              "tool_calls": [(sc["tool"]["name"], sc["tool"]["arguments"])] if "tool" in sc else []}
    for tl in (None, tools):
        what = f"{name} ({'with' if tl else 'without'} tools)"
        check_ids(f"{what} /completion", completion_ids(srv, srv.prompt(u, tl)), want, srv)
        check_chat(what, srv, u, tl, parsed)
    say(f"{name}: OK ({len(want)} tokens; /completion and chat completions, with and without tools)")


def verify_agent(name, agent, srv, base, tools):
    t1 = [t for t, _ in srv.tokenize(agent["turn1"])]
    check_ids(f"{name} turn 1 /completion", completion_ids(srv, srv.prompt(base, tools)), t1, srv)
    check_chat(f"{name} turn 1", srv, base, tools,
               {"reasoning": agent["reasoning"], "content": agent.get("preamble", ""),
                "tool_calls": [(agent["tool"]["name"], agent["tool"]["arguments"])]})
    rm = (marker_ids(name, srv.tokenize(agent["turn1"]), [agent["reasoning_marker"]])[0]
          if "reasoning_marker" in agent else None)
    for hname, msgs in agent_histories(agent, base).items():
        prompt = srv.prompt(msgs, tools)
        back = rm in [t for t, _ in srv.tokenize(prompt)]
        text = turn2_text(agent, back)
        t2 = [t for t, _ in srv.tokenize(text)]
        final = agent["final"] if text == agent["turn2"] else agent["final_no_reasoning"]
        check_ids(f"{name} turn 2 ({hname}) /completion", completion_ids(srv, prompt), t2, srv)
        check_chat(f"{name} turn 2 ({hname})", srv, msgs, tools, {"reasoning": "", "content": final, "tool_calls": []})
        say(f"{name} turn 2 ({hname}): OK ({final!r})")
    say(f"{name}: OK (turn 1: {len(t1)} tokens; /completion and chat completions)")


# --- main -------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="llama-server binary")
    ap.add_argument("--template", required=True, help="llama.cpp's gpt-oss chat template (.jinja)")
    ap.add_argument("--cache", required=True, help="cache directory (models and manifest go below it)")
    ap.add_argument("--version", required=True, help="llama-cpp-python version the server was built from")
    ap.add_argument("--root", required=True, help="repository root")
    ap.add_argument("--verify", action="store_true", help="run every model in llama-server and check its output")
    args = ap.parse_args()

    server = os.path.abspath(args.server)
    if not os.access(server, os.X_OK):
        die(f"llama-server not found at {server}")
    scenarios_path = os.path.join(args.root, "tests", "real_llama", "scenarios.json")
    with open(scenarios_path, "rb") as f:
        raw = f.read()
    spec = json.loads(raw)
    scenarios, user, tools = spec["scenarios"], spec["user"], spec["tools"]
    agents = {name: spec[name] for name in AGENTS}
    prompts = {name: agent_prompt(a, spec, args.root) for name, a in agents.items()}
    with open(args.template) as f:
        template = f.read()
    tiktoken = find_tiktoken()
    models_dir = os.path.join(os.path.abspath(args.cache), "real-llama-models")
    out_dir = os.path.join(os.path.abspath(args.cache), "real-llama")
    os.makedirs(models_dir, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)

    # Cache keys: everything that shapes a model's weights (token ids depend on llama.cpp
    # and the vocabulary, the embedded template on the template file), plus the prompts the
    # build-time checks ran on (no marker in them).
    common = {"format": SCRIPT_FORMAT, "llama-cpp-python": args.version,
              "template": sha256_bytes(template.encode()), "vocab": sha256_file(tiktoken)}
    path = lambda k: os.path.join(models_dir, key_of(k) + ".gguf")
    random_path = path({**common, "kind": "random", "dims": make_gguf.RANDOM_DIMS, "seed": 0})
    common["prompt"] = {"user": user, "tools": tools}
    paths = {name: path({**common, "kind": "scenario", "text": sc["text"], "markers": sc["markers"],
                         "dims": SCENARIO_DIMS})
             for name, sc in scenarios.items()}
    for name, a in agents.items():
        # What shapes the weights; the optional keys only when present (the `agent` key
        # stays what it was before codex_agent existed).
        shaping = {k: a[k] for k in ("turn1", "turn1_markers", "turn2", "tool_result", "result_marker",
                                     "turn2_markers", "reasoning_marker", "turn2_no_reasoning") if k in a}
        if "prompt_file" in a:
            shaping["prompt"] = key_of(prompts[name])
        paths[name] = path({**common, "kind": "agent", "dims": agent_dims(a), **shaping})
    effort = spec["effort"]
    paths["effort"] = path({**common, "kind": "effort", "dims": SCENARIO_DIMS,
                            **{k: effort[k] for k in ("prompt_marker", "markers", "high", "other")}})
    forced = spec["forced"]
    paths["forced"] = path({**common, "kind": "forced", "dims": SCENARIO_DIMS,
                            **{k: forced[k] for k in ("required_prefill", "named_prefill", "text", "markers", "unforced")}})
    missing = [n for n, p in paths.items() if not os.path.exists(p)]

    if missing or not os.path.exists(random_path):
        t = time.time()
        say("building the o200k_harmony vocabulary (cached after the first run)")
        vocab = make_gguf.load_vocab(tiktoken, models_dir)
        if not os.path.exists(random_path):
            make_gguf.write_random(random_path, vocab, template)
            say(f"random model: {os.path.getsize(random_path) / 1e6:.0f} MB -> {os.path.basename(random_path)}")
        if missing:
            say(f"tokenizing with llama-server for: {', '.join(missing)}")
            scripts = {}
            with Server(server, random_path, os.path.join(out_dir, "tokenizer-server.log")) as srv:
                for name in missing:
                    if name in agents:
                        scripts[name] = agent_script(name, agents[name], srv, *prompts[name])
                    elif name == "effort":
                        scripts[name] = effort_script(effort, srv, user)
                    elif name == "forced":
                        scripts[name] = forced_script(forced, srv, user, tools)
                    else:
                        scripts[name] = scenario_script(name, scenarios[name], srv, user, tools)
            for name in missing:
                write_script(paths[name], scripts[name], vocab, template,
                             agent_dims(agents[name]) if name in agents else SCENARIO_DIMS, name)
        say(f"models written in {time.time() - t:.1f}s")
    else:
        say("all models cached")

    if args.verify:
        t = time.time()
        for name, p in paths.items():
            log = os.path.join(out_dir, f"verify-{name}.log")
            n_ctx = agent_dims(agents[name]).get("n_ctx", 4096) if name in agents else 4096
            with Server(server, p, log, ["--reasoning-format", "none"], n_ctx=n_ctx) as srv:
                if name in agents:
                    verify_agent(name, agents[name], srv, *prompts[name])
                elif name == "effort":
                    verify_effort(effort, srv, user)
                elif name == "forced":
                    verify_forced(forced, srv, user, tools)
                else:
                    verify_scenario(name, scenarios[name], srv, user, tools)
        say(f"verified {len(paths)} models in {time.time() - t:.1f}s")

    manifest = {"version": args.version, "server": server, "random_model": random_path,
                "models": paths, "scenarios_sha256": sha256_bytes(raw),
                # The Rust tests compare this with the scenarios.json they read: models made
                # for other texts would make every expectation wrong.
                "scenarios": json.loads(raw)}
    out = os.path.join(out_dir, "manifest.json")
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, out)
    say(f"manifest: {out}")


if __name__ == "__main__":
    main()
