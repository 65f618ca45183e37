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
# (send it as Authorization: Bearer instead).
set -uo pipefail

CLAUDE_VERSION=${CLAUDE_VERSION:-2.1.332}
timeout_s=${CLAUDE_TIMEOUT:-180}
model=${CLAUDE_MODEL:-gpt-oss-20b}
prompt="Please use the shell. scenario:agent-shell file:claude-marker.txt"

if [ $# -ne 2 ]; then
  echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like http://127.0.0.1:8001, no /v1)" >&2
  exit 2
fi
base_url=${1%/}
workdir=$2
case "$base_url" in
  */v1) echo "PROXY_BASE_URL must not end in /v1 (Claude Code appends /v1/messages): $base_url" >&2
        exit 2 ;;
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "PROXY_BASE_URL must be a loopback http URL (Claude Code stays off the network): $base_url" >&2
     exit 2 ;;
esac
mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2

cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}/claude-code-$CLAUDE_VERSION
claude=$cache/node_modules/.bin/claude

tmp=$(mktemp -d)
run_tag="claude-$$-$RANDOM$RANDOM"
leader=
staging=
cleanup() {
  # Claude Code runs as the leader of its own session and process group: kill the group, then
  # anything it started in a group of its own (found by the tag in its environment).
  if [ -n "$leader" ]; then kill -KILL -- "-$leader" 2>/dev/null; fi
  local env pid
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    if tr '\0' '\n' 2>/dev/null < "$env" | grep -qx "HARMONY_AGENT_RUN=$run_tag"; then
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  rm -rf "$tmp" ${staging:+"$staging"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM

installed_version() {
  node -p "require('$cache/node_modules/@anthropic-ai/claude-code/package.json').version" 2>/dev/null
}

# Install pinned, unless the cache already holds this version. npm writes into a fresh
# directory that is renamed into place, so two jobs sharing the cache do not collide. The
# package's postinstall copies the platform's native binary over bin/claude.exe (a shell
# stub until then): scripts and optional dependencies must not be turned off.
if [ "$(installed_version)" != "$CLAUDE_VERSION" ] || [ ! -x "$claude" ]; then
  echo "installing @anthropic-ai/claude-code@$CLAUDE_VERSION into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! npm install --prefix "$staging" --save-exact --no-audit --no-fund --loglevel=error \
      --ignore-scripts=false --include=optional "@anthropic-ai/claude-code@$CLAUDE_VERSION"; then
    rm -rf "$staging"
    echo "FAIL claude: npm install @anthropic-ai/claude-code@$CLAUDE_VERSION"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
fi

home=$tmp/home
mkdir -p "$home"
dead_proxy=http://127.0.0.1:9
loopback="127.0.0.1,localhost,::1"
if [ "${CLAUDE_AUTH:-}" = bearer ]; then
  auth=(ANTHROPIC_AUTH_TOKEN="${HARMONY_PROXY_API_KEY:-harmony-test-key}")
else
  auth=(ANTHROPIC_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}")
fi

# A clean environment: only what Claude Code needs, no Anthropic/Claude settings from the
# caller's environment.
run_env=(env -i
  PATH="$PATH" HOME="$home" USER="${USER:-ci}" SHELL=/bin/bash
  LANG=C.UTF-8 TERM=dumb NO_COLOR=1
  ANTHROPIC_BASE_URL="$base_url" "${auth[@]}"
  # Off the network: without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC it looks up
  # api.anthropic.com (and sends HEAD /api/hello to the base URL) at start. Anything that
  # still tries HTTP(S) elsewhere goes to a loopback port where nothing listens.
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1
  DISABLE_ERROR_REPORTING=1
  HTTP_PROXY="$dead_proxy" HTTPS_PROXY="$dead_proxy" http_proxy="$dead_proxy" https_proxy="$dead_proxy"
  NO_PROXY="$loopback" no_proxy="$loopback"
  # Fail on the first broken request or stream instead of hiding it: no retries (else 10,
  # with backoff), no silent fallback to a non-streaming request when a stream breaks.
  CLAUDE_CODE_MAX_RETRIES=0 CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1
  # It does not know gpt-oss-20b and would assume a 1M-token window (and warn on stderr).
  CLAUDE_CODE_MAX_CONTEXT_TOKENS="${CLAUDE_CONTEXT_TOKENS:-131072}"
  HARMONY_AGENT_RUN="$run_tag")

version_out=$("${run_env[@]}" "$claude" --version 2> "$tmp/version.err")
if [ "$version_out" != "$CLAUDE_VERSION (Claude Code)" ]; then
  echo "FAIL claude: claude --version printed: $version_out $(cat "$tmp/version.err")"
  exit 1
fi

out=$tmp/stdout; err=$tmp/stderr
rm -f "$workdir/claude-marker.txt"
echo "claude $CLAUDE_VERSION: -p in $workdir against $base_url (timeout ${timeout_s}s)"
# setsid: Claude Code leads a session and process group of its own, killed whole on exit
# (trap). --allowedTools Bash lets it run the command without asking (as root too, where
# --dangerously-skip-permissions is refused); without it, -p denies the command and still
# exits 0. stream-json (needs --verbose) prints the transcript, one JSON object a line, then
# a `result` object holding the final answer.
(cd "$workdir" && exec setsid timeout -s KILL "$timeout_s" "${run_env[@]}" "$claude" \
    -p "$prompt" --model "$model" --allowedTools Bash --no-session-persistence \
    --output-format stream-json --verbose \
    > "$out" 2> "$err" < /dev/null) &
leader=$!
wait "$leader"
rc=$?
kill -KILL -- "-$leader" 2>/dev/null
leader=

failures=0
pass() { echo "PASS claude: $1"; }
fail() { echo "FAIL claude: $1"; failures=$((failures + 1)); }

if [ "$rc" -eq 0 ]; then pass "claude -p exited 0"
elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then fail "claude -p killed after ${timeout_s}s"
else fail "claude -p exited $rc"; fi

marker=$workdir/claude-marker.txt
if grep -q "harmony-proxy-was-here" "$marker" 2>/dev/null; then
  pass "the shell tool ran: claude-marker.txt holds harmony-proxy-was-here"
else
  if [ -e "$marker" ]; then fail "claude-marker.txt lacks harmony-proxy-was-here: $(head -c 200 "$marker")"
  else fail "claude-marker.txt was not written"; fi
fi

# The last `result` line: RESULT<TAB>is_error<TAB>num_turns, then the answer.
summary=$(node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
  let r = null;
  for (const l of lines) { try { const o = JSON.parse(l); if (o.type === "result") r = o; } catch {} }
  if (!r) process.exit(1);
  console.log(["RESULT", r.is_error, r.num_turns, r.subtype].join("\t"));
  console.log(typeof r.result === "string" ? r.result : JSON.stringify(r.result));
' "$out" 2>/dev/null)
answer=$(tail -n +2 <<< "$summary")
IFS=$'\t' read -r _ is_error num_turns subtype <<< "$(head -n 1 <<< "$summary")"
if [ -z "$summary" ]; then fail "no result object in Claude Code's output"
elif [ "$is_error" = false ]; then pass "result: $subtype, not an error, $num_turns turns"
else fail "result is an error ($subtype, is_error=$is_error, $num_turns turns)"; fi

for want in "The command printed: marker-written" "reasoning came back: yes"; do
  if grep -qF -- "$want" <<< "$answer"; then pass "final answer contains \"$want\""
  else fail "final answer lacks \"$want\""; fi
done

# A stream that ends with no message_delta (no stop_reason) after a text block: Claude Code
# asks the model to resume (up to 3 times), which with the mock loops until the timeout.
if grep -qF 'was cut off mid-stream' "$out" 2>/dev/null; then
  fail "a stream ended without message_delta: Claude Code asked the model to resume"
fi

# stdout holds the whole transcript (thinking, tool calls, tool results, answer).
if grep -qF '<|' "$out" "$err" 2>/dev/null; then
  fail "harmony markup (<|) in Claude Code's output: $(grep -hF '<|' "$out" "$err" | head -n 3 | cut -c 1-200)"
else
  pass "no harmony markup (<|) in Claude Code's output"
fi

echo "claude final answer: ${answer:-<none>}"
if [ "$failures" -ne 0 ]; then
  echo "--- claude transcript (stdout, last 20 messages, cut at 400 characters)"
  grep -vF '"subtype":"thinking_tokens"' "$out" | tail -n 20 | cut -c 1-400
  echo "--- claude stderr (last 40 lines)"
  tail -n 40 "$err"
  echo "---"
  echo "FAIL claude: $failures check(s) failed"
  exit 1
fi
echo "PASS claude: all checks"
