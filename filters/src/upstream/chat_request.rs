//! The conversation → the body of a chat endpoint's request (`POST {url}/chat/completions`),
//! the upstream edge of servers that render the prompt with their own chat template.
//!
//! The way back of [`crate::api::chat::decode`]: what a chat client sent comes out as sent
//! (the `extra` maps first, then every modelled field), but for what a stage changed and
//! what every upstream request says: `stream: true` and usage asked for (retry, the watchdog
//! and true streaming need a stream; usage is shown to the client only when it asked).

use serde_json::{json, Value};

use crate::conversation::{Content, Conversation, FunctionTool, Message, ResponseFormat, Stop, Tool, ToolCall, ToolChoice};

/// The chat request for `conv`: as a client would send it, and what every upstream request
/// says besides: a stream with usage, and the reasoning effort where every server reads it
/// (vLLM and llama-server read `reasoning_effort`; llama.cpp builds before it, and servers
/// that run llama.cpp's gpt-oss template, read only the template's `reasoning_effort`
/// argument). A client's own `chat_template_kwargs.reasoning_effort` is kept.
pub fn request(conv: Conversation) -> Value {
    let effort = conv.controls.reasoning_effort.clone();
    let mut o = client_body(conv);
    // llama.cpp's gpt-oss template writes `"// " + tool.description` unconditionally: its own
    // engine reads a missing one as empty, Python's Jinja (mlx-lm, transformers serve) fails
    // the request ("'dict object' has no attribute 'description'", as a 404). An empty one
    // renders the same prompt on llama.cpp and works everywhere.
    if let Some(Value::Array(tools)) = o.get_mut("tools") {
        for f in tools.iter_mut().filter(|t| t.get("type").and_then(Value::as_str) == Some("function")).filter_map(|t| t.get_mut("function")) {
            if let Some(f) = f.as_object_mut() {
                f.entry("description").or_insert_with(|| Value::String(String::new()));
            }
        }
    }
    if let Some(effort) = effort {
        let kwargs = o.entry("chat_template_kwargs").or_insert_with(|| json!({}));
        if let Some(k) = kwargs.as_object_mut() {
            k.entry("reasoning_effort").or_insert(effort.into());
        }
    }
    o.insert("stream".into(), Value::Bool(true));
    o.insert("stream_options".into(), json!({"include_usage": true}));
    Value::Object(o)
}

/// The chat request a client would have sent for `conv` (its own `stream`, no
/// `stream_options`): what tests and the fuzz targets compare against.
pub fn as_a_client_sends_it(conv: Conversation) -> Value {
    let stream = conv.controls.stream;
    let mut o = client_body(conv);
    o.insert("stream".into(), stream.into());
    Value::Object(o)
}

/// Every field of the conversation, where a chat client says it (`stream` left to the caller).
fn client_body(conv: Conversation) -> serde_json::Map<String, Value> {
    let Conversation { model, instructions, messages, tools, controls: c, extra } = conv;
    let mut o = extra;
    if !model.is_empty() {
        o.insert("model".into(), model.into());
    }
    // The instructions, first, as the system message a chat server's template reads.
    let first = instructions.map(|i| Message::text(crate::conversation::Role::System, i));
    o.insert("messages".into(), Value::Array(first.into_iter().chain(messages).map(message).collect()));
    if let Some(tools) = tools {
        o.insert("tools".into(), Value::Array(tools.into_iter().map(tool).collect()));
    }
    if let Some(tc) = c.tool_choice {
        o.insert("tool_choice".into(), tool_choice(tc));
    }
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.to_owned(), v);
        }
    };
    put("parallel_tool_calls", c.parallel_tool_calls.map(Value::Bool));
    put("reasoning_effort", c.reasoning_effort.map(Value::String));
    if let Some(l) = c.max_output_tokens {
        put(l.said_as.as_str(), Some(Value::Number(l.tokens)));
    }
    put(
        "stop",
        c.stop.map(|s| match s {
            Stop::One(s) => Value::String(s),
            Stop::Many(v) => Value::Array(v.into_iter().map(Value::String).collect()),
        }),
    );
    put("response_format", c.response_format.map(response_format));
    let s = c.sampling;
    for (k, v) in [
        ("temperature", s.temperature),
        ("top_p", s.top_p),
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
        ("seed", s.seed),
        ("n", c.n),
    ] {
        put(k, v.map(Value::Number));
    }
    put("logit_bias", s.logit_bias);
    put("logprobs", c.logprobs.map(Value::Bool));
    o
}

