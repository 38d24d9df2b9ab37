//! Test doubles of the engines' neighbours: a registry that serves images
//! from memory and takes pushes into it (with faults on request), a
//! recorder and a containerd that keep what they are told. Unit tests of
//! the engines run against these.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;
use imaged_common::Error;
use imaged_model::{Digest, Platform, Reference};
use oci_client::errors::OciDistributionError;
use tokio::sync::watch;

use super::fetcher::{Blob, Fetcher, TO_THE_END};
use super::recorder::{ExportedImage, Record, Recorded, Recorder, StoredImage};
use crate::registry::Source;

/// A registry in memory: manifests by repository and tag or digest, blobs
/// by digest. Every source (mirror or registry) serves the same content,
/// unless it is set to fail.
#[derive(Default)]
pub struct FakeRegistry {
    manifests: Mutex<HashMap<(String, String), Bytes>>,
    blobs: Mutex<HashMap<String, Bytes>>,
    /// (source name, blob digest) → failures left before it serves.
    failures: Mutex<HashMap<(String, String), u32>>,
    /// Sources that answer nothing but errors.
    down: Mutex<HashSet<String>>,
    /// Blob requests served, by (source name, digest).
    served: Mutex<HashMap<(String, String), u32>>,
    /// While false, the body of this blob waits before its first byte.
    gate: Option<(String, watch::Receiver<bool>)>,
    /// (repository, blob digest) the registry has, for pushes.
    repository_blobs: Mutex<HashSet<(String, String)>>,
    /// What pushes did, in order: `upload <repo> <digest>`,
    /// `mount <repo> <digest> from <repo>`, `manifest <repo>:<tag>`.
    pub pushes: Mutex<Vec<String>>,
}

impl FakeRegistry {
    /// A registry whose body of the blob `digest` waits until `gate`
    /// says true.
    pub fn gated(digest: &str, gate: watch::Receiver<bool>) -> Self {
        FakeRegistry {
            gate: Some((digest.to_string(), gate)),
            ..Default::default()
        }
    }

    /// Serves `image` at `repository:tag` (a repository path such as
    /// `library/app`).
    pub fn push(&self, repository: &str, tag: &str, image: &imaged_fixtures::Image) {
        let manifest = Bytes::from(image.manifest.data.clone());
        let mut manifests = self.manifests.lock().unwrap();
        manifests.insert((repository.into(), tag.into()), manifest.clone());
        manifests.insert((repository.into(), image.manifest.digest.clone()), manifest);
        let mut blobs = self.blobs.lock().unwrap();
        blobs.insert(
            image.config.digest.clone(),
            Bytes::from(image.config.data.clone()),
        );
        for layer in &image.layers {
            blobs.insert(layer.digest.clone(), Bytes::from(layer.data.clone()));
        }
        let mut held = self.repository_blobs.lock().unwrap();
        for digest in image.layers.iter().map(|l| &l.digest) {
            held.insert((repository.into(), digest.clone()));
        }
        held.insert((repository.into(), image.config.digest.clone()));
    }

    /// Whether the repository has the blob `digest` (pushed, mounted or
    /// served there).
    pub fn has_blob(&self, repository: &str, digest: &str) -> bool {
        let key = (repository.to_string(), digest.to_string());
        self.repository_blobs.lock().unwrap().contains(&key)
    }

