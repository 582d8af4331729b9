//! Which series an alarm watches, written as a PromQL instant selector:
//! `cirkel_rpo_exposure_seconds{source="postgres/main",kind!="dump"}`.
//!
//! As in PromQL, a label a series lacks reads as the empty string, so
//! `scrape=""` matches only series without a `scrape` label (cirkel's own)
//! and `scrape!=""` only scraped ones. Regular-expression matchers are
//! refused: they would need a regex engine, and equality covers the
//! alarms of the plan.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// One label matcher.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Matcher {
    pub label: String,
    /// `true` for `!=`.
    pub negated: bool,
    pub value: String,
}

/// A metric name and label matchers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    pub name: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// Parses a selector; the error says where and what is wrong.
    pub fn parse(text: &str) -> Result<Selector, Error> {
        Parser { text, pos: 0 }.selector()
    }

    /// Whether the series `name{labels}` is one this selector watches.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        name == self.name
            && self.matchers.iter().all(|m| {
                let v = labels.get(&m.label).map_or("", String::as_str);
                (v == m.value) != m.negated
            })
    }
}

/// A metric name as Prometheus allows it.
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A label name as Prometheus allows it.
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes a label value in double quotes with PromQL's escapes.
pub(crate) fn quote(value: &str, out: &mut impl fmt::Write) -> fmt::Result {
    out.write_char('"')?;
    for c in value.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c => out.write_char(c)?,
        }
    }
    out.write_char('"')
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.matchers.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}{}", m.label, if m.negated { "!=" } else { "=" })?;
            quote(&m.value, f)?;
        }
        f.write_str("}")
    }
}

impl FromStr for Selector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Selector::parse(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Selector::parse(&s).map_err(serde::de::Error::custom)
    }
}

