//! Image archives as other tools write them, for load tests.

use std::collections::BTreeMap;

/// An archive as `docker save` up to v24 and skopeo's docker-archive
/// write it: one directory per layer with its `layer.tar`, a layer two
/// images share written once and linked from the other's directory.
pub fn with_linked_layers(images: &[(&imaged_fixtures::Image, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut manifest = Vec::new();
    for (n, (image, tag)) in images.iter().enumerate() {
        let mut layers = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            let dir = format!("image{n}-layer{i}");
            let path = format!("{dir}/layer.tar");
            let mut header = tar::Header::new_gnu();
            match written.get(&layer.diff_id) {
                Some(first) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &path, format!("../{first}"))
                        .unwrap();
                }
                None => {
                    let tar = layer.tar().unwrap();
                    header.set_size(tar.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder
                        .append_data(&mut header, &path, tar.as_slice())
                        .unwrap();
                    written.insert(layer.diff_id.clone(), path.clone());
                }
            }
            layers.push(path);
        }
        let config = format!("{}.json", &image.id()[7..]);
        let mut header = tar::Header::new_gnu();
        header.set_size(image.config.data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, &config, image.config.data.as_slice())
            .unwrap();
        manifest.push(serde_json::json!({"Config": config, "RepoTags": [tag], "Layers": layers}));
    }
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "manifest.json", manifest.as_slice())
        .unwrap();
    builder.into_inner().unwrap()
}

/// An archive as Docker wrote it before 1.10 (no manifest.json): one
/// directory per layer named by a v1 ID, with `VERSION`, a v1 `json`
/// (`parent` naming the layer below) and `layer.tar`, and a
/// `repositories` file tagging the top one `tag` (`name:tag`).
pub fn legacy(image: &imaged_fixtures::Image, tag: &str) -> Vec<u8> {
    let (name, tag) = tag.rsplit_once(':').expect("name:tag");
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    let mut parent: Option<String> = None;
    for (i, layer) in image.layers.iter().enumerate() {
        let id = imaged_fixtures::sha256_digest(format!("v1 {i} {}", layer.diff_id).as_bytes())
            .trim_start_matches("sha256:")
            .to_string();
        let mut v1 = serde_json::json!({
            "id": id,
            "created": format!("2015-06-0{}T10:00:00.25Z", i + 1),
            "container_config": {"Cmd": ["/bin/sh", "-c", format!("#(nop) ADD layer {i}")]},
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "docker_version": "1.9.1",
            "architecture": "amd64",
            "os": "linux",
            "Size": 0,
        });
        if let Some(parent) = &parent {
            v1["parent"] = parent.clone().into();
        }
        add(&format!("{id}/VERSION"), b"1.0");
        add(&format!("{id}/json"), &serde_json::to_vec(&v1).unwrap());
        add(&format!("{id}/layer.tar"), &layer.tar().unwrap());
        parent = Some(id);
    }
    let repositories = serde_json::json!({ name: { tag: parent.expect("a layer at least") } });
    add("repositories", &serde_json::to_vec(&repositories).unwrap());
    builder.into_inner().unwrap()
}
