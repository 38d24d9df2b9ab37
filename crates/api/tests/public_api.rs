//! The public contracts do not change incompatibly. The surface users
//! script against (the `imaged.v1` Images, Events, Layers and Registries
//! services and
//! CRI's `runtime.v1.ImageService`, and containerd's snapshot service that
//! imaged serves as a proxy snapshotter, with every message and enum they
//! reach)
//! is written as sorted lines to `proto/public-api.snapshot`, in the spirit
//! of containerd's `api/next.txtpb`. A line of the snapshot that is gone
//! or changed is an incompatible change and fails; new lines fail until
//! the snapshot is updated on purpose:
//!
//!     UPDATE_API_SNAPSHOT=1 cargo test -p imaged-api --test public_api

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

const PUBLIC_SERVICES: &[&str] = &[
    "imaged.v1.Images",
    "imaged.v1.Events",
    "imaged.v1.Layers",
    "imaged.v1.Registries",
    "runtime.v1.ImageService",
    "containerd.services.snapshots.v1.Snapshots",
];

/// Indexes a message and what is nested in it by full name.
fn index<'a>(
    prefix: &str,
    message: &'a DescriptorProto,
    messages: &mut HashMap<String, &'a DescriptorProto>,
    enums: &mut HashMap<String, &'a EnumDescriptorProto>,
) {
    let name = format!("{prefix}.{}", message.name());
    for nested in &message.nested_type {
        index(&name, nested, messages, enums);
    }
    for e in &message.enum_type {
        enums.insert(format!("{name}.{}", e.name()), e);
    }
    messages.insert(name, message);
}

/// The public surface as sorted lines.
fn surface() -> BTreeSet<String> {
    let set = FileDescriptorSet::decode(imaged_api::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages: HashMap<String, &DescriptorProto> = HashMap::new();
    let mut enums: HashMap<String, &EnumDescriptorProto> = HashMap::new();
    let mut lines = BTreeSet::new();
    let mut pending: Vec<String> = Vec::new();
    for file in &set.file {
        let package = format!(".{}", file.package());
        for message in &file.message_type {
            index(&package, message, &mut messages, &mut enums);
        }
        for e in &file.enum_type {
            enums.insert(format!("{package}.{}", e.name()), e);
        }
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            if !PUBLIC_SERVICES.contains(&full.as_str()) {
                continue;
            }
            lines.insert(format!("service {full}"));
            for method in &service.method {
                let stream = |s: bool| if s { "stream " } else { "" };
                lines.insert(format!(
                    "rpc {full}/{}({}{}) returns ({}{})",
                    method.name(),
                    stream(method.client_streaming()),
                    method.input_type(),
                    stream(method.server_streaming()),
                    method.output_type()
                ));
                pending.push(method.input_type().to_string());
                pending.push(method.output_type().to_string());
            }
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(e) = enums.get(&name) {
            for value in &e.value {
                lines.insert(format!("enum {name} {} = {}", value.name(), value.number()));
            }
            continue;
        }
        let Some(message) = messages.get(&name) else {
            continue; // a well-known type (google.protobuf.*)
        };
        lines.insert(format!("message {name}"));
        for field in &message.field {
            let line = format!(
                "field {name} {} = {} {:?} {:?} {}{}",
                field.name(),
                field.number(),
                field.label(),
                field.r#type(),
                field.type_name(),
                if field.proto3_optional() {
                    " optional"
                } else {
                    ""
                }
            );
            lines.insert(line.trim_end().to_string());
            if !field.type_name().is_empty() {
                pending.push(field.type_name().to_string());
            }
        }
    }
    lines
}

#[test]
fn the_public_api_changes_only_compatibly() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/public-api.snapshot");
    let now = surface();
    assert!(now.len() > 100, "the public surface looks empty: {now:?}");
    let snapshot: BTreeSet<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let gone: Vec<&String> = snapshot.difference(&now).collect();
    assert!(
        gone.is_empty(),
        "incompatible change to the public API; these are gone or changed:\n{}",
        gone.iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let added: Vec<&String> = now.difference(&snapshot).collect();
    if std::env::var_os("UPDATE_API_SNAPSHOT").is_some() {
        let mut text = String::from(
            "# The public gRPC surface (crates/api/tests/public_api.rs). Lines may be\n\
             # added; a line removed or changed is an incompatible change.\n",
        );
        for line in &now {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        return;
    }
    assert!(
        added.is_empty(),
        "the public API grew; if that is meant, update the snapshot with\n  \
         UPDATE_API_SNAPSHOT=1 cargo test -p imaged-api --test public_api\nnew:\n{}",
        added
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
