//! `--sign-by FINGERPRINT`: a simple-signing signature made by gpg with
//! the user's own key (imagectl holds no key), written where
//! registries.d says signatures of that image go: its
//! `lookaside-staging`, else its `lookaside` (a `file://` directory; an
//! `http(s)://` one is only read).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use imaged_model::signature::payload::SIMPLE_SIGNING;
use imaged_model::signature::registries_d::{RegistriesD, signature_dir};
use imaged_model::{Digest, Reference};

/// Signs pushed manifests with one gpg key.
pub struct GpgSigner {
    fingerprint: String,
    registries: RegistriesD,
}

impl GpgSigner {
    /// A signer with the gpg key `fingerprint`, writing where
    /// `registries` says.
    pub fn new(fingerprint: &str, registries: RegistriesD) -> GpgSigner {
        GpgSigner {
            fingerprint: fingerprint.to_string(),
            registries,
        }
    }

    /// Signs `digest` as `reference` (the pushed `host/repo:tag`); answers
    /// the file written.
    pub fn sign(&self, reference: &Reference, digest: &Digest) -> anyhow::Result<PathBuf> {
        let body = super::payload_for(SIMPLE_SIGNING, reference, digest)?;
        let signature = self.gpg_sign(&body)?;
        let base = self.registries.write_url(reference);
        let Some(root) = base.strip_prefix("file://") else {
            bail!("signatures can be written to a file:// lookaside only, not {base:?}");
        };
        let dir = signature_dir(Path::new(root), reference, digest);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The next free number, as skopeo adds to what is there.
        let path = (1..)
            .map(|i| dir.join(format!("signature-{i}")))
            .find(|p| !p.exists())
            .expect("a free signature number");
        imaged_client::durable::replace(&path, &signature)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// gpg's signed message of `body` (binary, compressed, as gpgme makes
    /// it for skopeo).
    fn gpg_sign(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut child = Command::new("gpg")
            .args([
                "--batch",
                "--no-tty",
                "--yes",
                "--local-user",
                &self.fingerprint,
                "--sign",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running gpg (needed for --sign-by)")?;
        child.stdin.take().context("gpg's input")?.write_all(body)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "gpg could not sign with {}: {}",
                self.fingerprint,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }
}
