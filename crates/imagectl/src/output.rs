//! How each command prints, as the Docker CLI does: tables with human
//! sizes and times, JSON on request.

use std::collections::BTreeMap;

use imaged_api::v1::{Event, HistoryItem, ImageSummary, SystemInfoResponse};
use serde_json::{Value, json};

/// Docker's `units.HumanSizeWithPrecision(size, 3)`: decimal units.
pub fn human_size(bytes: i64) -> String {
    human_size_with_precision(bytes, 3)
}

/// Docker's `units.HumanSizeWithPrecision`: decimal units, `precision`
/// significant digits (Go's `%g`, trailing zeros dropped).
pub fn human_size_with_precision(bytes: i64, precision: usize) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let integer_digits = if value >= 100.0 {
        3
    } else if value >= 10.0 {
        2
    } else {
        1
    };
    let digits = precision.saturating_sub(integer_digits);
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

/// `docker system df`, the images part: imaged serves images only, so
/// the containers, volumes and build cache rows are left out.
pub fn disk_usage(usage: &imaged_api::v1::DiskUsageResponse, verbose: bool) {
    if verbose {
        disk_usage_per_image(usage);
        return;
    }
    let total = usage.layers_size;
    let active = usage.images.iter().filter(|i| i.containers > 0).count();
    let used: i64 = usage
        .images
        .iter()
        .filter(|i| i.containers > 0 && i.size >= 0 && i.shared_size >= 0)
        .map(|i| i.size - i.shared_size)
        .sum();
    let reclaimable = total - used;
    let reclaimable = if total > 0 {
        format!(
            "{} ({}%)",
            human_size_with_precision(reclaimable, 4),
            reclaimable * 100 / total
        )
    } else {
        human_size_with_precision(reclaimable, 4)
    };
    let row = vec![
        "Images".to_string(),
        usage.images.len().to_string(),
        active.to_string(),
        human_size_with_precision(total, 4),
        reclaimable,
    ];
    // imaged keeps images only: the other rows are Docker's, empty, as
    // the docker CLI prints them against imaged's Engine API too.
    let empty =
        |kind: &str| -> Vec<String> { [kind, "0", "0", "0B", "0B"].map(str::to_string).to_vec() };
    table(
        &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
        &[
            row,
            empty("Containers"),
            empty("Local Volumes"),
            empty("Build Cache"),
        ],
    );
}

/// `imagectl peers`: layer bytes pulled by where they came from, and
/// blob bytes served to other nodes, since imaged-transfer started.
pub fn sources(usage: &imaged_api::v1::DiskUsageResponse) {
    let from = usage.pulled_from.unwrap_or_default();
    let row = |what: &str, bytes: i64| vec![what.to_string(), human_size_with_precision(bytes, 4)];
    table(
        &["LAYER BYTES", "SIZE"],
        &[
            row("pulled from the registry", from.registry),
            row("pulled from mirrors", from.mirrors),
            row("pulled from fleet peers", from.peers),
            row("served to other nodes", usage.served_to_peers),
        ],
    );
}

/// `docker system df -v`'s images part: a row per image, under its first
/// tag only, as the docker CLI prints it.
fn disk_usage_per_image(usage: &imaged_api::v1::DiskUsageResponse) {
    println!("Images space usage:\n");
    let mut rows = Vec::new();
    for image in &usage.images {
        let Some(row) = image_rows(image, false, false).into_iter().next() else {
            continue;
        };
        let cell = |k: &str| row[k].as_str().unwrap_or_default().to_string();
        let (repository, tag) = match image.repo_tags.first() {
            Some(first) => split_tag(first),
            None => ("<none>".to_string(), "<none>".to_string()),
        };
        rows.push(vec![
            repository,
            tag,
            cell("ID"),
            cell("CreatedSince"),
            human_size(image.size),
            human_size_with_precision(image.shared_size.max(0), 4),
            human_size_with_precision(image.size - image.shared_size.max(0), 4),
            image.containers.to_string(),
        ]);
    }
    table(
        &[
            "REPOSITORY",
            "TAG",
            "IMAGE ID",
            "CREATED",
            "SIZE",
            "SHARED SIZE",
            "UNIQUE SIZE",
            "CONTAINERS",
        ],
        &rows,
    );
    // The sections of what imaged does not keep, empty, as Docker prints
    // them.
    println!("\nContainers space usage:\n");
    table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "LOCAL VOLUMES",
            "SIZE",
            "CREATED",
            "STATUS",
            "NAMES",
        ],
        &[],
    );
    println!("\nLocal Volumes space usage:\n");
    table(&["VOLUME NAME", "LINKS", "SIZE"], &[]);
    println!("\nBuild cache usage: 0B\n");
    table(
        &[
            "CACHE ID",
            "CACHE TYPE",
            "SIZE",
            "CREATED",
            "LAST USED",
            "USAGE",
            "SHARED",
        ],
        &[],
    );
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

