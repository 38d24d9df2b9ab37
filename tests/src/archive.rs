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
