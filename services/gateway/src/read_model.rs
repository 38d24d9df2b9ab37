//! The gateway's read model of InspectImage: every image's answer and
//! every reference, loaded from imaged-metadata (`InspectAll`) at one
//! version of its store, and answered here, with no hop to imaged-metadata,
//! while the store's published version ([`imaged_common::version`], one
//! `pread`) is still that one.
//!
//! A change is published before it returns to its caller, so an answer
//! from here is never older than a change someone saw complete. After a
//! change, calls go to imaged-metadata (as they would with no model) and
//! the first of them starts loading the model again in the background, at
//! most once per [`RELOAD_INTERVAL`]: a store that changes all the time
//! costs one load a second, not one per call. Which image an input names
//! is decided by [`imaged_common::resolve`], the code imaged-metadata runs,
//! so an answer or refusal from here is the one it would give. A request
//! with a platform always goes to imaged-metadata, and so does every
//! request while the store holds more than [`MAX_IMAGES`] images.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use imaged_api::internal::v1::InspectAllRequest;
use imaged_api::v1::{ImageInspect, InspectImageRequest};
use imaged_common::clients::MetadataClient;
use imaged_common::resolve;
use imaged_common::version::{self, Version};
use tonic::Status;

use crate::peers::Peers;

/// The least time between two loads.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The most images the model holds (about 1.5 KiB each); a bigger store is
/// answered by imaged-metadata alone.
const MAX_IMAGES: u32 = 50_000;

/// Every image's encoded InspectImage answer at one version of the store.
struct Snapshot {
    version: Version,
    /// By the hex of the image ID (ordered, for ID prefixes).
    by_hex: BTreeMap<String, Bytes>,
    /// Reference in store form → hex of the image ID.
    references: HashMap<String, String>,
}

impl resolve::Images for Snapshot {
    type Image = Bytes;

    fn by_id(&self, id: &str) -> Option<&Bytes> {
        self.by_hex.get(id.strip_prefix("sha256:")?)
    }

    fn by_reference(&self, key: &str) -> Option<&Bytes> {
        self.by_hex.get(self.references.get(key)?)
    }

    fn by_prefix(&self, hex: &str) -> Option<&Bytes> {
        let mut matching = self
            .by_hex
            .range(hex.to_string()..)
            .take_while(|(id, _)| id.starts_with(hex));
        let (first_id, first) = matching.next()?;
        // An exact match sorts first and wins; otherwise one match only.
        (first_id == hex || matching.next().is_none()).then_some(first)
    }
}

/// The model and its loading.
pub struct ReadModel {
    version: Arc<version::Reader>,
    peers: Peers,
    current: Mutex<Option<Arc<Snapshot>>>,
    loads: Mutex<Loads>,
}

/// Whether a load runs, and when the last one started.
#[derive(Default)]
struct Loads {
    running: bool,
    last_start: Option<Instant>,
}

impl ReadModel {
    /// Empty until the first InspectImage starts a load.
    pub fn new(peers: Peers, version: Arc<version::Reader>) -> Arc<ReadModel> {
        Arc::new(ReadModel {
            version,
            peers,
            current: Mutex::new(None),
            loads: Mutex::new(Loads::default()),
        })
    }

    /// InspectImage answered here, or `None` when the model cannot answer
    /// it (a platform asked, the store changed since the model was loaded,
    /// or no version is published): the caller asks imaged-metadata.
    pub fn inspect(
        self: &Arc<Self>,
        request: &InspectImageRequest,
    ) -> Option<Result<ImageInspect, Status>> {
        if request.platform.is_some() {
            return None;
        }
        let now = self.version.current()?;
        let snapshot = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match snapshot {
            Some(snapshot) if snapshot.version == now => Some(answer(&snapshot, &request.image)),
            _ => {
                self.reload();
                None
            }
        }
    }

    /// Starts a load unless one runs or the last started too recently.
    fn reload(self: &Arc<Self>) {
        {
            let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
            if loads.running
                || loads
                    .last_start
                    .is_some_and(|at| at.elapsed() < RELOAD_INTERVAL)
            {
                return;
            }
            *loads = Loads {
                running: true,
                last_start: Some(Instant::now()),
            };
        }
        let model = Arc::clone(self);
        tokio::spawn(async move {
            match model.load().await {
                Ok(snapshot) => {
                    *model.current.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Arc::new(snapshot));
                }
                Err(status) => {
                    tracing::debug!(%status, "loading the InspectImage read model failed");
                }
            }
            model
                .loads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .running = false;
        });
    }

    async fn load(&self) -> Result<Snapshot, Status> {
        let answer = self
            .peers
            .metadata
            .rpc(|mut client: MetadataClient| async move {
                client
                    .inspect_all(InspectAllRequest {
                        max_images: MAX_IMAGES,
                    })
                    .await
            })
            .await?;
        let version = answer
            .version
            .map(Version::from)
            .ok_or_else(|| Status::internal("imaged-metadata answered no version"))?;
        let hex = |id: &str| id.strip_prefix("sha256:").unwrap_or(id).to_string();
        Ok(Snapshot {
            version,
            by_hex: answer
                .images
                .into_iter()
                .map(|image| (hex(&image.id), image.inspect))
                .collect(),
            references: answer
                .references
                .into_iter()
                .map(|reference| (reference.key, hex(&reference.id)))
                .collect(),
        })
    }
}

/// The answer `snapshot` gives for `input`, found as imaged-metadata finds.
fn answer(snapshot: &Snapshot, input: &str) -> Result<ImageInspect, Status> {
    let encoded = resolve::find(snapshot, input).map_err(Status::from)?;
    prost::Message::decode(encoded.clone())
        .map_err(|err| Status::internal(format!("a kept InspectImage answer is corrupt: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let image = |tag: &str| {
            Bytes::from(prost::Message::encode_to_vec(&ImageInspect {
                repo_tags: vec![tag.to_string()],
                ..Default::default()
            }))
        };
        let a = "a".repeat(64);
        let ab = format!("ab{}", "0".repeat(62));
        Snapshot {
            version: Version {
                epoch: 0,
                generation: 0,
            },
            by_hex: [(a.clone(), image("a")), (ab.clone(), image("ab"))].into(),
            references: [("docker.io/library/busybox:latest".to_string(), ab)].into(),
        }
    }

    fn tag_of(answer: Result<ImageInspect, Status>) -> String {
        answer.expect("an answer").repo_tags.join(",")
    }

    #[test]
    fn inputs_resolve_as_imaged_metadata_resolves_them() {
        let s = snapshot();
        assert_eq!(tag_of(answer(&s, "busybox")), "ab");
        assert_eq!(
            tag_of(answer(&s, &format!("sha256:{}", "a".repeat(64)))),
            "a"
        );
        assert_eq!(tag_of(answer(&s, &"a".repeat(64))), "a");
        assert_eq!(tag_of(answer(&s, "ab0")), "ab");
        // "a" is a prefix of both: ambiguous, so not found.
        let err = answer(&s, "a").expect_err("ambiguous");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "No such image: a:latest");
        let err = answer(&s, "nginx:1").expect_err("absent");
        assert_eq!(err.message(), "No such image: nginx:1");
        let err = answer(&s, "").expect_err("blank");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = answer(&s, "UPPER").expect_err("malformed");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
