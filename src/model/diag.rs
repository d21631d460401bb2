//! Config diagnostics: every problem found in a routes file, with file, line, column and a hint.
//!
//! Parsing stops at the first syntax or type error (that is how serde works); semantic checks
//! in `compile` collect every problem they find so a user fixes a file in one pass.

use std::fmt;
use std::ops::Range;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to do about it; every diagnostic has one.
    pub hint: Option<String>,
    /// The source line and the columns (in characters) the caret underlines.
    pub snippet: Option<Snippet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub text: String,
    pub start: usize,
    pub len: usize,
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: message`, then the source line with a caret under the value, then
    /// the hint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        if let Some(s) = &self.snippet {
            let gutter = self.line.to_string().len();
            let pad = " ".repeat(gutter);
            let under: String = s.text.chars().take(s.start).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
            write!(f, "\n {pad} |\n {} | {}\n {pad} | {under}{}", self.line, s.text, "^".repeat(s.len.max(1)))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}


/// The text of a config file, for turning byte spans into lines, columns and snippets.
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// The one constructor of a diagnostic: a position, what is wrong, and what to do.
    pub fn at(&self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) -> Diagnostic {
        let (line, column) = line_col(self.text, span.start);
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
            hint: Some(hint.into()),
            snippet: snippet(self.text, span),
        }
    }

    /// Turns a TOML/serde error into a diagnostic: "did you mean" for unknown keys, the
    /// expected shape with an example for a value of the wrong type.
    pub fn from_toml(&self, err: &toml::de::Error) -> Diagnostic {
        let span = err.span().unwrap_or(0..0);
        let message = err.message().trim().to_string();
        let key = key_before(self.text, span.start);
        let hint = unknown_field_hint(&message)
            .or_else(|| type_hint(&message, key.as_deref()))
            .unwrap_or_else(|| "check the TOML syntax here: strings in double quotes, arrays as [a, b], inline tables as { key = value }".to_string());
        // The keys serde lists are in the hint (as a suggestion, or all of them).
        let message = match message.split_once(", expected") {
            Some((head, _)) if head.starts_with("unknown field") => head.to_string(),
            _ => message,
        };
        self.at(span, message, hint)
    }
}

/// The source line of `span` and where in it the span lies (clipped to the line).
fn snippet(text: &str, span: Range<usize>) -> Option<Snippet> {
    let start = span.start.min(text.len());
    let line_start = text.get(..start)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text.get(start..)?.find('\n').map_or(text.len(), |i| start + i);
    let line = text.get(line_start..line_end)?.trim_end_matches('\r');
    // a span among the carriage returns cut from the line's end points at its end (found by
    // the config fuzz target: the clamp below panicked)
    let start = start.min(line_start + line.len());
    let col = text.get(line_start..start)?.chars().count();
    let end = span.end.clamp(start, line_start + line.len());
    let len = text.get(start..end).map_or(1, |s| s.chars().count());
    Some(Snippet {
        text: line.to_string(),
        start: col,
        len,
    })
}

/// The key whose value starts at `offset` (`key = <value>` on the same line), if any.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset.min(text.len()))?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let lhs = line.trim_end().strip_suffix('=')?.trim_end();
    let key: String = lhs.chars().rev().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    (!key.is_empty()).then(|| key.chars().rev().collect())
}

/// An example of each key whose value has a shape to get wrong.
const EXAMPLES: &[(&str, &str)] = &[
    ("rate_limit", "rate_limit = [{ rate = \"100/s\", key = \"header:x-api-key\" }] (a list of tables)"),
    ("rate_limit_bypass", "rate_limit_bypass = [\"10.0.0.0/8\", \"key:internal\"]"),
    ("cache", "cache = \"on\", or cache = { ttl = \"30s\", key = { headers = [\"authorization\"] } }"),
    ("compress", "compress = \"on\", or compress = { algorithms = [\"zstd\", \"gzip\"], min_size = \"1KiB\" }"),
    ("match", "match = { path_prefix = \"/api\", methods = [\"GET\"] }"),
    ("methods", "methods = [\"GET\", \"POST\"]"),
    ("servers", "servers = [\"127.0.0.1:8000\"]"),
    ("health_check", "health_check = { path = \"/healthz\", interval = \"2s\" }"),
    ("queue", "queue = { size = 10, timeout = \"1s\" }"),
    ("invalidate_tags", "invalidate_tags = [\"orders\", \"item:{item_id}\", \"user:{header:x-user-id}\"]"),
    ("invalidate", "invalidate = [\"resource\", \"viewer\", \"/api/users/{user_id}\", \"/api/feed/**\"]"),
    ("tags", "tags = [\"item:{item_id}\"]"),
    ("trusted_proxies", "trusted_proxies = [\"10.0.0.0/8\"]"),
    ("key", "key = { headers = [\"authorization\"], cookies = [\"session\"], ignore_query = [\"utm_source\"] }"),
    ("warm", "[[cache.warm]] with path = \"/api/static\""),
    ("latency_buckets", "latency_buckets = [0.005, 0.05, 0.5, 5.0]"),
    ("resource_attributes", "resource_attributes = { \"deployment.environment\" = \"prod\" }"),
    ("routes", "[[routes]] tables, each with name, match and upstream"),
    ("upstreams", "[upstreams.api] with servers = [\"127.0.0.1:8000\"]"),
];

/// For "invalid type: X, expected Y": the expected shape and an example of the key.
fn type_hint(message: &str, key: Option<&str>) -> Option<String> {
    let expected = message.strip_prefix("invalid type: ")?.split_once(", expected ")?.1;
    let example = key.and_then(|k| EXAMPLES.iter().find(|(name, _)| *name == k)).map(|(_, e)| *e);
    Some(match (key, example) {
        (Some(k), Some(e)) => format!("`{k}` takes {expected}, e.g. {e}"),
        (Some(k), None) => format!("`{k}` takes {expected}"),
        (None, _) => format!("this value must be {expected}"),
    })
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// serde says "unknown field `x`, expected one of `a`, `b`"; suggest the nearest expected key,
/// or say which keys exist. (serde's message is the only place the expected keys are listed.)
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    Some(match suggest(field, &candidates) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("remove it; this table takes {}", candidates.join(", ")),
    })
}

/// The candidate closest to `input`, if one is close enough to be a likely typo.
pub fn suggest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(input, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A byte range of the file.
pub type Span = std::ops::Range<usize>;

/// Collects diagnostics while a file is compiled: every section and every policy reports into
/// one, so all problems are found in one pass.
pub struct Diagnostics<'a> {
    src: &'a Source<'a>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(src: &'a Source<'a>) -> Self {
        Diagnostics { src, errors: Vec::new(), warnings: Vec::new() }
    }

    /// The file's text (for line numbers in messages).
    pub fn text(&self) -> &'a str {
        self.src.text
    }

    /// Records an error (once per position and message: a bad value in `[defaults]` is
    /// merged into every route but reported once, at its own line) and returns `None`.
    pub fn error<T>(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) -> Option<T> {
        let d = self.src.at(span, msg, hint);
        if !self.errors.contains(&d) {
            self.errors.push(d);
        }
        None
    }

    /// Records a warning: the file is used, but a value was read differently than written.
    pub fn warn(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) {
        let d = self.src.at(span, msg, hint);
        if !self.warnings.contains(&d) {
            self.warnings.push(d);
        }
    }

    /// A duration that must be above zero, or `default` when unset (an error is recorded for
    /// zero).
    pub fn positive(&mut self, v: Option<&toml::Spanned<super::units::Dur>>, key: &str, default: std::time::Duration) -> std::time::Duration {
        match v {
            Some(t) if t.get_ref().0.is_zero() => self
                .error(t.span(), format!("`{key}` must be above zero"), format!("leave `{key}` out for the default, {default:?}"))
                .unwrap_or(default),
            Some(t) => t.get_ref().0,
            None => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }

    #[test]
    fn unknown_field_gets_a_suggestion() {
        let hint = unknown_field_hint("unknown field `upstraem`, expected one of `name`, `match`, `upstream`");
        assert_eq!(hint.as_deref(), Some("did you mean `upstream`?"));
        assert_eq!(unknown_field_hint("unknown field `zzz`, expected `name`").as_deref(), Some("remove it; this table takes name"));
    }

    #[test]
    fn the_caret_underlines_the_value() {
        let text = "a = 1\ntimeout = \"5 parsecs\"\n";
        let d = Source { file: "t.toml", text }.at(16..27, "invalid duration", "write e.g. \"5s\"");
        let shown = d.to_string();
        assert_eq!(
            shown,
            "t.toml:2:11: invalid duration\n   |\n 2 | timeout = \"5 parsecs\"\n   |           ^^^^^^^^^^^\n  hint: write e.g. \"5s\""
        );
    }
}
