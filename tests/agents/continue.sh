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

CONTINUE_VERSION=${CONTINUE_VERSION:-1.5.47}
timeout_s=${CONTINUE_TIMEOUT:-180}
model=${CONTINUE_MODEL:-gpt-oss-20b}
prompt="Please use the shell. scenario:agent-shell file:continue-marker.txt"

if [ $# -ne 2 ]; then
  echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like http://127.0.0.1:8001/v1)" >&2
  exit 2
fi
base_url=${1%/}
workdir=$2
case "$base_url" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "PROXY_BASE_URL must be a loopback http URL (Continue stays off the network): $base_url" >&2
     exit 2 ;;
esac
mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2

cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}/continue-$CONTINUE_VERSION
cn=$cache/node_modules/.bin/cn

tmp=$(mktemp -d)
run_tag="continue-$$-$RANDOM$RANDOM"
leader=
staging=
cleanup() {
  # cn runs as the leader of its own session and process group: kill the group, then
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
  node -p "require('$cache/node_modules/@continuedev/cli/package.json').version" 2>/dev/null
}

# Install pinned, unless the cache already holds this version. npm writes into a fresh
# directory that is renamed into place, so two jobs sharing the cache do not collide.
if [ "$(installed_version)" != "$CONTINUE_VERSION" ] || [ ! -x "$cn" ]; then
  echo "installing @continuedev/cli@$CONTINUE_VERSION into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! npm install --prefix "$staging" --save-exact --no-audit --no-fund --loglevel=error \
      "@continuedev/cli@$CONTINUE_VERSION"; then
    rm -rf "$staging"
    echo "FAIL continue: npm install @continuedev/cli@$CONTINUE_VERSION"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
fi

home=$tmp/home
mkdir -p "$home"
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

dead_proxy=http://127.0.0.1:9
loopback="127.0.0.1,localhost,::1"
# A clean environment: only what cn needs, no OpenAI/Continue settings from the caller's
# environment.
run_env=(env -i
  PATH="$PATH" HOME="$home" USER="${USER:-ci}" SHELL=/bin/bash
  LANG=C.UTF-8 TERM=dumb NO_COLOR=1 FORCE_COLOR=0
  CONTINUE_GLOBAL_DIR="$home/.continue"
  # Off the network: no OpenTelemetry metrics, no version check (see offline.cjs).
  CONTINUE_CLI_ENABLE_TELEMETRY=0 CONTINUE_METRICS_ENABLED=0
  NODE_OPTIONS="--require $offline"
  HTTP_PROXY="$dead_proxy" HTTPS_PROXY="$dead_proxy" http_proxy="$dead_proxy" https_proxy="$dead_proxy"
  NO_PROXY="$loopback" no_proxy="$loopback"
  HARMONY_AGENT_RUN="$run_tag")

version_out=$("${run_env[@]}" "$cn" --version 2> "$tmp/version.err")
if [ "$version_out" != "$CONTINUE_VERSION" ]; then
  echo "FAIL continue: cn --version printed: $version_out $(cat "$tmp/version.err")"
  exit 1
fi

out=$tmp/stdout; err=$tmp/stderr
rm -f "$workdir/continue-marker.txt"
echo "continue $CONTINUE_VERSION: cn -p in $workdir against $base_url (timeout ${timeout_s}s)"
# setsid: cn leads a session and process group of its own, killed whole on exit (trap).
# --auto allows every tool (Bash included) without asking; -p prints the final answer.
(cd "$workdir" && exec setsid timeout -s KILL "$timeout_s" "${run_env[@]}" "$cn" \
    --config "$config" --auto -p "$prompt" \
    > "$out" 2> "$err" < /dev/null) &
leader=$!
wait "$leader"
rc=$?
kill -KILL -- "-$leader" 2>/dev/null
leader=

failures=0
pass() { echo "PASS continue: $1"; }
fail() { echo "FAIL continue: $1"; failures=$((failures + 1)); }

if [ "$rc" -eq 0 ]; then pass "cn -p exited 0"
elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then fail "cn -p killed after ${timeout_s}s"
else fail "cn -p exited $rc"; fi

marker=$workdir/continue-marker.txt
if grep -q "harmony-proxy-was-here" "$marker" 2>/dev/null; then
  pass "the shell tool ran: continue-marker.txt holds harmony-proxy-was-here"
else
  if [ -e "$marker" ]; then fail "continue-marker.txt lacks harmony-proxy-was-here: $(head -c 200 "$marker")"
  else fail "continue-marker.txt was not written"; fi
fi

# stdout holds only the final answer.
answer=$(cat "$out")
for want in "The command printed: marker-written" "reasoning came back: yes"; do
  if grep -qF -- "$want" <<< "$answer"; then pass "final answer contains \"$want\""
  else fail "final answer lacks \"$want\""; fi
done

# The session file holds the whole transcript (reasoning, tool call, tool output, answer).
sessions=$home/.continue/sessions
if grep -rqF '<|' "$out" "$err" "$sessions" 2>/dev/null; then
  fail "harmony markup (<|) in Continue's output or session: $(grep -rhF -- '<|' "$out" "$err" "$sessions" 2>/dev/null | head -n 3 | cut -c 1-200)"
else
  pass "no harmony markup (<|) in Continue's output or session"
fi

echo "continue final answer: ${answer:-<none>}"
if [ "$failures" -ne 0 ]; then
  echo "--- continue stderr (last 40 lines)"
  tail -n 40 "$err"
  echo "--- continue log (last 20 lines)"
  tail -n 20 "$home/.continue/logs/cn.log" 2>/dev/null | cut -c 1-400
  echo "---"
  echo "FAIL continue: $failures check(s) failed"
  exit 1
fi
echo "PASS continue: all checks"
