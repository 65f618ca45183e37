"""Tiny gpt-oss GGUF models for the real-llama-server suite (used by models.py).

Every model has the real o200k_harmony tokenizer (rebuilt from tiktoken-rs's
o200k_base.tiktoken plus the Harmony special tokens) and llama.cpp's own gpt-oss chat
template, so llama-server tokenizes, renders prompts and parses output exactly as it does
for gpt-oss-20b/120b. Only the weights are toys. Needs numpy and gguf-py, nothing else.

Two kinds of weights:

* random (`write_random`): plain small random weights. Its output is noise; it is used to
  tokenize with llama.cpp's tokenizer, and by tests that force the output with a grammar.

* script player (`write_script_player`): hand-set weights that make greedy decoding replay a
  fixed token sequence. The next token is a function of a small *state*:

      state = (current token, set of marker tokens present anywhere in the context)

  where the context is everything the model sees, prompt included. A "state table" maps each
  state to its next token (models.py builds it from a Harmony text and checks it is a
  function). The network computes that lookup in the first layer; the second layer is inert.

  Residual stream layout (n_embd dims):
      [CUR0, FLAG0)        one dim per token the table mentions ("known" tokens): the
                           embedding of a known token is one-hot there (all else zero)
      [FLAG0, FLAG0+H)     one flag per marker (H = n_head), written by attention
      [JUNK0, JUNK0+4)     unknown tokens get random values here (keeps RMS norm finite);
                           no weight reads these dims
      [STEP0, STEP0+S)     one dim per state, written by the feed-forward layer

  Layer 0 attention, head h = marker h (at most n_head markers; n_head is 4 unless the
  model's dims say otherwise, and the flag dims are as many):
      q = bias 1 on the head's last dim; k = -B there, +2B for the marker token (read from
      its one-hot dim). That dim is the slowest RoPE pair and rope_base is 1e9, so scores do
      not depend on position: the marker scores 2B/4 = +40, every other token -B/4 = -20,
      the attention sink 0. v = 1 for every token, so the head outputs ~1 if the marker is
      anywhere in the (causal) context, the current token included, else ~0 (n * e^-20).
      The output projection copies it to the marker's flag dim.
  Layer 0 feed-forward (MoE; the four experts are identical and the router is flat, so the
  mix is one expert): one neuron per state. Its gate weights are +c on the dims the state
  requires (its current token and its flags) and -c*lam on every other known-token or flag
  dim; the bias puts the threshold halfway between "all n required dims on, nothing else"
  and "n-1 of them". After the RMS norm each active dim is sqrt(n_embd / active), so
  exactly one neuron fires (its gate is +3.5 or more, up to SwiGLU's clamp of 7) while
  every other gate is -3.5 or less (SwiGLU output ~0); the down projection writes each
  neuron to its state's own STEP dim.
  Output: row `next` of the output matrix reads the state's STEP dim (weight 4), giving the
  scripted next token a logit far above every other token's (~0).

Tokens the table never mentions (most of a prompt) have no one-hot dim, so they influence
nothing; only the marker flags and the current token matter, which is why a marker must not
occur in a prompt unless the table expects it there.
"""
import base64
import hashlib
import json
import os

import numpy as np
import gguf

import script_player

VOCAB_SIZE = 201088
# The Harmony special tokens of o200k_harmony; every other id above the BPE ranks is reserved.
SPECIAL = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}
BOS, EOS, PAD = 199998, 200002, 199999

# Hyperparameters. head_dim is fixed; n_head (one head per marker) is N_HEAD unless a script
# player's dims give "n_head"; n_embd and n_ff_exp bound the number of known tokens and
# states of a script player; "n_ctx" (default N_CTX) is its trained context and sliding window.
N_HEAD, HEAD_DIM, N_LAYER, N_EXPERT, N_EXPERT_USED = 4, 16, 2, 4, 2
N_CTX = 8192
MAX_MARKERS = N_HEAD


def max_markers(dims):
    """How many markers a script player with these dims can have (one attention head each)."""
    return dims.get("n_head", N_HEAD)
RANDOM_DIMS = {"n_embd": 64, "n_ff_exp": 64}
SMALL_DIMS = {"n_embd": 128, "n_ff_exp": 128}
# The two vocabulary-sized matrices (token_embd, output: 201088 x n_embd) are nearly all of a
# model's size; Q8_0 halves it against F16. The script player's values (0, 1, 4 in rows of
# zeros) survive Q8_0 with errors far below its decision margins, and --verify checks it.
VOCAB_MATRIX_TYPE = gguf.GGMLQuantizationType.Q8_0


