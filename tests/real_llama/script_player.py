"""The script player's weights, whatever the checkpoint format (numpy only): make_gguf.py
writes them as GGUF for llama.cpp, tests/real_servers/make_hf.py in Hugging Face's and
mlx-lm's layouts. How they work is in make_gguf.py's docstring.

Matrices are (out, in), as both GGUF and Hugging Face linear layers store them; the caller
maps the names and, for Hugging Face's experts, the orientation.
"""
import numpy as np


def layer0(states, markers, n_embd, n_ff, n_head, head_dim, vocab_size, rng):
    """The vocabulary matrices and layer 0's attention and feed-forward of a script player.

    states:  [(cur token id, frozenset of marker ids, next token id)], (cur, flags) unique.
    markers: marker token ids, one attention head each (at most n_head).
    rng:     draws the unknown tokens' junk dims (first, so a caller's later draws stay put).
    Returns a dict: embed and output (vocab x n_embd); q_bias, k_bias, k_weight, v_bias,
    o_weight (attention; every other attention tensor of layer 0 is zero, sinks included);
    gate, gate_bias, down (one expert's feed-forward: up is zero, as are the other biases).
    """
    assert len(markers) <= n_head, f"at most {n_head} markers, got {len(markers)}"
    assert len({(c, f) for c, f, _ in states}) == len(states), "duplicate state"
    known = sorted({c for c, _, _ in states} | set(markers))
    CUR0 = 0
    FLAG0 = CUR0 + len(known)
    JUNK0 = FLAG0 + n_head
    STEP0 = JUNK0 + 4
    if STEP0 + len(states) > n_embd or len(states) > n_ff:
        raise ValueError(f"{len(known)} known tokens and {len(states)} states do not fit "
                         f"n_embd={n_embd}, n_ff_exp={n_ff} (need n_embd >= {STEP0 + len(states)}, "
                         f"n_ff_exp >= {len(states)})")
    cdim = {t: CUR0 + i for i, t in enumerate(known)}
    embed = np.zeros((vocab_size, n_embd), np.float32)
    embed[:, JUNK0:JUNK0 + 4] = rng.standard_normal((vocab_size, 4))
    for t, d in cdim.items():
        embed[t] = 0.0
        embed[t, d] = 1.0
    output = np.zeros((vocab_size, n_embd), np.float32)
    # Attention: head h flags marker h.
    q_bias = np.zeros(n_head * head_dim, np.float32)
    k_bias = np.zeros(n_head * head_dim, np.float32)
    k_weight = np.zeros((n_head * head_dim, n_embd), np.float32)
    v_bias = np.zeros(n_head * head_dim, np.float32)
    o_weight = np.zeros((n_embd, n_head * head_dim), np.float32)
    one_hot_after_norm = np.sqrt(n_embd)   # RMS norm of a one-hot vector
    # The attention scores are q.k / sqrt(head_dim): B keeps them at -20 (any token) and +40
    # (a marker) whatever the head size, so a long unmarked context (an agent's ~16k-token
    # prompt: 16k * e^-20) still leaves the flag at ~0. (80 at head_dim 16, the GGUF models'.)
    B = 20.0 * np.sqrt(head_dim)
    last = head_dim - 1                    # NEOX RoPE pairs: the slowest frequency
    for h, m in enumerate(markers):
        q_bias[h * head_dim + last] = 1.0
        k_bias[h * head_dim + last] = -B
        k_weight[h * head_dim + last, cdim[m]] = 3 * B / one_hot_after_norm   # marker: +2B
        v_bias[h * head_dim + 0] = 1.0
        o_weight[FLAG0 + h, h * head_dim + 0] = 1.0
    # Feed-forward: one neuron per state.
    c, lam = 2.0, 2.0
    gate = np.zeros((n_ff, n_embd), np.float32)
    gate_bias = np.zeros(n_ff, np.float32)
    down = np.zeros((n_embd, n_ff), np.float32)
    relevant = [cdim[t] for t in known] + [FLAG0 + h for h in range(len(markers))]
    for i, (cur, flags, nxt) in enumerate(states):
        req = {cdim[cur]} | {FLAG0 + markers.index(m) for m in flags}
        n = len(req)
        for d in relevant:
            gate[i, d] = c if d in req else -c * lam
        # all n required dims on: sum = sqrt(n_embd*n); one missing: sqrt(n_embd*(n-1))
        gate_bias[i] = -c * (np.sqrt(n_embd * n) + np.sqrt(n_embd * (n - 1))) / 2
        down[STEP0 + i, i] = 1.0
        output[nxt, STEP0 + i] = 4.0
    return {"embed": embed, "output": output, "q_bias": q_bias, "k_bias": k_bias, "k_weight": k_weight,
            "v_bias": v_bias, "o_weight": o_weight, "gate": gate, "gate_bias": gate_bias, "down": down}