    /// The next failures left for `key`, counting this one down.
    fn fails(&self, key: (String, String)) -> bool {
        let mut failures = self.failures.lock().unwrap();
        match failures.get_mut(&key) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    /// `source` fails the next `times` requests for the blob `digest`.
    pub fn fail_blob(&self, source: &str, digest: &str, times: u32) {
        self.failures
            .lock()
            .unwrap()
            .insert((source.into(), digest.into()), times);
    }

    /// `source` answers every request with an error.
    pub fn take_down(&self, source: &str) {
        self.down.lock().unwrap().insert(source.into());
    }

    /// How many blob requests for `digest` `source` answered with bytes.
    pub fn served(&self, source: &str, digest: &str) -> u32 {
        let served = self.served.lock().unwrap();
        served
            .get(&(source.to_string(), digest.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Blob requests for `digest` answered by any source.
    pub fn served_anywhere(&self, digest: &str) -> u32 {
        let served = self.served.lock().unwrap();
        served
            .iter()
            .filter(|((_, d), _)| d == digest)
            .map(|(_, n)| n)
            .sum()
    }

    fn refuse(&self, source: &Source) -> Result<(), OciDistributionError> {
        if self.down.lock().unwrap().contains(source.name()) {
            return Err(unreachable(source.name()));
        }
        Ok(())
    }
}

fn unreachable(name: &str) -> OciDistributionError {
    OciDistributionError::IoError(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        format!("{name}: connection reset"),
    ))
}

#[tonic::async_trait]
impl Fetcher for FakeRegistry {
    async fn manifest(
        &self,
        source: &Source,
        oref: &oci_client::Reference,
        _accepted: &[&str],
        _max: usize,
    ) -> Result<(Bytes, String), OciDistributionError> {
        self.refuse(source)?;
        let reference = oref.digest().or(oref.tag()).unwrap_or("latest");
        let key = (oref.repository().to_string(), reference.to_string());
        let bytes = self.manifests.lock().unwrap().get(&key).cloned();
        let bytes = bytes
            .ok_or_else(|| OciDistributionError::ImageManifestNotFoundError(reference.into()))?;
        let digest = Digest::sha256_of(&bytes).to_string();
        Ok((bytes, digest))
    }

    async fn blob(
        &self,
        source: &Source,
        digest: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Blob, OciDistributionError> {
        self.refuse(source)?;
        let key = (source.name().to_string(), digest.to_string());
        if self.fails(key.clone()) {
            return Err(unreachable(source.name()));
        }
        let bytes = self.blobs.lock().unwrap().get(digest).cloned();
        let bytes = bytes.ok_or_else(|| OciDistributionError::ServerError {
            code: 404,
            url: digest.into(),
            message: "blob unknown".into(),
        })?;
        *self.served.lock().unwrap().entry(key).or_default() += 1;
        let end = range.end.min(bytes.len() as u64) as usize;
        let rest = bytes.slice((range.start as usize).min(end)..end);
        let gate = self
            .gate
            .as_ref()
            .filter(|(gated, _)| gated == digest)
            .map(|(_, gate)| gate.clone());
        let body = futures::stream::once(async move {
            if let Some(mut gate) = gate {
                let _ = gate.wait_for(|open| *open).await;
            }
            Ok(rest)
        });
        Ok(Blob {
            partial: range.start > 0 || range.end != TO_THE_END,
            body: body.boxed(),
        })
    }

    async fn tags(&self, source: &Source) -> Result<Vec<String>, OciDistributionError> {
        self.refuse(source)?;
        let repository = source.oref.repository().to_string();
        let mut tags: Vec<String> = self
            .manifests
            .lock()
            .unwrap()
            .keys()
            .filter(|(r, t)| *r == repository && !t.starts_with("sha256:"))
            .map(|(_, t)| t.clone())
            .collect();
        tags.sort();
        Ok(tags)
    }
}

/// imaged-metadata in memory: the images recorded, by ID.
#[derive(Default)]
pub struct FakeRecorder {
    pub records: Mutex<Vec<Record>>,
    images: Mutex<HashMap<String, StoredImage>>,
}

impl FakeRecorder {
    /// The actions recorded, in order (`pull`, `load`, …).
    pub fn actions(&self) -> Vec<String> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.action.clone())
            .collect()
    }
}

fn unsupported(what: &str) -> Error {
    Error::unimplemented(format!("the fake recorder does not {what}"))
}

#[tonic::async_trait]
impl Recorder for FakeRecorder {
    async fn image(&self, name: &str, _platform: Option<&Platform>) -> Result<StoredImage, Error> {
        let images = self.images.lock().unwrap();
        images
            .values()
            .find(|i| {
                i.id == name
                    || i.repo_tags.iter().any(|t| t == name)
                    || i.repo_digests.iter().any(|d| d == name)
            })
            .cloned()
            .ok_or_else(|| Error::not_found(format!("No such image: {name}")))
    }

    async fn repository_refs(
        &self,
        name: &Reference,
    ) -> Result<(Vec<Reference>, Vec<Reference>), Error> {
        let images = self.images.lock().unwrap();
        let of = |refs: &Vec<String>| -> Vec<Reference> {
            refs.iter()
                .filter_map(|r| Reference::parse(r).ok())
                .filter(|r| r.name() == name.name())
                .collect()
        };
        // Sorted, as imaged-metadata answers.
        let sorted = |mut refs: Vec<Reference>| {
            refs.sort_by_key(|r| r.to_string());
            refs
        };
        let tags = sorted(images.values().flat_map(|i| of(&i.repo_tags)).collect());
        let digests = sorted(images.values().flat_map(|i| of(&i.repo_digests)).collect());
        Ok((tags, digests))
    }

    async fn record(&self, record: Record) -> Result<Recorded, Error> {
        let id = Digest::sha256_of(&record.config).to_string();
        let familiar = |refs: &[String]| -> Vec<String> {
            refs.iter()
                .filter_map(|r| Reference::parse(r).ok())
                .map(|r| r.familiar())
                .collect()
        };
        let mut images = self.images.lock().unwrap();
        let image = images.entry(id.clone()).or_insert_with(|| StoredImage {
            id: id.clone(),
            config: record.config.clone(),
            ..Default::default()
        });
        let before = (image.repo_tags.len(), image.repo_digests.len());
        for tag in familiar(&record.tags) {
            if !image.repo_tags.contains(&tag) {
                image.repo_tags.push(tag);
            }
        }
        for digest in familiar(&record.digests) {
            if !image.repo_digests.contains(&digest) {
                image.repo_digests.push(digest);
            }
        }
        let updated = before != (image.repo_tags.len(), image.repo_digests.len());
        self.records.lock().unwrap().push(record);
        Ok(Recorded {
            id,
            updated,
            moved: Vec::new(),
        })
    }

    async fn create_image(&self, _config: Vec<u8>, _parent: &str) -> Result<String, Error> {
        Err(unsupported("create images"))
    }

    async fn tag(&self, id: &str, target: &str) -> Result<(), Error> {
        let tag = Reference::parse(target)?.with_default_tag().familiar();
        let mut images = self.images.lock().unwrap();
        for image in images.values_mut() {
            image.repo_tags.retain(|t| *t != tag);
        }
        let image = images
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("No such image: {id}")))?;
        image.repo_tags.push(tag);
        Ok(())
    }

