//! How each command prints, as the Docker CLI does: tables with human
//! sizes and times, JSON on request.

use std::collections::BTreeMap;

use imaged_api::v1::{Event, HistoryItem, ImageInspect, ImageSummary, SystemInfoResponse};
use serde_json::{Value, json};

/// Docker's `units.HumanSizeWithPrecision(size, 3)`: decimal units.
pub fn human_size(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let shown = format!("{value:.digits$}");
    let shown = if shown.contains('.') {
        shown
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        shown
    };
    format!("{shown}{}", units[unit])
}

/// Docker's `units.HumanDuration` for "CREATED" columns: "3 days ago".
pub fn ago(unix_seconds: i64) -> String {
    if unix_seconds <= 0 {
        return "N/A".into();
    }
    let now = chrono::Utc::now().timestamp();
    let seconds = (now - unix_seconds).max(0);
    let text = match seconds {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 7 * 86400 * 2 => format!("{} days", s / 86400),
        s if s < 30 * 86400 * 3 => format!("{} weeks", s / (7 * 86400)),
        s if s < 365 * 86400 * 2 => format!("{} months", s / (30 * 86400)),
        s => format!("{} years", s / (365 * 86400)),
    };
    format!("{text} ago")
}

fn short_id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        return id.to_string();
    }
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.chars().take(12).collect()
}

fn split_tag(tag: &str) -> (String, String) {
    match tag.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (tag.to_string(), "<none>".to_string()),
    }
}

