#!/usr/bin/env bash
# Kilo Code CLI (npm @kilocode/cli, the real binary; an OpenCode fork) against the proxy's
# POST /v1/chat/completions.
#
#   tests/agents/kilo.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/kilo.sh http://127.0.0.1:8001/v1 "$(mktemp -d)"
#
# The proxy must answer model gpt-oss-20b from its mock upstream, which plays scenario
# `agent-shell`: turn 1 reasons and calls Kilo's shell tool `bash` to write
# WORKDIR/kilo-marker.txt, turn 2 (the tool's output sent back) answers with what the command
# printed and whether the turn-1 reasoning came back in the request (Kilo sends the tool-call
# turn back with `reasoning_content`). Like OpenCode, a title request comes first. It runs
# headless (`kilo run --format json`, one JSON event a line), with a throwaway HOME holding
# ~/.config/kilo/kilo.json below (what `harmony-proxy init --for kilo` prints), talking to
# 127.0.0.1 only: only this provider enabled (else it fetches the Kilo gateway's model list),
# no models.dev fetch, no telemetry (PostHog), no update check, no session ingest or
# presence, no LSP downloads, and any other HTTP goes to a dead loopback proxy.
#
# The config is the user's (~/.config/kilo/kilo.json), not the project's (WORKDIR/kilo.json):
# Kilo refuses `{env:VAR}` references in a project's config ("environment references are not
# allowed in project config"; the whole file is skipped with a ConfigInvalidError in the log,
# then "Model not found").
#
# Kilo is installed pinned into ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/kilo-VERSION
# the first time (npm, about 10 s and 290 MB: a node launcher and one native Bun binary) and
# reused after that. 7.7.7 is the pin: 7.8.1 fails to install.
#
# Environment: KILO_VERSION (default below), KILO_TIMEOUT (seconds, default 180), KILO_MODEL
# (default gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default a dummy).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KILO_VERSION=${KILO_VERSION:-7.7.7}
timeout_s=${KILO_TIMEOUT:-180}
model=${KILO_MODEL:-gpt-oss-20b}

agent_setup kilo Kilo http://127.0.0.1:8001/v1 "$@"
# The package's postinstall links the platform's native binary (an optional dependency) to
# bin/.kilo: scripts and optional dependencies must not be turned off.
agent_install_npm kilo @kilocode/cli "$KILO_VERSION" kilo \
  --ignore-scripts=false --include=optional

mkdir -p "$home/.config/kilo"
# The user's config: a provider through the bundled @ai-sdk/openai-compatible, the key read
# from the environment, the model able to call tools and to reason (else the reasoning is
# dropped from the history it sends back), and no provider but this one.
cat > "$home/.config/kilo/kilo.json" <<EOF
{
  "\$schema": "https://app.kilo.ai/config.json",
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
  "enabled_providers": ["harmony"],
  "model": "harmony/$model",
  "autoupdate": false
}
EOF

# Beyond lib.sh's clean environment: the key. Like OpenCode, it finds its project from $PWD:
# PWD is set to WORKDIR.
agent_env=(
  PWD="$workdir" HARMONY_PROXY_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  # Off the network: no models.dev catalogue, no update check, no telemetry (only "all" turns
  # it on), no sharing, session ingest or presence, no LSP downloads.
  KILO_DISABLE_MODELS_FETCH=1 KILO_DISABLE_AUTOUPDATE=1 KILO_TELEMETRY_LEVEL=off
  KILO_DISABLE_SHARE=1 KILO_DISABLE_SESSION_INGEST=1 KILO_DISABLE_PRESENCE=1
  KILO_DISABLE_LSP_DOWNLOAD=1
  # Anything that still tries HTTP(S) elsewhere goes to a loopback port where nothing listens.
  # Kilo (Bun's fetch) honours NO_PROXY.
  "${agent_offline_env[@]}")
agent_check_version "$KILO_VERSION" kilo "$agent_bin"

rm -f "$marker"
echo "kilo $KILO_VERSION: run in $workdir against $base_url (timeout ${timeout_s}s)"
# Like OpenCode's: --format json prints one event a line, --print-logs its log on stderr.
agent_run "$timeout_s" "$agent_bin" run \
  --format json --thinking --print-logs --log-level WARN -m "harmony/$model" "$prompt"

agent_check_exit "kilo run"
agent_check_marker "$marker"
agent_check_events Kilo
agent_check_answer "$answer" "The command printed: marker-written" "reasoning came back: yes"
agent_check_no_markup "Kilo's output" "$out" "$err"

agent_show_logs() { agent_show_events; }
agent_finish
