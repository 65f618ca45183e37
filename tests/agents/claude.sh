#!/usr/bin/env bash
# Claude Code (npm @anthropic-ai/claude-code, the real binary) against the proxy's
# POST /v1/messages (Anthropic Messages API).
#
#   tests/agents/claude.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/claude.sh http://127.0.0.1:8001 "$(mktemp -d)"
#
# PROXY_BASE_URL has no /v1: Claude Code appends /v1/messages?beta=true itself.
# The proxy must answer model gpt-oss-20b from its mock upstream, which plays scenario
# `agent-shell`: turn 1 reasons (a `thinking` block) and calls Claude Code's shell tool `Bash`
# to write WORKDIR/claude-marker.txt, turn 2 (the tool_result sent back) answers with what the
# command printed and whether the turn-1 thinking came back in the request. Claude Code runs
# headless (`claude -p`), with a throwaway HOME, talking to 127.0.0.1 only: no login, no
# update check, no telemetry, no error reporting, no api.anthropic.com lookups (each of these
# otherwise reaches the network), and any other HTTP goes to a dead loopback proxy.
#
# Claude Code is installed pinned into
# ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/claude-code-VERSION the first time
# (npm, about 10 s and 385 MB: a native binary, whatever the node version) and reused after that.
#
# Without the proxy (to check this script, or a new Claude Code version, on its own):
#   python3 tests/agents/stub_messages.py --port 0   # prints its base URL
#   tests/agents/claude.sh http://127.0.0.1:PORT "$(mktemp -d)"
#
# Environment: CLAUDE_VERSION (default below), CLAUDE_TIMEOUT (seconds, default 180),
# CLAUDE_MODEL (default gpt-oss-20b), CLAUDE_CONTEXT_TOKENS (the model's window, default
# 131072), HARMONY_PROXY_API_KEY (sent as x-api-key; default a dummy), CLAUDE_AUTH=bearer
# (send it as Authorization: Bearer instead), AGENT_TASK=edit (the marker is written with
# its Write tool; AGENT_TASK=modify: it is read with Read, then changed with Edit;
# AGENT_TASK=overflow: the command's output outgrows the server's context, Claude Code
# compacts on the refusal and answers; AGENT_TASK=subagent: a subagent it starts with its
# Task tool on model haiku runs the command, and it reports), CLAUDE_MINIMAL=1 (of its model settings only ANTHROPIC_MODEL: no --model,
# no context size; its own model names for background work then reach the proxy).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLAUDE_VERSION=${CLAUDE_VERSION:-2.1.332}
timeout_s=${CLAUDE_TIMEOUT:-180}
model=${CLAUDE_MODEL:-gpt-oss-20b}

if [ $# -eq 2 ]; then
  case "${1%/}" in
    */v1) echo "PROXY_BASE_URL must not end in /v1 (Claude Code appends /v1/messages): ${1%/}" >&2
          exit 2 ;;
  esac
fi
agent_setup claude "Claude Code" "http://127.0.0.1:8001, no /v1" "$@"
# The package's postinstall copies the platform's native binary over bin/claude.exe (a shell
# stub until then): scripts and optional dependencies must not be turned off.
agent_install_npm claude-code @anthropic-ai/claude-code "$CLAUDE_VERSION" claude \
  --ignore-scripts=false --include=optional

if [ "${CLAUDE_AUTH:-}" = bearer ]; then
  auth=(ANTHROPIC_AUTH_TOKEN="${HARMONY_PROXY_API_KEY:-harmony-test-key}")
else
  auth=(ANTHROPIC_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}")
fi

# Beyond lib.sh's clean environment: the API and its key.
agent_env=(
  ANTHROPIC_BASE_URL="$base_url" "${auth[@]}"
  # Off the network: without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC it looks up
  # api.anthropic.com (and sends HEAD /api/hello to the base URL) at start. Anything that
  # still tries HTTP(S) elsewhere goes to a loopback port where nothing listens.
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1
  DISABLE_ERROR_REPORTING=1
  "${agent_offline_env[@]}"
  # Fail on the first broken request or stream instead of hiding it: no retries (else 10,
  # with backoff), no silent fallback to a non-streaming request when a stream breaks.
  CLAUDE_CODE_MAX_RETRIES=0 CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1
  )
model_args=(--model "$model")
if [ "${CLAUDE_MINIMAL:-}" = 1 ]; then
  agent_env+=(ANTHROPIC_MODEL="$model")
  model_args=()
else
  # It does not know gpt-oss-20b and would assume a 1M-token window (and warn on stderr).
  agent_env+=(CLAUDE_CODE_MAX_CONTEXT_TOKENS="${CLAUDE_CONTEXT_TOKENS:-131072}")
fi
tools=Bash
[ "$task" = edit ] && tools="Bash Write"
[ "$task" = modify ] && tools="Bash Read Edit"
[ "$task" = subagent ] && tools="Bash Task"
agent_check_version "$CLAUDE_VERSION (Claude Code)" claude "$agent_bin"

rm -f "$marker"
# The file its Edit tool changes (it refuses to edit a file the session has not read).
[ "$task" = modify ] && echo harmony-proxy-placeholder > "$marker"
echo "claude $CLAUDE_VERSION: -p in $workdir against $base_url (timeout ${timeout_s}s)"
# --allowedTools Bash lets it run the command without asking (as root too, where
# --dangerously-skip-permissions is refused); without it, -p denies the command and still
# exits 0. stream-json (needs --verbose) prints the transcript, one JSON object a line, then
# a `result` object holding the final answer.
agent_run "$timeout_s" "$agent_bin" \
  -p "$prompt" ${model_args[@]+"${model_args[@]}"} --allowedTools "$tools" --no-session-persistence \
  --output-format stream-json --verbose

agent_check_exit "claude -p"
agent_check_marker "$marker"
agent_check_result lines "Claude Code"
if [ "$task" = edit ]; then
  agent_check_answer "$answer" "The edit tool answered: File created successfully" "reasoning came back: yes"
elif [ "$task" = modify ]; then
  agent_check_answer "$answer" "The edit tool answered: The file /" "reasoning came back: yes"
  grep -q harmony-proxy-placeholder "$marker" 2>/dev/null && agent_fail "the placeholder is still in $(basename "$marker")"
elif [ "$task" = subagent ]; then
  agent_check_answer "$answer" "The subagent's report came back: yes"
elif [ "$task" = overflow ]; then
  agent_check_answer "$answer" "Done after compaction. The summary came back: yes"
  if grep -qF '"compact_result":"success"' "$out"; then agent_pass "Claude Code compacted its history"
  else agent_fail "Claude Code's transcript shows no successful compaction"; fi
else
  agent_check_answer "$answer" "The command printed: marker-written" "reasoning came back: yes"
fi
# A stream that ends with no message_delta (no stop_reason) after a text block: Claude Code
# asks the model to resume (up to 3 times), which with the mock loops until the timeout.
if grep -qF 'was cut off mid-stream' "$out" 2>/dev/null; then
  agent_fail "a stream ended without message_delta: Claude Code asked the model to resume"
fi
# stdout holds the whole transcript (thinking, tool calls, tool results, answer).
agent_check_no_markup "Claude Code's output" "$out" "$err"

agent_show_logs() {
  echo "--- claude transcript (stdout, last 20 messages, cut at 400 characters)"
  grep -vF '"subtype":"thinking_tokens"' "$out" | tail -n 20 | cut -c 1-400
  agent_show_stderr
}
agent_finish
