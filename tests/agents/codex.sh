#!/usr/bin/env bash
# Codex CLI (npm @openai/codex, the real binary) against the proxy's POST /v1/responses.
#
#   tests/agents/codex.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/codex.sh http://127.0.0.1:8001/v1 "$(mktemp -d)"
#
# The proxy must answer model gpt-oss-20b from its mock upstream, which plays scenario
# `agent-shell`: turn 1 reasons and calls Codex's shell tool to write WORKDIR/codex-marker.txt,
# turn 2 (the tool's output sent back) answers with what the command printed and whether the
# turn-1 reasoning came back in the request. Codex runs headless (`codex exec`), with a
# throwaway HOME and CODEX_HOME, talking to 127.0.0.1 only: no login, no update check, no
# analytics, no plugin sync, no web search (each of these otherwise reaches the network).
#
# Codex is installed pinned into ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/codex-VERSION
# the first time (npm, about 15 s and 430 MB) and reused after that.
#
# Without the proxy (to check this script, or a new Codex version, on its own):
#   python3 tests/agents/stub_responses.py --port 0   # prints its base URL
#   tests/agents/codex.sh http://127.0.0.1:PORT/v1 "$(mktemp -d)"
#
# Environment: CODEX_VERSION (default below), CODEX_TIMEOUT (seconds, default 180),
# CODEX_MODEL (default gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default a dummy).
set -uo pipefail

CODEX_VERSION=${CODEX_VERSION:-0.171.0}
timeout_s=${CODEX_TIMEOUT:-180}
model=${CODEX_MODEL:-gpt-oss-20b}
prompt="Please use the shell. scenario:agent-shell file:codex-marker.txt"

if [ $# -ne 2 ]; then
  echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like http://127.0.0.1:8001/v1)" >&2
  exit 2
fi
base_url=${1%/}
workdir=$2
case "$base_url" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "PROXY_BASE_URL must be a loopback http URL (Codex stays off the network): $base_url" >&2
     exit 2 ;;
esac
mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2

cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}/codex-$CODEX_VERSION
codex=$cache/node_modules/.bin/codex

tmp=$(mktemp -d)
run_tag="codex-$$-$RANDOM$RANDOM"
leader=
staging=
cleanup() {
  # Codex runs as the leader of its own session and process group: kill the group, then
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
  node -p "require('$cache/node_modules/@openai/codex/package.json').version" 2>/dev/null
}

# Install pinned, unless the cache already holds this version. npm writes into a fresh
# directory that is renamed into place, so two jobs sharing the cache do not collide.
if [ "$(installed_version)" != "$CODEX_VERSION" ] || [ ! -x "$codex" ]; then
  echo "installing @openai/codex@$CODEX_VERSION into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! npm install --prefix "$staging" --save-exact --no-audit --no-fund --loglevel=error \
      "@openai/codex@$CODEX_VERSION"; then
    rm -rf "$staging"
    echo "FAIL codex: npm install @openai/codex@$CODEX_VERSION"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
fi

home=$tmp/home
codex_home=$tmp/codex-home
mkdir -p "$home" "$codex_home"
cat > "$codex_home/config.toml" <<EOF
model = "$model"
model_provider = "harmony"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false
web_search = "disabled"
# Prints the model's reasoning in the transcript on stderr (checked for markup below).
show_raw_agent_reasoning = true

[model_providers.harmony]
name = "harmony-proxy"
base_url = "$base_url"
wire_api = "responses"
env_key = "HARMONY_PROXY_API_KEY"
# Fail on the first broken request or stream instead of retrying: a retried stream re-runs
# the tool calls it already streamed and would hide a proxy bug.
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 60000

[analytics]
enabled = false

[feedback]
enabled = false

[history]
persistence = "none"

[otel]
exporter = "none"

[features]
# Otherwise it runs git ls-remote on github.com/openai/plugins.git at start.
plugins = false
remote_plugin = false
apps = false
EOF

# A clean environment: only what Codex needs, no proxies, no OpenAI/Codex settings from the
# caller's environment.
run_env=(env -i
  PATH="$PATH" HOME="$home" CODEX_HOME="$codex_home" USER="${USER:-ci}" SHELL=/bin/bash
  LANG=C.UTF-8 TERM=dumb NO_COLOR=1 NO_PROXY="127.0.0.1,localhost,::1" no_proxy="127.0.0.1,localhost,::1"
  HARMONY_PROXY_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  HARMONY_AGENT_RUN="$run_tag")

version_out=$("${run_env[@]}" "$codex" --version 2> "$tmp/version.err")
if [ "$version_out" != "codex-cli $CODEX_VERSION" ]; then
  echo "FAIL codex: codex --version printed: $version_out $(cat "$tmp/version.err")"
  exit 1
fi

out=$tmp/stdout; err=$tmp/stderr; last=$tmp/last-message
rm -f "$workdir/codex-marker.txt"
echo "codex $CODEX_VERSION: exec in $workdir against $base_url (timeout ${timeout_s}s)"
# setsid: Codex leads a session and process group of its own, killed whole on exit (trap).
(cd "$workdir" && exec setsid timeout -s KILL "$timeout_s" "${run_env[@]}" "$codex" exec \
    --strict-config --skip-git-repo-check --color never -C "$workdir" -o "$last" "$prompt" \
    > "$out" 2> "$err" < /dev/null) &
leader=$!
wait "$leader"
rc=$?
kill -KILL -- "-$leader" 2>/dev/null
leader=

failures=0
pass() { echo "PASS codex: $1"; }
fail() { echo "FAIL codex: $1"; failures=$((failures + 1)); }

if [ "$rc" -eq 0 ]; then pass "codex exec exited 0"
elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then fail "codex exec killed after ${timeout_s}s"
else fail "codex exec exited $rc"; fi

marker=$workdir/codex-marker.txt
if grep -q "harmony-proxy-was-here" "$marker" 2>/dev/null; then
  pass "the shell tool ran: codex-marker.txt holds harmony-proxy-was-here"
else
  if [ -e "$marker" ]; then fail "codex-marker.txt lacks harmony-proxy-was-here: $(head -c 200 "$marker")"
  else fail "codex-marker.txt was not written"; fi
fi

# stdout holds only the final answer; -o writes the same message to a file.
answer=$(cat "$out")
[ -n "$answer" ] || answer=$(cat "$last" 2>/dev/null)
for want in "The command printed: marker-written" "reasoning came back: yes"; do
  if grep -qF -- "$want" <<< "$answer"; then pass "final answer contains \"$want\""
  else fail "final answer lacks \"$want\""; fi
done

if grep -qF '<|' "$out" "$err" "$last" 2>/dev/null; then
  fail "harmony markup (<|) in Codex's output: $(grep -hF '<|' "$out" "$err" "$last" 2>/dev/null | head -n 3)"
else
  pass "no harmony markup (<|) in Codex's output"
fi

echo "codex final answer: ${answer:-<none>}"
if [ "$failures" -ne 0 ]; then
  echo "--- codex stderr (last 40 lines)"
  tail -n 40 "$err"
  echo "---"
  echo "FAIL codex: $failures check(s) failed"
  exit 1
fi
echo "PASS codex: all checks"
