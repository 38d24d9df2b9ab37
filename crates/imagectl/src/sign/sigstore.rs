//! `--sign-by-sigstore-private-key PATH`: a sigstore signature made with
//! a cosign-format private key (decrypted once, before the push), attached
//! in the registry. registries.d must enable `use-sigstore-attachments`
//! for the image, as skopeo requires.

use std::path::Path;

use anyhow::{Context, bail};
use imaged_model::signature::payload::SIGSTORE;
use imaged_model::signature::registries_d::RegistriesD;
use imaged_model::{Digest, Reference};
use p256::ecdsa::SigningKey;

use super::attach::{Signed, attach};
use super::key;

/// Signs pushed manifests with one sigstore private key.
pub struct SigstoreSigner {
    key: SigningKey,
    registries: RegistriesD,
}

impl SigstoreSigner {
    /// Opens the key at `path` with the passphrase of `passphrase_file`
    /// (else asked on the terminal).
    pub fn new(
        path: &Path,
        passphrase_file: Option<&Path>,
        registries: RegistriesD,
    ) -> anyhow::Result<SigstoreSigner> {
        let sealed = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let passphrase = key::passphrase(
            passphrase_file,
            &format!("Passphrase for key {}: ", path.display()),
        )?;
        let key = key::decrypt(&sealed, &passphrase)
            .with_context(|| format!("the private key {}", path.display()))?;
        Ok(SigstoreSigner { key, registries })
    }

    /// Signs `digest` as `reference` and attaches the signature in its
    /// repository.
    pub async fn sign(
        &self,
        reference: &Reference,
        digest: &Digest,
        auth: Option<&imaged_api::v1::RegistryAuth>,
    ) -> anyhow::Result<()> {
        let enabled = self
            .registries
            .section(reference)
            .is_some_and(|s| s.use_sigstore_attachments);
        if !enabled {
            bail!(
                "writing sigstore attachments is disabled by configuration: registries.d has no use-sigstore-attachments for {}",
                reference.name()
            );
        }
        let payload = super::payload_for(SIGSTORE, reference, digest)?;
        let signature = key::sign(&self.key, &payload);
        attach(
            reference,
            digest,
            Signed { payload, signature },
            &super::to_oci_auth(auth)?,
        )
        .await
    }
}
