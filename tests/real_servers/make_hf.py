#!/usr/bin/env python3
"""Hugging Face-format twins of the real-llama suite's script players, for the servers that
load Hugging Face checkpoints (mlx-lm, vLLM, transformers serve).

    make_hf.py --manifest ~/.cache/harmony-proxy/real-llama/manifest.json \
               --template TEMPLATE.jinja --tiktoken o200k_base.tiktoken --out DIR [--dtype float32]

For each scenario model of the manifest it reads the state table the GGUF was built from
(the `.script.json` beside it) and writes DIR/NAME/ with `config.json`, `model.safetensors`,
the tokenizer (`tokenizer.json` from the o200k vocabulary with every Harmony special token at
its id) and llama.cpp's gpt-oss chat template, so the same scenario means the same tokens on
every engine. The weights are make_gguf.py's construction (see its docstring) in Hugging
Face's gpt_oss layout: `gate_up_proj` interleaves gate and up columns and is stored
(experts, in, out); YaRN with factor 1 is plain RoPE at base 1e9. Float32 by default (mlx-lm
on CPU needs it).

Every output directory is keyed by what shapes it (the script, the dims, the dtype, the
vocabulary and template): a rerun takes a second. Needs numpy, safetensors, transformers
(its TikTokenConverter) and tiktoken; no torch.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "real_llama"))
import script_player  # noqa: E402  (numpy only: the GGUF writer is not needed here)

VOCAB_SIZE = 201088
SPECIAL = {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
           200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>",
           200012: "<|call|>", 200018: "<|endofprompt|>"}
HEAD_DIM, N_LAYER, N_EXPERT, N_EXPERT_USED, N_CTX = 16, 2, 4, 2, 8192
COMBINED_HEAD_DIM = 64   # vLLM's CPU attention takes head sizes from 32 up
SCENARIO_DIMS = {"n_embd": 128, "n_ff_exp": 128, "n_head": 4}
# The o200k pre-tokenizer pattern (tiktoken's o200k_base).
PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
])
FORMAT = "harmony-proxy-hf-script-player-3"
# One player for every scenario (and the effort player), for servers that take a minute to
# start (vLLM): scenario K plays when the user's message ends in SELECTORS[K], a token that
# is in no prompt and no text; its states are the scenario's own tokens with that selector
# among the flags (see combined_script).
SELECTORS = [" Alpha", " Bravo", " Charlie", " Delta", " Echo", " Golf", " Hotel", " India"]


def say(msg):
    print(f"   make_hf: {msg}", flush=True)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def write_tokenizer(out, tiktoken_path, template):
    """tokenizer.json and friends: o200k's BPE, then ids 199998-201087 as special tokens."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    specials = [SPECIAL.get(i, f"<|reserved_{i}|>") for i in range(199998, VOCAB_SIZE)]
    tok = TikTokenConverter(vocab_file=tiktoken_path, pattern=PATTERN, additional_special_tokens=specials).converted()
    if tok.token_to_id("<|startoftext|>") is None:
        assert tok.get_vocab_size() == 199998, tok.get_vocab_size()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for i, s in SPECIAL.items():
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s), i)
    assert tok.encode("Hello world", add_special_tokens=False).ids == [13225, 2375]
    ft = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|return|>",
                                 pad_token="<|endoftext|>", model_max_length=131072)
    ft.chat_template = template
    ft.save_pretrained(out)


def config(dims, dtype):
    n_embd, n_ff, n_head = dims["n_embd"], dims["n_ff_exp"], dims.get("n_head", 4)
    head_dim = dims.get("head_dim", HEAD_DIM)
    n_ctx = dims.get("n_ctx", N_CTX)
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True,
        "attention_dropout": 0.0, "bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012],
        "pad_token_id": 199999, "experts_per_token": N_EXPERT_USED, "num_experts_per_tok": N_EXPERT_USED,
        "num_local_experts": N_EXPERT, "head_dim": head_dim, "hidden_act": "silu", "hidden_size": n_embd,
        "intermediate_size": n_ff, "initial_context_length": n_ctx, "initializer_range": 0.02,
        "layer_types": ["sliding_attention", "full_attention"], "max_position_embeddings": n_ctx,
        "num_attention_heads": n_head, "num_hidden_layers": N_LAYER, "num_key_value_heads": n_head,
        "output_router_logits": False, "rms_norm_eps": 1e-05,
        # YaRN at factor 1 is plain RoPE: every engine's gpt_oss reads these keys.
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 1.0,
                         "original_max_position_embeddings": n_ctx, "rope_type": "yarn", "truncate": False},
        "rope_theta": 1e9, "router_aux_loss_coef": 0.9, "sliding_window": n_ctx, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "torch_dtype": dtype, "use_cache": True, "vocab_size": VOCAB_SIZE,
    }


