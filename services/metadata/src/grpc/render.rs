//! The operations' answers as the API shows them: history rows, removal
//! lines, stored configs and save sets.

use imaged_api::internal::v1::{
    ExportSetResponse, ExportedImage, ImageConfigResponse, MovedTag, PutImageResponse,
};
use imaged_api::timestamp;
use imaged_api::v1::{DeleteItem, HistoryItem, delete_item::Item};

use crate::delete::Line;
use crate::inspect::HistoryRow;
use crate::put::{ExportedImage as Exported, Recorded, StoredImage};

/// `docker history` rows.
pub fn history(rows: Vec<HistoryRow>) -> Vec<HistoryItem> {
    rows.into_iter()
        .map(|row| HistoryItem {
            id: row.id,
            created: row
                .created
                .map(|t| t.div_euclid(1_000_000_000) as i64)
                .unwrap_or(0),
            created_at: row.created.map(timestamp),
            created_by: row.created_by,
            tags: row.tags,
            size: row.size,
            comment: row.comment,
        })
        .collect()
}

/// A removal's lines.
pub fn delete_items(lines: Vec<Line>) -> Vec<DeleteItem> {
    lines
        .into_iter()
        .map(|line| DeleteItem {
            item: Some(match line {
                Line::Untagged(reference) => Item::Untagged(reference),
                Line::Deleted(id) => Item::Deleted(id),
            }),
        })
        .collect()
}

/// What recording an image did.
pub fn recorded(recorded: Recorded) -> PutImageResponse {
    PutImageResponse {
        id: recorded.id,
        updated: recorded.updated,
        moved: recorded
            .moved
            .into_iter()
            .map(|m| MovedTag {
                tag: m.tag,
                from_id: m.from_id,
            })
            .collect(),
    }
}

/// A stored config and its references.
pub fn config(stored: StoredImage) -> ImageConfigResponse {
    ImageConfigResponse {
        id: stored.id,
        config: stored.config,
        repo_tags: stored.repo_tags,
        repo_digests: stored.repo_digests,
    }
}

/// The images a save writes.
pub fn export_set(images: Vec<Exported>) -> ExportSetResponse {
    ExportSetResponse {
        images: images
            .into_iter()
            .map(|e| ExportedImage {
                id: e.id,
                config: e.config,
                repo_tags: e.repo_tags,
                parent: e.parent,
            })
            .collect(),
    }
}
