//! What a script may look at in a request: the turn, read alike from chat messages and from a rendered Harmony prompt, and the declared tools (for `agent-shell`).

use serde_json::{json, Value};

/// What a script may look at in a request, read alike from chat messages
/// ([`turn_from_chat`]) and from a rendered Harmony prompt ([`turn_from_prompt`]).
#[derive(Debug, Default)]
pub(super) struct Turn {
    /// The last user message's text (its text parts joined by newlines).
    pub(super) user: String,
    /// Tool results after the last user message: the step of the tool loop.
    pub(super) tool_results: usize,
    /// The text of the last tool result.
    pub(super) last_tool_output: String,
    /// Whether a tool-call turn came back with reasoning holding [`REASONING_MARK`].
    pub(super) reasoning_back: bool,
    /// The declared tools.
    pub(super) tools: Vec<ToolDecl>,
    /// Every user message's text, joined by newlines (a compaction request holds the
    /// conversation it summarizes).
    pub(super) users: String,
}

/// A declared tool: its name and its top-level parameters.
#[derive(Debug, Clone)]
pub(super) struct ToolDecl {
    pub(super) name: String,
    pub(super) props: Vec<Prop>,
}

impl ToolDecl {
    pub(super) fn prop(&self, name: &str) -> Option<&Prop> {
        self.props.iter().find(|p| p.name == name)
    }
}

/// One top-level parameter of a tool.
#[derive(Debug, Clone)]
pub(super) struct Prop {
    pub(super) name: String,
    pub(super) required: bool,
    pub(super) kind: Kind,
}

/// The type of a parameter, as far as the shell arguments care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    String,
    Array,
    Boolean,
    Other,
}

/// Shell tool names, in the order `agent-shell` looks for them.
pub(super) const SHELL_TOOLS: [&str; 8] = ["exec_command", "shell", "Bash", "bash", "run_shell_command", "run_commands", "execute_command", "shell_command"];
/// What `agent-shell` reasons before its tool call.
pub(super) const AGENT_SHELL_REASONING: &str = "I will run the shell tool to write the marker file.";
/// What marks that reasoning when it comes back in the history.
pub(super) const REASONING_MARK: &str = "I will run the shell tool";
/// What `agent-edit` reasons before its tool call, and what marks it in the history.
pub(super) const AGENT_EDIT_REASONING: &str = "I will use the edit tool to write the marker file.";
pub(super) const EDIT_REASONING_MARK: &str = "I will use the edit tool";
/// Edit tools, in the order `agent-edit` looks for them: Codex's `apply_patch` (freeform,
/// sent upstream as a function of one `input` string), Claude Code's `Write`.
pub(super) const EDIT_TOOLS: [&str; 2] = ["apply_patch", "Write"];
/// The line `agent-modify` replaces with the marker: the agents suite writes the file with it.
pub(super) const MODIFY_PLACEHOLDER: &str = "harmony-proxy-placeholder";

/// Whether `reasoning` is one of the agent scenarios' turn-1 reasoning.
pub(super) fn is_agent_reasoning(reasoning: &str) -> bool {
    reasoning.contains(REASONING_MARK) || reasoning.contains(EDIT_REASONING_MARK)
}

/// The directory a user message names (`dir:/abs/path`), if it names one.
pub(super) fn marker_dir(user: &str) -> Option<String> {
    let at = user.find(" dir:")? + " dir:".len();
    let dir: String = user[at..].chars().take_while(|c| !c.is_whitespace()).collect();
    (!dir.is_empty()).then_some(dir)
}

/// The marker file's path: [`marker_file`] inside [`marker_dir`] when the message names one
/// (edit tools take absolute paths), else the bare name.
pub(super) fn marker_path(user: &str) -> String {
    let name = marker_file(user);
    match marker_dir(user) {
        Some(dir) => format!("{}/{name}", dir.trim_end_matches('/')),
        None => name,
    }
}

/// The text of a message's `content`: a string, or the text parts of an array joined by
/// newlines.
pub(super) fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str))).collect::<Vec<&str>>().join("\n")
        }
        _ => String::new(),
    }
}

pub(super) fn role_of(m: &Value) -> &str {
    m.get("role").and_then(Value::as_str).unwrap_or("")
}

