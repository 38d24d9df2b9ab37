//! Writing a sigstore signature beside the image in the registry, as
//! containers/image writes it: the attachment manifest tagged
//! `sha256-<hex>.sig` gains a layer (the payload, the signature in its
//! annotation), its config a diff ID, and is pushed again. A signature
//! already there is not added twice.
//!
//! imagectl writes this itself, with oci-client, because the signature is
//! made here (the private key never leaves the user's machine) after the
//! push answered the manifest digest.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use imaged_model::media_type::{OCI_CONFIG, OCI_MANIFEST};
use imaged_model::signature::attachment::{SIGNATURE_ANNOTATION, SIGNATURE_MEDIA_TYPE, tag};
use imaged_model::{Digest, Reference};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

/// An attachment config larger than this is refused.
const MAX_CONFIG: i64 = 1 << 20;

/// One signature to attach: the payload and its base64 signature.
pub struct Signed {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// Attaches `signed` to `digest` in `reference`'s repository.
pub async fn attach(
    reference: &Reference,
    digest: &Digest,
    signed: Signed,
    auth: &RegistryAuth,
) -> anyhow::Result<()> {
    let host = reference.domain();
    let client = super::registry_client(host);
    let at = oci_client::Reference::with_tag(
        host.to_string(),
        reference.path().to_string(),
        tag(digest),
    );
    client
        .auth(&at, auth, RegistryOperation::Push)
        .await
        .context("registry auth for the signature")?;
    let (mut manifest, mut config) = match existing(&client, &at, auth).await? {
        Some(found) => found,
        None => (
            OciImageManifest {
                config: OciDescriptor {
                    media_type: OCI_CONFIG.into(),
                    ..Default::default()
                },
                layers: Vec::new(),
                ..Default::default()
            },
            serde_json::json!({
                "architecture": "", "os": "", "config": {},
                "rootfs": {"type": "layers", "diff_ids": []}
            }),
        ),
    };
    let annotations = BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), signed.signature)]);
    let payload_digest = Digest::sha256_of(&signed.payload).to_string();
    let already = manifest.layers.iter().any(|layer| {
        layer.media_type == SIGNATURE_MEDIA_TYPE
            && layer.digest == payload_digest
            && layer.annotations.as_ref().is_some_and(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
                    == annotations
            })
    });
    if already {
        return Ok(());
    }
    let size = signed.payload.len() as i64;
    client
        .push_blob(&at, signed.payload, &payload_digest)
        .await
        .context("pushing the signature")?;
    manifest.layers.push(OciDescriptor {
        media_type: SIGNATURE_MEDIA_TYPE.into(),
        digest: payload_digest.clone(),
        size,
        annotations: Some(annotations.into_iter().collect()),
        ..Default::default()
    });
    let diff_ids = config
        .pointer_mut("/rootfs/diff_ids")
        .and_then(|d| d.as_array_mut())
        .context("the attachment config has no rootfs.diff_ids")?;
    diff_ids.push(payload_digest.into());
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = Digest::sha256_of(&config_bytes).to_string();
    manifest.config = OciDescriptor {
        media_type: OCI_CONFIG.into(),
        digest: config_digest.clone(),
        size: config_bytes.len() as i64,
        ..Default::default()
    };
    client
        .push_blob(&at, config_bytes, &config_digest)
        .await
        .context("pushing the attachment config")?;
    manifest.media_type = Some(OCI_MANIFEST.into());
    manifest.schema_version = 2;
    client
        .push_manifest_raw(&at, serde_json::to_vec(&manifest)?, OCI_MANIFEST.parse()?)
        .await
        .context("pushing the attachment manifest")?;
    Ok(())
}

/// The attachment manifest and config already at `at`, if any.
async fn existing(
    client: &Client,
    at: &oci_client::Reference,
    auth: &RegistryAuth,
) -> anyhow::Result<Option<(OciImageManifest, serde_json::Value)>> {
    let bytes = match client.pull_manifest_raw(at, auth, &[OCI_MANIFEST]).await {
        Ok((bytes, _)) => bytes,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(e).context("reading the attachment manifest"),
    };
    let manifest: OciImageManifest =
        serde_json::from_slice(&bytes).context("the attachment manifest")?;
    if manifest.config.size > MAX_CONFIG {
        bail!("the attachment config is larger than {MAX_CONFIG} bytes");
    }
    let mut config = Vec::new();
    client
        .pull_blob(at, &manifest.config, &mut config)
        .await
        .context("reading the attachment config")?;
    let config = serde_json::from_slice(&config).context("the attachment config")?;
    Ok(Some((manifest, config)))
}

fn not_found(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::ManifestUnknown),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}
