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

CLINE_VERSION=${CLINE_VERSION:-3.0.65}
timeout_s=${CLINE_TIMEOUT:-180}
model=${CLINE_MODEL:-gpt-oss-20b}
prompt="Please use the shell. scenario:agent-shell file:cline-marker.txt"

if [ $# -ne 2 ]; then
  echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like http://127.0.0.1:8001/v1)" >&2
  exit 2
fi
base_url=${1%/}
workdir=$2
case "$base_url" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "PROXY_BASE_URL must be a loopback http URL (Cline stays off the network): $base_url" >&2
     exit 2 ;;
esac
mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2

cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}/cline-$CLINE_VERSION
cline=$cache/node_modules/.bin/cline

tmp=$(mktemp -d)
run_tag="cline-$$-$RANDOM$RANDOM"
leader=
staging=
# Whatever this run left: its process group, anything carrying its tag (the hub daemon
# inherits the environment), any hub daemon serving WORKDIR.
kill_leftovers() {
  if [ -n "$leader" ]; then kill -KILL -- "-$leader" 2>/dev/null; fi
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    if tr '\0' '\n' 2>/dev/null < "$f" | grep -qx "HARMONY_AGENT_RUN=$run_tag"; then
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    if tr '\0' '\n' 2>/dev/null < "$f" | grep -qx -- "--cline-hub-daemon" \
        && tr '\0' '\n' 2>/dev/null < "$f" | grep -A1 -x -- "--cwd" | grep -qxF -- "$workdir"; then
      kill -KILL "$pid" 2>/dev/null
    fi
  done
}
cleanup() {
  kill_leftovers
  rm -rf "$tmp" ${staging:+"$staging"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM

installed_version() {
  node -p "require('$cache/node_modules/cline/package.json').version" 2>/dev/null
}

# Install pinned, unless the cache already holds this version. npm writes into a fresh
# directory that is renamed into place, so two jobs sharing the cache do not collide. The
# package's postinstall links the platform's native binary (an optional dependency) to
# bin/.cline: scripts and optional dependencies must not be turned off. It also sets aside
# the hub discovery record of ~/.cline; pointed at a file that does not exist, it leaves the
# user's alone.
if [ "$(installed_version)" != "$CLINE_VERSION" ] || [ ! -x "$cline" ]; then
  echo "installing cline@$CLINE_VERSION into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! CLINE_HUB_DISCOVERY_PATH="$staging/no-hub-record.json" npm install --prefix "$staging" \
      --save-exact --no-audit --no-fund --loglevel=error --ignore-scripts=false --include=optional \
      "cline@$CLINE_VERSION"; then
    rm -rf "$staging"
    echo "FAIL cline: npm install cline@$CLINE_VERSION"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
fi

home=$tmp/home
settings=$home/.cline/data/settings
mkdir -p "$settings"
# Read by the CLI and by the hub daemon (which does not get --config: the default ~/.cline).
cat > "$settings/global-settings.json" <<'EOF'
{"telemetryOptOut": true, "autoUpdateEnabled": false}
EOF
hub_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || exit 1

dead_proxy=http://127.0.0.1:9
loopback="127.0.0.1,localhost,::1"
# A clean environment: only what Cline needs, no provider settings from the caller's
# environment.
run_env=(env -i
  PATH="$PATH" HOME="$home" USER="${USER:-ci}" SHELL=/bin/bash
  LANG=C.UTF-8 TERM=dumb NO_COLOR=1
  CLINE_NO_AUTO_UPDATE=1 E2E_TEST=true CLINE_HUB_PORT="$hub_port"
  HTTP_PROXY="$dead_proxy" HTTPS_PROXY="$dead_proxy" http_proxy="$dead_proxy" https_proxy="$dead_proxy"
  NO_PROXY="$loopback" no_proxy="$loopback"
  HARMONY_AGENT_RUN="$run_tag")

version_out=$("${run_env[@]}" "$cline" --version 2> "$tmp/version.err" < /dev/null)
if [ "$version_out" != "$CLINE_VERSION" ]; then
  echo "FAIL cline: cline --version printed: $version_out $(cat "$tmp/version.err")"
  exit 1
fi

# What `harmony-proxy init --for cline` should print: this command, which writes
# ~/.cline/data/settings/providers.json.
(cd "$workdir" && exec setsid timeout -s KILL 60 "${run_env[@]}" "$cline" auth \
    -p openai-compatible -k "${HARMONY_PROXY_API_KEY:-harmony-test-key}" -m "$model" -b "$base_url" \
    > "$tmp/auth.out" 2>&1 < /dev/null) &
leader=$!
wait "$leader"
auth_rc=$?
kill_leftovers
leader=
if [ "$auth_rc" -ne 0 ] || ! grep -qF "\"baseUrl\": \"$base_url\"" "$settings/providers.json" 2>/dev/null; then
  echo "FAIL cline: cline auth exited $auth_rc: $(cat "$tmp/auth.out")"
  exit 1
fi

out=$tmp/stdout; err=$tmp/stderr
rm -f "$workdir/cline-marker.txt"
echo "cline $CLINE_VERSION: act mode in $workdir against $base_url (timeout ${timeout_s}s)"
# setsid: Cline leads a session and process group of its own, killed whole with SIGKILL
# (it ignores SIGTERM). --json prints one event a line, ending with a `run_result`.
(cd "$workdir" && exec setsid timeout -s KILL "$timeout_s" "${run_env[@]}" "$cline" \
    --json "$prompt" \
    > "$out" 2> "$err" < /dev/null) &
leader=$!
wait "$leader"
rc=$?
kill_leftovers
leader=

failures=0
pass() { echo "PASS cline: $1"; }
fail() { echo "FAIL cline: $1"; failures=$((failures + 1)); }

if [ "$rc" -eq 0 ]; then pass "cline exited 0"
elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then fail "cline killed after ${timeout_s}s"
else fail "cline exited $rc"; fi

marker=$workdir/cline-marker.txt
if grep -q "harmony-proxy-was-here" "$marker" 2>/dev/null; then
  pass "the shell tool ran: cline-marker.txt holds harmony-proxy-was-here"
else
  if [ -e "$marker" ]; then fail "cline-marker.txt lacks harmony-proxy-was-here: $(head -c 200 "$marker")"
  else fail "cline-marker.txt was not written"; fi
fi

# The last `run_result` line: RESULT<TAB>finishReason<TAB>iterations, then the answer.
summary=$(node -e '
  const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
  let r = null;
  for (const l of lines) { try { const o = JSON.parse(l); if (o.type === "run_result") r = o; } catch {} }
  if (!r) process.exit(1);
  console.log(["RESULT", r.finishReason, r.iterations].join("\t"));
  console.log(typeof r.text === "string" ? r.text : JSON.stringify(r.text));
' "$out" 2>/dev/null)
answer=$(tail -n +2 <<< "$summary")
IFS=$'\t' read -r _ finish iterations <<< "$(head -n 1 <<< "$summary")"
if [ -z "$summary" ]; then fail "no run_result in Cline's output"
elif [ "$finish" = completed ]; then pass "run completed in $iterations iterations"
else fail "run ended: $finish ($iterations iterations)"; fi

for want in "The command printed: marker-written" "reasoning came back: yes"; do
  if grep -qF -- "$want" <<< "$answer"; then pass "final answer contains \"$want\""
  else fail "final answer lacks \"$want\""; fi
done

# stdout holds the whole transcript (reasoning, tool calls, tool output, answer), and
# ~/.cline/data the saved session.
if grep -rqF '<|' "$out" "$err" "$home/.cline/data" 2>/dev/null; then
  fail "harmony markup (<|) in Cline's output or session: $(grep -rhF -- '<|' "$out" "$err" "$home/.cline/data" 2>/dev/null | head -n 3 | cut -c 1-200)"
else
  pass "no harmony markup (<|) in Cline's output or session"
fi

echo "cline final answer: ${answer:-<none>}"
if [ "$failures" -ne 0 ]; then
  echo "--- cline transcript (stdout, last 20 events but streamed deltas, cut at 400 characters)"
  grep -vF '"type":"content_start","contentType":"reasoning"' "$out" | grep -vF '"type":"content_start","contentType":"text"' | tail -n 20 | cut -c 1-400
  echo "--- cline stderr (last 40 lines)"
  tail -n 40 "$err"
  echo "---"
  echo "FAIL cline: $failures check(s) failed"
  exit 1
fi
echo "PASS cline: all checks"