/// The turn of a chat request (`messages`, `tools` as `{type, function: {name, parameters}}`).
pub(super) fn turn_from_chat(req: &Value) -> Turn {
    let empty: Vec<Value> = Vec::new();
    let messages = req.get("messages").and_then(Value::as_array).unwrap_or(&empty);
    let last_user = messages.iter().rposition(|m| role_of(m) == "user");
    let after = last_user.map_or(0, |i| i + 1);
    Turn {
        user: last_user.map(|i| text_of(messages[i].get("content"))).unwrap_or_default(),
        tool_results: messages[after..].iter().filter(|m| role_of(m) == "tool").count(),
        last_tool_output: messages.iter().rev().find(|m| role_of(m) == "tool").map(|m| text_of(m.get("content"))).unwrap_or_default(),
        reasoning_back: messages.iter().any(|m| {
            role_of(m) == "assistant"
                && m.get("tool_calls").and_then(Value::as_array).is_some_and(|c| !c.is_empty())
                && ["reasoning_content", "reasoning", "thinking"].iter().any(|f| m.get(*f).and_then(Value::as_str).is_some_and(is_agent_reasoning))
        }),
        tools: tools_of_request(req),
        users: messages.iter().filter(|m| role_of(m) == "user").map(|m| text_of(m.get("content"))).collect::<Vec<_>>().join("\n"),
    }
}

/// The declared tools of a chat request (a flat `{name, parameters}` or Anthropic's
/// `input_schema` is read too).
pub(super) fn tools_of_request(req: &Value) -> Vec<ToolDecl> {
    let Some(tools) = req.get("tools").and_then(Value::as_array) else { return Vec::new() };
    tools
        .iter()
        .filter_map(|t| {
            let f = t.get("function").unwrap_or(t);
            let name = f.get("name").and_then(Value::as_str)?.to_owned();
            let params = f.get("parameters").or_else(|| f.get("input_schema"));
            let required: Vec<&str> =
                params.and_then(|p| p.get("required")).and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let props: Vec<Prop> = params
                .and_then(|p| p.get("properties"))
                .and_then(Value::as_object)
                .map(|ps| ps.iter().map(|(k, v)| Prop { name: k.clone(), required: required.contains(&k.as_str()), kind: kind_of_schema(v) }).collect())
                .unwrap_or_default();
            Some(ToolDecl { name, props })
        })
        .collect()
}

/// A JSON schema's type (`["string", "null"]` counts as its first non-null type).
pub(super) fn kind_of_schema(schema: &Value) -> Kind {
    let ty = match schema.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    };
    match ty {
        Some("string") => Kind::String,
        Some("array") => Kind::Array,
        Some("boolean") => Kind::Boolean,
        _ => Kind::Other,
    }
}

