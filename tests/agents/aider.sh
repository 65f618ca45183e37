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
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AIDER_VERSION=${AIDER_VERSION:-0.86.2}
python=${AIDER_PYTHON:-python3}
timeout_s=${AIDER_TIMEOUT:-180}
model=${AIDER_MODEL:-text-gpt-oss-20b}
want_answer="No shell tool was declared."

agent_setup aider aider http://127.0.0.1:8001/v1 "$@"
agent_install_pip aider aider-chat "$AIDER_VERSION" "$python"

# The model's window and (zero) prices: without an entry aider fetches litellm's price list
# from GitHub (and warns about an unknown model).
metadata=$tmp/model-metadata.json
cat > "$metadata" <<EOF
{"openai/$model": {"max_input_tokens": 131072, "max_output_tokens": 32768, "max_tokens": 32768,
  "input_cost_per_token": 0, "output_cost_per_token": 0, "litellm_provider": "openai", "mode": "chat"}}
EOF

# Beyond lib.sh's clean environment: the key.
agent_env=(
  OPENAI_API_KEY="${HARMONY_PROXY_API_KEY:-harmony-test-key}"
  # litellm otherwise fetches its model-price list from GitHub as it loads.
  LITELLM_LOCAL_MODEL_COST_MAP=True
  "${agent_offline_env[@]}")
# It prints "__main__.py VERSION": the last word is checked.
agent_check_version "?(* )$AIDER_VERSION" aider "$venv_python" -m aider

history=$tmp/chat-history.md
echo "aider $AIDER_VERSION: --message in $workdir against $base_url (timeout ${timeout_s}s)"
# What `harmony-proxy init --for aider` should print: --openai-api-base, --model openai/NAME
# (and OPENAI_API_KEY); the rest keeps the run headless and off the network.
agent_run "$timeout_s" "$venv_python" -m aider \
  --openai-api-base "$base_url" --model "openai/$model" --model-metadata-file "$metadata" \
  --message "$prompt" --yes-always --no-git --no-check-update --analytics-disable \
  --no-show-model-warnings --no-show-release-notes --no-pretty --no-fancy-input \
  --no-detect-urls --no-suggest-shell-commands \
  --chat-history-file "$history" --input-history-file "$tmp/input-history"

agent_check_exit aider
# stdout: aider's banner (version, model, repo), a blank line, the answer, the token line.
answer=$(sed -n '/^Repo-map: /,/^Tokens: /p' "$out" | sed '1d;$d' | sed '/^[[:space:]]*$/d')
if [ "$answer" = "$want_answer" ]; then
  agent_pass "the answer printed clean: \"$want_answer\""
elif grep -qF -- "$want_answer" <<< "$answer"; then
  agent_fail "the answer holds \"$want_answer\" among other text: $(head -c 300 <<< "$answer")"
else
  agent_fail "the answer lacks \"$want_answer\""
fi
agent_check_no_markup "aider's output or chat history" "$out" "$err" "$history"
if grep -qF 'No shell tool among the declared tools' <<< "$answer"; then
  agent_fail "the reasoning leaked into the answer"
else
  agent_pass "no reasoning in the answer"
fi

agent_show_logs() {
  echo "--- aider stdout (last 40 lines)"
  tail -n 40 "$out"
  agent_show_stderr
}
agent_finish answer
