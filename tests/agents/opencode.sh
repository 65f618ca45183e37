#!/usr/bin/env bash
# OpenCode (npm opencode-ai, the real binary) against the proxy's POST /v1/chat/completions.
#
#   tests/agents/opencode.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/opencode.sh http://127.0.0.1:8001/v1 "$(mktemp -d)"
#
# The proxy must answer model gpt-oss-20b from its mock upstream, which plays scenario
# `agent-shell`: turn 1 reasons and calls OpenCode's shell tool `bash` to write
# WORKDIR/opencode-marker.txt, turn 2 (the tool's output sent back) answers with what the
# command printed and whether the turn-1 reasoning came back in the request (OpenCode sends the
# tool-call turn back with `reasoning_content`). OpenCode makes two requests per prompt: a
# title request (no tools, `reasoning_effort: "low"`) and the main one; with one tool call,
# three in all. It runs headless (`opencode run --format json`, one JSON event a line), with a
# throwaway HOME and WORKDIR/opencode.json below (what `harmony-proxy init --for opencode`
# prints), talking to 127.0.0.1 only: no models.dev fetch, no update check, no sharing, no LSP
# downloads, and any other HTTP goes to a dead loopback proxy (OpenCode installs
# @opencode-ai/plugin from the npm registry into ~/.config/opencode in the background at every
# start: that fails there, harmlessly).
#
# OpenCode is installed pinned into
# ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/opencode-VERSION the first time (npm,
# about 10 s and 355 MB: two native builds of one Bun binary, x64 and x64-baseline) and reused
# after that.
#
# Environment: OPENCODE_VERSION (default below), OPENCODE_TIMEOUT (seconds, default 180),
# OPENCODE_MODEL (default gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default a
# dummy).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OPENCODE_VERSION=${OPENCODE_VERSION:-1.18.33}
timeout_s=${OPENCODE_TIMEOUT:-180}
model=${OPENCODE_MODEL:-gpt-oss-20b}

agent_setup opencode OpenCode http://127.0.0.1:8001/v1 "$@"
# The package's postinstall links the platform's native binary (an optional dependency) over
# bin/opencode.exe: scripts and optional dependencies must not be turned off.
agent_install_npm opencode opencode-ai "$OPENCODE_VERSION" opencode \
  --ignore-scripts=false --include=optional

# The project's config, in the directory OpenCode runs in: a provider through the bundled
# @ai-sdk/openai-compatible, the key read from the environment, the model able to call tools
# and to reason (else OpenCode drops the reasoning from the history it sends back).
cat > "$workdir/opencode.json" <<EOF
{
  "\$schema": "https://opencode.ai/config.json",
  "provider": {
    "harmony": {
      "npm": "@ai-sdk/openai-compatible",
      "name": "harmony-proxy",
      "options": {
        "baseURL": "$base_url",
        "apiKey": "{env:HARMONY_PROXY_API_KEY}"
      },
      "models": {
        "$model": {
          "name": "$model",
          "tool_call": true,
          "reasoning": true,
          "limit": { "context": 131072, "output": 32000 }
        }
      }
    }
  },
  "model": "harmony/$model",
  "autoupdate": false,
  "share": "disabled"
}
EOF

# Beyond lib.sh's clean environment: the key. OpenCode finds its project from $PWD, not from
# the process's directory: PWD is set to WORKDIR.
agent_env=(
  PWD="$workdir" HARMONY_PROXY_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  # Off the network: no models.dev catalogue, no update check, no sharing, no LSP downloads.
  OPENCODE_DISABLE_MODELS_FETCH=1 OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_SHARE=1
  OPENCODE_DISABLE_LSP_DOWNLOAD=1
  # Anything that still tries HTTP(S) elsewhere (the npm registry, above) goes to a loopback
  # port where nothing listens. OpenCode (Bun's fetch) honours NO_PROXY.
  "${agent_offline_env[@]}")
agent_check_version "$OPENCODE_VERSION" opencode "$agent_bin"

rm -f "$marker"
echo "opencode $OPENCODE_VERSION: run in $workdir against $base_url (timeout ${timeout_s}s)"
# --format json prints one event a line (reasoning with --thinking, tool_use, text,
# step_finish, error); --print-logs puts its log on stderr (warnings and errors).
agent_run "$timeout_s" "$agent_bin" run \
  --format json --thinking --print-logs --log-level WARN -m "harmony/$model" "$prompt"

agent_check_exit "opencode run"
agent_check_marker "$marker"
agent_check_events OpenCode
agent_check_answer "$answer" "The command printed: marker-written" "reasoning came back: yes"
agent_check_no_markup "OpenCode's output" "$out" "$err"

agent_show_logs() { agent_show_events; }
agent_finish
