//! containers-registries.d(5): where an image's signatures are kept (a
//! `lookaside` URL, `file://` or `http(s)://`), and reading them from
//! there. Every `*.yaml` file of the directory is read; a scope may be
//! configured once across all of them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use imaged_model::{Digest, Reference};

use super::policy::scopes_of;

/// Where signatures are when nothing is configured (containers/image's
/// default for root).
pub const DEFAULT_LOOKASIDE: &str = "file:///var/lib/containers/sigstore";

/// A signature is refused past this size (containers/image's limit).
pub const MAX_SIGNATURE: u64 = 4 << 20;

/// At most this many signatures are read for one image.
pub const MAX_SIGNATURES: usize = 64;

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
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for path in files {
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

    /// The lookaside URL signatures of `reference` are read from.
    pub fn read_url(&self, reference: &Reference) -> String {
        match self.section(reference) {
            Some(section) => section.read_url().unwrap_or_default().to_string(),
            None => DEFAULT_LOOKASIDE.to_string(),
        }
    }
}

/// The URL of signature number `index` (from 1) of the manifest `digest`
/// of `reference`'s repository, under the lookaside `base`.
pub fn signature_url(base: &str, reference: &Reference, digest: &Digest, index: usize) -> String {
    format!(
        "{}/{}@{}={}/signature-{index}",
        base.trim_end_matches('/'),
        reference.path(),
        digest.algorithm(),
        digest.hex()
    )
}

/// Reads the signatures of `digest` from the lookaside `base`, in order,
/// until one is missing.
pub async fn read_signatures(
    http: &reqwest::Client,
    base: &str,
    reference: &Reference,
    digest: &Digest,
) -> Result<Vec<Vec<u8>>, String> {
    let mut signatures = Vec::new();
    if base.is_empty() {
        return Ok(signatures);
    }
    for index in 1..=MAX_SIGNATURES {
        let url = signature_url(base, reference, digest, index);
        match read_one(http, &url).await? {
            Some(bytes) => signatures.push(bytes),
            None => break,
        }
    }
    Ok(signatures)
}

/// One signature; `None` when there is none at `url`.
async fn read_one(http: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = Path::new(path);
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading signature {url}: {e}")),
        };
        let mut bytes = Vec::new();
        use std::io::Read;
        file.take(MAX_SIGNATURE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading signature {url}: {e}"))?;
        if bytes.len() as u64 > MAX_SIGNATURE {
            return Err(format!(
                "signature {url} is larger than {MAX_SIGNATURE} bytes"
            ));
        }
        return Ok(Some(bytes));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("unsupported lookaside URL {url}"));
    }
    let response = http
        .get(url)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("reading signature {url}: {e}"))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(format!(
            "reading signature {url}: status {}",
            response.status()
        ));
    }
    let mut bytes = Vec::new();
    let mut response = response;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading signature {url}: {e}"))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > MAX_SIGNATURE {
            return Err(format!(
                "signature {url} is larger than {MAX_SIGNATURE} bytes"
            ));
        }
    }
    Ok(Some(bytes))
}
