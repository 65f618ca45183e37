#!/usr/bin/env python3
"""Keeps only the words of a captured client prompt (codex_prompt.json, claude_prompt.json,
qwen_prompt.json): every message text and every `description` in the tools becomes the
sorted set of its words. The tokens a script player's markers must avoid are the same
(words keep their punctuation), and no text of the client's is stored in this repository.

    words_of.py CAPTURE.json > tests/real_llama/NAME_prompt.json   (then add its `_comment`)
"""
import json
import sys


def bag(s):
    return " ".join(sorted(set(s.split())))


def schema(v):
    if isinstance(v, dict):
        return {k: (bag(x) if k == "description" and isinstance(x, str) else schema(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [schema(x) for x in v]
    return v


def words_of(d):
    for m in d["messages"]:
        c = m.get("content")
        if isinstance(c, str):
            m["content"] = bag(c)
        elif isinstance(c, list):
            for p in c:
                if isinstance(p.get("text"), str):
                    p["text"] = bag(p["text"])
    d["tools"] = schema(d["tools"])
    return d


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        json.dump(words_of(json.load(f)), sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
