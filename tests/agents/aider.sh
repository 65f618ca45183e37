#!/usr/bin/env bash
# aider (PyPI aider-chat) against the proxy's POST /v1/chat/completions.
#
#   tests/agents/aider.sh PROXY_BASE_URL WORKDIR
#   e.g. tests/agents/aider.sh http://127.0.0.1:8001/v1 "$(mktemp -d)"
#
# aider declares no tools (it edits files through text formats), so it runs model
# text-gpt-oss-20b, which tests/agents/chat-proxy.toml routes to the `text-tools` pipeline.
# The mock upstream plays scenario `agent-shell`, which with no tool declared answers (after
# an analysis message) "No shell tool was declared.": the check is that aider prints that
# answer clean, with no Harmony markup and no reasoning mixed into it. aider runs headless
# (`--message`, `--yes-always`), with a throwaway HOME and no git, talking to 127.0.0.1 only:
# no update check, no analytics, no model-price list fetched from GitHub (the model's
# metadata is given in a file here, and litellm reads its own bundled copy), and any other
# HTTP goes to a dead loopback proxy.
#
# aider is installed pinned into a virtualenv in
# ${HARMONY_AGENTS_CACHE:-~/.cache/harmony-proxy/agents}/aider-VERSION the first time (pip,
# about 60 s and 690 MB) and reused after that. It runs as `VENV/bin/python -m aider`, which
# works wherever the virtualenv was built (its bin/ scripts name the staging directory).
#
# Environment: AIDER_VERSION (default below), AIDER_PYTHON (the interpreter the virtualenv is
# made from, default python3; aider-chat needs 3.10 to 3.12), AIDER_TIMEOUT (seconds, default
# 180), AIDER_MODEL (default text-gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default
# a dummy).
set -uo pipefail

AIDER_VERSION=${AIDER_VERSION:-0.86.2}
python=${AIDER_PYTHON:-python3}
timeout_s=${AIDER_TIMEOUT:-180}
model=${AIDER_MODEL:-text-gpt-oss-20b}
prompt="Please use the shell. scenario:agent-shell file:aider-marker.txt"
want_answer="No shell tool was declared."

if [ $# -ne 2 ]; then
  echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like http://127.0.0.1:8001/v1)" >&2
  exit 2
fi
base_url=${1%/}
workdir=$2
case "$base_url" in
  http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "PROXY_BASE_URL must be a loopback http URL (aider stays off the network): $base_url" >&2
     exit 2 ;;
esac
mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2

cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}/aider-$AIDER_VERSION
venv_python=$cache/bin/python

tmp=$(mktemp -d)
run_tag="aider-$$-$RANDOM$RANDOM"
leader=
staging=
cleanup() {
  # aider runs as the leader of its own session and process group: kill the group, then
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
  "$venv_python" -c 'import importlib.metadata as m; print(m.version("aider-chat"))' 2>/dev/null
}

# Install pinned, unless the cache already holds this version (and the interpreter its
# virtualenv was made from is still there). pip writes into a fresh virtualenv that is
# renamed into place, so two jobs sharing the cache do not collide.
if [ "$(installed_version)" != "$AIDER_VERSION" ]; then
  echo "installing aider-chat==$AIDER_VERSION into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! "$python" -m venv "$staging" \
      || ! "$staging/bin/python" -m pip install --quiet --disable-pip-version-check \
          --no-input "aider-chat==$AIDER_VERSION"; then
    rm -rf "$staging"
    echo "FAIL aider: pip install aider-chat==$AIDER_VERSION"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
fi

home=$tmp/home
mkdir -p "$home"
# The model's window and (zero) prices: without an entry aider fetches litellm's price list
# from GitHub (and warns about an unknown model).
metadata=$tmp/model-metadata.json
cat > "$metadata" <<EOF
{"openai/$model": {"max_input_tokens": 131072, "max_output_tokens": 32768, "max_tokens": 32768,
  "input_cost_per_token": 0, "output_cost_per_token": 0, "litellm_provider": "openai", "mode": "chat"}}
EOF

