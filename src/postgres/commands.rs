//! The session commands clients send around their queries: transactions, `SET`, `SHOW`,
//! `RESET`, `DISCARD`... The lake is read-only and every query sees the latest commit, so
//! a transaction changes nothing and a setting is only remembered for `SHOW`. None of them
//! reaches the query engine, which refuses anything that is not a query.

/// A session command, as parsed from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Begin,
    Commit,
    Rollback,
    /// `SET name = value`, `SET name TO value`, `SET TIME ZONE value`; the name lower-cased.
    Set {
        name: String,
        value: String,
    },
    /// `SHOW name`; the name lower-cased.
    Show(String),
    ShowAll,
    Reset(Option<String>),
    /// Accepted and answered with this tag, with no effect: `DISCARD ALL`, `DEALLOCATE`,
    /// `SET SESSION CHARACTERISTICS ...`, `SAVEPOINT`...
    Ignored(&'static str),
}

impl Command {
    /// The command `piece` is, or `None` for a statement for the query engine.
    pub fn parse(piece: &str) -> Option<Command> {
        let text = strip_comments(piece);
        let words: Vec<&str> = text
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .collect();
        let first = words.first()?.to_ascii_uppercase();
        let rest = |n: usize| words.get(n..).unwrap_or_default().join(" ");
        let upper_rest = |n: usize| rest(n).to_ascii_uppercase();
        Some(match first.as_str() {
            "BEGIN" | "START" => Command::Begin,
            "COMMIT" | "END" => Command::Commit,
            "ROLLBACK" | "ABORT" if !upper_rest(1).starts_with("TO") => Command::Rollback,
            "ROLLBACK" => Command::Ignored("ROLLBACK"),
            "SAVEPOINT" => Command::Ignored("SAVEPOINT"),
            "RELEASE" => Command::Ignored("RELEASE"),
            "DISCARD" => Command::Ignored("DISCARD ALL"),
            "DEALLOCATE" => Command::Ignored("DEALLOCATE"),
            "UNLISTEN" => Command::Ignored("UNLISTEN"),
            "SET" => set(&words[1..]),
            "RESET" => match upper_rest(1).as_str() {
                "ALL" => Command::Reset(None),
                _ => Command::Reset(Some(setting_name(&rest(1)))),
            },
            // DataFusion's own SHOW TABLES and SHOW COLUMNS are queries.
            "SHOW"
                if words.get(1).is_some_and(|w| {
                    ["TABLES", "COLUMNS", "FULL", "FUNCTIONS", "CREATE"]
                        .contains(&w.to_ascii_uppercase().as_str())
                }) =>
            {
                return None;
            }
            "SHOW" => match upper_rest(1).as_str() {
                "ALL" => Command::ShowAll,
                "TRANSACTION ISOLATION LEVEL" => Command::Show("transaction_isolation".into()),
                "TIME ZONE" => Command::Show("timezone".into()),
                _ => Command::Show(setting_name(&rest(1))),
            },
            _ => return None,
        })
    }

    /// The command tag PostgreSQL answers it with.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Rollback => "ROLLBACK",
            Command::Set { .. } => "SET",
            Command::Show(_) | Command::ShowAll => "SHOW",
            Command::Reset(_) => "RESET",
            Command::Ignored(tag) => tag,
        }
    }
}

fn set(words: &[&str]) -> Command {
    let mut words = words;
    if let Some(scope) = words.first()
        && (scope.eq_ignore_ascii_case("SESSION") || scope.eq_ignore_ascii_case("LOCAL"))
    {
        words = &words[1..];
    }
    let text = words.join(" ");
    let upper = text.to_ascii_uppercase();
    if upper.starts_with("CHARACTERISTICS") || upper.starts_with("TRANSACTION") {
        return Command::Ignored("SET");
    }
    if let Some(value) = upper.strip_prefix("TIME ZONE") {
        let value = &text[text.len() - value.len()..];
        return Command::Set {
            name: "timezone".into(),
            value: unquote(value),
        };
    }
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name.to_string(), value.to_string()),
        None => {
            let mut parts = text.splitn(3, ' ');
            let name = parts.next().unwrap_or_default().to_string();
            let _to = parts.next();
            (name, parts.next().unwrap_or_default().to_string())
        }
    };
    Command::Set {
        name: setting_name(&name),
        value: unquote(&value),
    }
}

fn setting_name(name: &str) -> String {
    unquote(name).to_ascii_lowercase()
}

/// A value without its quotes: `'UTC'` is `UTC`, `"x"` is `x`.
fn unquote(value: &str) -> String {
    let value = value.trim();
    for quote in ['\'', '"'] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.replace(&format!("{quote}{quote}"), &quote.to_string());
        }
    }
    value.to_string()
}

