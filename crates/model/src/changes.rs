//! Dockerfile instructions given as `changes` to import and commit
//! (`docker import --change`, `docker commit --change`), applied to a
//! container config the way Docker's builder does. Docker accepts CMD,
//! ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER,
//! VOLUME and WORKDIR; anything else is refused with its message.

use crate::Error;
use serde_json::{Map, Value, json};

/// Applies every change, in order, to `config` (a container config JSON
/// object, `{}` for a fresh one).
pub fn apply(config: &mut Map<String, Value>, changes: &[String]) -> Result<(), Error> {
    for change in changes {
        for line in change
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            apply_one(config, line)?;
        }
    }
    Ok(())
}

fn apply_one(config: &mut Map<String, Value>, line: &str) -> Result<(), Error> {
    let (instruction, rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(i, r)| (i, r.trim()));
    let upper = instruction.to_ascii_uppercase();
    let missing = || Error::InvalidArgument(format!("{upper} requires at least one argument"));
    match upper.as_str() {
        "CMD" | "ENTRYPOINT" => {
            let key = if upper == "CMD" { "Cmd" } else { "Entrypoint" };
            config.insert(key.into(), json!(command(rest)?));
        }
        "ENV" => {
            let mut env: Vec<String> = strings(config.get("Env"));
            for (key, value) in pairs(rest, "ENV")? {
                env.retain(|e| e.split('=').next() != Some(key.as_str()));
                env.push(format!("{key}={value}"));
            }
            config.insert("Env".into(), json!(env));
        }
        "LABEL" => {
            let labels = object(config, "Labels");
            for (key, value) in pairs(rest, "LABEL")? {
                labels.insert(key, json!(value));
            }
        }
        "EXPOSE" => {
            if rest.is_empty() {
                return Err(missing());
            }
            let ports = object(config, "ExposedPorts");
            for port in rest.split_whitespace() {
                let port = if port.contains('/') {
                    port.to_string()
                } else {
                    format!("{port}/tcp")
                };
                ports.insert(port, json!({}));
            }
        }
        "VOLUME" => {
            let paths = if rest.starts_with('[') {
                json_array(rest)?
            } else {
                rest.split_whitespace().map(str::to_string).collect()
            };
            if paths.is_empty() {
                return Err(missing());
            }
            let volumes = object(config, "Volumes");
            for path in paths {
                volumes.insert(path, json!({}));
            }
        }
        "USER" | "WORKDIR" | "STOPSIGNAL" => {
            if rest.is_empty() {
                return Err(missing());
            }
            let key = match upper.as_str() {
                "USER" => "User",
                "WORKDIR" => "WorkingDir",
                _ => "StopSignal",
            };
            config.insert(key.into(), json!(rest));
        }
        "ONBUILD" => {
            if rest.is_empty() {
                return Err(missing());
            }
            let mut triggers = strings(config.get("OnBuild"));
            triggers.push(rest.to_string());
            config.insert("OnBuild".into(), json!(triggers));
        }
        "HEALTHCHECK" => {
            config.insert("Healthcheck".into(), healthcheck(rest)?);
        }
        _ => {
            // Docker names the instruction as its parser keeps it: lower
            // case.
            return Err(Error::InvalidArgument(format!(
                "{} is not a valid change command",
                upper.to_lowercase()
            )));
        }
    }
    Ok(())
}

/// CMD and ENTRYPOINT: the JSON form as given, the shell form run by
/// `/bin/sh -c`.
fn command(rest: &str) -> Result<Vec<String>, Error> {
    if rest.starts_with('[')
        && let Ok(args) = json_array(rest)
    {
        return Ok(args);
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

fn json_array(text: &str) -> Result<Vec<String>, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::InvalidArgument(format!("invalid JSON array {text:?}: {e}")))
}

