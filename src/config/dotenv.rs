//! `.env` files, read the way the Python proxy read them (python-dotenv): `KEY=value` lines,
//! `export` allowed, `#` comments, single quotes literal, double quotes with `\n`-style
//! escapes. The real environment wins over the file. A line that is none of these is an
//! error naming the file and the line, never silently skipped.

use std::path::Path;

/// Parses `text` (from `file`, for messages) into `(key, value)` pairs in file order.
pub fn parse(text: &str, file: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = || format!("{file}:{}", i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            return Err(format!("{}: expected KEY=value, found {:?}", at(), raw.trim()));
        };
        let key = key.trim_end();
        let valid_key = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_key {
            return Err(format!("{}: invalid variable name {key:?}", at()));
        }
        let value = value(rest.trim_start()).map_err(|e| format!("{}: {e}", at()))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn value(v: &str) -> Result<String, String> {
    let after_quote = |rest: &str| -> Result<(), String> {
        let rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with('#') {
            Ok(())
        } else {
            Err(format!("unexpected {rest:?} after the closing quote"))
        }
    };
    if let Some(body) = v.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated single quote")?;
        after_quote(&body[end + 1..])?;
        return Ok(body[..end].to_owned());
    }
    if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    after_quote(&body[i + 1..])?;
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(c @ ('"' | '\\' | '\'')) => out.push(c),
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err("unterminated double quote".into());
    }
    // Unquoted: a `#` after white space starts a comment.
    let end = v.char_indices().find(|&(i, c)| c == '#' && i > 0 && v[..i].ends_with([' ', '\t'])).map(|(i, _)| i).unwrap_or(v.len());
    Ok(v[..end].trim().to_owned())
}

/// Reads `path` and sets each variable the environment does not have yet. `required`: a
/// missing file is an error (an `--env-file` given by name), else it is fine (`./.env`).
///
/// Must run before any other thread exists (it writes the process environment).
pub fn apply(path: &Path, required: bool) -> Result<usize, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let mut n = 0;
    for (k, v) in parse(&text, &path.display().to_string())? {
        if std::env::var_os(&k).is_none() {
            std::env::set_var(&k, v);
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_python_proxy_dotenv_shapes_parse() {
        let text = "# comment\n\nUPSTREAM_BASE_URL=http://gpu:8080/v1\nexport PROXY_MODE=openai_tool_calls\nREAD_TIMEOUT = 45 # seconds\nEXTRA_STOP_SEQUENCES=\"END,\\\"Q\\\"\"\nLOG_LEVEL='DEBUG # not a comment'\nEMPTY=\nHASH=a#b\n";
        let got = parse(text, ".env").unwrap();
        let want = [
            ("UPSTREAM_BASE_URL", "http://gpu:8080/v1"),
            ("PROXY_MODE", "openai_tool_calls"),
            ("READ_TIMEOUT", "45"),
            ("EXTRA_STOP_SEQUENCES", "END,\"Q\""),
            ("LOG_LEVEL", "DEBUG # not a comment"),
            ("EMPTY", ""),
            ("HASH", "a#b"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_the_line() {
        assert_eq!(parse("A=1\nthis is not a setting\n", ".env").unwrap_err(), ".env:2: expected KEY=value, found \"this is not a setting\"");
        assert_eq!(parse("A=\"open\n", "x.env").unwrap_err(), "x.env:1: unterminated double quote");
        assert_eq!(parse("1A=x", ".env").unwrap_err(), ".env:1: invalid variable name \"1A\"");
        assert!(parse("A='x' y", ".env").unwrap_err().contains("after the closing quote"));
    }
}