struct Parser<'t> {
    text: &'t str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> Error {
        let column = self.text[..self.pos].chars().count() + 1;
        Error::Selector { selector: self.text.to_string(), column, message: message.into() }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn ident(&mut self, metric: bool) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':')))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.text[start..self.pos]
    }

    fn selector(mut self) -> Result<Selector, Error> {
        self.skip_space();
        let name = self.ident(true).to_string();
        if name.is_empty() {
            return Err(match self.peek() {
                Some('{') => self.err("a metric name is needed before `{`, e.g. cirkel_member_up{member=\"a\"}"),
                None => self.err("empty selector; expected a metric name such as cirkel_member_up"),
                Some(c) => self.err(format!("`{c}` cannot start a metric name; use letters, digits, `_` and `:`")),
            });
        }
        if !is_metric_name(&name) {
            self.pos -= name.len();
            return Err(self.err(format!("`{name}` is not a metric name: it cannot start with a digit")));
        }
        self.skip_space();
        let mut matchers = Vec::new();
        if self.peek() == Some('{') {
            self.pos += 1;
            loop {
                self.skip_space();
                if self.peek() == Some('}') {
                    self.pos += 1;
                    break;
                }
                matchers.push(self.matcher()?);
                self.skip_space();
                match self.peek() {
                    Some(',') => self.pos += 1,
                    Some('}') => {
                        self.pos += 1;
                        break;
                    }
                    None => return Err(self.err("unclosed `{`; end the label matchers with `}`")),
                    Some(c) => return Err(self.err(format!("expected `,` or `}}` after a label matcher, found `{c}`"))),
                }
            }
        }
        self.skip_space();
        if let Some(c) = self.peek() {
            return Err(
                self.err(format!("unexpected `{c}` after the selector; expected only name{{label=\"value\",...}}"))
            );
        }
        Ok(Selector { name, matchers })
    }

    fn matcher(&mut self) -> Result<Matcher, Error> {
        let label = self.ident(false).to_string();
        if label.is_empty() {
            return Err(match self.peek() {
                None => self.err("unclosed `{`; end the label matchers with `}`"),
                Some(c) => self.err(format!("expected a label name, found `{c}`")),
            });
        }
        if !is_label_name(&label) {
            self.pos -= label.len();
            return Err(self.err(format!("`{label}` is not a label name: it cannot start with a digit")));
        }
        self.skip_space();
        let negated = if self.rest().starts_with("!=") {
            self.pos += 2;
            true
        } else if self.rest().starts_with("=~") || self.rest().starts_with("!~") {
            return Err(
                self.err("regular-expression matchers (=~, !~) are not supported; use = or !=, one alarm per value")
            );
        } else if self.rest().starts_with('=') {
            self.pos += 1;
            false
        } else {
            return Err(match self.peek() {
                None => self.err(format!("`{label}` needs a value: {label}=\"...\"")),
                Some(c) => self.err(format!("expected = or != after `{label}`, found `{c}`")),
            });
        };
        self.skip_space();
        let value = self.string()?;
        Ok(Matcher { label, negated, value })
    }

    fn string(&mut self) -> Result<String, Error> {
        let quote = match self.peek() {
            Some(q @ ('"' | '\'')) => q,
            None => return Err(self.err("expected a quoted value, found the end")),
            Some(c) => return Err(self.err(format!("expected a quoted value such as \"main\", found `{c}`"))),
        };
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.pos = start;
                return Err(self.err(format!("unterminated value; close it with {quote}")));
            };
            self.pos += c.len_utf8();
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("a `\\` ends the selector; escape it as `\\\\`"));
                    };
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        '\\' | '"' | '\'' => e,
                        _ => {
                            self.pos -= 1;
                            return Err(self.err(format!("unknown escape `\\{e}`; use \\\\, \\\", \\' or \\n")));
                        }
                    });
                    self.pos += e.len_utf8();
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_and_prints_back() {
        let s =
            Selector::parse(r#" cirkel_rpo_exposure_seconds { source = "postgres/main" , kind!='dump', } "#).unwrap();
        assert_eq!(s.name, "cirkel_rpo_exposure_seconds");
        assert_eq!(s.matchers.len(), 2);
        assert_eq!(s.to_string(), r#"cirkel_rpo_exposure_seconds{source="postgres/main",kind!="dump"}"#);
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        let escaped = Selector::parse(r#"m{a="q\"b\\c\nd"}"#).unwrap();
        assert_eq!(escaped.matchers[0].value, "q\"b\\c\nd");
        assert_eq!(Selector::parse(&escaped.to_string()).unwrap(), escaped);
        assert_eq!(Selector::parse("web:up{}").unwrap().to_string(), "web:up");
    }

    #[test]
    fn matches_as_promql_does() {
        let s = Selector::parse(r#"up{source="a",scrape=""}"#).unwrap();
        assert!(s.matches("up", &labels(&[("source", "a")])));
        assert!(!s.matches("up", &labels(&[("source", "a"), ("scrape", "web")])));
        assert!(!s.matches("up", &labels(&[("source", "b")])));
        assert!(!s.matches("down", &labels(&[("source", "a")])));
        let n = Selector::parse(r#"up{kind!="base"}"#).unwrap();
        assert!(n.matches("up", &labels(&[])));
        assert!(!n.matches("up", &labels(&[("kind", "base")])));
        let present = Selector::parse(r#"up{scrape!=""}"#).unwrap();
        assert!(present.matches("up", &labels(&[("scrape", "web")])));
        assert!(!present.matches("up", &labels(&[])));
    }

    #[test]
    fn errors_say_what_and_where() {
        for (text, column, needle) in [
            ("", 1, "empty selector"),
            ("{a=\"b\"}", 1, "metric name is needed"),
            ("9lives", 1, "cannot start with a digit"),
            ("m{", 3, "unclosed"),
            ("m{a}", 4, "expected = or !="),
            ("m{a=b}", 5, "quoted value"),
            ("m{a=~\"x\"}", 4, "not supported"),
            ("m{a=\"x}", 5, "unterminated"),
            ("m{a=\"x\" b=\"y\"}", 9, "expected `,` or `}`"),
            ("m{a=\"\\q\"}", 6, "unknown escape"),
            ("m x", 3, "unexpected `x`"),
            ("m{1a=\"x\"}", 3, "cannot start with a digit"),
            ("m{-=\"x\"}", 3, "expected a label name"),
            ("-m", 1, "cannot start a metric name"),
        ] {
            match Selector::parse(text) {
                Err(Error::Selector { column: c, message, .. }) => {
                    assert!(message.contains(needle), "{text}: {message}");
                    assert_eq!(c, column, "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