/// `key=value` pairs (values may be quoted), or the legacy `key value`.
fn pairs(rest: &str, instruction: &str) -> Result<Vec<(String, String)>, Error> {
    if rest.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{instruction} requires at least one argument"
        )));
    }
    let words = split_words(rest);
    if !words[0].contains('=') {
        let (key, value) = rest.split_once(char::is_whitespace).ok_or_else(|| {
            Error::InvalidArgument(format!("{instruction} names can not be blank"))
        })?;
        return Ok(vec![(key.to_string(), value.trim().to_string())]);
    }
    words
        .into_iter()
        .map(|word| {
            let (key, value) = word.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "Syntax error - can't find = in \"{word}\". Must be of the form: name=value"
                ))
            })?;
            if key.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{instruction} names can not be blank"
                )));
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// Words split on spaces outside quotes, quotes removed.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', _) => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            (c, None) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (c, _) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval=… …] CMD …`.
fn healthcheck(rest: &str) -> Result<Value, Error> {
    if rest.eq_ignore_ascii_case("none") {
        return Ok(json!({"Test": ["NONE"]}));
    }
    let mut check = Map::new();
    let mut remaining = rest;
    while let Some(option) = remaining.strip_prefix("--") {
        let (flag, tail) = option
            .split_once(char::is_whitespace)
            .unwrap_or((option, ""));
        let (name, value) = flag.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!("invalid HEALTHCHECK option --{flag}"))
        })?;
        let key = match name {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => "Retries",
            other => {
                return Err(Error::InvalidArgument(format!("unknown flag: --{other}")));
            }
        };
        let number = if key == "Retries" {
            value
                .parse::<i64>()
                .map_err(|_| Error::InvalidArgument(format!("invalid --retries value {value:?}")))?
        } else {
            crate::timestamp::parse_go_duration(value)
                .and_then(|nanos| i64::try_from(nanos).ok())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("invalid --{name} duration {value:?}"))
                })?
        };
        check.insert(key.into(), json!(number));
        remaining = tail.trim_start();
    }
    let (word, command_text) = remaining
        .split_once(char::is_whitespace)
        .unwrap_or((remaining, ""));
    if !word.eq_ignore_ascii_case("cmd") || command_text.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "HEALTHCHECK needs NONE or CMD followed by a command".into(),
        ));
    }
    let test = if command_text.trim_start().starts_with('[') {
        let mut args = vec!["CMD".to_string()];
        args.extend(json_array(command_text.trim())?);
        args
    } else {
        vec!["CMD-SHELL".to_string(), command_text.trim().to_string()]
    };
    check.insert("Test".into(), json!(test));
    Ok(Value::Object(check))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn object<'a>(config: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = config.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("an object was just put here")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> Result<Value, Error> {
        let mut config = Map::new();
        let changes: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        apply(&mut config, &changes)?;
        Ok(Value::Object(config))
    }

    #[test]
    fn applies_dockers_instructions() {
        let config = applied(&[
            r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
            "ENTRYPOINT /entry --flag",
            "ENV A=1 B=\"two words\"",
            "ENV C 3",
            "EXPOSE 80 53/udp",
            "LABEL tier=web",
            "USER 1000:1000",
            "WORKDIR /app",
            "VOLUME /data /cache",
            "STOPSIGNAL SIGQUIT",
            "ONBUILD RUN make",
            "HEALTHCHECK --interval=30s --retries=3 CMD curl -f http://localhost/",
        ])
        .unwrap();
        assert_eq!(config["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(
            config["Entrypoint"],
            json!(["/bin/sh", "-c", "/entry --flag"])
        );
        assert_eq!(config["Env"], json!(["A=1", "B=two words", "C=3"]));
        assert_eq!(config["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(config["Labels"], json!({"tier": "web"}));
        assert_eq!(config["User"], "1000:1000");
        assert_eq!(config["WorkingDir"], "/app");
        assert_eq!(config["Volumes"], json!({"/data": {}, "/cache": {}}));
        assert_eq!(config["StopSignal"], "SIGQUIT");
        assert_eq!(config["OnBuild"], json!(["RUN make"]));
        assert_eq!(
            config["Healthcheck"],
            json!({"Interval": 30_000_000_000i64, "Retries": 3, "Test": ["CMD-SHELL", "curl -f http://localhost/"]})
        );
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let err = applied(&["RUN make"]).unwrap_err();
        assert_eq!(err.to_string(), "run is not a valid change command");
        let err = applied(&["from scratch"]).unwrap_err();
        assert_eq!(err.to_string(), "from is not a valid change command");
        assert!(applied(&["ENV =x"]).is_err());
        assert!(applied(&["EXPOSE"]).is_err());
        assert!(applied(&["HEALTHCHECK --bogus=1 CMD x"]).is_err());
    }
}
