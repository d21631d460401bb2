//! Typed config values read from strings: durations (`"250ms"`, `"5s"`), sizes (`"64KiB"`),
//! and environment expansion (`${VAR}`, `${VAR:-default}`) applied to every string value.
//!
//! Expansion happens while deserializing, so an unset variable is reported at the line and
//! column of the value that names it.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::time::Duration;

/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
pub fn expand_env(input: &str) -> Result<String, String> {
    expand_with(input, |name| std::env::var(name).ok())
}

fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use ${{{name}:-default}} for a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A string value after environment expansion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvString(pub String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw).map(EnvString).map_err(de::Error::custom)
    }
}

impl std::ops::Deref for EnvString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A string or a list of strings: `forwarded = "both"`, `forwarded = ["x-forwarded-for"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrList(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = OneOrList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrList, E> {
                Ok(OneOrList(vec![v.to_string()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as `"250ms"`, `"5s"`, `"1m30s"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dur(pub Duration);

/// A cache `ttl`: a duration, or `"origin"` (only what the backend's headers allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Origin,
    Default(Duration),
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let EnvString(s) = EnvString::deserialize(d)?;
        if s.trim() == "origin" {
            return Ok(Ttl::Origin);
        }
        humantime::parse_duration(s.trim()).map(Ttl::Default).map_err(|e| {
            de::Error::custom(format!("invalid ttl {s:?} ({e}); write a duration such as \"30s\", or \"origin\""))
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let EnvString(s) = EnvString::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"250ms\", \"5s\", \"2m\"")))
    }
}

/// A size in bytes written as `"64KiB"`, `"1MiB"`, `"10MB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as \"64KiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n).map(Size).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_str<E: de::Error>(self, raw: &str) -> Result<Size, E> {
                let s = expand_env(raw).map_err(E::custom)?;
                s.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| Size(b.as_u64()))
                    .map_err(|e| E::custom(format!("invalid size {s:?} ({e}); write e.g. \"64KiB\", \"1MiB\"")))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"off"`, `"on"` (built-in settings), or a table of settings.
#[derive(Debug, Clone)]
pub enum Toggle<T> {
    Off,
    On(Option<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Toggle<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Toggle<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"off\", \"on\" or a table of settings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "off" => Ok(Toggle::Off),
                    "on" => Ok(Toggle::On(None)),
                    other => Err(E::custom(format!("expected \"off\", \"on\" or a table, found {other:?}"))),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v { Toggle::On(None) } else { Toggle::Off })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|t| Toggle::On(Some(t)))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        assert_eq!(expand_with("a ${TOKEN} b", lookup).unwrap(), "a s3cret b");
        assert_eq!(expand_with("${MISSING:-x}", lookup).unwrap(), "x");
        assert_eq!(expand_with("${EMPTY:-x}", lookup).unwrap(), "x");
        assert_eq!(expand_with("${EMPTY}", lookup).unwrap(), "");
        assert_eq!(expand_with("cost $$5", lookup).unwrap(), "cost $5");
        assert_eq!(expand_with("plain", lookup).unwrap(), "plain");
        assert!(expand_with("${MISSING}", lookup).unwrap_err().contains("MISSING"));
        assert!(expand_with("${OPEN", lookup).is_err());
    }
}