/// One row of `docker images`: an image under one repository, tag and
/// digest, with the docker CLI's field names (what `--format` reads).
fn image_row(image: &ImageSummary, repo: &str, tag: &str, digest: &str, no_trunc: bool) -> Value {
    let created_at = chrono::DateTime::from_timestamp(image.created, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
        .unwrap_or_default();
    json!({
        "Containers": "N/A",
        "CreatedAt": created_at,
        "CreatedSince": ago(image.created),
        "Digest": digest,
        "ID": short_id(&image.id, no_trunc),
        "Repository": repo,
        "SharedSize": "N/A",
        "Size": human_size(image.size),
        "Tag": tag,
        "UniqueSize": "N/A",
        // The docker CLI's VirtualSize is `units.HumanSize`: four digits.
        "VirtualSize": human_size_with_precision(image.size, 4),
    })
}

/// The rows of one image, as the docker CLI makes them: each tag once,
/// or with `digests` once per digest of its repository; digests of a
/// repository without a tag as `<none>` tags; an image without any
/// reference as `<none>` everywhere. Repositories sorted.
fn image_rows(image: &ImageSummary, digests: bool, no_trunc: bool) -> Vec<Value> {
    use std::collections::BTreeMap;
    if image.repo_tags.is_empty() && image.repo_digests.is_empty() {
        return vec![image_row(image, "<none>", "<none>", "<none>", no_trunc)];
    }
    let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &image.repo_tags {
        let (repo, tag) = split_tag(t);
        tags.entry(repo).or_default().push(tag);
    }
    let mut by_repo: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &image.repo_digests {
        if let Some((repo, digest)) = d.split_once('@') {
            by_repo
                .entry(repo.to_string())
                .or_default()
                .push(digest.to_string());
        }
    }
    let mut rows = Vec::new();
    for (repo, repo_tags) in &tags {
        let repo_digests = by_repo.remove(repo).filter(|_| digests).unwrap_or_default();
        for tag in repo_tags {
            if repo_digests.is_empty() {
                rows.push(image_row(image, repo, tag, "<none>", no_trunc));
            }
            for digest in &repo_digests {
                rows.push(image_row(image, repo, tag, digest, no_trunc));
            }
        }
    }
    for (repo, repo_digests) in by_repo {
        if digests {
            for digest in &repo_digests {
                rows.push(image_row(image, &repo, "<none>", digest, no_trunc));
            }
        } else {
            rows.push(image_row(image, &repo, "<none>", "", no_trunc));
        }
    }
    rows
}

/// A table column's name for a `--format` field, as the docker CLI heads
/// it.
fn column_name(field: &str) -> String {
    match field {
        "ID" => "IMAGE ID".into(),
        "CreatedSince" => "CREATED".into(),
        "CreatedAt" => "CREATED AT".into(),
        "SharedSize" => "SHARED SIZE".into(),
        "UniqueSize" => "UNIQUE SIZE".into(),
        "VirtualSize" => "VIRTUAL SIZE".into(),
        other => other.to_uppercase(),
    }
}

/// `docker images`: a table, IDs only, one JSON object a line (`json`),
/// or a Go-template `--format` (with `table ` for a header).
pub fn images(
    list: &[ImageSummary],
    format: &str,
    quiet: bool,
    digests: bool,
    no_trunc: bool,
) -> anyhow::Result<()> {
    let rows: Vec<Value> = list
        .iter()
        .flat_map(|i| image_rows(i, digests, no_trunc))
        .collect();
    if quiet {
        // One ID a row, as the docker CLI prints: an image with three
        // tags appears three times.
        for row in &rows {
            println!("{}", row["ID"].as_str().unwrap_or_default());
        }
        return Ok(());
    }
    let format = match format {
        "" | "table" if digests => {
            "table {{.Repository}}\\t{{.Tag}}\\t{{.Digest}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}"
        }
        "" | "table" => {
            "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}"
        }
        "json" => "{{json .}}",
        other => other,
    };
    render(&rows, format, column_name)
}

/// Prints `rows` through a `--format` template: a table under a header
/// (`table …`, columns named by `column_name`), else a line a row.
fn render(rows: &[Value], format: &str, column_name: fn(&str) -> String) -> anyhow::Result<()> {
    let template = crate::template::Template::parse(format)?;
    let mut lines = Vec::new();
    for row in rows {
        lines.push(template.render(row)?);
    }
    if template.table {
        let header: Vec<String> = template
            .header(column_name)
            .split('\t')
            .map(str::to_string)
            .collect();
        let cells: Vec<Vec<String>> = lines
            .iter()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        table(&header, &cells);
    } else {
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}

/// Prints rows under a header as the docker CLI's tabwriter does
/// (`tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`): every column but the
/// last padded to its widest cell plus three, and to at least ten; the
/// last one printed as it is, so an empty last cell leaves the padding
/// before it.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let width = (widths[i] + 3).max(10);
                out.push_str(&format!("{cell:<width$}"));
            }
        }
        println!("{out}");
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `docker history`: Docker's table (with `human`, sizes and ages as
/// people read them; without, bytes and RFC 3339 times), IDs only, one
/// JSON object a row, or a Go template over the CLI's fields.
pub fn history(
    items: &[HistoryItem],
    format: &str,
    no_trunc: bool,
    quiet: bool,
    human: bool,
) -> anyhow::Result<()> {
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut created_by = item.created_by.replace('\t', " ");
            if !no_trunc && created_by.chars().count() > 45 {
                created_by = created_by.chars().take(44).collect::<String>() + "…";
            }
            let created_at = chrono::DateTime::from_timestamp(item.created, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            json!({
                "ID": short_history_id(&item.id, no_trunc),
                "CreatedSince": if human { ago(item.created) } else { created_at.clone() },
                "CreatedAt": created_at,
                "CreatedBy": created_by,
                "Size": if human { human_size(item.size) } else { item.size.to_string() },
                "Comment": item.comment,
            })
        })
        .collect();
    let format = match format {
        _ if quiet => "{{.ID}}",
        "" | "table" if human => {
            "table {{.ID}}\\t{{.CreatedSince}}\\t{{.CreatedBy}}\\t{{.Size}}\\t{{.Comment}}"
        }
        "" | "table" => {
            "table {{.ID}}\\t{{.CreatedAt}}\\t{{.CreatedBy}}\\t{{.Size}}\\t{{.Comment}}"
        }
        "json" => "{{json .}}",
        other => other,
    };
    render(&rows, format, |field| match field {
        "ID" => "IMAGE".into(),
        "CreatedBy" => "CREATED BY".into(),
        other => column_name(other),
    })
}

fn short_history_id(id: &str, no_trunc: bool) -> String {
    if id == "<missing>" {
        id.to_string()
    } else {
        short_id(id, no_trunc)
    }
}

/// One `docker events` line: Docker's text line, one JSON object
/// (`json`), or a Go template over that object (`{{.Action}}`).
pub fn event(event: &Event, format: &str) -> anyhow::Result<()> {
    let actor = event.actor.clone().unwrap_or_default();
    let attributes: BTreeMap<_, _> = actor.attributes.iter().collect();
    let record = json!({
        // Docker's legacy keys, still set for image events.
        "status": event.action,
        "id": actor.id,
        "Type": event.r#type,
        "Action": event.action,
        "Actor": {"ID": actor.id, "Attributes": attributes},
        "scope": event.scope,
        "timeNano": event.time_nano,
        "time": event.time_nano / 1_000_000_000,
    });
    match format {
        "" | "text" => {
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
        "json" => println!("{record}"),
        template => println!(
            "{}",
            crate::template::Template::parse(template)?.render(&record)?
        ),
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