def weights(states, markers, dims, seed=0):
    """The script player's weights (tests/real_llama/script_player.py, the same as the GGUF
    ones) as Hugging Face gpt_oss tensors (float32)."""
    n_embd, n_ff, n_head = dims["n_embd"], dims["n_ff_exp"], dims.get("n_head", 4)
    head_dim = dims.get("head_dim", HEAD_DIM)
    rng = np.random.default_rng(seed)
    s = script_player.layer0(states, markers, n_embd, n_ff, n_head, head_dim, VOCAB_SIZE, rng)
    r = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(np.float32)
    zeros = lambda *shape: np.zeros(shape, np.float32)
    w = {"model.embed_tokens.weight": s["embed"], "lm_head.weight": s["output"], "model.norm.weight": np.ones(n_embd, np.float32)}
    for l in range(N_LAYER):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = np.ones(n_embd, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(n_embd, np.float32)
        for n in ("q", "k", "v"):
            w[p + f"self_attn.{n}_proj.weight"] = r(n_head * head_dim, n_embd)
            w[p + f"self_attn.{n}_proj.bias"] = r(n_head * head_dim)
        w[p + "self_attn.sinks"] = r(n_head)
        w[p + "mlp.router.weight"] = zeros(N_EXPERT, n_embd)   # flat: the experts are one
        w[p + "mlp.router.bias"] = zeros(N_EXPERT)
        w[p + "mlp.experts.gate_up_proj"] = r(N_EXPERT, n_embd, 2 * n_ff)
        w[p + "mlp.experts.gate_up_proj_bias"] = r(N_EXPERT, 2 * n_ff)
        # Every layer but the first adds nothing to the residual stream.
        w[p + "self_attn.o_proj.weight"] = zeros(n_embd, n_head * head_dim)
        w[p + "self_attn.o_proj.bias"] = zeros(n_embd)
        w[p + "mlp.experts.down_proj"] = zeros(N_EXPERT, n_ff, n_embd)
        w[p + "mlp.experts.down_proj_bias"] = zeros(N_EXPERT, n_embd)
    p = "model.layers.0.self_attn."
    w[p + "q_proj.weight"], w[p + "q_proj.bias"] = zeros(n_head * head_dim, n_embd), s["q_bias"]
    w[p + "k_proj.weight"], w[p + "k_proj.bias"] = s["k_weight"], s["k_bias"]
    w[p + "v_proj.weight"], w[p + "v_proj.bias"] = zeros(n_head * head_dim, n_embd), s["v_bias"]
    w[p + "o_proj.weight"], w[p + "sinks"] = s["o_weight"], zeros(n_head)
    # Hugging Face stores the experts (in, out), gate and up interleaved; up stays 0 (SwiGLU's up + 1).
    p = "model.layers.0.mlp.experts."
    gu = zeros(N_EXPERT, n_embd, 2 * n_ff)
    gu[:, :, 0::2] = s["gate"].T
    gub = zeros(N_EXPERT, 2 * n_ff)
    gub[:, 0::2] = s["gate_bias"]
    w[p + "gate_up_proj"], w[p + "gate_up_proj_bias"] = gu, gub
    w[p + "down_proj"] = np.broadcast_to(s["down"].T, (N_EXPERT, n_ff, n_embd)).copy()
    return w


def mlx_layout(w):
    """mlx-lm's names for the experts: separate gate/up/down weights stored (out, in) with
    their biases (mlx-lm converts only the quantized Hugging Face layout itself)."""
    out = {}
    for k, v in w.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            base = k[: -len("gate_up_proj")]
            out[base + "gate_proj.weight"] = np.ascontiguousarray(v[:, :, 0::2].transpose(0, 2, 1))
            out[base + "up_proj.weight"] = np.ascontiguousarray(v[:, :, 1::2].transpose(0, 2, 1))
        elif k.endswith("mlp.experts.gate_up_proj_bias"):
            base = k[: -len("gate_up_proj_bias")]
            out[base + "gate_proj.bias"] = np.ascontiguousarray(v[:, 0::2])
            out[base + "up_proj.bias"] = np.ascontiguousarray(v[:, 1::2])
        elif k.endswith("mlp.experts.down_proj"):
            out[k + ".weight"] = np.ascontiguousarray(v.transpose(0, 2, 1))
        elif k.endswith("mlp.experts.down_proj_bias"):
            out[k[: -len("down_proj_bias")] + "down_proj.bias"] = v
        else:
            out[k] = v
    return out


def write_model(out, script, dims, dtype, tokenizer_dir, layout="hf"):
    from safetensors.numpy import save_file
    states = [(s["cur"], frozenset(s["flags"]), s["next"]) for s in script["states"]]
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tokenizer_dir, tmp)
    w = weights(states, script["markers"], dims)
    if layout == "mlx":
        w = mlx_layout(w)
    save_file({k: np.ascontiguousarray(v) for k, v in w.items()}, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config(dims, dtype), f, indent=1)
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}, f)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def combined_script(scripts, tok_dir, user, tools):
    """One state table for every scenario and the effort player: scenario K's tokens after a
    prompt whose user message ends in SELECTORS[K] (the effort player's `high` text when the
    prompt also says `Reasoning: high`). The markers are every script's markers plus the
    selectors; each text is replayed with all of them, so a marker one scenario needs is a
    flag in every other's states too (a superset of each scenario's own flags tells its
    states apart as well as they did). Checked here with the model's own tokenizer and
    template: each selector is one token, in no text; each prompt holds exactly the markers
    its text starts from. Returns (script, {scenario: user message})."""
    from transformers import PreTrainedTokenizerFast
    ft = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    names = sorted(n for n in scripts if n != "effort") + ["effort"]
    if len(names) > len(SELECTORS):
        raise SystemExit(f"make_hf: {len(names)} scripts, only {len(SELECTORS)} selectors")
    sel = {}
    for name, word in zip(names, SELECTORS):
        ids = ft.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise SystemExit(f"make_hf: selector {word!r} is {len(ids)} tokens")
        sel[name] = ids[0]
    effort = scripts["effort"]
    pm = effort["markers"][-1]   # effort_script puts the prompt marker last
    markers = []
    for m in [m for n in names for m in scripts[n]["markers"]] + list(sel.values()):
        if m not in markers:
            markers.append(m)
    texts = {n: scripts[n]["tokens"] for n in names if n != "effort"}
    texts["effort high"], texts["effort other"] = effort["high"], effort["other"]
    for what, toks in texts.items():
        if set(toks) & set(sel.values()):
            raise SystemExit(f"make_hf: a selector occurs in the {what} text")
    last = {scripts[n]["prompt_last"] for n in names}
    assert len(last) == 1, last
    last = last.pop()
    states, where = {}, {}

    def play(what, flags, toks):
        cur, flags = last, frozenset(flags)
        for nxt in toks:
            if states.setdefault((cur, flags), nxt) != nxt:
                raise SystemExit(f"make_hf: {what} conflicts with {where[(cur, flags)]} after token {cur}")
            where.setdefault((cur, flags), what)
            cur = nxt
            if nxt in markers:
                flags = flags | {nxt}

    for n in names:
        if n == "effort":
            play("effort high", {sel[n], pm}, effort["high"])
            play("effort other", {sel[n]}, effort["other"])
        else:
            play(n, {sel[n]}, scripts[n]["tokens"])
    users = {n: user + SELECTORS[i] for i, n in enumerate(names)}
    for n in names:
        cases = [(None, False), ("high", True), ("low", False), (None, False)] if n == "effort" else [(None, False), (None, True)]
        for effort_level, with_tools in cases:
            kw = {"reasoning_effort": effort_level} if effort_level else {}
            prompt = ft.apply_chat_template([{"role": "user", "content": users[n]}], tools=tools if with_tools else None,
                                            add_generation_prompt=True, tokenize=False, **kw)
            ids = ft.encode(prompt, add_special_tokens=False)
            if ids[-1] != last:
                raise SystemExit(f"make_hf: the {n} prompt does not end in token {last}")
            want = {sel[n]} | ({pm} if effort_level == "high" else set())
            got = {m for m in markers if m in ids}
            if got != want:
                raise SystemExit(f"make_hf: the {n} prompt (effort {effort_level}, tools {with_tools}) holds markers {sorted(got)}, want {sorted(want)}")
    table = [{"cur": c, "flags": sorted(f), "next": x} for (c, f), x in states.items()]
    return {"states": table, "markers": markers}, users


