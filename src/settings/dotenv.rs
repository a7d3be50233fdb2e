//! `.env` files, read as docker compose and the dotenv libraries read them (and as `set -a;
//! . ./.env` reads simple ones): `KEY=VALUE` lines, an optional `export `, `#` comments, single
//! quotes (literal) and double quotes (`\n`, `\"`, `\\`, `\$` escapes), both of which may span
//! lines. `$VAR` is not expanded.

/// One `KEY=VALUE` of the file; a value that cannot be read says why.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// 1-based, where the assignment starts.
    pub line: usize,
    pub value: Result<String, String>,
}

/// A line of the file, or the lines of one quoted value.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Entry(Entry),
    /// No assignment: blank, a comment, or something else (1-based, as written).
    Other {
        line: usize,
        text: String,
    },
}

/// Every assignment of `text`, in order; lines that are not assignments are skipped. Fails only
/// on a quote that is never closed, since then nobody can tell where the next line starts.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let lines = parse_lines(text).map_err(|(line, why)| format!("line {line}: {why}"))?;
    Ok((lines.into_iter())
        .filter_map(|line| match line {
            Line::Entry(entry) => Some(entry),
            Line::Other { .. } => None,
        })
        .collect())
}

/// Every line of `text`, in order, as `parse` reads it; an unclosed quote fails with the
/// number of the line where it opens, and why.
pub fn parse_lines(text: &str) -> Result<Vec<Line>, (usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut entries = Vec::new();
    let mut next = 0;
    while next < lines.len() {
        let number = next + 1;
        let written = lines[next];
        let line = written.trim_start();
        next += 1;
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .map_or(line, str::trim_start);
        let other = || Line::Other {
            line: number,
            text: written.to_string(),
        };
        let Some((key, raw)) = line.split_once('=') else {
            entries.push(other()); // blank, a comment, or not ours to judge
            continue;
        };
        let key = key.trim_end();
        if !is_key(key) {
            entries.push(other());
            continue;
        }
        let rest = raw.trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let mut body = rest[1..].to_string();
                loop {
                    if let Some((value, after)) = close(&body, quote) {
                        break after_quote(after).map(|()| value);
                    }
                    let Some(more) = lines.get(next) else {
                        return Err((
                            number,
                            format!("the {quote} that opens the value of {key} is never closed"),
                        ));
                    };
                    body.push('\n');
                    body.push_str(more);
                    next += 1;
                }
            }
            _ => Ok(unquoted(raw)),
        };
        entries.push(Line::Entry(Entry {
            key: key.to_string(),
            line: number,
            value,
        }));
    }
    Ok(entries)
}

fn is_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The value up to the closing `quote`, and the text after it; `None` while it is not closed.
fn close(body: &str, quote: char) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c == quote => return Some((value, &body[at + 1..])),
            '\\' if quote == '"' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, escaped @ ('"' | '\\' | '$'))) => value.push(escaped),
                // A backslash at the end of a line continues it, as in a shell.
                Some((_, '\n')) => {}
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            },
            c => value.push(c),
        }
    }
    None
}

/// Only a comment may follow a closing quote.
fn after_quote(after: &str) -> Result<(), String> {
    let after = after.trim();
    match after.is_empty() || after.starts_with('#') {
        true => Ok(()),
        false => Err(format!(
            "unexpected `{after}` after the closing quote: quote the whole value"
        )),
    }
}

/// An unquoted value ends at a `#` that starts a word (a comment), as in a shell.
fn unquoted(raw: &str) -> String {
    let end = raw
        .char_indices()
        .find(|&(at, c)| c == '#' && (at == 0 || raw[..at].ends_with(char::is_whitespace)))
        .map_or(raw.len(), |(at, _)| at);
    raw[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(String, Result<String, String>)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    fn ok(key: &str, value: &str) -> (String, Result<String, String>) {
        (key.to_string(), Ok(value.to_string()))
    }

    #[test]
    fn reads_what_shells_and_dotenv_libraries_write() {
        let text = "# a comment\n\
                    \n\
                    A=plain\n\
                    export B=exported # trailing comment\n\
                    C = spaced \n\
                    D=\"double # not a comment\" # comment\n\
                    E='single $HOME \\n'\n\
                    F=\"esc \\\"q\\\" \\\\ \\$x \\n end\"\n\
                    G=url#fragment\n\
                    H=\n\
                    I=\"two\n\
                    lines\"\n\
                    not an assignment\n\
                    9BAD=x\n\
                    J=last\n\
                    A=again\n";
        assert_eq!(
            values(text),
            [
                ok("A", "plain"),
                ok("B", "exported"),
                ok("C", "spaced"),
                ok("D", "double # not a comment"),
                ok("E", "single $HOME \\n"),
                ok("F", "esc \"q\" \\ $x \n end"),
                ok("G", "url#fragment"),
                ok("H", ""),
                ok("I", "two\nlines"),
                ok("J", "last"),
                ok("A", "again"),
            ]
        );
        assert_eq!(parse("x\nI='a\nb'\nK=1\n").unwrap()[1].line, 4);
    }

    #[test]
    fn a_bad_value_is_reported_on_its_entry_and_an_unclosed_quote_fails_the_file() {
        let entries = parse("A=\"x\" y\nB=fine\n").unwrap();
        assert!(entries[0].value.as_ref().unwrap_err().contains("`y`"));
        assert_eq!(entries[1].value, Ok("fine".to_string()));
        let err = parse("A=1\nB='open\nC=2\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("B"), "{err}");
    }
}