/// The text without its comments, which a client may put before a command.
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
            out.push(' ');
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, next)| next);
            out.push(' ');
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The statements of a simple query, split at the semicolons that are not inside a string,
/// a quoted name, a dollar-quoted body or a comment. Empty statements are dropped.
pub fn split(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let bytes = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => i = closing(bytes, i + 1, b'\'', escape_string(bytes, i)),
            b'"' => i = closing(bytes, i + 1, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            b'$' => i = dollar_quoted(text, i),
            b';' => {
                pieces.push(&text[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    pieces.push(&text[start..]);
    pieces
        .into_iter()
        .filter(|p| !strip_comments(p).trim().is_empty())
        .collect()
}

/// Whether the string opened at `quote` is an `E'...'` string, where a backslash escapes
/// (in a standard string, with standard_conforming_strings on, it is a plain character).
fn escape_string(bytes: &[u8], quote: usize) -> bool {
    let prefixed = quote >= 1 && bytes[quote - 1].eq_ignore_ascii_case(&b'e');
    let word_before =
        quote >= 2 && (bytes[quote - 2].is_ascii_alphanumeric() || bytes[quote - 2] == b'_');
    prefixed && !word_before
}

/// The index after the quote closing a string or name opened before `from` (a doubled
/// quote is part of the text, and so is a quote after a backslash in an `E'...'` string).
fn closing(bytes: &[u8], from: usize, quote: u8, escapes: bool) -> usize {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            c if c == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The index after a `$tag$ ... $tag$` body starting at `at`, or after the `$` when it
/// opens none (a `$1` parameter).
fn dollar_quoted(text: &str, at: usize) -> usize {
    let after = &text[at + 1..];
    let Some(end) = after.find('$') else {
        return at + 1;
    };
    let tag = &after[..end];
    if !tag.chars().all(|c| c.is_alphanumeric() || c == '_')
        || tag.starts_with(|c: char| c.is_ascii_digit())
    {
        return at + 1;
    }
    let delimiter = format!("${tag}$");
    let body = at + delimiter.len();
    text[body..]
        .find(&delimiter)
        .map_or(text.len(), |n| body + n + delimiter.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let text = "SELECT 'a;b', \"c;d\"; -- x;y\nSELECT $$e;f$$ /* g;h */; SELECT $1;;  ";
        assert_eq!(
            split(r"select 'a\' as x; select E'b\';c'"),
            [r"select 'a\' as x", r" select E'b\';c'"]
        );
        assert_eq!(
            split(text),
            [
                "SELECT 'a;b', \"c;d\"",
                " -- x;y\nSELECT $$e;f$$ /* g;h */",
                " SELECT $1"
            ]
        );
        assert!(split("  ; -- nothing\n").is_empty());
    }

    #[test]
    fn commands_are_recognised_and_queries_are_not() {
        let set = |name: &str, value: &str| Command::Set {
            name: name.into(),
            value: value.into(),
        };
        assert_eq!(
            Command::parse("SET extra_float_digits = 3"),
            Some(set("extra_float_digits", "3"))
        );
        assert_eq!(
            Command::parse("set application_name to 'PostgreSQL JDBC Driver'"),
            Some(set("application_name", "PostgreSQL JDBC Driver"))
        );
        assert_eq!(
            Command::parse("SET SESSION TIME ZONE 'Europe/Zurich'"),
            Some(set("timezone", "Europe/Zurich"))
        );
        assert_eq!(
            Command::parse("/* tool */ SHOW TRANSACTION ISOLATION LEVEL"),
            Some(Command::Show("transaction_isolation".into()))
        );
        assert_eq!(
            Command::parse("show \"TimeZone\""),
            Some(Command::Show("timezone".into()))
        );
        assert_eq!(
            Command::parse("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Some(Command::Ignored("SET"))
        );
        assert_eq!(Command::parse("BEGIN READ ONLY"), Some(Command::Begin));
        assert_eq!(
            Command::parse("ROLLBACK TO SAVEPOINT s"),
            Some(Command::Ignored("ROLLBACK"))
        );
        assert_eq!(Command::parse("SELECT 1"), None);
        assert_eq!(Command::parse("SHOW TABLES"), None);
        assert_eq!(Command::parse("show columns from orders"), None);
        assert_eq!(Command::parse("INSERT INTO orders VALUES (1)"), None);
        assert_eq!(Command::parse("WITH x AS (SELECT 1) SELECT * FROM x"), None);
    }
}