# --- tokenizer --------------------------------------------------------------------------

def _bytes_to_unicode():
    """GPT-2's byte <-> printable character map (how byte-level BPE vocabularies are stored)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(ranks, token, max_rank):
    """tiktoken's BPE on `token`, using only merges ranked below max_rank."""
    parts = [bytes([b]) for b in token]
    while True:
        min_idx, min_rank = None, None
        for i, pair in enumerate(zip(parts[:-1], parts[1:])):
            rank = ranks.get(pair[0] + pair[1])
            if rank is not None and (min_rank is None or rank < min_rank):
                min_idx, min_rank = i, rank
        if min_rank is None or min_rank >= max_rank:
            break
        parts = parts[:min_idx] + [parts[min_idx] + parts[min_idx + 1]] + parts[min_idx + 2:]
    return parts


def load_vocab(tiktoken_path, cache_dir):
    """(tokens, token types, merges) of o200k_harmony in GGUF form.

    tiktoken files list token bytes by rank only; the merges GGUF wants are recovered by
    running BPE on each token with the lower ranks (the last merge splits it in two). That
    takes ~30 s, so the result is cached next to the models, keyed by the file's hash.
    """
    with open(tiktoken_path, "rb") as f:
        data = f.read()
    cache_path = os.path.join(cache_dir, f"o200k_harmony-v1-{hashlib.sha256(data).hexdigest()[:16]}.json")
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            d = json.load(f)
        return d["tokens"], d["types"], d["merges"]
    ranks = {}
    for line in data.splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    b2u = _bytes_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)
    tokens = [None] * VOCAB_SIZE
    types = [int(gguf.TokenType.NORMAL)] * VOCAB_SIZE
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        tokens[rank] = enc(tok)
        if len(tok) > 1:
            merged = _bpe(ranks, tok, max_rank=rank)
            assert len(merged) == 2, (tok, merged)
            merges.append(enc(merged[0]) + " " + enc(merged[1]))
    for i in range(VOCAB_SIZE):
        if tokens[i] is None:
            tokens[i] = SPECIAL.get(i, f"<|reserved_{i}|>")
            types[i] = int(gguf.TokenType.CONTROL)
    tmp = cache_path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"tokens": tokens, "types": types, "merges": merges}, f)
    os.replace(tmp, cache_path)
    return tokens, types, merges


# --- writer -----------------------------------------------------------------------------

def _layers(rng, n_embd, n_head_kv, n_ff, n_head=N_HEAD):
    """Random weights for every block tensor (the script player then overwrites most)."""
    r = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(np.float32)
    out = []
    for _ in range(N_LAYER):
        l = {
            "attn_norm.weight": np.ones(n_embd, np.float32),
            "post_attention_norm.weight": np.ones(n_embd, np.float32),
            "attn_q.weight": r(n_head * HEAD_DIM, n_embd), "attn_q.bias": r(n_head * HEAD_DIM),
            "attn_k.weight": r(n_head_kv * HEAD_DIM, n_embd), "attn_k.bias": r(n_head_kv * HEAD_DIM),
            "attn_v.weight": r(n_head_kv * HEAD_DIM, n_embd), "attn_v.bias": r(n_head_kv * HEAD_DIM),
            "attn_output.weight": r(n_embd, n_head * HEAD_DIM), "attn_output.bias": r(n_embd),
            "attn_sinks.weight": r(n_head),
            "ffn_gate_inp.weight": r(N_EXPERT, n_embd), "ffn_gate_inp.bias": r(N_EXPERT),
            "ffn_gate_exps.weight": r(N_EXPERT, n_ff, n_embd), "ffn_gate_exps.bias": r(N_EXPERT, n_ff),
            "ffn_up_exps.weight": r(N_EXPERT, n_ff, n_embd), "ffn_up_exps.bias": r(N_EXPERT, n_ff),
            "ffn_down_exps.weight": r(N_EXPERT, n_embd, n_ff), "ffn_down_exps.bias": r(N_EXPERT, n_embd),
        }
        out.append(l)
    return out


