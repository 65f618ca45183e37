#!/usr/bin/env bash
# The SDK conformance suite: the official OpenAI Python and Node SDKs, the OpenAI Agents SDK
# and the official Anthropic Python SDK against the built proxy and its built-in mock
# upstream. Needs `pip install -r requirements.txt` and `npm ci` here first (.ci/run does
# both).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${HARMONY_PROXY_BIN:-$root/target/debug/harmony-proxy}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts "$@" in the background as NAME. Not inside $(…): a process started in a command
# substitution belongs to a subshell, its pid never reaches `pids`, and the trap above could
# not stop it (the suite used to leave its mock and proxy running).
start() {
  local name=$1; shift
  "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
}

# Prints the URL from NAME's "listening on" line once it is there.
url_of() {
  local out="$work/$1.out"
  for _ in $(seq 1 300); do
    if grep -q " listening on " "$out" 2>/dev/null; then
      sed -n 's/.* listening on \(http[^ ]*\).*/\1/p' "$out" | head -n1
      return 0
    fi
    sleep 0.1
  done
  echo "did not start: $1" >&2; cat "$work/$1.err" >&2; return 1
}

start mock "$bin" mock-upstream --port 0
MOCK_URL=$(url_of mock)
export MOCK_URL
start proxy "$bin" serve --config "$here/proxy.toml" --port 0
PROXY_URL=$(url_of proxy)
export PROXY_URL
echo "conformance: proxy $PROXY_URL, mock $MOCK_URL"

status=0
echo "== OpenAI Python SDK (chat completions, responses), OpenAI Agents SDK, Anthropic Python SDK (messages)"
python3 -m pytest -q -p no:cacheprovider "$here/test_openai_python.py" "$here/test_responses_python.py" "$here/test_anthropic_python.py" || status=1
echo "== every answer against the published schemas (tests/schemas/: OpenAI Chat and Responses, Open Responses, Anthropic SDK types)"
python3 -m pytest -q -p no:cacheprovider "$here/test_schemas.py" || status=1
echo "== OpenAI Node SDK (chat completions, responses)"
# One file at a time: the tests share one mock, and some read its last request.
(cd "$here" && node --test --test-concurrency=1 openai_node.test.mjs responses_node.test.mjs) || status=1
exit $status
