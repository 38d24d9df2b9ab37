//! containerd's filter syntax, the part snapshot listing uses: a filter is
//! `,`-joined selectors, each a field path (`name`, `parent`, `kind`,
//! `labels."<key>"`) alone (present) or with `==` or `!=` and a value,
//! plain or double-quoted. containerd itself sends
//! `labels."containerd.io/snapshot.ref"==<chain>,parent=="<parent>"` when
//! it looks for a remote snapshot. Regular-expression matching (`~=`) is
//! refused rather than guessed.

use std::collections::BTreeMap;

use imaged_common::Error;

/// One parsed filter: all of its selectors must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter(Vec<Selector>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

/// What a filter sees of a snapshot.
pub struct Fields<'a> {
    pub name: &'a str,
    pub parent: &'a str,
    pub kind: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Filter {
    /// Parses one filter string.
    pub fn parse(text: &str) -> Result<Filter, Error> {
        let bad = |why: &str| Error::invalid_argument(format!("invalid filter {text:?}: {why}"));
        let mut chars = text.chars().peekable();
        let mut selectors = Vec::new();
        loop {
            let mut path = Vec::new();
            loop {
                let part = match chars.peek() {
                    Some('"') => quoted(&mut chars).ok_or_else(|| bad("unterminated quote"))?,
                    _ => {
                        let mut part = String::new();
                        while let Some(&c) = chars.peek() {
                            if c.is_ascii_alphanumeric() || c == '_' {
                                part.push(c);
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        part
                    }
                };
                if part.is_empty() {
                    return Err(bad("expected a field name"));
                }
                path.push(part);
                if chars.peek() == Some(&'.') {
                    chars.next();
                } else {
                    break;
                }
            }
            let op = match (chars.next(), chars.peek()) {
                (None, _) | (Some(','), _) => Op::Present,
                (Some('='), Some('=')) => {
                    chars.next();
                    Op::Equal(value(&mut chars).ok_or_else(|| bad("unterminated quote"))?)
                }
                (Some('!'), Some('=')) => {
                    chars.next();
                    Op::NotEqual(value(&mut chars).ok_or_else(|| bad("unterminated quote"))?)
                }
                (Some('~'), Some('=')) => {
                    return Err(bad("regular-expression matching is not supported"));
                }
                _ => return Err(bad("expected ==, != or ,")),
            };
            let ended = op == Op::Present || chars.peek().is_none();
            selectors.push(Selector { path, op });
            if ended && chars.peek().is_none() {
                break;
            }
            match chars.next() {
                Some(',') if chars.peek().is_some() => {}
                None => break,
                _ => return Err(bad("expected , between selectors")),
            }
        }
        Ok(Filter(selectors))
    }

    /// Whether every selector matches `fields`.
    pub fn matches(&self, fields: &Fields<'_>) -> bool {
        self.0.iter().all(|s| {
            let found = match s.path.as_slice() {
                [f] if f == "name" => Some(fields.name),
                [f] if f == "parent" => Some(fields.parent),
                [f] if f == "kind" => Some(fields.kind),
                [f, key @ ..] if f == "labels" && !key.is_empty() => {
                    fields.labels.get(&key.join(".")).map(String::as_str)
                }
                _ => None,
            };
            match &s.op {
                Op::Present => found.is_some_and(|v| !v.is_empty()),
                Op::Equal(want) => found == Some(want.as_str()),
                Op::NotEqual(want) => found != Some(want.as_str()),
            }
        })
    }
}

/// Whether `fields` match any of `filters` (all when there are none).
pub fn any(filters: &[Filter], fields: &Fields<'_>) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(fields))
}

/// A value after an operator: quoted, or plain up to the next `,`.
fn value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    if chars.peek() == Some(&'"') {
        return quoted(chars);
    }
    let mut out = String::new();
    while let Some(&c) = chars.peek() {
        if c == ',' {
            break;
        }
        out.push(c);
        chars.next();
    }
    Some(out)
}

/// A double-quoted string with `\` escapes; `None` when unterminated.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    chars.next(); // the opening quote
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(labels: &'a BTreeMap<String, String>) -> Fields<'a> {
        Fields {
            name: "sha256:abc",
            parent: "sha256:def",
            kind: "committed",
            labels,
        }
    }

    #[test]
    fn containerds_remote_snapshot_lookup_matches_only_the_target() {
        let labels: BTreeMap<String, String> =
            [("containerd.io/snapshot.ref".into(), "sha256:abc".into())].into();
        let f = Filter::parse(
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="sha256:def""#,
        )
        .unwrap();
        assert!(f.matches(&fields(&labels)));
        let other = Filter::parse(
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="sha256:xyz""#,
        )
        .unwrap();
        assert!(!other.matches(&fields(&labels)));
    }

    #[test]
    fn presence_inequality_and_kind() {
        let labels: BTreeMap<String, String> = [("a".into(), "1".into())].into();
        for (text, want) in [
            ("labels.a", true),
            ("labels.b", false),
            ("labels.a!=2", true),
            ("kind==committed", true),
            ("kind==active", false),
            ("name==sha256:abc,labels.a==1", true),
        ] {
            assert_eq!(
                Filter::parse(text).unwrap().matches(&fields(&labels)),
                want,
                "{text}"
            );
        }
        assert!(any(&[], &fields(&labels)));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for text in [
            "",
            "name~=a.*",
            r#"labels."open"#,
            "name=a",
            "name==a,",
            ",x",
        ] {
            assert!(
                Filter::parse(text)
                    .as_ref()
                    .is_err_and(|e| e.is(tonic::Code::InvalidArgument)),
                "{text}"
            );
        }
    }
}
