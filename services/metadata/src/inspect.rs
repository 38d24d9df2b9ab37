//! Docker's ImageHistory and Children, and where an image's layers are
//! (its GraphDriver). ImageInspect's answer is the image itself, shown by
//! the gRPC adapter (`grpc/inspect.rs`).

use std::collections::HashMap;

use imaged_common::Error;
use imaged_model::Platform;

use crate::resolve::get_image;
use crate::store::Index;

/// One row of `docker history`, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryRow {
    /// The local image this row is the top of, or `<missing>`.
    pub id: String,
    /// Nanoseconds since the epoch.
    pub created: Option<i128>,
    pub created_by: String,
    /// Its image's familiar tags.
    pub tags: Vec<String>,
    pub size: i64,
    pub comment: String,
}

/// `docker history`: the config's history, newest first, with sizes from
/// the layers and IDs and tags from the local parent chain.
pub fn history(
    index: &Index,
    input: &str,
    platform: Option<&Platform>,
) -> Result<Vec<HistoryRow>, Error> {
    let image = get_image(index, input, platform)?;
    let mut layer = 0;
    let mut items = Vec::new();
    for h in &image.config.history {
        let size = if h.empty_layer {
            0
        } else {
            let size = *image.meta.layer_sizes.get(layer).ok_or_else(|| {
                Error::invalid_argument("too many non-empty layers in History section")
            })?;
            layer += 1;
            size
        };
        items.push(HistoryRow {
            id: "<missing>".into(),
            created: h.created,
            created_by: h.created_by.clone(),
            tags: Vec::new(),
            size,
            comment: h.comment.clone(),
        });
    }
    items.reverse();
    // Walk the local parent chain from the top row down.
    let mut current = Some(image);
    for item in items.iter_mut() {
        let Some(img) = current else { break };
        let id = img.id.to_string();
        item.tags = index
            .refs_of(&id)
            .into_iter()
            .filter(|r| r.digest().is_none())
            .map(|r| r.familiar())
            .collect();
        current = img.meta.parent.as_deref().and_then(|p| index.image(p));
        item.id = id;
    }
    Ok(items)
}

/// Docker's Children: IDs of images whose parent is the image.
pub fn children(index: &Index, input: &str) -> Result<Vec<String>, Error> {
    let image = get_image(index, input, None)?;
    Ok(index
        .children_of(&image.id.to_string())
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// imaged-transfer's storage driver and where its layers are.
#[derive(Clone, Debug)]
pub struct Layout {
    pub driver: String,
    pub layers_dir: std::path::PathBuf,
}

/// The data of Docker's GraphDriver (its name is the layout's driver) of
/// an image whose layers are `chains` (bottom first): overlay2 shows the
/// layer directories; vfs shows none.
pub fn graph_driver(layout: &Layout, chains: &[imaged_model::Digest]) -> HashMap<String, String> {
    let mut data = HashMap::new();
    if layout.driver == "overlay2"
        && let Some((top, parents)) = chains.split_last()
    {
        let dir = |chain: &imaged_model::Digest| layout.layers_dir.join(chain.hex());
        let lower: Vec<String> = parents
            .iter()
            .rev()
            .map(|c| dir(c).join("diff").display().to_string())
            .collect();
        if !lower.is_empty() {
            data.insert("LowerDir".to_string(), lower.join(":"));
        }
        for (key, sub) in [
            ("UpperDir", "diff"),
            ("WorkDir", "work"),
            ("MergedDir", "merged"),
        ] {
            data.insert(key.to_string(), dir(top).join(sub).display().to_string());
        }
    }
    data
}

#[cfg(test)]
mod graph_driver_tests {
    use super::*;
    use imaged_model::Digest;

    #[test]
    fn overlay2_names_the_layer_dirs_top_first_and_vfs_none() {
        let diff_ids: Vec<Digest> = ["a", "b", "c"]
            .iter()
            .map(|s| Digest::sha256_of(s.as_bytes()))
            .collect();
        let chains = imaged_model::digest::chain_ids(&diff_ids);
        let layout = Layout {
            driver: "overlay2".into(),
            layers_dir: "/var/lib/imaged/transfer/layers".into(),
        };
        let dir = |i: usize| format!("/var/lib/imaged/transfer/layers/{}", chains[i].hex());
        let driver = graph_driver(&layout, &chains);
        assert_eq!(
            driver["LowerDir"],
            format!("{}/diff:{}/diff", dir(1), dir(0))
        );
        assert_eq!(driver["UpperDir"], format!("{}/diff", dir(2)));
        assert_eq!(driver["WorkDir"], format!("{}/work", dir(2)));
        assert_eq!(driver["MergedDir"], format!("{}/merged", dir(2)));
        let one = graph_driver(&layout, &chains[..1]);
        assert!(!one.contains_key("LowerDir"));
        let vfs = Layout {
            driver: "vfs".into(),
            ..layout
        };
        assert!(graph_driver(&vfs, &chains).is_empty());
    }
}