/// `docker images`: a table, IDs only, or JSON.
pub fn images(
    list: &[ImageSummary],
    format: &str,
    quiet: bool,
    digests: bool,
    no_trunc: bool,
) -> anyhow::Result<()> {
    if quiet {
        let mut seen = std::collections::HashSet::new();
        for image in list {
            if seen.insert(&image.id) {
                println!("{}", short_id(&image.id, no_trunc));
            }
        }
        return Ok(());
    }
    match format {
        "json" => {
            let rows: Vec<Value> = list
                .iter()
                .map(|i| {
                    json!({
                        "Id": i.id,
                        "ParentId": i.parent_id,
                        "RepoTags": i.repo_tags,
                        "RepoDigests": i.repo_digests,
                        "Created": i.created,
                        "Size": i.size,
                        "SharedSize": i.shared_size,
                        "Labels": i.labels.iter().collect::<BTreeMap<_, _>>(),
                        "Containers": i.containers,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string(&rows)?);
        }
        "table" => {
            let mut rows = Vec::new();
            for image in list {
                let digest = image
                    .repo_digests
                    .first()
                    .and_then(|d| d.split_once('@'))
                    .map_or("<none>".to_string(), |(_, d)| d.to_string());
                let names: Vec<(String, String)> = if image.repo_tags.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    image.repo_tags.iter().map(|t| split_tag(t)).collect()
                };
                for (repo, tag) in names {
                    let mut row = vec![repo, tag];
                    if digests {
                        row.push(digest.clone());
                    }
                    row.push(short_id(&image.id, no_trunc));
                    row.push(ago(image.created));
                    row.push(human_size(image.size));
                    rows.push(row);
                }
            }
            let mut header = vec!["REPOSITORY", "TAG"];
            if digests {
                header.push("DIGEST");
            }
            header.extend(["IMAGE ID", "CREATED", "SIZE"]);
            table(&header, &rows);
        }
        other => anyhow::bail!("unknown format {other:?}: use table or json"),
    }
    Ok(())
}

/// Prints rows under a header, columns padded to fit, three spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `docker image inspect`'s record.
pub fn inspect_json(record: &ImageInspect) -> Value {
    json!({
        "Id": record.id,
        "RepoTags": record.repo_tags,
        "RepoDigests": record.repo_digests,
        "Parent": record.parent,
        "Comment": record.comment,
        "Created": record.created,
        "DockerVersion": record.docker_version,
        "Author": record.author,
        "Config": container_config(&record.config_json),
        "Architecture": record.architecture,
        "Variant": record.variant,
        "Os": record.os,
        "Size": record.size,
        "RootFS": record.root_fs.as_ref().map(|r| json!({"Type": r.r#type, "Layers": r.layers})),
        "GraphDriver": record.graph_driver.as_ref().map(|g| json!({
            "Name": g.name,
            "Data": (!g.data.is_empty()).then(|| g.data.iter().collect::<BTreeMap<_, _>>()),
        })),
        "Metadata": {"LastTagTime": record.last_tag_time},
    })
}

/// The image's `config` as Docker's inspect prints it: what the stored
/// config says, in its own shapes (`ExposedPorts` and `Volumes` objects,
/// `Healthcheck`, `OnBuild`, `Shell`, `StopTimeout` as given), with the
/// fields Docker always prints added at their zero value (`null` for an
/// unset list or map, as Go encodes a nil one).
fn container_config(config_json: &[u8]) -> Value {
    const ALWAYS: &[(&str, Value)] = &[
        ("Hostname", Value::String(String::new())),
        ("Domainname", Value::String(String::new())),
        ("User", Value::String(String::new())),
        ("AttachStdin", Value::Bool(false)),
        ("AttachStdout", Value::Bool(false)),
        ("AttachStderr", Value::Bool(false)),
        ("Tty", Value::Bool(false)),
        ("OpenStdin", Value::Bool(false)),
        ("StdinOnce", Value::Bool(false)),
        ("Env", Value::Null),
        ("Cmd", Value::Null),
        ("Image", Value::String(String::new())),
        ("Volumes", Value::Null),
        ("WorkingDir", Value::String(String::new())),
        ("Entrypoint", Value::Null),
        ("OnBuild", Value::Null),
        ("Labels", Value::Null),
    ];
    let stored: Value = serde_json::from_slice(config_json).unwrap_or(Value::Null);
    let mut config = match stored.get("config") {
        Some(Value::Object(c)) => c.clone(),
        _ => serde_json::Map::new(),
    };
    for (key, zero) in ALWAYS {
        config.entry(*key).or_insert_with(|| zero.clone());
    }
    Value::Object(config)
}

/// `docker history`.
pub fn history(items: &[HistoryItem], no_trunc: bool, quiet: bool) {
    if quiet {
        for item in items {
            println!("{}", short_history_id(&item.id, no_trunc));
        }
        return;
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            let mut created_by = item.created_by.replace('\t', " ");
            if !no_trunc && created_by.chars().count() > 45 {
                created_by = created_by.chars().take(44).collect::<String>() + "…";
            }
            vec![
                short_history_id(&item.id, no_trunc),
                ago(item.created),
                created_by,
                human_size(item.size),
                item.comment.clone(),
            ]
        })
        .collect();
    table(
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &rows,
    );
}

fn short_history_id(id: &str, no_trunc: bool) -> String {
    if id == "<missing>" {
        id.to_string()
    } else {
        short_id(id, no_trunc)
    }
}

/// One `docker events` line, or one JSON object.
pub fn event(event: &Event, format: &str) -> anyhow::Result<()> {
    let actor = event.actor.clone().unwrap_or_default();
    let attributes: BTreeMap<_, _> = actor.attributes.iter().collect();
    match format {
        "json" => println!(
            "{}",
            json!({
                // Docker's legacy keys, still set for image events.
                "status": event.action,
                "id": actor.id,
                "Type": event.r#type,
                "Action": event.action,
                "Actor": {"ID": actor.id, "Attributes": attributes},
                "scope": event.scope,
                "timeNano": event.time_nano,
                "time": event.time_nano / 1_000_000_000,
            })
        ),
        "text" => {
            let time = chrono::DateTime::from_timestamp_nanos(event.time_nano)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let attrs: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{time} {} {} {} ({})",
                event.r#type,
                event.action,
                actor.id,
                attrs.join(", ")
            );
        }
        other => anyhow::bail!("unknown format {other:?}: use text or json"),
    }
    Ok(())
}

/// `docker info`'s image part.
pub fn info(info: &SystemInfoResponse) {
    println!("Images: {}", info.images);
    println!("Storage Driver: {}", info.storage_driver);
    for pair in &info.layer_store_status {
        println!(" {}: {}", pair.key, pair.value);
    }
    println!(
        "Max Concurrent Downloads: {}",
        info.max_concurrent_downloads
    );
    println!("Max Concurrent Uploads: {}", info.max_concurrent_uploads);
    println!("Max Download Attempts: {}", info.max_download_attempts);
    if let Some(log) = &info.event_log {
        println!(
            "Event Log: {} events, last sequence {}, {} subscribers",
            log.events, log.last_sequence, log.subscribers
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234), "1.23kB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn tags_split_at_the_last_colon_of_the_name() {
        assert_eq!(
            split_tag("localhost:5000/app:v1"),
            ("localhost:5000/app".into(), "v1".into())
        );
        assert_eq!(
            split_tag("localhost:5000/app"),
            ("localhost:5000/app".into(), "<none>".into())
        );
    }
}