def _write(path, name, vocab, template, n_embd, n_ff, n_head_kv, swa, rope_base, tok_embd, output, layers,
           n_head=N_HEAD, n_ctx=N_CTX):
    """Write the GGUF to path + '.tmp', then rename (a half-written model is never cached)."""
    tokens, types, merges = vocab
    assert n_embd % 32 == 0, "Q8_0 rows need n_embd to be a multiple of 32"
    tmp = f"{path}.tmp{os.getpid()}"
    w = gguf.GGUFWriter(tmp, "gpt-oss")
    w.add_name(name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_block_count(N_LAYER)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_sliding_window(swa)
    w.add_expert_feed_forward_length(n_ff)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_pad_token_id(PAD)
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    q = lambda m: gguf.quants.quantize(m.astype(np.float32), VOCAB_MATRIX_TYPE)
    w.add_tensor("token_embd.weight", q(tok_embd), raw_dtype=VOCAB_MATRIX_TYPE)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", q(output), raw_dtype=VOCAB_MATRIX_TYPE)
    for i, l in enumerate(layers):
        for k, v in l.items():
            w.add_tensor(f"blk.{i}.{k}", np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def write_random(path, vocab, template, seed=0):
    """The random-weight model (64 dims, sliding window 128, ~36 MB)."""
    n_embd, n_ff = RANDOM_DIMS["n_embd"], RANDOM_DIMS["n_ff_exp"]
    rng = np.random.default_rng(seed)
    tok_embd = rng.standard_normal((VOCAB_SIZE, n_embd)).astype(np.float32)
    output = (rng.standard_normal((VOCAB_SIZE, n_embd)) * 0.02).astype(np.float32)
    layers = _layers(rng, n_embd, 2, n_ff)
    _write(path, "tiny-gpt-oss-random", vocab, template, n_embd, n_ff, 2, 128, 150000.0, tok_embd, output, layers)


def write_script_player(path, vocab, template, states, markers, dims, name, seed=0):
    """A script player (see the module docstring).

    states:  list of (cur token id, frozenset of marker ids, next token id); (cur, flags)
             must be unique.
    markers: marker token ids (at most max_markers(dims)), one attention head each.
    dims:    {"n_embd": ..., "n_ff_exp": ...} and optionally "n_head" (default N_HEAD) and
             "n_ctx" (default N_CTX; also the sliding window, so a marker is seen anywhere).
    """
    n_embd, n_ff = dims["n_embd"], dims["n_ff_exp"]
    n_head, n_ctx = max_markers(dims), dims.get("n_ctx", N_CTX)
    rng = np.random.default_rng(seed)
    try:
        w = script_player.layer0(states, markers, n_embd, n_ff, n_head, HEAD_DIM, VOCAB_SIZE, rng)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    tok_embd, output = w["embed"], w["output"]

    layers = _layers(rng, n_embd, n_head, n_ff, n_head)
    a = layers[0]
    # Layer 0 attention: head h flags marker h.
    for k in ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias",
              "attn_output.weight", "attn_output.bias", "attn_sinks.weight"):
        a[k][...] = 0.0
    a["attn_q.bias"][...] = w["q_bias"]
    a["attn_k.bias"][...] = w["k_bias"]
    a["attn_k.weight"][...] = w["k_weight"]
    a["attn_v.bias"][...] = w["v_bias"]
    a["attn_output.weight"][...] = w["o_weight"]
    # Layer 0 feed-forward: one neuron per state (every expert the same; the router is flat).
    gate, gate_b, down = w["gate"], w["gate_bias"], w["down"]
    a["ffn_gate_inp.weight"][...] = 0.0
    a["ffn_gate_inp.bias"][...] = 0.0
    a["ffn_gate_exps.weight"][...] = gate
    a["ffn_gate_exps.bias"][...] = gate_b
    a["ffn_up_exps.weight"][...] = 0.0
    a["ffn_up_exps.bias"][...] = 0.0
    a["ffn_down_exps.weight"][...] = down
    a["ffn_down_exps.bias"][...] = 0.0
    # Layer 1 adds nothing to the residual stream.
    for l in layers[1:]:
        l["attn_output.weight"][...] = 0.0
        l["attn_output.bias"][...] = 0.0
        l["ffn_down_exps.weight"][...] = 0.0
        l["ffn_down_exps.bias"][...] = 0.0

    _write(path, name, vocab, template, n_embd, n_ff, n_head, n_ctx, 1e9, tok_embd, output, layers, n_head, n_ctx)
