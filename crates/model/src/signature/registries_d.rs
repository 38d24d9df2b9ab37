//! containers-registries.d(5): where an image's signatures are kept (a
//! `lookaside` URL, `file://` or `http(s)://`, and the
//! `lookaside-staging` they are written to). Every `*.yaml` file of the
//! directory is read; a scope may be configured once across all of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::scopes_of;
use crate::{Digest, Reference};

/// Where signatures are when nothing is configured (containers/image's
/// default for root).
pub const DEFAULT_LOOKASIDE: &str = "file:///var/lib/containers/sigstore";

/// The configuration of one scope.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Section {
    pub lookaside: Option<String>,
    pub lookaside_staging: Option<String>,
    #[serde(default)]
    pub use_sigstore_attachments: bool,
    /// The old names of `lookaside` and `lookaside-staging`.
    #[serde(rename = "sigstore")]
    pub old_lookaside: Option<String>,
    #[serde(rename = "sigstore-staging")]
    pub old_lookaside_staging: Option<String>,
}

impl Section {
    /// The URL signatures are read from.
    pub fn read_url(&self) -> Option<&str> {
        self.lookaside.as_deref().or(self.old_lookaside.as_deref())
    }

    /// The URL signatures are written to.
    pub fn write_url(&self) -> Option<&str> {
        self.lookaside_staging
            .as_deref()
            .or(self.old_lookaside_staging.as_deref())
            .or(self.read_url())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct File {
    default_docker: Option<Section>,
    #[serde(default)]
    docker: BTreeMap<String, Section>,
}

/// Every section of a registries.d directory.
#[derive(Clone, Debug, Default)]
pub struct RegistriesD {
    default_docker: Option<Section>,
    docker: BTreeMap<String, Section>,
}

impl RegistriesD {
    /// Reads every `*.yaml` file of `dir`. A scope configured twice, or a
    /// file that does not parse, refuses the whole directory.
    pub fn read(dir: &Path) -> Result<RegistriesD, String> {
        let mut out = RegistriesD::default();
        for path in super::config_files(dir, "yaml")? {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let file: File =
                serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some(section) = file.default_docker {
                if out.default_docker.is_some() {
                    return Err(format!(
                        "{}: default-docker is configured in more than one file",
                        path.display()
                    ));
                }
                out.default_docker = Some(section);
            }
            for (scope, section) in file.docker {
                if out.docker.insert(scope.clone(), section).is_some() {
                    return Err(format!(
                        "{}: {scope:?} is configured in more than one file",
                        path.display()
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The section for `reference`: its most specific scope, else
    /// `default-docker`, else none.
    pub fn section(&self, reference: &Reference) -> Option<&Section> {
        scopes_of(reference)
            .iter()
            .find_map(|scope| self.docker.get(scope))
            .or(self.default_docker.as_ref())
    }

    /// The lookaside URL signatures of `reference` are read from (empty:
    /// none configured for it).
    pub fn read_url(&self, reference: &Reference) -> String {
        match self.section(reference) {
            Some(section) => section.read_url().unwrap_or_default().to_string(),
            None => DEFAULT_LOOKASIDE.to_string(),
        }
    }

    /// The lookaside URL signatures of `reference` are written to.
    pub fn write_url(&self, reference: &Reference) -> String {
        match self.section(reference) {
            Some(section) => section.write_url().unwrap_or_default().to_string(),
            None => DEFAULT_LOOKASIDE.to_string(),
        }
    }
}

/// The URL of signature number `index` (from 1) of the manifest `digest`
/// of `reference`'s repository, under the lookaside `base`.
pub fn signature_url(base: &str, reference: &Reference, digest: &Digest, index: usize) -> String {
    format!(
        "{}/{}/signature-{index}",
        base.trim_end_matches('/'),
        relative_dir(reference, digest)
    )
}

/// The directory of the signatures of `digest` of `reference`'s
/// repository, under a `file://` lookaside rooted at `root`.
pub fn signature_dir(root: &Path, reference: &Reference, digest: &Digest) -> PathBuf {
    root.join(relative_dir(reference, digest))
}

/// `repo/path@algo=hex`: the repository's path without its host.
fn relative_dir(reference: &Reference, digest: &Digest) -> String {
    format!(
        "{}@{}={}",
        reference.path(),
        digest.algorithm(),
        digest.hex()
    )
}
