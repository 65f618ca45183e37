# What the agent scripts of tests/agents share, sourced by each (after `set -uo pipefail`):
# the pinned install into the cache, the throwaway directories and the cleanup that leaves
# nothing running, the clean environment and the run in a process group of its own, and the
# checks that print PASS/FAIL lines. What is an agent's own (its package, config, environment,
# command line, extra cleanup and checks) stays in its script.
#
# A script calls, in this order:
#   agent_setup NAME DISPLAY HINT "$@"    base_url, workdir, prompt, tmp, home, run_tag, the trap
#   agent_install_npm … | agent_install_pip …
#   (its config files; agent_env=(VAR=VALUE …), the environment beyond the common part)
#   agent_check_version PATTERN LABEL CMD…
#   agent_run TIMEOUT CMD…                rc
#   agent_check_exit LABEL, agent_check_marker FILE, agent_check_answer TEXT PHRASE…,
#   agent_check_no_markup WHERE FILE…, its own checks (agent_pass / agent_fail)
#   agent_finish                          the summary line and the exit code
# and may define agent_kill_extra (more to kill on cleanup) and agent_show_logs (what to print
# when a check failed; the default is agent_show_stderr).

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "$0 is sourced by the agent scripts, not run" >&2
  exit 2
fi

agents_cache=${HARMONY_AGENTS_CACHE:-$HOME/.cache/harmony-proxy/agents}
agent_loopback="127.0.0.1,localhost,::1"
agent_dead_proxy=http://127.0.0.1:9
# For agents that honour NO_PROXY: loopback goes direct.
agent_no_proxy_env=(NO_PROXY="$agent_loopback" no_proxy="$agent_loopback")
# The same, and any other HTTP(S) goes to a loopback port where nothing listens.
agent_offline_env=(
  HTTP_PROXY="$agent_dead_proxy" HTTPS_PROXY="$agent_dead_proxy"
  http_proxy="$agent_dead_proxy" https_proxy="$agent_dead_proxy"
  "${agent_no_proxy_env[@]}")
agent_env=()
agent_install_env=()
agent_failures=0
answer=
leader=
staging=

# agent_setup NAME DISPLAY HINT PROXY_BASE_URL WORKDIR: checks the script's two arguments
# (exit 2 with a usage line showing HINT, e.g. "http://127.0.0.1:8001/v1"), sets base_url (no
# trailing /; a loopback http URL, so that DISPLAY stays off the network) and workdir (made,
# absolute). NAME (codex, claude, …) names the PASS/FAIL lines. Sets marker
# (WORKDIR/NAME-marker.txt) and prompt (the mock's scenario `agent-shell`, asked to write
# it), makes tmp (removed on exit) with an empty home in it, sets out and err (the agent's
# stdout and stderr files) and run_tag (put in the agent's environment, to find what it
# leaves), and traps EXIT to agent_cleanup (INT and TERM exit 130 through it).
agent_setup() {
  agent=$1
  local display=$2 hint=$3; shift 3
  if [ $# -ne 2 ]; then
    echo "usage: $0 PROXY_BASE_URL WORKDIR   (PROXY_BASE_URL like $hint)" >&2
    exit 2
  fi
  base_url=${1%/}
  workdir=$2
  case "$base_url" in
    http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
    *) echo "PROXY_BASE_URL must be a loopback http URL ($display stays off the network): $base_url" >&2
       exit 2 ;;
  esac
  mkdir -p "$workdir" && workdir=$(cd "$workdir" && pwd) || exit 2
  marker=$workdir/$agent-marker.txt
  # AGENT_TASK=edit: the mock's scenario `agent-edit`, which writes the marker with the
  # agent's own edit tool (Codex's apply_patch, Claude Code's Write) instead of the shell.
  task=${AGENT_TASK:-shell}
  case "$task" in
    shell) prompt="Please use the shell. scenario:agent-shell file:$agent-marker.txt" ;;
    edit) prompt="Please edit the file. scenario:agent-edit file:$agent-marker.txt dir:$workdir" ;;
    # AGENT_TASK=modify: scenario `agent-modify`, an edit of a file that exists (Claude Code's
    # Read, then Edit): the script writes the marker file with the placeholder line first.
    modify) prompt="Please edit the file. scenario:agent-modify file:$agent-marker.txt dir:$workdir" ;;
    # The shell task, in front of a server whose context the agent's history outgrows: the
    # agent compacts it (the mock answers the compaction with a summary), then answers.
    compact) prompt="Please use the shell. scenario:agent-compact file:$agent-marker.txt" ;;
    # The shell task, whose command prints so much that the next request is longer than the
    # server's context: the server refuses it, the agent compacts on the error, then answers.
    overflow) prompt="Please use the shell. scenario:agent-overflow file:$agent-marker.txt" ;;
    # The shell task, handed to a subagent on a model the agent names itself (Claude Code's
    # Task tool with model haiku): the subagent runs the shell tool, the agent reports.
    subagent) prompt="Please delegate. scenario:agent-subagent file:$agent-marker.txt" ;;
    *) echo "AGENT_TASK must be shell, edit, modify, compact, overflow or subagent: $task" >&2; exit 2 ;;
  esac
  tmp=$(mktemp -d)
  home=$tmp/home
  mkdir -p "$home"
  out=$tmp/stdout
  err=$tmp/stderr
  run_tag="$agent-$$-$RANDOM$RANDOM"
  trap agent_cleanup EXIT
  trap 'exit 130' INT TERM
}

