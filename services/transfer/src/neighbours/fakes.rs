//! Test doubles of the engines' neighbours: a registry that serves images
//! from memory (with faults on request) and a recorder that keeps what it
//! is told. Unit tests of the engines run against these.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;
use imaged_common::Error;
use imaged_model::{Digest, Platform, Reference};
use oci_client::errors::OciDistributionError;
use tokio::sync::watch;

use super::fetcher::{Blob, Fetcher};
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
        offset: u64,
    ) -> Result<Blob, OciDistributionError> {
        self.refuse(source)?;
        let key = (source.name().to_string(), digest.to_string());
        if let Some(left) = self.failures.lock().unwrap().get_mut(&key)
            && *left > 0
        {
            *left -= 1;
            return Err(unreachable(source.name()));
        }
        let bytes = self.blobs.lock().unwrap().get(digest).cloned();
        let bytes = bytes.ok_or_else(|| OciDistributionError::ServerError {
            code: 404,
            url: digest.into(),
            message: "blob unknown".into(),
        })?;
        *self.served.lock().unwrap().entry(key).or_default() += 1;
        let rest = bytes.slice((offset as usize).min(bytes.len())..);
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
            partial: offset > 0,
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
    pub fn actions(&self) -> Vec<&'static str> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.action)
            .collect()
    }
}

fn unsupported(what: &str) -> Error {
    Error::Unimplemented(format!("the fake recorder does not {what}"))
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
            .ok_or_else(|| Error::NotFound(format!("No such image: {name}")))
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
        let tags = images.values().flat_map(|i| of(&i.repo_tags)).collect();
        let digests = images.values().flat_map(|i| of(&i.repo_digests)).collect();
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

    async fn tag(&self, _id: &str, _target: &str) -> Result<(), Error> {
        Err(unsupported("tag"))
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