pub fn tool_choice(tc: ToolChoice) -> Value {
    match tc {
        ToolChoice::Auto => "auto".into(),
        ToolChoice::None => "none".into(),
        ToolChoice::Required => "required".into(),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
        ToolChoice::Other(v) => v,
    }
}

fn response_format(rf: ResponseFormat) -> Value {
    match rf {
        ResponseFormat::Text => json!({"type": "text"}),
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema(js) => {
            let mut o = js.extra;
            if let Some(n) = js.name {
                o.insert("name".into(), n.into());
            }
            if let Some(d) = js.description {
                o.insert("description".into(), d.into());
            }
            if let Some(s) = js.schema {
                o.insert("schema".into(), s);
            }
            if let Some(s) = js.strict {
                o.insert("strict".into(), s.into());
            }
            json!({"type": "json_schema", "json_schema": o})
        }
        ResponseFormat::Other(v) => v,
    }
}

/// A tool in the OpenAI shape.
pub fn tool(t: Tool) -> Value {
    match t {
        Tool::Function(f) => json!({"type": "function", "function": function(f)}),
        Tool::Other(v) => v,
    }
}

fn function(f: FunctionTool) -> Value {
    let mut o = f.extra;
    o.insert("name".into(), f.name.into());
    if let Some(d) = f.description {
        o.insert("description".into(), d.into());
    }
    if let Some(p) = f.parameters {
        o.insert("parameters".into(), p);
    }
    if let Some(s) = f.strict {
        o.insert("strict".into(), s.into());
    }
    Value::Object(o)
}

fn message(m: Message) -> Value {
    let mut o = m.extra;
    o.insert("role".into(), m.role.as_str().into());
    match m.content {
        Content::Absent => {}
        Content::Null => {
            o.insert("content".into(), Value::Null);
        }
        Content::Text(s) => {
            o.insert("content".into(), s.into());
        }
        Content::Parts(parts) => {
            let parts = parts
                .into_iter()
                .map(|p| {
                    let mut po = p.extra;
                    po.insert("type".into(), p.kind.into());
                    if let Some(t) = p.text {
                        po.insert("text".into(), t.into());
                    }
                    Value::Object(po)
                })
                .collect();
            o.insert("content".into(), Value::Array(parts));
        }
    }
    if let Some(r) = m.reasoning {
        o.insert(r.field.as_str().into(), r.text.into());
    }
    if let Some(calls) = m.tool_calls {
        o.insert("tool_calls".into(), Value::Array(calls.into_iter().map(call).collect()));
    }
    if let Some(id) = m.tool_call_id {
        o.insert("tool_call_id".into(), id.into());
    }
    if let Some(n) = m.name {
        o.insert("name".into(), n.into());
    }
    Value::Object(o)
}

fn call(c: ToolCall) -> Value {
    let mut o = c.extra;
    if let Some(id) = c.id {
        o.insert("id".into(), id.into());
    }
    let mut f = c.function_extra;
    if let Some(n) = c.name {
        f.insert("name".into(), n.into());
    }
    if let Some(a) = c.arguments {
        f.insert("arguments".into(), a);
    }
    if !f.is_empty() {
        o.insert("function".into(), Value::Object(f));
    }
    Value::Object(o)
}