dead_proxy=http://127.0.0.1:9
loopback="127.0.0.1,localhost,::1"
# A clean environment: only what aider needs, no OpenAI/aider settings from the caller's
# environment.
run_env=(env -i
  PATH="$PATH" HOME="$home" USER="${USER:-ci}" SHELL=/bin/bash
  LANG=C.UTF-8 TERM=dumb NO_COLOR=1
  OPENAI_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  # litellm otherwise fetches its model-price list from GitHub as it loads.
  LITELLM_LOCAL_MODEL_COST_MAP=True
  HTTP_PROXY="$dead_proxy" HTTPS_PROXY="$dead_proxy" http_proxy="$dead_proxy" https_proxy="$dead_proxy"
  NO_PROXY="$loopback" no_proxy="$loopback"
  HARMONY_AGENT_RUN="$run_tag")

version_out=$("${run_env[@]}" "$venv_python" -m aider --version 2> "$tmp/version.err" < /dev/null)
if [ "${version_out##* }" != "$AIDER_VERSION" ]; then
  echo "FAIL aider: aider --version printed: $version_out $(cat "$tmp/version.err")"
  exit 1
fi

out=$tmp/stdout; err=$tmp/stderr
history=$tmp/chat-history.md
echo "aider $AIDER_VERSION: --message in $workdir against $base_url (timeout ${timeout_s}s)"
# setsid: aider leads a session and process group of its own, killed whole on exit (trap).
# What `harmony-proxy init --for aider` should print: --openai-api-base, --model openai/NAME
# (and OPENAI_API_KEY); the rest keeps the run headless and off the network.
(cd "$workdir" && exec setsid timeout -s KILL "$timeout_s" "${run_env[@]}" "$venv_python" -m aider \
    --openai-api-base "$base_url" --model "openai/$model" --model-metadata-file "$metadata" \
    --message "$prompt" --yes-always --no-git --no-check-update --analytics-disable \
    --no-show-model-warnings --no-show-release-notes --no-pretty --no-fancy-input \
    --no-detect-urls --no-suggest-shell-commands \
    --chat-history-file "$history" --input-history-file "$tmp/input-history" \
    > "$out" 2> "$err" < /dev/null) &
leader=$!
wait "$leader"
rc=$?
kill -KILL -- "-$leader" 2>/dev/null
leader=

failures=0
pass() { echo "PASS aider: $1"; }
fail() { echo "FAIL aider: $1"; failures=$((failures + 1)); }

if [ "$rc" -eq 0 ]; then pass "aider exited 0"
elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then fail "aider killed after ${timeout_s}s"
else fail "aider exited $rc"; fi

# stdout: aider's banner (version, model, repo), a blank line, the answer, the token line.
answer=$(sed -n '/^Repo-map: /,/^Tokens: /p' "$out" | sed '1d;$d' | sed '/^[[:space:]]*$/d')
if [ "$answer" = "$want_answer" ]; then
  pass "the answer printed clean: \"$want_answer\""
elif grep -qF -- "$want_answer" <<< "$answer"; then
  fail "the answer holds \"$want_answer\" among other text: $(head -c 300 <<< "$answer")"
else
  fail "the answer lacks \"$want_answer\""
fi

if grep -qF '<|' "$out" "$err" "$history" 2>/dev/null; then
  fail "harmony markup (<|) in aider's output or chat history: $(grep -hF -- '<|' "$out" "$err" "$history" 2>/dev/null | head -n 3 | cut -c 1-200)"
else
  pass "no harmony markup (<|) in aider's output or chat history"
fi
if grep -qF 'No shell tool among the declared tools' <<< "$answer"; then
  fail "the reasoning leaked into the answer"
else
  pass "no reasoning in the answer"
fi

echo "aider answer: ${answer:-<none>}"
if [ "$failures" -ne 0 ]; then
  echo "--- aider stdout (last 40 lines)"
  tail -n 40 "$out"
  echo "--- aider stderr (last 40 lines)"
  tail -n 40 "$err"
  echo "---"
  echo "FAIL aider: $failures check(s) failed"
  exit 1
fi
echo "PASS aider: all checks"
