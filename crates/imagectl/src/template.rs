//! The part of Go's text/template that `docker … --format` strings use:
//! `{{.Field}}`, `{{.A.B}}`, `{{json .}}`, `{{json .Field}}`,
//! `{{index .List 0}}` and `{{index .Map "key"}}`, over a JSON value, with
//! the docker CLI's `\t` and `\n` escapes and its `table ` prefix. Values
//! print as Go prints them: strings bare, lists as `[a b]`, maps as
//! `map[k:v]`, a missing value as `<no value>`.
//!
//! Written here because no maintained crate renders Go template syntax
//! over serde values; this covers what scripts put after `--format`, and
//! anything else is refused with a clear error.

use anyhow::{Context, bail};
use serde_json::Value;

/// A parsed `--format`: text and actions, and whether it asked for a
/// table (a header line).
#[derive(Debug)]
pub struct Template {
    pub table: bool,
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Action(Action),
}

#[derive(Debug)]
enum Action {
    /// `.A.B`: the value at a path (empty path: the whole value).
    Path(Vec<String>),
    /// `json <path>`.
    Json(Vec<String>),
    /// `index <path> <key or position>`.
    Index(Vec<String>, Value),
}

impl Template {
    /// Parses `format`; a bad one is refused in the docker CLI's words
    /// ("template parsing error: …").
    pub fn parse(format: &str) -> anyhow::Result<Self> {
        Self::parse_inner(format).map_err(|err| anyhow::anyhow!("template parsing error: {err}"))
    }

    fn parse_inner(format: &str) -> anyhow::Result<Self> {
        let (table, body) = match format.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => (true, rest.trim()),
            _ => (false, format),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let end = rest[start..]
                .find("}}")
                .context("template: :1: unclosed action")?;
            let action = rest[start + 2..start + end].trim();
            parts.push(Part::Action(parse_action(action)?));
            rest = &rest[start + end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { table, parts })
    }

    /// The header line of a table: each field's column name, with the
    /// template's own separators.
    pub fn header(&self, name_of: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Action(Action::Path(path) | Action::Json(path)) => {
                    out.push_str(&name_of(path.last().map_or("", String::as_str)))
                }
                Part::Action(Action::Index(path, _)) => {
                    out.push_str(&name_of(path.last().map_or("", String::as_str)))
                }
            }
        }
        out
    }

    pub fn render(&self, value: &Value) -> anyhow::Result<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Action(Action::Path(path)) => out.push_str(&go_print(at(value, path))),
                Part::Action(Action::Json(path)) => {
                    out.push_str(&go_json(at(value, path).unwrap_or(&Value::Null))?)
                }
                Part::Action(Action::Index(path, key)) => {
                    let container = at(value, path);
                    let item = match (container, key) {
                        (Some(Value::Array(items)), Value::Number(n)) => {
                            let i = n.as_u64().unwrap_or(u64::MAX) as usize;
                            match items.get(i) {
                                Some(item) => Some(item),
                                None => {
                                    bail!("template: index out of range: {i} of {}", items.len())
                                }
                            }
                        }
                        (Some(Value::Object(map)), Value::String(k)) => map.get(k),
                        (None | Some(Value::Null), _) => None,
                        (Some(other), _) => bail!("template: cannot index {other} with {key}"),
                    };
                    out.push_str(&go_print(item));
                }
            }
        }
        Ok(out)
    }
}

fn parse_action(action: &str) -> anyhow::Result<Action> {
    let words: Vec<&str> = action.split_whitespace().collect();
    match words.as_slice() {
        [path] => Ok(Action::Path(parse_path(path)?)),
        ["json", path] => Ok(Action::Json(parse_path(path)?)),
        ["index", path, key] => {
            let key = if let Some(quoted) = key.strip_prefix('"').and_then(|k| k.strip_suffix('"'))
            {
                Value::String(quoted.to_string())
            } else {
                Value::Number(
                    key.parse::<u64>()
                        .with_context(|| format!("template: bad index {key:?}"))?
                        .into(),
                )
            };
            Ok(Action::Index(parse_path(path)?, key))
        }
        _ => bail!(
            "template: {{{{{action}}}}} is not supported: use {{{{.Field}}}}, {{{{json .Field}}}} or {{{{index .Field KEY}}}}"
        ),
    }
}

fn parse_path(path: &str) -> anyhow::Result<Vec<String>> {
    let Some(rest) = path.strip_prefix('.') else {
        bail!("template: {path:?} is not a field (fields start with '.')");
    };
    Ok(rest
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

fn at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// JSON as Go's `json.Marshal` writes it: `<`, `>` and `&` escaped (they
/// can only stand inside strings).
fn go_json(value: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string(value)?
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026"))
}

/// A value as Go's fmt prints it in a template.
fn go_print(value: Option<&Value>) -> String {
    match value {
        None => "<no value>".into(),
        Some(Value::Null) => "<nil>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| go_print(Some(i)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Some(Value::Object(map)) => {
            let mut pairs: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_print(Some(v))))
                .collect();
            pairs.sort();
            format!("map[{}]", pairs.join(" "))
        }
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_what_docker_format_strings_use() {
        let v = json!({
            "Id": "sha256:abc",
            "RepoDigests": ["busybox@sha256:1", "busybox@sha256:2"],
            "Config": {"Labels": {"tier": "web"}, "Cmd": ["sh", "-c"], "Env": null},
            "Size": 42,
        });
        let r = |f: &str| Template::parse(f).unwrap().render(&v).unwrap();
        assert_eq!(r("{{.Id}}"), "sha256:abc");
        assert_eq!(r("{{index .RepoDigests 0}}"), "busybox@sha256:1");
        assert_eq!(r("{{index .Config.Labels \"tier\"}}"), "web");
        assert_eq!(r("{{.Config.Cmd}}"), "[sh -c]");
        assert_eq!(r("{{.Config.Labels}}"), "map[tier:web]");
        assert_eq!(r("{{json .Config.Cmd}}"), r#"["sh","-c"]"#);
        assert_eq!(
            Template::parse("{{json .}}")
                .unwrap()
                .render(&json!({"Tag": "<none>"}))
                .unwrap(),
            r#"{"Tag":"\u003cnone\u003e"}"#,
            "as Go's json.Marshal"
        );
        assert_eq!(r("{{.Size}}\\t{{.Missing}}"), "42\t<no value>");
        assert_eq!(r("{{.Config.Env}}"), "<nil>");
        assert!(Template::parse("{{if .Id}}x{{end}}").is_err());
        assert!(Template::parse("{{.Id").is_err());
        assert!(
            Template::parse("{{index .RepoDigests 5}}")
                .unwrap()
                .render(&v)
                .is_err()
        );
        let t = Template::parse("table {{.Repository}}\\t{{.Tag}}").unwrap();
        assert!(t.table);
        assert_eq!(t.header(|f| f.to_uppercase()), "REPOSITORY\tTAG");
    }
}
