#!/usr/bin/env bash
# Continue CLI (npm @continuedev/cli, command `cn`) against the proxy's POST /v1/chat/completions.
#
#   tests/agents/continue.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/continue.sh http://127.0.0.1:8001/v1 "$(mktemp -d)"
#
# The proxy (an `ide-tools` route, as tests/agents/chat-proxy.toml) must answer model
# gpt-oss-20b from its mock upstream, which plays scenario `agent-shell`: turn 1 reasons and
# calls Continue's shell tool `Bash` to write WORKDIR/continue-marker.txt, turn 2 (the tool's
# output sent back) answers with what the command printed and whether the turn-1 reasoning
# came back in the request. Continue sends the tool-call turn back without its reasoning: the
# proxy's reasoning memory puts it back, so "came back: yes" checks that memory.
# `cn -p --auto` runs headless with every tool allowed, with a throwaway HOME, talking to
# 127.0.0.1 only: no telemetry, and its version check (a fetch() of api.continue.dev at
# start, with no switch to turn it off) fails at once through a preloaded fetch() that
# refuses anything but loopback; any other HTTP goes to a dead loopback proxy.
#
# Continue is installed pinned into
# ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/continue-VERSION the first time
# (npm, about 5 s and 80 MB) and reused after that.
#
# Environment: CONTINUE_VERSION (default below), CONTINUE_TIMEOUT (seconds, default 180),
# CONTINUE_MODEL (default gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default a dummy).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONTINUE_VERSION=${CONTINUE_VERSION:-1.5.47}
timeout_s=${CONTINUE_TIMEOUT:-180}
model=${CONTINUE_MODEL:-gpt-oss-20b}

agent_setup continue Continue http://127.0.0.1:8001/v1 "$@"
agent_install_npm continue @continuedev/cli "$CONTINUE_VERSION" cn

config=$tmp/config.yaml
# What `harmony-proxy init --for continue` should print: one model, the proxy as an OpenAI
# provider, tool use on (else cn declares no tools).
cat > "$config" <<EOF
name: harmony-proxy
version: 1.0.0
schema: v1
models:
  - name: $model
    provider: openai
    model: $model
    apiBase: $base_url
    apiKey: ${HARMONY_PROXY_API_KEY:-harmony-test-key}
    roles: [chat, edit, apply]
    capabilities: [tool_use]
EOF

# cn fetches https://api.continue.dev/cn/info (its latest version) as it loads, whatever the
# settings; Node's fetch() ignores HTTP(S)_PROXY. Preloaded, this makes fetch() to anything
# but loopback fail at once (no DNS lookup, no connection).
offline=$tmp/offline.cjs
cat > "$offline" <<'EOF'
const realFetch = globalThis.fetch;
const loopback = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);
globalThis.fetch = function (input, init) {
  let host = "";
  try { host = new URL(typeof input === "string" || input instanceof URL ? input : input.url).hostname; } catch {}
  if (!loopback.has(host)) return Promise.reject(new TypeError(`fetch() to ${host || "?"} refused: the agents suite stays off the network`));
  return realFetch.call(this, input, init);
};
EOF

# Beyond lib.sh's clean environment: no colour, Continue's directory.
agent_env=(
  FORCE_COLOR=0 CONTINUE_GLOBAL_DIR="$home/.continue"
  # Off the network: no OpenTelemetry metrics, no version check (see offline.cjs).
  CONTINUE_CLI_ENABLE_TELEMETRY=0 CONTINUE_METRICS_ENABLED=0
  NODE_OPTIONS="--require $offline"
  "${agent_offline_env[@]}")
agent_check_version "$CONTINUE_VERSION" cn "$agent_bin"

rm -f "$marker"
echo "continue $CONTINUE_VERSION: cn -p in $workdir against $base_url (timeout ${timeout_s}s)"
# --auto allows every tool (Bash included) without asking; -p prints the final answer.
agent_run "$timeout_s" "$agent_bin" --config "$config" --auto -p "$prompt"

agent_check_exit "cn -p"
agent_check_marker "$marker"
# stdout holds only the final answer.
answer=$(cat "$out")
agent_check_answer "$answer" "The command printed: marker-written" "reasoning came back: yes"
# The session file holds the whole transcript (reasoning, tool call, tool output, answer).
agent_check_no_markup "Continue's output or session" "$out" "$err" "$home/.continue/sessions"

agent_show_logs() {
  agent_show_stderr
  echo "--- continue log (last 20 lines)"
  tail -n 20 "$home/.continue/logs/cn.log" 2>/dev/null | cut -c 1-400
}
agent_finish
