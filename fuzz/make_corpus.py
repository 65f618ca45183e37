#!/usr/bin/env python3
"""Builds the committed seed corpus (fuzz/corpus/TARGET/seed-*) from the test fixtures,
the shipped config and pipelines. Re-run after adding fixtures:  python3 fuzz/make_corpus.py"""
import glob, json, os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/*.sse"))):
    name = os.path.basename(path)[:-4]
    raw = open(path, "rb").read()
    put("sse_decode", name, raw)
    deltas = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: {"):
            for c in json.loads(line[6:]).get("choices", []):
                content = (c.get("delta") or {}).get("content")
                if content:
                    deltas.append(content)
    if deltas:
        put("harmony_stream", name, "\0".join(deltas))

put("sse_decode", "broken-framing", b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\ndata: [DO\n\nevent: x\n: c\ndata:{\"error\":{}}\n")
put("sse_decode", "invalid-utf8", b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\"}}]}\n\n")
put("config", "shipped", open(os.path.join(ROOT, "proxy.toml")).read())
for path in sorted(glob.glob(os.path.join(ROOT, "pipelines/*.toml"))):
    name = os.path.basename(path)[:-5]
    put("config", "pipeline-" + name, "[upstreams.default]\nurl = \"http://127.0.0.1:1/v1\"\n[pipelines.p]\n" + open(path).read())
put("config", "env", "[server]\nlisten = \"${LISTEN:-127.0.0.1:9}\"\n[upstreams.default]\nurl = \"${SET}\"\n")
for name, body in {
    "plain": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "END"},
    "history": {"messages": [{"role": "assistant", "content": "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>final<|message|>y"},
                             {"role": "assistant", "content": [{"type": "text", "text": "<|channel|>final<|message|>z"}]}], "stop": ["<|call|>", 3]},
    "odd": {"messages": "no", "stop": None},
}.items():
    put("request", name, json.dumps(body))
print("corpus written")
