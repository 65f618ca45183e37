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

QWEN_VERSION=${QWEN_VERSION:-0.15.10}
timeout_s=${QWEN_TIMEOUT:-180}
model=${QWEN_MODEL:-gpt-oss-20b}
prompt="Please use the shell. scenario:agent-shell file:qwen-marker.txt"

if [ $# -ne 2 ]; then
  echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like http://127.0.0.1:8001/v1)" >&2
  exit 2
fi
base_url=${1%/}
workdir=$2
case "$base_url" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "PROXY_BASE_URL must be a loopback http URL (Qwen Code stays off the network): $base_url" >&2
     exit 2 ;;
esac
mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2

cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}/qwen-code-$QWEN_VERSION
qwen=$cache/node_modules/.bin/qwen

tmp=$(mktemp -d)
run_tag="qwen-$$-$RANDOM$RANDOM"
leader=
staging=
cleanup() {
  # Qwen Code runs as the leader of its own session and process group: kill the group, then
  # anything it started in a group of its own (its shell tool runs commands in new process
  # groups; found by the tag in their environment).
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
  node -p "require('$cache/node_modules/@qwen-code/qwen-code/package.json').version" 2>/dev/null
}

# Install pinned, unless the cache already holds this version. npm writes into a fresh
# directory that is renamed into place, so two jobs sharing the cache do not collide.
if [ "$(installed_version)" != "$QWEN_VERSION" ] || [ ! -x "$qwen" ]; then
  echo "installing @qwen-code/qwen-code@$QWEN_VERSION into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! npm install --prefix "$staging" --save-exact --no-audit --no-fund --loglevel=error \
      "@qwen-code/qwen-code@$QWEN_VERSION"; then
    rm -rf "$staging"
    echo "FAIL qwen: npm install @qwen-code/qwen-code@$QWEN_VERSION"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
fi

home=$tmp/home
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

# A clean environment: only what Qwen Code needs, no OpenAI/Qwen settings from the caller's
# environment.
run_env=(env -i
  PATH="$PATH" HOME="$home" USER="${USER:-ci}" SHELL=/bin/bash
  LANG=C.UTF-8 TERM=dumb NO_COLOR=1
  HARMONY_PROXY_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  # It would otherwise open a connection to the API at start ("preconnect"), before any request.
  QWEN_CODE_DISABLE_PRECONNECT=1
  # No HTTP(S)_PROXY (unlike claude.sh's dead loopback proxy): Qwen Code sends every request,
  # the loopback API's too, through it, NO_PROXY notwithstanding ("Connection error. (cause:
  # fetch failed)"). With the settings above it connects to nothing but the API (checked
  # with strace -f: one connect(), to the proxy's port).
  HARMONY_AGENT_RUN="$run_tag")

version_out=$("${run_env[@]}" "$qwen" --version 2> "$tmp/version.err")
if [ "$version_out" != "$QWEN_VERSION" ]; then
  echo "FAIL qwen: qwen --version printed: $version_out $(cat "$tmp/version.err")"
  exit 1
fi

out=$tmp/stdout; err=$tmp/stderr
rm -f "$workdir/qwen-marker.txt"
echo "qwen $QWEN_VERSION: headless in $workdir against $base_url (timeout ${timeout_s}s)"
# setsid: Qwen Code leads a session and process group of its own, killed whole on exit
# (trap). The prompt is positional (-p is deprecated); stdin must not be a terminal or a pipe
# left open (it reads stdin as more prompt).
(cd "$workdir" && exec setsid timeout -s KILL "$timeout_s" "${run_env[@]}" "$qwen" \
    --yolo --output-format json --chat-recording false "$prompt" \
    > "$out" 2> "$err" < /dev/null) &
leader=$!
wait "$leader"
rc=$?
kill -KILL -- "-$leader" 2>/dev/null
leader=

failures=0
pass() { echo "PASS qwen: $1"; }
fail() { echo "FAIL qwen: $1"; failures=$((failures + 1)); }

if [ "$rc" -eq 0 ]; then pass "qwen exited 0"
elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then fail "qwen killed after ${timeout_s}s"
else fail "qwen exited $rc"; fi

marker=$workdir/qwen-marker.txt
if grep -q "harmony-proxy-was-here" "$marker" 2>/dev/null; then
  pass "the shell tool ran: qwen-marker.txt holds harmony-proxy-was-here"
else
  if [ -e "$marker" ]; then fail "qwen-marker.txt lacks harmony-proxy-was-here: $(head -c 200 "$marker")"
  else fail "qwen-marker.txt was not written"; fi
fi

# stdout is one JSON array (the transcript: thinking, tool_use, tool_result, text) ending in a
# `result` object: RESULT<TAB>is_error<TAB>num_turns<TAB>subtype, then the answer.
summary=$(node -e '
  const all = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const r = [].concat(all).filter(o => o && o.type === "result").pop();
  if (!r) process.exit(1);
  console.log(["RESULT", r.is_error, r.num_turns, r.subtype].join("\t"));
  console.log(typeof r.result === "string" ? r.result : JSON.stringify(r.result));
' "$out" 2>/dev/null)
answer=$(tail -n +2 <<< "$summary")
IFS=$'\t' read -r _ is_error num_turns subtype <<< "$(head -n 1 <<< "$summary")"
if [ -z "$summary" ]; then fail "no result object in Qwen Code's output"
elif [ "$is_error" = false ]; then pass "result: $subtype, not an error, $num_turns turns"
else fail "result is an error ($subtype, is_error=$is_error, $num_turns turns)"; fi

for want in "The command printed: marker-written" "reasoning came back: yes"; do
  if grep -qF -- "$want" <<< "$answer"; then pass "final answer contains \"$want\""
  else fail "final answer lacks \"$want\""; fi
done

if grep -qF '<|' "$out" "$err" 2>/dev/null; then
  fail "harmony markup (<|) in Qwen Code's output: $(grep -hF '<|' "$out" "$err" | head -n 3 | cut -c 1-200)"
else
  pass "no harmony markup (<|) in Qwen Code's output"
fi

echo "qwen final answer: ${answer:-<none>}"
if [ "$failures" -ne 0 ]; then
  echo "--- qwen transcript (stdout, one message a line, cut at 400 characters)"
  node -e '
    for (const o of [].concat(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))))
      console.log(JSON.stringify(o.message ? o.message.content : o).slice(0, 400));
  ' "$out" 2>/dev/null || head -c 3000 "$out"; echo
  echo "--- qwen stderr (last 40 lines)"
  tail -n 40 "$err"
  echo "---"
  echo "FAIL qwen: $failures check(s) failed"
  exit 1
fi
echo "PASS qwen: all checks"