/// Everything the chat edges keep of a request, the same both ways.
#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// The request as the upstream edge writes it, but for what every upstream request says.
    /// What the upstream gets of a chat request, but for what every upstream request adds
    /// (the stream, usage, the effort for the template: see the next test).
    fn round_trip(v: Value) -> Value {
        let mut out = super::as_a_client_sends_it(crate::api::chat::decode::conversation(v.clone()));
        out.as_object_mut().unwrap().remove("stream");
        let mut sent = super::request(crate::api::chat::decode::conversation(v));
        let o = sent.as_object_mut().unwrap();
        o.remove("stream");
        o.remove("stream_options");
        if let (Some(Value::Array(sent_tools)), Some(Value::Array(client_tools))) = (o.get_mut("tools"), out.get("tools")) {
            for (s, c) in sent_tools.iter_mut().zip(client_tools) {
                if c.pointer("/function/description").is_none() {
                    if let Some(f) = s.get_mut("function").and_then(Value::as_object_mut) {
                        f.remove("description");
                    }
                }
            }
        }
        if out.get("chat_template_kwargs").is_none() {
            o.remove("chat_template_kwargs");
        } else if let Some(k) = o.get_mut("chat_template_kwargs").and_then(Value::as_object_mut) {
            if out["chat_template_kwargs"].get("reasoning_effort").is_none() {
                k.remove("reasoning_effort");
            }
        }
        assert_eq!(sent, out, "the upstream's request is the client's but for what every request adds");
        out
    }

    #[test]
    fn a_function_tool_without_a_description_gets_an_empty_one_upstream() {
        let sent = super::request(crate::api::chat::decode::conversation(json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                      {"type": "function", "function": {"name": "g", "description": "G."}}]})));
        assert_eq!((sent["tools"][0]["function"]["description"].as_str(), sent["tools"][1]["function"]["description"].as_str()), (Some(""), Some("G.")));
    }

    #[test]
    fn the_effort_is_also_the_templates_argument_unless_the_client_gave_its_own() {
        let sent = super::request(crate::api::chat::decode::conversation(json!({"model": "m", "messages": [], "reasoning_effort": "high"})));
        assert_eq!((sent["reasoning_effort"].as_str(), sent["chat_template_kwargs"]["reasoning_effort"].as_str()), (Some("high"), Some("high")));
        let sent = super::request(crate::api::chat::decode::conversation(
            json!({"model": "m", "messages": [], "reasoning_effort": "high", "chat_template_kwargs": {"reasoning_effort": "low"}}),
        ));
        assert_eq!(sent["chat_template_kwargs"], json!({"reasoning_effort": "low"}));
        let sent = super::request(crate::api::chat::decode::conversation(json!({"model": "m", "messages": []})));
        assert!(sent.get("chat_template_kwargs").is_none());
    }

    #[test]
    fn a_chat_request_comes_out_as_it_went_in() {
        let v = json!({
            "model": "gpt-oss", "top_k": 40, "chat_template_kwargs": {"reasoning_effort": "high"},
            "messages": [
                {"role": "system", "content": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": null, "reasoning_content": "", "reasoning": "think", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}},
                    {"type": "function", "function": {"name": "g"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "1"},
                {"role": "wizard", "content": "?"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true, "x-extra": 1}},
                {"type": "function", "function": {"name": "g"}, "cache_control": {}},
                {"type": "web_search"}
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": false, "reasoning_effort": "minimal",
            "max_tokens": -1, "max_completion_tokens": 4096.0, "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": true, "extra": 1}},
            "temperature": 1, "top_p": 0.9, "presence_penalty": 0, "frequency_penalty": 0.5, "seed": 7, "logit_bias": {"1": 2},
            "n": 1, "logprobs": false, "user": "u", "metadata": {"a": "b"}
        });
        assert_eq!(round_trip(v.clone()), v);
        for odd in [json!({"stop": null, "tool_choice": null, "messages": []}), json!({"stop": 5, "tool_choice": "any", "messages": []})] {
            assert_eq!(round_trip(odd.clone()), odd);
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), any::<i32>().prop_map(Value::from), "[a-z ]{0,6}".prop_map(Value::from)]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(prop_oneof![Just("type".to_owned()), Just("text".to_owned()), Just("name".to_owned()), "[a-z]{1,3}"], inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn text() -> impl Strategy<Value = Value> {
        prop_oneof![Just(json!("")), Just(json!(" ")), "[a-z<|>]{1,8}".prop_map(Value::from)]
    }

    fn opt(key: &'static str, v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<(String, Value)>> {
        prop::option::of(v.prop_map(move |v| (key.to_owned(), v)))
    }

    fn object(fields: Vec<BoxedStrategy<Option<(String, Value)>>>) -> impl Strategy<Value = Value> {
        fields.prop_map(|f| Value::Object(f.into_iter().flatten().collect()))
    }

    fn call() -> impl Strategy<Value = Value> {
        let function = object(vec![opt("name", text()).boxed(), opt("arguments", json_value()).boxed(), opt("x", json_value()).boxed()]);
        object(vec![opt("id", text()).boxed(), opt("type", Just(json!("function"))).boxed(), opt("function", function).boxed(), opt("x", json_value()).boxed()])
    }

    fn part() -> impl Strategy<Value = Value> {
        object(vec![
            opt("type", prop_oneof![Just(json!("text")), Just(json!("image_url"))]).prop_map(|t| t.or(Some(("type".into(), json!("text"))))).boxed(),
            opt("text", text()).boxed(),
            opt("x", json_value()).boxed(),
        ])
    }

    fn message() -> impl Strategy<Value = Value> {
        let role = prop::sample::select(vec!["system", "developer", "user", "assistant", "tool", "wizard"]).prop_map(Value::from);
        let content = prop_oneof![Just(Value::Null), text(), prop::collection::vec(part(), 0..3).prop_map(Value::Array)];
        object(vec![
            opt("role", role).boxed(),
            opt("content", content).boxed(),
            opt("reasoning_content", text()).boxed(),
            opt("reasoning", text()).boxed(),
            opt("thinking", text()).boxed(),
            opt("tool_calls", prop::collection::vec(call(), 0..3).prop_map(Value::Array)).boxed(),
            opt("tool_call_id", text()).boxed(),
            opt("name", text()).boxed(),
            opt("x", json_value()).boxed(),
        ])
    }

    fn tool() -> impl Strategy<Value = Value> {
        let function = object(vec![
            Just(Some(("name".to_owned(), json!("f")))).boxed(),
            opt("description", text()).boxed(),
            opt("parameters", Just(json!({"type": "object"}))).boxed(),
            opt("strict", prop_oneof![Just(json!(true)), Just(Value::Null)]).boxed(),
            opt("x", json_value()).boxed(),
        ]);
        object(vec![Just(Some(("type".to_owned(), json!("function")))).boxed(), opt("function", function).boxed(), opt("x", json_value()).boxed()])
    }

    fn request() -> impl Strategy<Value = Value> {
        let stop = prop_oneof![Just(Value::Null), text(), prop::collection::vec(text(), 0..3).prop_map(Value::Array)];
        let choice = prop_oneof![
            Just(json!("auto")),
            Just(json!("none")),
            Just(json!("any")),
            Just(json!({"type": "function", "function": {"name": "f"}})),
            Just(json!({"type": "function", "function": {"name": "f"}, "x": 1})),
            Just(Value::Null)
        ];
        let format = prop_oneof![
            Just(json!({"type": "text"})),
            Just(json!({"type": "json_object"})),
            Just(json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "x": 1}})),
            Just(json!({"type": "grammar", "grammar": "x"}))
        ];
        let number = prop_oneof![Just(json!(-1)), Just(json!(4096.0)), Just(json!(7))];
        object(vec![
            opt("model", text()).boxed(),
            Just(Some(("messages".to_owned(), Value::Null))).boxed(),
            opt("stream", any::<bool>().prop_map(Value::from)).boxed(),
            opt("stop", stop).boxed(),
            opt("tool_choice", choice).boxed(),
            opt("tools", prop::collection::vec(tool(), 0..3).prop_map(Value::Array)).boxed(),
            opt("max_tokens", number.clone()).boxed(),
            opt("max_completion_tokens", number.clone()).boxed(),
            opt("response_format", format).boxed(),
            opt("temperature", number.clone()).boxed(),
            opt("reasoning_effort", text()).boxed(),
            opt("zz", json_value()).boxed(),
        ])
    }

    proptest! {
        /// Any chat request of the accepted shape comes out as it went in.
        #[test]
        fn any_chat_request_comes_out_as_it_went_in(req in request(), messages in prop::collection::vec(message(), 0..4)) {
            let mut v = req;
            v["messages"] = Value::Array(messages);
            // Only requests the chat edge accepts: their shape is checked first.
            prop_assume!(crate::api::chat::decode::decode(v.clone()).is_ok());
            let mut want = v.clone();
            want.as_object_mut().unwrap().remove("stream");
            prop_assert_eq!(round_trip(v), want);
        }
    }
}
