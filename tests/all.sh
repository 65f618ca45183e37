#!/usr/bin/env bash
# Every suite, from a fresh clone, in one command: `bash tests/all.sh`. It prepares what the
# suites need (the OpenAI and Anthropic SDKs from PyPI and npm, redis-server from apt, a real
# llama-server built once, mlx-lm and vLLM (with transformers) in venvs, the script-player
# models, the agent CLIs; all pinned and cached in ~/.cache/harmony-proxy, keyed by version),
# then runs the lint gates, `cargo test --workspace` (the real-server suites included: with
# `CI` set, a server that could not be prepared fails instead of skipping), the SDK
# conformance and schema suites, the agents against the mock, the benchmark's short mode, the
# deployment checks and a bounded fuzz smoke run. CI runs exactly this (`.ci/run`). Times of
# each part, warm and on a new machine, are in the README ("Testing").
#   FUZZ_SECONDS=0 bash tests/all.sh     # without the fuzz smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start ))s] $*"; }

stamp "Python clients (PyPI): the OpenAI SDK the suites read answers with"
python3 -m pip install --quiet --disable-pip-version-check -r tests/conformance/requirements.txt

stamp "redis-server (apt): the shared reasoning store the replica tests run against"
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; fi
fi

stamp "real llama-server harness: build or reuse llama-server, write the tiny models"
cargo fetch --locked -q   # the o200k vocabulary file the models use ships in tiktoken-rs
bash tests/real_llama/prepare.sh

stamp "real-servers harness: mlx-lm and vLLM (PyPI, pinned, cached outside the checkout) and their script-player models"
bash tests/real_servers/prepare.sh

stamp "lint gates: cargo fmt --check, cargo clippy --workspace --all-targets -D warnings"
cargo fmt --all -- --check
# The client API folders are declared by the registry macro (filters/src/api/mod.rs), which
# rustfmt does not follow: checked by name.
rustfmt --check --edition 2021 filters/src/api/*/mod.rs
cargo clippy --workspace --all-targets --locked -j2 -q -- -D warnings

stamp "the README's test command: cargo test --workspace (real-llama suite required under CI)"
cargo test --workspace --locked -j2

stamp "OpenAI SDK conformance (Python from PyPI, Node from npm)"
(cd tests/conformance && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked -j2 --bin harmony-proxy
bash tests/conformance/run.sh

stamp "agents against the mock: the real agent CLIs (npm, pinned, cached outside the checkout) run their shell tools"
bash tests/agents/run.sh

stamp "benchmark, short mode: proves \`harmony-proxy bench\` works (figures are printed, never asserted)"
./target/debug/harmony-proxy bench --short

stamp "no process the suites started is still running (proxies, mocks, llama-server, agents)"
sleep 1
leftover="$PWD/target/debug/harmony-proxy|harmony-proxy/llama-server-|harmony-proxy/agents/|mlx_lm.server|harmony-proxy/vllm-venv-"
if pgrep -f "$leftover" >/dev/null; then
  pgrep -fa "$leftover" || true
  echo "leftover processes (see above)"; exit 1
fi

stamp "deployment artifacts: hadolint, kubernetes-validate, dashboard metrics (PyPI tools)"
bash tests/deploy/run.sh

secs=${FUZZ_SECONDS:-15}
if [ "$secs" != 0 ]; then
  # 15 s per target (six targets); longer runs: FUZZ_SECONDS=600 bash fuzz/smoke.sh
  stamp "fuzz smoke ($secs s per target, a dev build; cargo-fuzz pinned and cached)"
  FUZZ_BUILD=dev FUZZ_SECONDS=$secs bash fuzz/smoke.sh
fi
stamp "all green"
