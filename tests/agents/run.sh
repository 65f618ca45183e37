#!/usr/bin/env bash
# The agents suite against the built-in mock: the real agent CLIs, installed pinned from
# their registries (cached outside the checkout), each running its own shell tool through
# one proxy started as a new user would (the shipped config, nothing but UPSTREAM_BASE_URL
# set) in front of one mock upstream that plays scenario `agent-shell`.
#
#   bash tests/agents/run.sh              # every agent below
#   bash tests/agents/run.sh codex        # some of them
#   KEEP_WORK=1 bash tests/agents/run.sh claude-edit   # keeps the proxies' and mocks' logs
#
# Each agent's script asserts what its user sees (the command ran, the answer printed clean)
# and what the model got (the command's output and the turn-1 reasoning in turn 2), and kills
# its whole process group and whatever the agent left. Nothing here reaches the network but
# the registries the installs use.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${HARMONY_PROXY_BIN:-$root/target/debug/harmony-proxy}
agents=("$@")
[ ${#agents[@]} -gt 0 ] || agents=(codex claude qwen opencode kilo continue cline aider codex-edit claude-edit claude-modify codex-compact claude-overflow claude-subagent)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

# Started outside $(…) so that the trap can stop them.
start() {
  local name=$1; shift
  "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
}
url_of() {
  for _ in $(seq 1 300); do
    if grep -q " listening on " "$work/$1.out" 2>/dev/null; then
      sed -n 's/.* listening on \(http[^ ]*\).*/\1/p' "$work/$1.out" | head -n1
      return 0
    fi
    sleep 0.1
  done
  echo "did not start: $1" >&2; cat "$work/$1.err" >&2; return 1
}

start mock "$bin" mock-upstream --port 0
mock_url=$(url_of mock) || exit 1
# The embedded default config: no file in this directory.
(cd "$work" && UPSTREAM_BASE_URL="$mock_url" HARMONY_PROXY_CONFIG= exec "$bin" serve --port 0) > "$work/proxy.out" 2> "$work/proxy.err" &
pids+=($!)
proxy_url=$(url_of proxy) || exit 1
# The Chat Completions agents' proxy: ide-tools (text-tools for text-* models).
(cd "$work" && UPSTREAM_BASE_URL="$mock_url" exec "$bin" serve --config "$here/chat-proxy.toml" --port 0) > "$work/chat-proxy.out" 2> "$work/chat-proxy.err" &
pids+=($!)
chat_url=$(url_of chat-proxy) || exit 1
echo "agents: proxy $proxy_url (embedded config: Responses, Messages), $chat_url (chat-proxy.toml: Chat Completions), mock $mock_url"

# Whether AGENT is among the cases to run (the extra servers start only for their cases).
wants() { [[ " ${agents[*]} " == *" $1 "* ]]; }

# Claude Code as a new user sets it up: `init --for claude-code` in front of a server that
# answers to one model name (as vLLM does; any other is a 404), only ANTHROPIC_BASE_URL and
# ANTHROPIC_MODEL set, so its own model names for background work reach the proxy.
if wants claude-edit || wants claude-modify || wants claude-subagent; then
  start served-mock "$bin" mock-upstream --port 0 --served-model gpt-oss-20b
  served_url=$(url_of served-mock) || exit 1
  mkdir -p "$work/claude-init"
  "$bin" init --upstream "$served_url" --for claude-code --output "$work/claude-init/proxy.toml" > "$work/claude-init.out" || exit 1
  (cd "$work" && exec "$bin" serve --config "$work/claude-init/proxy.toml" --port 0) > "$work/claude-proxy.out" 2> "$work/claude-proxy.err" &
  pids+=($!)
  claude_url=$(url_of claude-proxy) || exit 1
fi
# Codex as `init --for codex` sets it up: its model catalog, which gives it apply_patch.
if wants codex-edit; then
  mkdir -p "$work/codex-init"
  "$bin" init --upstream "$mock_url" --for codex --output "$work/codex-init/proxy.toml" > "$work/codex-init.out" || exit 1
fi
# Codex in front of a server whose context is small: 5300 tokens (as the mock counts them, a
# token per 4 bytes), which Codex 0.171's first request (about 4,900) fits and its history
# after the tool call outgrows past the catalog's compaction limit (90%, 4,770), so Codex
# compacts. `init` reads that context from the server (GET /props) into the catalog.
if wants codex-compact; then
  start small-mock "$bin" mock-upstream --port 0 --n-ctx 5300
  small_url=$(url_of small-mock) || exit 1
  mkdir -p "$work/compact-init"
  "$bin" init --upstream "$small_url" --for codex --output "$work/compact-init/proxy.toml" > "$work/compact-init.out" || exit 1
  (cd "$work" && UPSTREAM_BASE_URL="$small_url" HARMONY_PROXY_CONFIG= exec "$bin" serve --port 0) > "$work/small-proxy.out" 2> "$work/small-proxy.err" &
  pids+=($!)
  small_proxy_url=$(url_of small-proxy) || exit 1
fi

# Claude Code in front of a server whose context its history outgrows without its knowing
# (it takes the model's window to be 131,072): 16,500 tokens as the mock counts them, which
# Claude Code 2.1.332's first request (about 12,000) and a few 1,200-token command outputs
# fit. The server refuses the request that does not fit as llama-server does; the proxy says
# it as Anthropic does ("prompt is too long: N tokens > M maximum"); Claude Code compacts on
# it (its summary request dropping old rounds until it fits) and goes on.
if wants claude-overflow; then
  start overflow-mock "$bin" mock-upstream --port 0 --n-ctx 16500
  overflow_url=$(url_of overflow-mock) || exit 1
  (cd "$work" && UPSTREAM_BASE_URL="$overflow_url" HARMONY_PROXY_CONFIG= exec "$bin" serve --port 0) > "$work/overflow-proxy.out" 2> "$work/overflow-proxy.err" &
  pids+=($!)
  overflow_proxy_url=$(url_of overflow-proxy) || exit 1
fi

status=0
for agent in "${agents[@]}"; do
  dir="$work/$agent-work"
  mkdir -p "$dir"
  start=$(date +%s)
  log=chat-proxy
  case "$agent" in
    codex) log=proxy; bash "$here/codex.sh" "$proxy_url/v1" "$dir" ;;
    claude) log=proxy; bash "$here/claude.sh" "$proxy_url" "$dir" ;;
    codex-compact) log=small-proxy; AGENT_TASK=compact CODEX_MODEL_CATALOG="$work/compact-init/codex-models.json" bash "$here/codex.sh" "$small_proxy_url/v1" "$dir" ;;
    claude-overflow)
      log=overflow-proxy
      AGENT_TASK=overflow bash "$here/claude.sh" "$overflow_proxy_url" "$dir" &&
        refused=$(curl -s "${overflow_url%/v1}/mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["overflows"])') &&
        { [ "$refused" -ge 1 ] || { echo "FAIL claude-overflow: the server refused no request as too long (the history never outgrew it)"; false; }; } &&
        echo "PASS claude-overflow: the server refused $refused request(s) as longer than its context, and Claude Code compacted and answered" ;;
    codex-edit) log=proxy; AGENT_TASK=edit CODEX_MODEL_CATALOG="$work/codex-init/codex-models.json" bash "$here/codex.sh" "$proxy_url/v1" "$dir" ;;
    # Claude Code on one of its own model names (as a user who keeps its default picks it):
    # `init`'s route renames it to the one the server serves.
    claude-modify)
      log=claude-proxy
      AGENT_TASK=modify CLAUDE_MINIMAL=1 CLAUDE_MODEL=claude-sonnet-4-5 bash "$here/claude.sh" "$claude_url" "$dir" &&
        own=$(cat "$work/claude-proxy.out" "$work/claude-proxy.err" | grep -c 'model=claude-sonnet-4-5 .*status=200') &&
        refused=$(curl -s "${served_url%/v1}/mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["refused_models"])') &&
        { [ "$own" -ge 3 ] && [ "$refused" = 0 ] || { echo "FAIL claude-modify: $own of its requests named claude-sonnet-4-5 were answered, the server refused $refused"; false; }; } &&
        echo "PASS claude-modify: its $own requests for claude-sonnet-4-5 were answered by the model the server serves" ;;
    # Claude Code with only ANTHROPIC_BASE_URL and ANTHROPIC_MODEL (the served name) set: the
    # subagent it starts for the task asks for its own haiku name (claude-haiku-…), which
    # `init`'s route serves with the served model.
    claude-subagent)
      log=claude-proxy
      AGENT_TASK=subagent CLAUDE_MINIMAL=1 bash "$here/claude.sh" "$claude_url" "$dir" &&
        own=$(cat "$work/claude-proxy.out" "$work/claude-proxy.err" | grep -c 'model=claude-haiku-[^ ]* .*status=200') &&
        refused=$(curl -s "${served_url%/v1}/mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["refused_models"])') &&
        { [ "$own" -ge 1 ] && [ "$refused" = 0 ] || { echo "FAIL claude-subagent: $own requests for Claude Code's own claude-haiku-* name were answered, the server refused $refused"; false; }; } &&
        echo "PASS claude-subagent: its subagent's $own requests for claude-haiku-* were answered by the model the server serves" ;;
    claude-edit)
      log=claude-proxy
      AGENT_TASK=edit CLAUDE_MINIMAL=1 bash "$here/claude.sh" "$claude_url" "$dir" &&
        refused=$(curl -s "${served_url%/v1}/mock/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["refused_models"])') &&
        { [ "$refused" = 0 ] || { echo "FAIL claude-edit: the server refused $refused requests for their model name"; false; }; } ;;
    *) if [ -f "$here/$agent.sh" ]; then bash "$here/$agent.sh" "$chat_url/v1" "$dir"; else echo "unknown agent $agent"; false; fi ;;
  esac || { status=1; echo "agents: $agent FAILED; $log log tail:"; tail -n 20 "$work/$log.err"; }
  echo "agents: $agent took $(( $(date +%s) - start ))s"
done
exit $status
