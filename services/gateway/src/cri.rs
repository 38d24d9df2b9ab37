//! The CRI v1 `runtime.v1.ImageService` for kubelet, over the same
//! internal services as `imaged.v1.Images`, with the semantics kubelet
//! relies on and containerd's answers (compared field by field in the
//! e2e tests): a missing or unparsable image's status is an empty answer
//! (an empty name is INVALID_ARGUMENT), removing a missing image succeeds and removing one removes its
//! references (never refused for child images), an `Image` always has an
//! ID and a size above 0 (the registry's, compressed, as containerd
//! counts it), `uid`/`username` come from the config's User, configured
//! images are pinned, PullImage answers the image ID, and ImageFsInfo
//! counts the unpacked layers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use imaged_api::cri::image_service_server::ImageService;
use imaged_api::cri::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use imaged_api::internal::v1::{ContentSizeRequest, CriImagesRequest};
use imaged_api::v1::{self, ImageInspect, InspectImageRequest, RegistryAuth};
use imaged_common::Error;
use imaged_common::clients::MetadataClient;
use imaged_common::clients::TransferClient;
use imaged_common::version;
use imaged_model::Reference;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status};

use crate::kept::Kept;
use crate::peers::Peers;

/// Serves `runtime.v1.ImageService`.
pub struct CriImageService {
    peers: Peers,
    /// `--pinned-images`, fully qualified (IDs as given).
    pinned: HashSet<String>,
    /// ImageStatus answers by name, and the ListImages answer, kept while
    /// the store does not change ([`crate::kept`]): kubelet asks the same
    /// few questions many times between changes.
    statuses: Kept<String, Option<Image>>,
    list: Kept<(), Vec<Image>>,
}

/// How many names' statuses are kept at most (kubelet asks about the
/// images of the node's pods).
const KEPT_STATUSES: usize = 4096;

impl CriImageService {
    /// `version`: imaged-metadata's published version.
    pub fn new(peers: Peers, pinned: &[String], version: Arc<version::Reader>) -> Self {
        CriImageService {
            peers,
            pinned: qualified(pinned).into_iter().collect(),
            statuses: Kept::new(Arc::clone(&version), KEPT_STATUSES),
            list: Kept::new(version, 1),
        }
    }

    /// The CRI record of the image `name` names (`None`: no such image),
    /// as kept or from imaged-metadata.
    async fn status_image(&self, name: &str) -> Result<Option<Image>, Status> {
        if let Some(answer) = self.statuses.get(name) {
            return Ok(answer);
        }
        let request = InspectImageRequest {
            image: name.to_string(),
            platform: None,
        };
        let answer = self
            .peers
            .metadata
            .rpc(|mut client: MetadataClient| {
                let request = request.clone();
                async move { client.cri_image(request).await }
            })
            .await?;
        let image = answer.image.map(|row| self.pin(cri_image(&row)));
        self.statuses
            .keep(name.to_string(), answer.version, image.clone());
        Ok(image)
    }

    /// Every image's CRI record, as kept or from imaged-metadata.
    async fn images(&self) -> Result<Vec<Image>, Status> {
        if let Some(images) = self.list.get(&()) {
            return Ok(images);
        }
        let answer = self
            .peers
            .metadata
            .rpc(|mut client: MetadataClient| async move {
                client.cri_images(CriImagesRequest {}).await
            })
            .await?;
        let images: Vec<Image> = answer
            .images
            .iter()
            .map(|row| self.pin(cri_image(row)))
            .collect();
        self.list.keep((), answer.version, images.clone());
        Ok(images)
    }

    /// Whether `image` is one of the pinned images.
    fn pin(&self, mut image: Image) -> Image {
        image.pinned = self.pinned.contains(&image.id)
            || image
                .repo_tags
                .iter()
                .chain(&image.repo_digests)
                .any(|n| self.pinned.contains(n));
        image
    }

