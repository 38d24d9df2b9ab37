//! Container layers and image mounts as imaged.v1.Layers shows them.

use imaged_api::v1::{
    Change, ChangesResponse, CommitImageRequest, CreateLayerRequest, CreateLayerResponse,
    GetLayerResponse, LayerSizeResponse, Mount, MountImageResponse, change,
};

use crate::commit::CommitOrder;
use crate::containers::{ImageMount, Layer, LayerSize, NewLayer};
use crate::storage::{self, ChangeKind, Changes};

/// The container layer CreateLayer asks for.
pub fn new_layer(request: CreateLayerRequest) -> NewLayer {
    NewLayer {
        container_id: request.container_id,
        image: request.image,
        mount_label: request.mount_label,
    }
}

/// What CommitImage asks for.
pub fn commit_order(request: CommitImageRequest) -> CommitOrder {
    CommitOrder {
        container_id: request.container_id,
        reference: request.reference,
        author: request.author,
        comment: request.comment,
        changes: request.changes,
    }
}

/// CreateLayer's answer.
pub fn created(layer: Layer) -> CreateLayerResponse {
    CreateLayerResponse {
        mount_id: layer.mount_id,
        mounts: mounts(layer.mounts),
        folders: layer.folders,
    }
}

/// GetLayer's answer.
pub fn layer(layer: Layer) -> GetLayerResponse {
    GetLayerResponse {
        mount_id: layer.mount_id,
        mounts: mounts(layer.mounts),
        folders: layer.folders,
        image_id: layer.image_id,
    }
}

/// Docker's ContainerChanges, by path.
pub fn changes(changes: Changes) -> ChangesResponse {
    let changes = changes
        .into_iter()
        .map(|(path, kind)| Change {
            path,
            kind: match kind {
                ChangeKind::Modify => change::Kind::Modify,
                ChangeKind::Add => change::Kind::Add,
                ChangeKind::Delete => change::Kind::Delete,
            } as i32,
        })
        .collect();
    ChangesResponse { changes }
}

/// LayerSize's answer.
pub fn size(size: LayerSize) -> LayerSizeResponse {
    LayerSizeResponse {
        rw_size: size.rw as i64,
        virtual_size: size.virtual_size as i64,
    }
}

/// MountImage's answer.
pub fn image_mount(mount: ImageMount) -> MountImageResponse {
    MountImageResponse {
        lease_id: mount.lease_id,
        mounts: mounts(vec![mount.mount]),
        image_id: mount.image_id,
    }
}

/// The storage driver's mounts as the wire carries them.
fn mounts(mounts: Vec<storage::Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            options: m.options,
        })
        .collect()
}