# agent_kill_leftovers: what the run left. The agent runs as the leader of its own session and
# process group: kill the group, then anything it started in a group of its own (found by the
# tag in its environment), then whatever the script's agent_kill_extra finds, if it has one.
agent_kill_leftovers() {
  if [ -n "$leader" ]; then kill -KILL -- "-$leader" 2>/dev/null; fi
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}; pid=${pid%/environ}
    if tr '\0' '\n' 2>/dev/null < "$f" | grep -qx "HARMONY_AGENT_RUN=$run_tag"; then
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  if declare -F agent_kill_extra > /dev/null; then agent_kill_extra; fi
}

# agent_cleanup (the EXIT trap): kills the leftovers, removes tmp and any unfinished install.
agent_cleanup() {
  agent_kill_leftovers
  rm -rf "$tmp" ${staging:+"$staging"}
}

# _agent_install WHAT FAILED CMD…: fills a fresh directory beside $cache by running CMD… (which
# reads $staging), then renames it into place, so that two jobs sharing the cache do not
# collide. On failure prints "FAIL NAME: FAILED" and exits 1.
_agent_install() {
  local what=$1 failed=$2 start; shift 2
  echo "installing $what into $cache"
  mkdir -p "$(dirname "$cache")"
  staging=$(mktemp -d "$cache.staging.XXXXXX") && chmod 755 "$staging" || exit 1
  start=$(date +%s)
  if ! "$@"; then
    rm -rf "$staging"
    echo "FAIL $agent: $failed"
    exit 1
  fi
  rm -rf "$cache" && mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"
  staging=
  echo "installed in $(( $(date +%s) - start )) s"
}

# agent_install_npm DIR PACKAGE VERSION BIN [NPM_ARG…]: PACKAGE@VERSION installed pinned into
# $agents_cache/DIR-VERSION (npm, with NPM_ARGs and the variables in agent_install_env),
# unless the cache already holds that version. Sets cache and agent_bin (its .bin/BIN).
agent_install_npm() {
  local dir=$1 package=$2 version=$3 bin=$4; shift 4
  cache=$agents_cache/$dir-$version
  agent_bin=$cache/node_modules/.bin/$bin
  local installed
  installed=$(node -p "require('$cache/node_modules/$package/package.json').version" 2>/dev/null)
  if [ "$installed" != "$version" ] || [ ! -x "$agent_bin" ]; then
    _agent_install "$package@$version" "npm install $package@$version" _agent_npm "$package@$version" "$@"
  fi
}
_agent_npm() {
  local spec=$1; shift
  env ${agent_install_env[@]+"${agent_install_env[@]}"} npm install --prefix "$staging" \
    --save-exact --no-audit --no-fund --loglevel=error "$@" "$spec"
}

# agent_install_pip DIR PACKAGE VERSION PYTHON: PACKAGE==VERSION installed pinned into a
# virtualenv $agents_cache/DIR-VERSION made from PYTHON (pip), unless the cache already holds
# that version (and the interpreter its virtualenv was made from is still there). Sets cache
# and venv_python.
agent_install_pip() {
  local dir=$1 package=$2 version=$3 python=$4
  cache=$agents_cache/$dir-$version
  venv_python=$cache/bin/python
  local installed
  installed=$("$venv_python" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null)
  if [ "$installed" != "$version" ]; then
    _agent_install "$package==$version" "pip install $package==$version" _agent_pip "$python" "$package==$version"
  fi
}
_agent_pip() {
  "$1" -m venv "$staging" \
    && "$staging/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$2"
}