    async fn export_set(
        &self,
        _names: Vec<String>,
        _platform: Option<&Platform>,
    ) -> Result<Vec<ExportedImage>, Error> {
        Err(unsupported("export"))
    }

    async fn image_ids(&self) -> Result<Vec<String>, Error> {
        Ok(self.images.lock().unwrap().keys().cloned().collect())
    }

    async fn set_container(&self, _: &str, _: &str, _: bool) -> Result<(), Error> {
        Err(unsupported("keep containers"))
    }

    async fn remove_container(&self, _: &str) -> Result<(), Error> {
        Err(unsupported("keep containers"))
    }
}

/// containerd in memory: the images registered, in order.
#[derive(Default)]
pub struct FakeRegistrar {
    pub registered: Mutex<Vec<super::registrar::Image>>,
}

#[tonic::async_trait]
impl super::Registrar for FakeRegistrar {
    async fn register(&self, image: &super::registrar::Image) -> Result<(), Error> {
        self.registered.lock().unwrap().push(image.clone());
        Ok(())
    }
}

/// The source name [`FakeRegistry::fail_blob`] takes for pushes.
pub const PUSH: &str = "push";

/// Pushes into a shared [`FakeRegistry`]: blobs by repository, manifests
/// by tag and digest, so a pull reads back what a push wrote.
pub struct FakeDestination(pub std::sync::Arc<FakeRegistry>);

struct FakeSession {
    registry: std::sync::Arc<FakeRegistry>,
    repository: String,
    tag: String,
}

#[tonic::async_trait]
impl super::destination::Destination for FakeDestination {
    async fn open(
        &self,
        target: &Reference,
        _auth: &oci_client::secrets::RegistryAuth,
    ) -> Result<Box<dyn super::destination::PushSession>, OciDistributionError> {
        Ok(Box::new(FakeSession {
            registry: std::sync::Arc::clone(&self.0),
            repository: target.path().to_string(),
            tag: target.tag().unwrap_or("latest").to_string(),
        }))
    }
}

#[tonic::async_trait]
impl super::destination::PushSession for FakeSession {
    async fn blob_exists(&self, digest: &str) -> Result<bool, OciDistributionError> {
        Ok(self.registry.has_blob(&self.repository, digest))
    }

    async fn mount_blob(
        &self,
        digest: &str,
        source: &oci_client::Reference,
    ) -> Result<(), OciDistributionError> {
        let from = source.repository().to_string();
        if self.registry.has_blob(&from, digest) {
            let mut held = self.registry.repository_blobs.lock().unwrap();
            held.insert((self.repository.clone(), digest.to_string()));
            self.registry
                .pushes
                .lock()
                .unwrap()
                .push(format!("mount {} {digest} from {from}", self.repository));
        }
        Ok(())
    }

    async fn push_blob(
        &self,
        digest: &str,
        size: u64,
        mut body: super::destination::BlobBody,
    ) -> Result<(), OciDistributionError> {
        if self.registry.fails((PUSH.to_string(), digest.to_string())) {
            return Err(unreachable(PUSH));
        }
        let mut data = Vec::new();
        while let Some(chunk) = body.next().await {
            data.extend_from_slice(&chunk?);
        }
        if data.len() as u64 != size || Digest::sha256_of(&data).to_string() != digest {
            return Err(OciDistributionError::GenericError(Some(format!(
                "blob {digest}: {} bytes that do not match",
                data.len()
            ))));
        }
        self.registry
            .blobs
            .lock()
            .unwrap()
            .insert(digest.to_string(), Bytes::from(data));
        let key = (self.repository.clone(), digest.to_string());
        self.registry.repository_blobs.lock().unwrap().insert(key);
        self.registry
            .pushes
            .lock()
            .unwrap()
            .push(format!("upload {} {digest}", self.repository));
        Ok(())
    }

    async fn push_manifest(
        &self,
        body: Vec<u8>,
        _media_type: &str,
    ) -> Result<(), OciDistributionError> {
        let body = Bytes::from(body);
        let digest = Digest::sha256_of(&body).to_string();
        let mut manifests = self.registry.manifests.lock().unwrap();
        manifests.insert((self.repository.clone(), self.tag.clone()), body.clone());
        manifests.insert((self.repository.clone(), digest), body);
        self.registry
            .pushes
            .lock()
            .unwrap()
            .push(format!("manifest {}:{}", self.repository, self.tag));
        Ok(())
    }
}
