#!/usr/bin/env bash
# Qwen Code (npm @qwen-code/qwen-code, the real CLI) against the proxy's
# POST /v1/chat/completions.
#
#   tests/agents/qwen.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/qwen.sh http://127.0.0.1:8001/v1 "$(mktemp -d)"
#
# The proxy must answer model gpt-oss-20b from its mock upstream, which plays scenario
# `agent-shell`: turn 1 reasons and calls Qwen Code's shell tool `run_shell_command` to write
# WORKDIR/qwen-marker.txt, turn 2 (the tool's output sent back) answers with what the command
# printed and whether the turn-1 reasoning came back in the request (Qwen Code sends the
# tool-call turn back with `reasoning_content`). Qwen Code runs headless (a positional prompt,
# `--yolo` to run the tool without asking, `-o json` for a transcript ending in a `result`
# object), with a throwaway HOME holding the settings.json below (what
# `harmony-proxy init --for qwen` prints), talking to 127.0.0.1 only: no usage statistics, no
# telemetry, no update check, no preconnect.
#
# Qwen Code is installed pinned into
# ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/qwen-code-VERSION the first time
# (npm, about 5 s and 55 MB: one bundled cli.js, run by the node on PATH, >= 20) and reused
# after that.
#
# Environment: QWEN_VERSION (default below), QWEN_TIMEOUT (seconds, default 180), QWEN_MODEL
# (default gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default a dummy).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QWEN_VERSION=${QWEN_VERSION:-0.15.10}
timeout_s=${QWEN_TIMEOUT:-180}
model=${QWEN_MODEL:-gpt-oss-20b}

# The run tag also finds what its shell tool starts: it runs commands in new process groups.
agent_setup qwen "Qwen Code" http://127.0.0.1:8001/v1 "$@"
agent_install_npm qwen-code @qwen-code/qwen-code "$QWEN_VERSION" qwen

mkdir -p "$home/.qwen"
# The user's settings, as Qwen Code's own "API Key" auth dialog writes them (an `openai`
# model provider whose key is read from the env var named by envKey), plus what keeps it off
# the network. `$version` is the settings schema's: without it Qwen Code migrates the file.
cat > "$home/.qwen/settings.json" <<EOF
{
  "\$version": 4,
  "modelProviders": {
    "openai": [
      {
        "id": "$model",
        "name": "$model",
        "baseUrl": "$base_url",
        "envKey": "HARMONY_PROXY_API_KEY",
        "generationConfig": { "contextWindowSize": 131072 }
      }
    ]
  },
  "security": { "auth": { "selectedType": "openai" } },
  "model": { "name": "$model" },
  "general": { "enableAutoUpdate": false },
  "privacy": { "usageStatisticsEnabled": false },
  "telemetry": { "enabled": false }
}
EOF

# Beyond lib.sh's clean environment: the key.
agent_env=(
  HARMONY_PROXY_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  # It would otherwise open a connection to the API at start ("preconnect"), before any request.
  QWEN_CODE_DISABLE_PRECONNECT=1
  # No HTTP(S)_PROXY (unlike claude.sh's dead loopback proxy): Qwen Code sends every request,
  # the loopback API's too, through it, NO_PROXY notwithstanding ("Connection error. (cause:
  # fetch failed)"). With the settings above it connects to nothing but the API (checked
  # with strace -f: one connect(), to the proxy's port).
)
agent_check_version "$QWEN_VERSION" qwen "$agent_bin"

rm -f "$marker"
echo "qwen $QWEN_VERSION: headless in $workdir against $base_url (timeout ${timeout_s}s)"
# The prompt is positional (-p is deprecated); stdin must not be a terminal or a pipe left
# open (it reads stdin as more prompt): agent_run gives it /dev/null.
agent_run "$timeout_s" "$agent_bin" --yolo --output-format json --chat-recording false "$prompt"

agent_check_exit qwen
agent_check_marker "$marker"
# stdout is one JSON array (the transcript: thinking, tool_use, tool_result, text) ending in a
# `result` object.
agent_check_result array "Qwen Code"
agent_check_answer "$answer" "The command printed: marker-written" "reasoning came back: yes"
agent_check_no_markup "Qwen Code's output" "$out" "$err"

agent_show_logs() {
  echo "--- qwen transcript (stdout, one message a line, cut at 400 characters)"
  node -e '
    for (const o of [].concat(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))))
      console.log(JSON.stringify(o.message ? o.message.content : o).slice(0, 400));
  ' "$out" 2>/dev/null || head -c 3000 "$out"; echo
  agent_show_stderr
}
agent_finish