# _agent_env_cmd: sets _agent_cmd to `env -i` and a clean environment: only the common part
# (PATH, the throwaway HOME, USER, SHELL, a plain UTF-8 dumb terminal), the script's agent_env
# and the run tag; no proxies, keys or agent settings from the caller's environment.
_agent_env_cmd() {
  _agent_cmd=(env -i
    PATH="$PATH" HOME="$home" USER="${USER:-ci}" SHELL=/bin/bash
    LANG=C.UTF-8 TERM=dumb NO_COLOR=1
    ${agent_env[@]+"${agent_env[@]}"}
    HARMONY_AGENT_RUN="$run_tag")
}

# agent_check_version PATTERN LABEL CMD…: runs `CMD… --version` in the clean environment; if
# what it prints does not match PATTERN (a [[ ]] pattern), prints "FAIL NAME: LABEL --version
# printed: …" and exits 1.
agent_check_version() {
  local pattern=$1 label=$2 version_out; shift 2
  _agent_env_cmd
  version_out=$("${_agent_cmd[@]}" "$@" --version 2> "$tmp/version.err" < /dev/null)
  if [[ $version_out != $pattern ]]; then
    echo "FAIL $agent: $label --version printed: $version_out $(cat "$tmp/version.err")"
    exit 1
  fi
}

# agent_run TIMEOUT CMD…: runs CMD… in WORKDIR, in the clean environment, stdin /dev/null,
# stdout to $out and stderr to $err (2>&1 where err is out), as the leader of a session and
# process group of its own (setsid), killed with SIGKILL after TIMEOUT seconds; then kills
# that group whole. Sets rc (137 or 124: timed out).
agent_run() {
  agent_timeout=$1; shift
  _agent_env_cmd
  if [ "$err" = "$out" ]; then
    (cd "$workdir" && exec setsid timeout -s KILL "$agent_timeout" "${_agent_cmd[@]}" "$@" \
        > "$out" 2>&1 < /dev/null) &
  else
    (cd "$workdir" && exec setsid timeout -s KILL "$agent_timeout" "${_agent_cmd[@]}" "$@" \
        > "$out" 2> "$err" < /dev/null) &
  fi
  leader=$!
  wait "$leader"
  rc=$?
  kill -KILL -- "-$leader" 2>/dev/null
  leader=
}

# agent_pass TEXT, agent_fail TEXT: a PASS or FAIL line for the agent (a FAIL is counted).
agent_pass() { echo "PASS $agent: $1"; }
agent_fail() { echo "FAIL $agent: $1"; agent_failures=$((agent_failures + 1)); }

# agent_check_exit LABEL: the last agent_run exited 0 (else: killed at the timeout, or its code).
agent_check_exit() {
  if [ "$rc" -eq 0 ]; then agent_pass "$1 exited 0"
  elif [ "$rc" -eq 137 ] || [ "$rc" -eq 124 ]; then agent_fail "$1 killed after ${agent_timeout}s"
  else agent_fail "$1 exited $rc"; fi
}

# agent_check_marker FILE: the shell tool ran: FILE holds harmony-proxy-was-here.
agent_check_marker() {
  local name tool=$task
  name=$(basename "$1")
  case "$task" in compact|overflow|subagent) tool=shell ;; esac
  if grep -q "harmony-proxy-was-here" "$1" 2>/dev/null; then
    agent_pass "the $tool tool ran: $name holds harmony-proxy-was-here"
  else
    if [ -e "$1" ]; then agent_fail "$name lacks harmony-proxy-was-here: $(head -c 200 "$1")"
    else agent_fail "$name was not written"; fi
  fi
}

# agent_check_answer TEXT PHRASE…: TEXT (the final answer) holds each PHRASE.
agent_check_answer() {
  local text=$1 want; shift
  for want in "$@"; do
    if grep -qF -- "$want" <<< "$text"; then agent_pass "final answer contains \"$want\""
    else agent_fail "final answer lacks \"$want\""; fi
  done
}

