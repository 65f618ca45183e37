//! `${VAR}` and `${VAR:-default}` interpolation on the config text, before TOML parsing.
//!
//! Placeholders inside a TOML basic string (`"…"`) have `\` and `"` escaped, so a value can
//! never break the file's syntax. Comments are left alone, so commented-out examples such as
//! `# api_keys = ["${PROXY_API_KEY}"]` do not demand their variables.

/// Replaces placeholders using `lookup`; every missing variable without a default is reported.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        let mut in_str: Option<char> = None; // the quote char of the string we're in
        let mut chars = line.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match (in_str, c) {
                (None, '#') => {
                    out.push_str(&line[i..]);
                    break;
                }
                (None, '"' | '\'') => {
                    in_str = Some(c);
                    out.push(c);
                }
                (Some('"'), '\\') => {
                    out.push(c);
                    if let Some((_, n)) = chars.next() {
                        out.push(n);
                    }
                }
                (Some(q), c) if c == q => {
                    in_str = None;
                    out.push(c);
                }
                (_, '$') if line[i..].starts_with("${") => {
                    let Some(close) = line[i..].find('}') else {
                        out.push(c);
                        continue;
                    };
                    let inner = &line[i + 2..i + close];
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (inner, None),
                    };
                    // As in the shell, `:-` also replaces a variable that is set but empty.
                    let value = match (lookup(name), default) {
                        (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
                        (Some(v), _) => v,
                        (None, Some(d)) => d.to_owned(),
                        (None, None) => {
                            errors.push(format!("line {}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)", lineno + 1));
                            String::new()
                        }
                    };
                    if in_str == Some('"') {
                        for ch in value.chars() {
                            match ch {
                                '\\' => out.push_str("\\\\"),
                                '"' => out.push_str("\\\""),
                                '\n' => out.push_str("\\n"),
                                _ => out.push(ch),
                            }
                        }
                    } else {
                        out.push_str(&value);
                    }
                    // Skip the placeholder's remaining characters.
                    while let Some(&(j, _)) = chars.peek() {
                        if j <= i + close {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                _ => out.push(c),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("x".into()),
            "Q" => Some("a\"b\\c".into()),
            "N" => Some("120".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_and_defaults() {
        assert_eq!(interpolate("a = \"${A}\"\n", env).unwrap(), "a = \"x\"\n");
        assert_eq!(interpolate("a = \"${B:-dflt}\"", env).unwrap(), "a = \"dflt\"");
        assert_eq!(interpolate("a = ${N:-3}", env).unwrap(), "a = 120");
        assert_eq!(interpolate("a = \"${B:-}\"", env).unwrap(), "a = \"\"");
        // Found in review: MAX_RETRIES= (set, empty) gave `max_retries = `, a syntax error.
        assert_eq!(interpolate("a = ${EMPTY:-3}", env).unwrap(), "a = 3");
        assert_eq!(interpolate("a = \"${EMPTY}\"", env).unwrap(), "a = \"\"");
    }

    #[test]
    fn escapes_inside_strings_and_skips_comments() {
        assert_eq!(interpolate("a = \"${Q}\"", env).unwrap(), "a = \"a\\\"b\\\\c\"");
        assert_eq!(interpolate("# x = \"${MISSING}\"\n", env).unwrap(), "# x = \"${MISSING}\"\n");
        assert_eq!(interpolate("a = 1 # ${MISSING}", env).unwrap(), "a = 1 # ${MISSING}");
    }

    #[test]
    fn missing_variables_are_all_named() {
        let e = interpolate("a = \"${X1}\"\nb = \"${X2}\"", env).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].contains("X1") && e[1].contains("line 2") && e[1].contains("X2"));
    }
}