/// The turn of a rendered Harmony prompt: the last `<|start|>user` message, the
/// `<|start|>functions.…` tool results after it, the analysis messages, and the tools the
/// developer message declares.
pub(super) fn turn_from_prompt(prompt: &str) -> Turn {
    let tail = prompt.rfind("<|start|>user").map_or(prompt, |i| &prompt[i..]);
    let user = prompt.rsplit_once("<|start|>user<|message|>").map(|(_, rest)| rest.split("<|end|>").next().unwrap_or("").to_owned()).unwrap_or_default();
    let last_tool_output = prompt
        .rfind("<|start|>functions.")
        .and_then(|i| prompt[i..].split_once("<|message|>"))
        .map(|(_, body)| body.split("<|end|>").next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let reasoning_back = prompt.split("<|channel|>analysis<|message|>").skip(1).any(|m| is_agent_reasoning(m.split("<|end|>").next().unwrap_or("")));
    let users = prompt.split("<|start|>user<|message|>").skip(1).map(|m| m.split("<|end|>").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    Turn { user, tool_results: tail.matches("<|start|>functions.").count(), last_tool_output, reasoning_back, tools: tools_of_prompt(prompt), users }
}

/// The tools of a rendered prompt's `namespace functions { … }`, each declared as
/// `type NAME = (_: {\nPROP: TYPE,\nPROP?: TYPE,\n}) => any;` (openai-harmony's rendering).
pub(super) fn tools_of_prompt(prompt: &str) -> Vec<ToolDecl> {
    let Some(start) = prompt.find("namespace functions {") else { return Vec::new() };
    let ns = &prompt[start..];
    let ns = &ns[..ns.find("} // namespace functions").unwrap_or(ns.len())];
    let mut out = Vec::new();
    let mut rest = ns;
    while let Some(at) = rest.find("\ntype ") {
        let decl_start = &rest[at + 1..];
        let end = decl_start.find(") => any;").map_or(decl_start.len(), |e| e + ") => any;".len());
        let decl = &decl_start[..end];
        rest = &decl_start[end..];
        let Some((head, _)) = decl.split_once(" = (") else { continue };
        let name = head.trim_start_matches("type ").trim().to_owned();
        let props: Vec<Prop> = decl.lines().skip(1).filter_map(ts_prop).collect();
        out.push(ToolDecl { name, props });
    }
    out
}

/// One top-level parameter line of a rendered declaration: `name: type,` or
/// `name?: type,` (nested members are indented; comments start with `//`).
pub(super) fn ts_prop(line: &str) -> Option<Prop> {
    if line.starts_with(char::is_whitespace) || line.starts_with("//") {
        return None;
    }
    let (name, ty) = line.split_once(':')?;
    let (name, required) = match name.strip_suffix('?') {
        Some(n) => (n, false),
        None => (name, true),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return None;
    }
    let ty = ty.split(" //").next().unwrap_or("").trim().trim_end_matches(',');
    let first = ty.split('|').next().unwrap_or("").trim();
    let kind = if first.ends_with("[]") || first.starts_with("Array<") {
        Kind::Array
    } else if first == "string" || first.starts_with('"') {
        Kind::String
    } else if first == "boolean" {
        Kind::Boolean
    } else {
        Kind::Other
    };
    Some(Prop { name: name.to_owned(), required, kind })
}

/// The first declared shell tool, by [`SHELL_TOOLS`] order.
pub(super) fn shell_tool(tools: &[ToolDecl]) -> Option<&ToolDecl> {
    SHELL_TOOLS.iter().find_map(|n| tools.iter().find(|t| t.name == *n))
}

/// The arguments that run `cmd` with `tool`, shaped by its parameters:
/// - `cmd` → `{"cmd": cmd}` (Codex's `exec_command`);
/// - else `commands` → `{"commands": [cmd]}` (Cline's `run_commands`);
/// - else `command` typed array → `{"command": ["bash", "-lc", cmd]}` (Codex's `shell`);
/// - else `{"command": cmd}` (Claude Code, OpenCode, Qwen Code, Continue…).
///
/// Then every other required parameter gets a value: `description` "write the marker file"
/// (OpenCode), a boolean `false` (Qwen Code's `is_background`), a string `""`; required
/// parameters of other types are left out.
pub(super) fn shell_args(tool: &ToolDecl, cmd: &str) -> Value {
    let mut args = serde_json::Map::new();
    if tool.prop("cmd").is_some() {
        args.insert("cmd".into(), json!(cmd));
    } else if tool.prop("commands").is_some() {
        args.insert("commands".into(), json!([cmd]));
    } else if tool.prop("command").is_some_and(|p| p.kind == Kind::Array) {
        args.insert("command".into(), json!(["bash", "-lc", cmd]));
    } else {
        args.insert("command".into(), json!(cmd));
    }
    for p in tool.props.iter().filter(|p| p.required) {
        if args.contains_key(p.name.as_str()) {
            continue;
        }
        let v = match (p.name.as_str(), p.kind) {
            ("description", _) => json!("write the marker file"),
            (_, Kind::Boolean) => json!(false),
            (_, Kind::String) => json!(""),
            _ => continue,
        };
        args.insert(p.name.clone(), v);
    }
    Value::Object(args)
}

/// The file `agent-shell` writes: NAME of the first `file:NAME` in the user's text (NAME of
/// `[A-Za-z0-9._-]`, trailing dots dropped), else `proxied.txt`.
pub(super) fn marker_file(user: &str) -> String {
    for (at, _) in user.match_indices("file:") {
        if user[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = user[at + "file:".len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).collect();
        let name = name.trim_end_matches('.');
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    "proxied.txt".into()
}