def fit_dims(script, head_dim):
    """The smallest dims (a multiple of 64 wide) that hold a script: one head per marker, one
    dim per known token, flag, junk dim and state."""
    known = {s["cur"] for s in script["states"]} | set(script["markers"])
    n_head = max(4, len(script["markers"]))
    width = len(known) + n_head + 4 + len(script["states"])
    width = -(-width // 64) * 64
    return {"n_embd": width, "n_ff_exp": width, "n_head": n_head, "head_dim": head_dim}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--template", required=True)
    ap.add_argument("--tiktoken", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32"], help="float32 only for now (mlx-lm on CPU needs it)")
    ap.add_argument("--layout", default="hf", choices=["hf", "mlx"], help="tensor layout: Hugging Face's (vLLM, transformers) or mlx-lm's")
    ap.add_argument("--only", nargs="*", help="scenario names (default: every scenario model)")
    ap.add_argument("--agents", nargs="*", default=[], help="agent session models too (codex_agent, ...)")
    ap.add_argument("--combined", action="store_true", help="also the one player for every scenario (see SELECTORS)")
    args = ap.parse_args()
    manifest = json.load(open(args.manifest))
    template = open(args.template).read()
    vocab_key = sha(open(args.tiktoken, "rb").read())[:16]
    os.makedirs(args.out, exist_ok=True)
    tok_dir = os.path.join(args.out, f"tokenizer-{sha((vocab_key + sha(template.encode())).encode())[:16]}")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        say("tokenizer from the o200k vocabulary (about 30 s)")
        tmp = f"{tok_dir}.tmp{os.getpid()}"
        write_tokenizer(tmp, args.tiktoken, template)
        shutil.rmtree(tok_dir, ignore_errors=True)
        os.replace(tmp, tok_dir)
    spec = manifest["scenarios"]
    names = [*spec["scenarios"], "effort"] if args.only is None else args.only
    head_dim = COMBINED_HEAD_DIM if args.layout == "hf" else HEAD_DIM
    out = {}

    def build(name, script, raw, dims):
        key = sha(json.dumps({"format": FORMAT, "script": sha(raw), "dims": dims, "dtype": args.dtype,
                              "layout": args.layout, "tokenizer": os.path.basename(tok_dir)}).encode())[:24]
        d = os.path.join(args.out, f"{name}-{key}")
        if not os.path.exists(os.path.join(d, "model.safetensors")):
            write_model(d, script, dims, args.dtype, tok_dir, args.layout)
            say(f"{name}: {len(script['states'])} states, {len(script['markers'])} markers, n_embd {dims['n_embd']} -> {d}")
        return d

    scripts = {}
    for name in [*names, *args.agents, *([n for n in [*spec["scenarios"], "effort"] if n not in names] if args.combined else [])]:
        side = manifest["models"][name][: -len(".gguf")] + ".script.json"
        raw = open(side, "rb").read()
        scripts[name] = json.loads(raw)
        if name in names:
            dims = dict(SCENARIO_DIMS, **({"head_dim": head_dim} if head_dim != HEAD_DIM else {}))
        elif name in args.agents:
            dims = dict(fit_dims(scripts[name], head_dim), n_ctx=spec[name].get("n_ctx", N_CTX))
        else:
            continue
        out[name] = build(name, scripts[name], raw, dims)
    if args.combined:
        script, users = combined_script({n: scripts[n] for n in [*spec["scenarios"], "effort"]}, tok_dir,
                                        spec["user"], spec["tools"])
        raw = json.dumps(script, sort_keys=True).encode()
        out["combined"] = {"path": build("combined", script, raw, fit_dims(script, head_dim)), "users": users}
    with open(os.path.join(args.out, f"models-{args.layout}-{args.dtype}.json"), "w") as f:
        json.dump(out, f, indent=1)
    say(f"{len(out)} models in {args.out}")


if __name__ == "__main__":
    main()
