#!/usr/bin/env bash
# Cline CLI (npm cline, the real binary) against the proxy's POST /v1/chat/completions.
#
#   tests/agents/cline.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/cline.sh http://127.0.0.1:8001/v1 "$(mktemp -d)"
#
# The proxy (an `ide-tools` route, as tests/agents/chat-proxy.toml) must answer model
# gpt-oss-20b from its mock upstream, which plays scenario `agent-shell`: turn 1 reasons and
# calls Cline's shell tool `run_commands` to write WORKDIR/cline-marker.txt, turn 2 (the
# tool's output sent back) answers with what the command printed and whether the turn-1
# reasoning came back in the request. Cline runs headless in its default act mode (tools
# auto-approved; 25 tools; the run ends on an answer with no tool call), not --yolo: --yolo
# adds a "[SYSTEM] … call submit_and_exit" user message after the prompt, from the first
# request on, and ends only when the model calls submit_and_exit, which the mock does not.
#
# It runs with a throwaway HOME (Cline keeps everything in ~/.cline), talking to 127.0.0.1
# only: no telemetry (telemetryOptOut in its global settings, else it sends OpenTelemetry to
# otel.cline.bot), no PostHog feature flags (E2E_TEST=true is its only switch, else it asks
# data.cline.bot), no auto-update, and any other HTTP goes to a dead loopback proxy.
#
# Cline ignores SIGTERM: its process group is killed with SIGKILL. It also starts a hub
# daemon (`cline --cline-hub-daemon --cwd WORKDIR …`) in a session of its own that outlives
# it: that is killed too, found by the run tag in its environment or by its --cwd. The hub
# listens on CLINE_HUB_PORT, a free port chosen here, so that a hub the user runs on Cline's
# default port is neither used nor disturbed.
#
# Cline is installed pinned into ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/cline-VERSION
# the first time (npm, about 35 s and 435 MB: a native binary) and reused after that.
#
# Environment: CLINE_VERSION (default below), CLINE_TIMEOUT (seconds, default 180),
# CLINE_MODEL (default gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default a dummy).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLINE_VERSION=${CLINE_VERSION:-3.0.65}
timeout_s=${CLINE_TIMEOUT:-180}
model=${CLINE_MODEL:-gpt-oss-20b}

agent_setup cline Cline http://127.0.0.1:8001/v1 "$@"
# Beyond the process group and the run tag (the hub daemon inherits the environment, so the
# tag finds it): any hub daemon serving WORKDIR. Run by every cleanup (lib.sh).
agent_kill_extra() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    if tr '\0' '\n' 2>/dev/null < "$f" | grep -qx -- "--cline-hub-daemon" \
        && tr '\0' '\n' 2>/dev/null < "$f" | grep -A1 -x -- "--cwd" | grep -qxF -- "$workdir"; then
      kill -KILL "$pid" 2>/dev/null
    fi
  done
}

# The package's postinstall links the platform's native binary (an optional dependency) to
# bin/.cline: scripts and optional dependencies must not be turned off. It also sets aside
# the hub discovery record of ~/.cline; pointed at a file that does not exist, it leaves the
# user's alone.
agent_install_env=(CLINE_HUB_DISCOVERY_PATH="$tmp/no-hub-record.json")
agent_install_npm cline cline "$CLINE_VERSION" cline --ignore-scripts=false --include=optional

settings=$home/.cline/data/settings
mkdir -p "$settings"
# Read by the CLI and by the hub daemon (which does not get --config: the default ~/.cline).
cat > "$settings/global-settings.json" <<'EOF'
{"telemetryOptOut": true, "autoUpdateEnabled": false}
EOF
hub_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || exit 1

# Beyond lib.sh's clean environment: no auto-update, no PostHog feature flags, the hub's port.
agent_env=(CLINE_NO_AUTO_UPDATE=1 E2E_TEST=true CLINE_HUB_PORT="$hub_port" "${agent_offline_env[@]}")
agent_check_version "$CLINE_VERSION" cline "$agent_bin"

# What `harmony-proxy init --for cline` should print: this command, which writes
# ~/.cline/data/settings/providers.json.
out=$tmp/auth.out err=$tmp/auth.out agent_run 60 "$agent_bin" auth \
  -p openai-compatible -k "${HARMONY_PROXY_API_KEY:-harmony-test-key}" -m "$model" -b "$base_url"
auth_rc=$rc
agent_kill_leftovers
if [ "$auth_rc" -ne 0 ] || ! grep -qF "\"baseUrl\": \"$base_url\"" "$settings/providers.json" 2>/dev/null; then
  echo "FAIL cline: cline auth exited $auth_rc: $(cat "$tmp/auth.out")"
  exit 1
fi

rm -f "$marker"
echo "cline $CLINE_VERSION: act mode in $workdir against $base_url (timeout ${timeout_s}s)"
# Its process group is killed with SIGKILL (it ignores SIGTERM). --json prints one event a
# line, ending with a `run_result`.
agent_run "$timeout_s" "$agent_bin" --json "$prompt"
agent_kill_leftovers

agent_check_exit cline
agent_check_marker "$marker"
# The last `run_result` line: RESULT<TAB>finishReason<TAB>iterations, then the answer.
summary=$(agent_last_object lines "$out" run_result text finishReason iterations)
answer=$(tail -n +2 <<< "$summary")
IFS=$'\t' read -r _ finish iterations <<< "$(head -n 1 <<< "$summary")"
if [ -z "$summary" ]; then agent_fail "no run_result in Cline's output"
elif [ "$finish" = completed ]; then agent_pass "run completed in $iterations iterations"
else agent_fail "run ended: $finish ($iterations iterations)"; fi
agent_check_answer "$answer" "The command printed: marker-written" "reasoning came back: yes"
# stdout holds the whole transcript (reasoning, tool calls, tool output, answer), and
# ~/.cline/data the saved session.
agent_check_no_markup "Cline's output or session" "$out" "$err" "$home/.cline/data"

agent_show_logs() {
  echo "--- cline transcript (stdout, last 20 events but streamed deltas, cut at 400 characters)"
  grep -vF '"type":"content_start","contentType":"reasoning"' "$out" | grep -vF '"type":"content_start","contentType":"text"' | tail -n 20 | cut -c 1-400
  agent_show_stderr
}
agent_finish
