//! Docker as the oracle: a private dockerd (Debian's 20.10, driven by the
//! machine's docker CLI) and imaged side by side, with the same images
//! from the same registry, and the one rule for what may differ: Moby
//! v28, which imaged follows, parts from 20.10 in the places [`V28`]
//! lists, with the reason.

use imaged_api::v1::*;
use tokio_stream::StreamExt;

use crate::dockerd::Dockerd;
use crate::{Imaged, TestRegistry, client};
use imaged_fixtures::{Catalog, catalog};

/// Where Moby v28 and dockerd 20.10 part, so that imaged (v28) may differ
/// from the oracle: (what is compared, as [`same`] names it; why v28
/// answers otherwise). Save's OCI layout, the `until` filter of `docker
/// images` and v28's error wording go here with their scenarios.
pub const V28: &[(&str, &str)] = &[
    (
        "inspect: Container",
        "removed from the image record in API 1.45 (Moby v26)",
    ),
    (
        "inspect: ContainerConfig",
        "removed from the image record in API 1.45 (Moby v26)",
    ),
    (
        "inspect: VirtualSize",
        "removed from the image record in API 1.44 (Moby v25); Size says it",
    ),
];

/// Asserts that imaged answers what Docker answers, unless [`V28`] lists
/// `what`.
#[track_caller]
pub fn same<T: PartialEq + std::fmt::Debug>(what: &str, imaged: T, docker: T) {
    if let Some((_, why)) = V28.iter().find(|(w, _)| *w == what) {
        eprintln!("{what}: not compared, v28 differs from 20.10: {why}");
        return;
    }
    assert_eq!(
        imaged, docker,
        "{what}: imaged (left) and Docker (right) differ"
    );
}

/// The oracle, imaged and a registry holding the fixture catalog.
pub struct Both {
    pub dockerd: Dockerd,
    pub imaged: Imaged,
    pub registry: TestRegistry,
    pub catalog: Catalog,
}

pub async fn both() -> Both {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let dockerd = Dockerd::start().await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    Both {
        dockerd,
        imaged,
        registry,
        catalog,
    }
}

impl Both {
    /// Pulls `reference` into both; answers the `Digest:` and `Status:`
    /// lines each printed.
    pub async fn pull_lines(&self, reference: &str) -> (Vec<String>, Vec<String>) {
        let docker = self.dockerd.ok(&["pull", reference]).await.unwrap();
        let docker = docker
            .lines()
            .filter(|l| l.starts_with("Digest: ") || l.starts_with("Status: "))
            .map(str::to_string)
            .collect();
        let imaged = client::pull(self.imaged.images(), client::pull_request(reference))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.status)
            .filter(|l| l.starts_with("Digest: ") || l.starts_with("Status: "))
            .collect();
        (docker, imaged)
    }

    /// Loads `archive` into both; answers the `Loaded image` lines each
    /// printed (imaged's, Docker's).
    pub async fn load(&self, archive: Vec<u8>) -> (Vec<String>, Vec<String>) {
        let docker = self
            .dockerd
            .docker_with_input(&["load"], Some(&archive))
            .await
            .unwrap();
        assert!(docker.status.success(), "{docker:?}");
        let docker = String::from_utf8_lossy(&docker.stdout)
            .lines()
            .filter(|l| l.starts_with("Loaded image"))
            .map(str::to_string)
            .collect();
        let chunks = vec![LoadImagesRequest {
            chunk: archive,
            quiet: true,
            platform: None,
        }];
        let mut answers = self
            .imaged
            .images()
            .load_images(tokio_stream::iter(chunks))
            .await
            .unwrap()
            .into_inner();
        let mut imaged = Vec::new();
        while let Some(line) = answers.next().await {
            imaged.push(line.unwrap().message);
        }
        (imaged, docker)
    }

    /// `docker history` of `image` in both, a row per step (ID, step,
    /// bytes, comment): (imaged's, Docker's).
    pub async fn history(&self, image: &str) -> (Vec<String>, Vec<String>) {
        let docker = self
            .dockerd
            .ok(&[
                "history",
                "--human=false",
                "--no-trunc",
                "--format",
                "{{.ID}}\\t{{.CreatedBy}}\\t{{.Size}}\\t{{.Comment}}",
                image,
            ])
            .await
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let imaged = self
            .imaged
            .images()
            .image_history(ImageHistoryRequest {
                image: image.to_string(),
                platform: None,
            })
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .map(|h| format!("{}\t{}\t{}\t{}", h.id, h.created_by, h.size, h.comment))
            .collect();
        (imaged, docker)
    }

    /// Pulls `reference` into both.
    pub async fn pull(&self, reference: &str) {
        self.dockerd.ok(&["pull", reference]).await.unwrap();
        client::pull(self.imaged.images(), client::pull_request(reference))
            .await
            .unwrap();
    }

    pub async fn inspect(&self, image: &str) -> (serde_json::Value, ImageInspect) {
        let docker = self.dockerd.ok(&["image", "inspect", image]).await.unwrap();
        let docker: serde_json::Value = serde_json::from_str(&docker).unwrap();
        let imaged = self
            .imaged
            .images()
            .inspect_image(InspectImageRequest {
                image: image.to_string(),
                platform: None,
            })
            .await
            .unwrap()
            .into_inner();
        (docker[0].clone(), imaged)
    }

    /// Runs `imagectl args…` against imaged's gateway, `input` on its
    /// standard input.
    pub async fn imagectl(&self, args: &[&str], input: Option<&[u8]>) -> Ran {
        let socket = self.imaged.socket(imaged_common::config::Service::Gateway);
        let mut command = tokio::process::Command::new(crate::bin_dir().join("imagectl"));
        command
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(args);
        let output = crate::docker_cli::run_with_input(command, input)
            .await
            .unwrap_or_else(|e| panic!("imagectl {args:?}: {e:#}"));
        Ran::from(output)
    }

    /// Runs the same command as `imagectl args…` and as `docker args…`
    /// against dockerd: (imaged's, Docker's).
    pub async fn run_both(&self, args: &[&str], input: Option<&[u8]>) -> (Ran, Ran) {
        let imaged = self.imagectl(args, input).await;
        let docker = self
            .dockerd
            .docker_with_input(args, input)
            .await
            .expect("the docker CLI runs");
        (imaged, Ran::from(docker))
    }
}

/// What a command printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Ran {
    fn from(out: std::process::Output) -> Self {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