# agent_check_no_markup WHERE FILE…: no Harmony markup (<|) in the FILEs (directories are
# searched whole); WHERE names them in the PASS/FAIL line ("Codex's output").
agent_check_no_markup() {
  local where=$1; shift
  if grep -rqF -- '<|' "$@" 2>/dev/null; then
    agent_fail "harmony markup (<|) in $where: $(grep -rhF -- '<|' "$@" 2>/dev/null | head -n 3 | cut -c 1-200)"
  else
    agent_pass "no harmony markup (<|) in $where"
  fi
}

# agent_last_object lines|array FILE TYPE ANSWER FIELD…: in the agent's JSON output (one
# object a line, or one JSON array), the last object whose type is TYPE: prints RESULT and its
# FIELDs on one line, tab-separated, then its ANSWER field (as JSON unless a string). Prints
# nothing if there is none.
agent_last_object() {
  node -e '
    const [mode, file, type, answer, ...fields] = process.argv.slice(1);
    const text = require("fs").readFileSync(file, "utf8");
    let all = [];
    if (mode === "array") all = [].concat(JSON.parse(text));
    else for (const l of text.split("\n")) { try { all.push(JSON.parse(l)); } catch {} }
    const r = all.filter(o => o && o.type === type).pop();
    if (!r) process.exit(1);
    console.log(["RESULT", ...fields.map(f => r[f])].join("\t"));
    console.log(typeof r[answer] === "string" ? r[answer] : JSON.stringify(r[answer]));
  ' "$@" 2>/dev/null
}

# agent_check_result lines|array DISPLAY: the last `result` object in $out (Claude Code's and
# Qwen Code's transcripts end in one) is not an error. Sets answer to its result.
agent_check_result() {
  local summary is_error num_turns subtype
  summary=$(agent_last_object "$1" "$out" result result is_error num_turns subtype)
  answer=$(tail -n +2 <<< "$summary")
  IFS=$'\t' read -r _ is_error num_turns subtype <<< "$(head -n 1 <<< "$summary")"
  if [ -z "$summary" ]; then agent_fail "no result object in $2's output"
  elif [ "$is_error" = false ]; then agent_pass "result: $subtype, not an error, $num_turns turns"
  else agent_fail "result is an error ($subtype, is_error=$is_error, $num_turns turns)"; fi
}

# agent_check_events DISPLAY: the `run --format json` events in $out (OpenCode's, and its fork
# Kilo's; one a line): no error event, one `bash` tool call, the last step finished with
# `stop`. Sets answer to the text of the last step (the final answer).
agent_check_events() {
  local summary errors calls reason
  # SUMMARY<TAB>errors<TAB>bash calls<TAB>last step_finish reason, then the last step's text.
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
  if [ -z "$summary" ]; then agent_fail "no events in $1's output"
  else
    if [ "$errors" = - ]; then agent_pass "no error events"; else agent_fail "error events: $errors"; fi
    if [ "$calls" = 1 ]; then agent_pass "one bash tool call"; else agent_fail "$calls bash tool calls (want 1)"; fi
    if [ "$reason" = stop ]; then agent_pass "the last step finished: stop"; else agent_fail "the last step finished: $reason"; fi
  fi
}

# agent_show_stderr: the last 40 lines of the agent's stderr, under a title.
agent_show_stderr() {
  echo "--- $agent stderr (last 40 lines)"
  tail -n 40 "$err"
}

# agent_show_events: for OpenCode and Kilo, the last 20 events (cut at 400 characters), then
# the stderr.
agent_show_events() {
  echo "--- $agent events (stdout, last 20, cut at 400 characters)"
  tail -n 20 "$out" | cut -c 1-400
  agent_show_stderr
}

# agent_show_logs: what agent_finish prints when a check failed; a script redefines it to
# show more (its transcript, its log).
agent_show_logs() { agent_show_stderr; }

# agent_finish [LABEL]: prints the answer ("NAME final answer: …", or LABEL for "final
# answer"); if a check failed, the logs (agent_show_logs) and "FAIL NAME: N check(s) failed",
# and exits 1; else "PASS NAME: all checks".
agent_finish() {
  echo "$agent ${1:-final answer}: ${answer:-<none>}"
  if [ "$agent_failures" -ne 0 ]; then
    agent_show_logs
    echo "---"
    echo "FAIL $agent: $agent_failures check(s) failed"
    exit 1
  fi
  echo "PASS $agent: all checks"
}