    /// The image `spec` names, or `None` when there is none.
    async fn inspect(&self, spec: Option<&ImageSpec>) -> Result<Option<ImageInspect>, Status> {
        let image = image_name(spec)?;
        let request = InspectImageRequest {
            image,
            platform: None,
        };
        let result = self
            .peers
            .metadata
            .rpc(|mut client: MetadataClient| {
                let request = request.clone();
                async move { client.inspect_image(request).await }
            })
            .await;
        match result {
            Ok(inspect) => Ok(Some(inspect)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }
}

/// The reference of an ImageSpec; empty is kubelet's error to get.
fn image_name(spec: Option<&ImageSpec>) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(image) if !image.is_empty() => Ok(image.to_string()),
        _ => Err(Error::invalid_argument("no image specified").into()),
    }
}

/// Names as containerd and CRI-O show them: fully qualified.
fn qualified(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| Reference::parse(n).map_or_else(|_| n.clone(), |r| r.to_string()))
        .collect()
}

/// An image's CRI size: as containerd counts it, what its registry holds
/// (compressed); the unpacked size for an image that came from no
/// registry; never 0, which kubelet takes for a broken image.
fn cri_size(content_size: i64, size: i64) -> u64 {
    if content_size > 0 {
        content_size as u64
    } else {
        size.max(1) as u64
    }
}

/// CRI's `uid` and `username` of a config's User: "uid[:gid]" numeric is
/// a uid, a name a username (never both), as containerd reads it.
fn user_fields(user: &str) -> (Option<Int64Value>, String) {
    let name = user.split(':').next().unwrap_or_default();
    match name.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

/// The CRI record of an image, from its list row: ID, fully qualified
/// names, a size above zero, the user (all kubelet reads of an image).
fn cri_image(summary: &v1::ImageSummary) -> Image {
    let (uid, username) = user_fields(&summary.user);
    Image {
        id: summary.id.clone(),
        repo_tags: qualified(&summary.repo_tags),
        repo_digests: qualified(&summary.repo_digests),
        size: cri_size(summary.content_size, summary.size),
        uid,
        username,
        // containerd 1.6 leaves it unset; kubelet does not read it.
        spec: None,
        pinned: false,
    }
}

/// ImageStatus's verbose `info`, as containerd gives it: the image spec
/// (the OCI config) and the top layer's chain ID.
fn verbose_info(inspect: &ImageInspect) -> String {
    let spec: serde_json::Value =
        serde_json::from_slice(&inspect.config_json).unwrap_or(serde_json::Value::Null);
    let diff_ids: Vec<imaged_model::Digest> = inspect
        .root_fs
        .as_ref()
        .map(|r| r.layers.iter().filter_map(|l| l.parse().ok()).collect())
        .unwrap_or_default();
    let chain_id = imaged_model::digest::chain_id(&diff_ids)
        .map(|c| c.to_string())
        .unwrap_or_default();
    serde_json::json!({"chainID": chain_id, "imageSpec": spec}).to_string()
}

/// kubelet's credentials as a pull takes them; `auth` is
/// base64("user:password") as in a Docker config file.
fn registry_auth(auth: Option<&AuthConfig>) -> Result<Option<RegistryAuth>, Status> {
    let Some(auth) = auth else { return Ok(None) };
    let (mut username, mut password) = (auth.username.clone(), auth.password.clone());
    if username.is_empty() && !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?;
        (username, password) = (user.to_string(), pass.to_string());
    }
    Ok(Some(RegistryAuth {
        username,
        password,
        identity_token: auth.identity_token.clone(),
        registry_token: auth.registry_token.clone(),
    }))
}

