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
# CODEX_MODEL (default gpt-oss-20b), HARMONY_PROXY_API_KEY (sent as Bearer; default a dummy),
# CODEX_MODEL_CATALOG (a model catalog, as `harmony-proxy init --for codex` writes it: Codex
# then knows the model and sends its freeform apply_patch), AGENT_TASK=edit (the marker is
# written with apply_patch, which needs the catalog), AGENT_TASK=compact (in front of a
# server with a small context: Codex compacts, by the catalog's window, then answers).
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CODEX_VERSION=${CODEX_VERSION:-0.171.0}
timeout_s=${CODEX_TIMEOUT:-180}
model=${CODEX_MODEL:-gpt-oss-20b}

agent_setup codex Codex http://127.0.0.1:8001/v1 "$@"
agent_install_npm codex @openai/codex "$CODEX_VERSION" codex

codex_home=$tmp/codex-home
mkdir -p "$codex_home"
catalog_line=
if [ -n "${CODEX_MODEL_CATALOG:-}" ]; then
  catalog_line="model_catalog_json = \"$CODEX_MODEL_CATALOG\""
elif [ "$task" != shell ]; then
  echo "AGENT_TASK=$task needs CODEX_MODEL_CATALOG (the model's tools and window)" >&2; exit 2
fi
cat > "$codex_home/config.toml" <<EOF
model = "$model"
model_provider = "harmony"
$catalog_line
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

# Beyond lib.sh's clean environment: Codex's home, no proxy for loopback, the key.
agent_env=(
  CODEX_HOME="$codex_home" "${agent_no_proxy_env[@]}"
  HARMONY_PROXY_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}")
agent_check_version "codex-cli $CODEX_VERSION" codex "$agent_bin"

last=$tmp/last-message
rm -f "$marker"
echo "codex $CODEX_VERSION: exec in $workdir against $base_url (timeout ${timeout_s}s)"
agent_run "$timeout_s" "$agent_bin" exec \
  --strict-config --skip-git-repo-check --color never -C "$workdir" -o "$last" "$prompt"

agent_check_exit "codex exec"
agent_check_marker "$marker"
# stdout holds only the final answer; -o writes the same message to a file.
answer=$(cat "$out")
[ -n "$answer" ] || answer=$(cat "$last" 2>/dev/null)
if [ "$task" = compact ]; then
  agent_check_answer "$answer" "Done after compaction. The summary came back: yes"
  if grep -q "^context compacted" "$err"; then agent_pass "Codex compacted its history"
  else agent_fail "Codex's transcript shows no compaction"; fi
elif [ "$task" = edit ]; then
  agent_check_answer "$answer" "The edit tool answered: Exit code: 0" "reasoning came back: yes"
  # Codex's transcript (stderr) names the tool that wrote it: its patch, not a command.
  if grep -q "^apply patch" "$err"; then agent_pass "Codex applied the patch itself (apply_patch)"
  else agent_fail "Codex's transcript shows no apply_patch"; fi
else
  agent_check_answer "$answer" "The command printed: marker-written" "reasoning came back: yes"
fi
if [ -n "${CODEX_MODEL_CATALOG:-}" ] && grep -q "Model metadata for" "$err"; then agent_fail "Codex does not know the model: $(grep -m1 "Model metadata for" "$err")"; fi
agent_check_no_markup "Codex's output" "$out" "$err" "$last"
agent_finish
