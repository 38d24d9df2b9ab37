//! `docker image inspect`'s record as the docker CLI prints it: Docker's
//! field order (its Go structs' declaration order, not sorted), four
//! spaces of indentation, empty `omitempty` fields left out.

use std::collections::BTreeMap;

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::{ImageInspect, InspectImageRequest};
use tonic::transport::Channel;

use crate::cli::InspectArgs;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value, json};

/// A JSON value whose objects keep the order they were built in, as Go's
/// encoder prints a struct's fields; maps inside plain values print
/// sorted, as Go prints its maps.
#[derive(Clone, Debug)]
pub enum Ordered {
    Value(Value),
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    /// An object from fields in order.
    fn object<const N: usize>(fields: [(&str, Ordered); N]) -> Self {
        Ordered::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// The same record as a plain value, for `--format` templates.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl From<Value> for Ordered {
    fn from(value: Value) -> Self {
        Ordered::Value(value)
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Ordered::Value(value) => value.serialize(serializer),
            Ordered::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

/// `docker image inspect` (`image_only`) or `docker inspect`: the records
/// found, then an error line for each name not found, as the docker CLI
/// words them; exits 1 if any was missing.
pub async fn run(
    images: &mut ImagesClient<Channel>,
    args: InspectArgs,
    image_only: bool,
) -> anyhow::Result<()> {
    let template = args
        .format
        .as_deref()
        .map(crate::template::Template::parse)
        .transpose()?;
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for name in args.images {
        let request = InspectImageRequest {
            image: name.clone(),
            platform: None,
        };
        match images.inspect_image(request).await {
            Ok(answer) => records.push(record(&answer.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound && !image_only => {
                missing.push(format!("Error: No such object: {name}"))
            }
            Err(status) if status.code() == tonic::Code::NotFound => missing.push(format!(
                "Error response from daemon: no such image: {name}: {}",
                status.message()
            )),
            Err(status) => return Err(status.into()),
        }
    }
    match &template {
        Some(template) => {
            for record in &records {
                println!("{}", template.render(&record.to_value())?);
            }
        }
        None => print(&records)?,
    }
    if missing.is_empty() {
        return Ok(());
    }
    for line in &missing {
        eprintln!("{line}");
    }
    std::process::exit(1);
}

/// Prints records as `docker image inspect` does: a JSON array indented
/// by four spaces (`[]` when there is none).
pub fn print(records: &[Ordered]) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    records.serialize(&mut serializer)?;
    println!("{}", String::from_utf8(out)?);
    Ok(())
}

/// `docker image inspect`'s record, in the order Moby v28 writes it.
pub fn record(record: &ImageInspect) -> Ordered {
    let v = |value: Value| Ordered::Value(value);
    let mut fields: Vec<(&str, Ordered)> = vec![
        ("Id", v(json!(record.id))),
        ("RepoTags", v(json!(record.repo_tags))),
        ("RepoDigests", v(json!(record.repo_digests))),
        ("Parent", v(json!(record.parent))),
        ("Comment", v(json!(record.comment))),
        ("Created", v(json!(record.created))),
        ("DockerVersion", v(json!(record.docker_version))),
        ("Author", v(json!(record.author))),
        ("Config", container_config(&record.config_json)),
        ("Architecture", v(json!(record.architecture))),
        ("Variant", v(json!(record.variant))),
        ("Os", v(json!(record.os))),
        ("OsVersion", v(json!(record.os_version))),
        ("Size", v(json!(record.size))),
    ];
    // `omitempty` in Docker's record.
    fields.retain(|(key, value)| {
        !matches!((*key, value), ("Created" | "Variant" | "OsVersion", Ordered::Value(Value::String(s))) if s.is_empty())
    });
    if let Some(driver) = &record.graph_driver {
        let data =
            (!driver.data.is_empty()).then(|| driver.data.iter().collect::<BTreeMap<_, _>>());
        fields.push((
            "GraphDriver",
            Ordered::object([("Data", v(json!(data))), ("Name", v(json!(driver.name)))]),
        ));
    }
    if let Some(root_fs) = &record.root_fs {
        let mut root = vec![("Type".to_string(), v(json!(root_fs.r#type)))];
        if !root_fs.layers.is_empty() {
            root.push(("Layers".to_string(), v(json!(root_fs.layers))));
        }
        fields.push(("RootFS", Ordered::Object(root)));
    }
    fields.push((
        "Metadata",
        Ordered::object([("LastTagTime", v(json!(record.last_tag_time)))]),
    ));
    Ordered::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Docker's `container.Config` fields in its declaration order, each with
/// the value printed when the stored config leaves it out (`None`: left
/// out then, `omitempty`; `null` for an unset list or map, as Go encodes
/// a nil one).
const CONFIG_FIELDS: &[(&str, Option<Value>)] = &[
    ("Hostname", Some(Value::String(String::new()))),
    ("Domainname", Some(Value::String(String::new()))),
    ("User", Some(Value::String(String::new()))),
    ("AttachStdin", Some(Value::Bool(false))),
    ("AttachStdout", Some(Value::Bool(false))),
    ("AttachStderr", Some(Value::Bool(false))),
    ("ExposedPorts", None),
    ("Tty", Some(Value::Bool(false))),
    ("OpenStdin", Some(Value::Bool(false))),
    ("StdinOnce", Some(Value::Bool(false))),
    ("Env", Some(Value::Null)),
    ("Cmd", Some(Value::Null)),
    ("Healthcheck", None),
    ("ArgsEscaped", None),
    ("Image", Some(Value::String(String::new()))),
    ("Volumes", Some(Value::Null)),
    ("WorkingDir", Some(Value::String(String::new()))),
    ("Entrypoint", Some(Value::Null)),
    ("NetworkDisabled", None),
    ("MacAddress", None),
    ("OnBuild", Some(Value::Null)),
    ("Labels", Some(Value::Null)),
    ("StopSignal", None),
    ("StopTimeout", None),
    ("Shell", None),
];

/// The image's `config` as Docker's inspect prints it: what the stored
/// config says, in its own shapes, in Docker's field order, with the
/// fields Docker always prints added at their zero value. Fields Docker
/// does not know come last, sorted.
fn container_config(config_json: &[u8]) -> Ordered {
    let stored: Value = serde_json::from_slice(config_json).unwrap_or(Value::Null);
    let mut config = match stored.get("config") {
        Some(Value::Object(c)) => c.clone(),
        _ => serde_json::Map::new(),
    };
    let mut fields = Vec::new();
    for (key, zero) in CONFIG_FIELDS {
        match (config.remove(*key), zero) {
            (Some(value), _) => fields.push((key.to_string(), Ordered::Value(value))),
            (None, Some(zero)) => fields.push((key.to_string(), Ordered::Value(zero.clone()))),
            (None, None) => {}
        }
    }
    fields.extend(config.into_iter().map(|(k, v)| (k, Ordered::Value(v))));
    Ordered::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_print_in_dockers_order_and_empty_ones_go() {
        let record = ImageInspect {
            id: "sha256:ab".into(),
            created: "2023-11-14T22:13:20Z".into(),
            config_json: br#"{"config":{"Labels":{"b":"1","a":"2"},"Cmd":["x"]}}"#.to_vec(),
            ..Default::default()
        };
        let text = serde_json::to_string(&super::record(&record)).unwrap();
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} in {text}"))
        };
        assert!(at("\"Id\"") < at("\"RepoTags\"") && at("\"Created\"") < at("\"DockerVersion\""));
        assert!(at("\"Hostname\"") < at("\"Cmd\"") && at("\"Cmd\"") < at("\"Labels\""));
        assert!(at("\"a\":\"2\"") < at("\"b\":\"1\""));
        assert!(!text.contains("Variant") && !text.contains("ExposedPorts"));
    }
}