#[tonic::async_trait]
impl ImageService for CriImageService {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .filter(|spec| !spec.image.is_empty());
        let images = match filter {
            Some(spec) => self
                .status_image(spec.image.trim())
                .await?
                .into_iter()
                .collect(),
            None => self.images().await?,
        };
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        // No reference is an error; an unparsable one names no image: an
        // empty status, as containerd answers both.
        let name = image_name(request.image.as_ref())?;
        let image = match self.status_image(&name).await {
            Err(status) if status.code() == Code::InvalidArgument => None,
            other => other?,
        };
        let mut info = HashMap::new();
        // Verbose: the config and chain ID too, as containerd gives them.
        if request.verbose
            && image.is_some()
            && let Some(inspect) = self.inspect(request.image.as_ref()).await?
        {
            info.insert("info".to_string(), verbose_info(&inspect));
        }
        Ok(Response::new(ImageStatusResponse { image, info }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        // The pod's namespace picks its signature policy, as CRI-O's
        // signature_policy_dir.
        let namespace = request
            .sandbox_config
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .map(|m| m.namespace.clone())
            .unwrap_or_default();
        let pull = v1::PullImageRequest {
            reference: image_name(request.image.as_ref())?,
            platform: None,
            auth: registry_auth(request.auth.as_ref())?,
            all_tags: false,
            policy_namespace: namespace,
        };
        let mut stream = self
            .peers
            .transfer
            .rpc(|mut client: TransferClient| {
                let pull = pull.clone();
                async move { client.pull(pull).await }
            })
            .await
            .map_err(signature_refusal)?;
        let mut image_ref = String::new();
        while let Some(message) = stream.next().await {
            let message =
                message.map_err(|s| signature_refusal(self.peers.transfer.stream_status(s)))?;
            if !message.image_id.is_empty() {
                image_ref = message.image_id;
            }
        }
        if image_ref.is_empty() {
            return Err(Status::internal("the pull ended without an image ID"));
        }
        Ok(Response::new(PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let Some(inspect) = self.inspect(request.image.as_ref()).await? else {
            return Ok(Response::new(RemoveImageResponse {}));
        };
        // Every reference of the image goes, as containerd removes every
        // name of it; the image itself goes with its last one unless a
        // child image stands on it. One without references goes by ID.
        let mut names: Vec<String> = inspect
            .repo_tags
            .iter()
            .chain(&inspect.repo_digests)
            .cloned()
            .collect();
        if names.is_empty() {
            names.push(inspect.id.clone());
        }
        for name in names {
            let remove = v1::RemoveImageRequest {
                image: name,
                force: true,
                prune_children: Some(true),
            };
            let result = self
                .peers
                .metadata
                .rpc(|mut client: MetadataClient| {
                    let remove = remove.clone();
                    async move { client.remove_image(remove).await }
                })
                .await;
            match result {
                Ok(_) => {}
                // Gone meanwhile, or an unnamed parent of child images
                // (it has no name left to remove).
                Err(status) if status.code() == Code::NotFound => {}
                Err(status)
                    if status.code() == Code::FailedPrecondition && remove.image == inspect.id => {}
                Err(status) => return Err(status),
            }
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let usage = self
            .peers
            .transfer
            .rpc(|mut client: TransferClient| async move {
                client.content_size(ContentSizeRequest {}).await
            })
            .await?;
        let timestamp = imaged_model::timestamp::now_nanos() as i64;
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: usage.mountpoint,
                }),
                // The unpacked layers, as containerd counts its snapshots.
                used_bytes: Some(UInt64Value {
                    value: usage.layers_size as u64,
                }),
                inodes_used: Some(UInt64Value {
                    value: usage.inodes_used as u64,
                }),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}

/// A pull the signature policy refused, as kubelet recognises it: an
/// UNKNOWN status whose message starts with `SignatureValidationFailed`
/// (cri-api's `ErrSignatureValidationFailed`, which CRI-O wraps the same
/// way), so the pod's event reads "the signature validation failed".
fn signature_refusal(status: Status) -> Status {
    if status.code() == tonic::Code::PermissionDenied
        && status
            .message()
            .starts_with(imaged_common::error::POLICY_REJECTED)
    {
        return Status::unknown(format!("SignatureValidationFailed: {}", status.message()));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use imaged_api::v1::RootFs;

    fn row(user: &str, size: i64) -> v1::ImageSummary {
        v1::ImageSummary {
            id: "sha256:aaaa".into(),
            repo_tags: vec!["busybox:1".into(), "myreg:5000/team/app:v2".into()],
            repo_digests: vec![format!("busybox@sha256:{}", "b".repeat(64))],
            size,
            user: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_image_has_qualified_names_a_size_above_zero_and_no_spec() {
        let image = cri_image(&row("", 0));
        assert_eq!(
            image.repo_tags,
            ["docker.io/library/busybox:1", "myreg:5000/team/app:v2"]
        );
        assert_eq!(
            image.repo_digests,
            [format!(
                "docker.io/library/busybox@sha256:{}",
                "b".repeat(64)
            )]
        );
        assert_eq!(image.size, 1, "kubelet refuses an image of size 0");
        assert_eq!(image.spec, None, "as containerd answers");
        assert_eq!((image.uid, image.username.as_str()), (None, ""));
    }

    #[test]
    fn a_numeric_user_is_a_uid_and_a_name_is_a_username() {
        let image = cri_image(&row("1000:100", 5));
        assert_eq!(image.uid, Some(Int64Value { value: 1000 }));
        assert_eq!(image.username, "");
        let image = cri_image(&row("nginx:www", 5));
        assert_eq!((image.uid, image.username.as_str()), (None, "nginx"));
        assert_eq!(image.size, 5);
    }

    #[test]
    fn the_size_is_the_registrys_when_known() {
        let registry_size = v1::ImageSummary {
            content_size: 3,
            ..row("", 7)
        };
        assert_eq!(cri_image(&registry_size).size, 3, "containerd's size");
        assert_eq!(cri_image(&row("", 7)).size, 7, "no registry: unpacked");
    }

    #[test]
    fn verbose_info_carries_the_spec_and_the_chain_id() {
        let diff_id = format!("sha256:{}", "c".repeat(64));
        let image = ImageInspect {
            config_json: br#"{"architecture":"amd64"}"#.to_vec(),
            root_fs: Some(RootFs {
                r#type: "layers".into(),
                layers: vec![diff_id.clone()],
            }),
            ..Default::default()
        };
        let info: serde_json::Value = serde_json::from_str(&verbose_info(&image)).unwrap();
        assert_eq!(info["chainID"], diff_id, "one layer: chain ID = diff ID");
        assert_eq!(info["imageSpec"]["architecture"], "amd64");
    }

    #[test]
    fn credentials_come_from_fields_or_from_auth() {
        assert_eq!(registry_auth(None).unwrap(), None);
        let auth = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("user:pa:ss"),
            ..Default::default()
        };
        let got = registry_auth(Some(&auth)).unwrap().unwrap();
        assert_eq!(
            (got.username.as_str(), got.password.as_str()),
            ("user", "pa:ss")
        );
        let fields = AuthConfig {
            username: "u".into(),
            password: "p".into(),
            auth: "ignored".into(),
            ..Default::default()
        };
        let got = registry_auth(Some(&fields)).unwrap().unwrap();
        assert_eq!((got.username.as_str(), got.password.as_str()), ("u", "p"));
        for bad in ["not base64!", "dXNlcg=="] {
            let auth = AuthConfig {
                auth: bad.into(),
                ..Default::default()
            };
            assert_eq!(
                registry_auth(Some(&auth)).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn an_empty_image_name_is_invalid() {
        for spec in [
            None,
            Some(ImageSpec::default()),
            Some(ImageSpec {
                image: "  ".into(),
                ..Default::default()
            }),
        ] {
            assert_eq!(
                image_name(spec.as_ref()).unwrap_err().code(),
                Code::InvalidArgument
            );
        }
        let spec = ImageSpec {
            image: " busybox ".into(),
            ..Default::default()
        };
        assert_eq!(image_name(Some(&spec)).unwrap(), "busybox");
    }
}
