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

OPENCODE_VERSION=${OPENCODE_VERSION:-1.18.33}
timeout_s=${OPENCODE_TIMEOUT:-180}
model=${OPENCODE_MODEL:-gpt-oss-20b}
prompt="Please use the shell. scenario:agent-shell file:opencode-marker.txt"

if [ $# -ne 2 ]; then
  echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like http://127.0.0.1:8001/v1)" >&2
  exit 2
fi
base_url=${1%/}
workdir=$2
case "$base_url" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "PROXY_BASE_URL must be a loopback http URL (OpenCode stays off the network): $base_url" >&2
     exit 2 ;;
esac
mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2

cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}/opencode-$OPENCODE_VERSION
opencode=$cache/node_modules/.bin/opencode

tmp=$(mktemp -d)
run_tag="opencode-$$-$RANDOM$RANDOM"
leader=
staging=
cleanup() {
  # OpenCode runs as the leader of its own session and process group: kill the group, then
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
  node -p "require('$cache/node_modules/opencode-ai/package.json').version" 2>/dev/null
}

# Install pinned, unless the cache already holds this version. npm writes into a fresh
# directory that is renamed into place, so two jobs sharing the cache do not collide. The
# package's postinstall links the platform's native binary (an optional dependency) over
# bin/opencode.exe: scripts and optional dependencies must not be turned off.
if [ "$(installed_version)" != "$OPENCODE_VERSION" ] || [ ! -x "$opencode" ]; then
  echo "installing opencode-ai@$OPENCODE_VERSION into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! npm install --prefix "$staging" --save-exact --no-audit --no-fund --loglevel=error \
      --ignore-scripts=false --include=optional "opencode-ai@$OPENCODE_VERSION"; then
    rm -rf "$staging"
    echo "FAIL opencode: npm install opencode-ai@$OPENCODE_VERSION"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
fi

home=$tmp/home
mkdir -p "$home"
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

dead_proxy=http://127.0.0.1:9
loopback="127.0.0.1,localhost,::1"
# A clean environment: only what OpenCode needs, no OpenAI/OpenCode settings from the caller's
# environment. OpenCode finds its project from $PWD, not from the process's directory: PWD is
# set to WORKDIR.
run_env=(env -i
  PATH="$PATH" HOME="$home" PWD="$workdir" USER="${USER:-ci}" SHELL=/bin/bash
  LANG=C.UTF-8 TERM=dumb NO_COLOR=1
  HARMONY_PROXY_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  # Off the network: no models.dev catalogue, no update check, no sharing, no LSP downloads.
  OPENCODE_DISABLE_MODELS_FETCH=1 OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_SHARE=1
  OPENCODE_DISABLE_LSP_DOWNLOAD=1
  # Anything that still tries HTTP(S) elsewhere (the npm registry, above) goes to a loopback
  # port where nothing listens. OpenCode (Bun's fetch) honours NO_PROXY.
  HTTP_PROXY="$dead_proxy" HTTPS_PROXY="$dead_proxy" http_proxy="$dead_proxy" https_proxy="$dead_proxy"
  NO_PROXY="$loopback" no_proxy="$loopback"
  HARMONY_AGENT_RUN="$run_tag")

version_out=$("${run_env[@]}" "$opencode" --version 2> "$tmp/version.err")
if [ "$version_out" != "$OPENCODE_VERSION" ]; then
  echo "FAIL opencode: opencode --version printed: $version_out $(cat "$tmp/version.err")"
  exit 1
fi

out=$tmp/stdout; err=$tmp/stderr
rm -f "$workdir/opencode-marker.txt"
echo "opencode $OPENCODE_VERSION: run in $workdir against $base_url (timeout ${timeout_s}s)"
# setsid: OpenCode leads a session and process group of its own, killed whole on exit (trap).
# --format json prints one event a line (reasoning with --thinking, tool_use, text,
# step_finish, error); --print-logs puts its log on stderr (warnings and errors).
(cd "$workdir" && exec setsid timeout -s KILL "$timeout_s" "${run_env[@]}" "$opencode" run \
    --format json --thinking --print-logs --log-level WARN -m "harmony/$model" "$prompt" \
    > "$out" 2> "$err" < /dev/null) &
leader=$!
wait "$leader"
rc=$?
kill -KILL -- "-$leader" 2>/dev/null
leader=

failures=0
pass() { echo "PASS opencode: $1"; }
fail() { echo "FAIL opencode: $1"; failures=$((failures + 1)); }

if [ "$rc" -eq 0 ]; then pass "opencode run exited 0"
elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then fail "opencode run killed after ${timeout_s}s"
else fail "opencode run exited $rc"; fi

marker=$workdir/opencode-marker.txt
if grep -q "harmony-proxy-was-here" "$marker" 2>/dev/null; then
  pass "the shell tool ran: opencode-marker.txt holds harmony-proxy-was-here"
else
  if [ -e "$marker" ]; then fail "opencode-marker.txt lacks harmony-proxy-was-here: $(head -c 200 "$marker")"
  else fail "opencode-marker.txt was not written"; fi
fi

# The events: SUMMARY<TAB>errors<TAB>bash calls<TAB>last step_finish reason, then the text of
# the last step (the final answer).
summary=$(node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
  let errors = [], calls = 0, reason = "", text = [];
  for (const l of lines) {
    let e; try { e = JSON.parse(l); } catch { continue; }
    const p = e.part || {};
    if (e.type === "error") errors.push(JSON.stringify(e.error).slice(0, 200));
    else if (e.type === "step_start") text = [];
    else if (e.type === "tool_use" && p.tool === "bash") calls++;
    else if (e.type === "text") text.push(p.text || "");
    else if (e.type === "step_finish") reason = p.reason || "";
  }
  console.log(["SUMMARY", errors.join(" | ") || "-", calls, reason || "-"].join("\t"));
  console.log(text.join(""));
' "$out" 2>/dev/null)
answer=$(tail -n +2 <<< "$summary")
IFS=$'\t' read -r _ errors calls reason <<< "$(head -n 1 <<< "$summary")"
if [ -z "$summary" ]; then fail "no events in OpenCode's output"
else
  if [ "$errors" = - ]; then pass "no error events"; else fail "error events: $errors"; fi
  if [ "$calls" = 1 ]; then pass "one bash tool call"; else fail "$calls bash tool calls (want 1)"; fi
  if [ "$reason" = stop ]; then pass "the last step finished: stop"; else fail "the last step finished: $reason"; fi
fi

for want in "The command printed: marker-written" "reasoning came back: yes"; do
  if grep -qF -- "$want" <<< "$answer"; then pass "final answer contains \"$want\""
  else fail "final answer lacks \"$want\""; fi
done

if grep -qF '<|' "$out" "$err" 2>/dev/null; then
  fail "harmony markup (<|) in OpenCode's output: $(grep -hF '<|' "$out" "$err" | head -n 3 | cut -c 1-200)"
else
  pass "no harmony markup (<|) in OpenCode's output"
fi

echo "opencode final answer: ${answer:-<none>}"
if [ "$failures" -ne 0 ]; then
  echo "--- opencode events (stdout, last 20, cut at 400 characters)"
  tail -n 20 "$out" | cut -c 1-400
  echo "--- opencode stderr (last 40 lines)"
  tail -n 40 "$err"
  echo "---"
  echo "FAIL opencode: $failures check(s) failed"
  exit 1
fi
echo "PASS opencode: all checks"
