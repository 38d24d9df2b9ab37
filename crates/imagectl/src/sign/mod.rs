//! Signing what `imagectl push` pushes, as skopeo's `--sign-by` (a gpg
//! key, simple signing, into a lookaside) and
//! `--sign-by-sigstore-private-key` (a cosign-format key, a sigstore
//! attachment in the registry). Where signatures go is read from
//! registries.d, as skopeo reads it; the payload is
//! containers-signature(5)'s, claiming the pushed `host/repo:tag`.

mod attach;
mod gpg;
pub mod key;
mod sigstore;

use std::path::Path;

use anyhow::Context;
use imaged_model::signature::payload;
use imaged_model::signature::registries_d::RegistriesD;
use imaged_model::{Digest, Reference};

use crate::cli::SigningArgs;

/// Where registries.d is read from when `--registries-d` is not given.
const DEFAULT_REGISTRIES_D: &str = "/etc/containers/registries.d";

/// Signs pushed manifests with one key.
pub enum Signer {
    Gpg(gpg::GpgSigner),
    Sigstore(sigstore::SigstoreSigner),
}

impl Signer {
    /// The signer `args` ask for, if any: its key is read (and a sigstore
    /// key decrypted) and registries.d read before anything is pushed,
    /// so a key or directory that cannot be used stops the push, not
    /// its signing.
    pub fn new(args: &SigningArgs) -> anyhow::Result<Option<Signer>> {
        let registries = || read_registries(args.registries_d.as_deref());
        Ok(match (&args.sign_by, &args.sign_by_sigstore_private_key) {
            (Some(fingerprint), None) => {
                Some(Signer::Gpg(gpg::GpgSigner::new(fingerprint, registries()?)))
            }
            (None, Some(path)) => Some(Signer::Sigstore(sigstore::SigstoreSigner::new(
                path,
                args.sign_passphrase_file.as_deref(),
                registries()?,
            )?)),
            (None, None) => None,
            (Some(_), Some(_)) => {
                anyhow::bail!("only one of --sign-by and --sign-by-sigstore-private-key")
            }
        })
    }

    /// Signs `digest` as `reference` (the pushed `host/repo:tag`), with
    /// `auth` for a registry the signature is attached in; answers what
    /// to print.
    pub async fn sign(
        &self,
        reference: &Reference,
        digest: &Digest,
        auth: Option<&imaged_api::v1::RegistryAuth>,
    ) -> anyhow::Result<&'static str> {
        match self {
            Signer::Gpg(gpg) => {
                gpg.sign(reference, digest)?;
                Ok("Signing manifest using simple signing")
            }
            Signer::Sigstore(sigstore) => {
                sigstore.sign(reference, digest, auth).await?;
                Ok("Signing manifest using a sigstore signature")
            }
        }
    }
}

/// registries.d from `dir`, else the default directory when it exists.
fn read_registries(dir: Option<&Path>) -> anyhow::Result<RegistriesD> {
    match dir {
        Some(dir) => RegistriesD::read(dir).map_err(anyhow::Error::msg),
        None if Path::new(DEFAULT_REGISTRIES_D).is_dir() => {
            RegistriesD::read(Path::new(DEFAULT_REGISTRIES_D)).map_err(anyhow::Error::msg)
        }
        None => Ok(RegistriesD::default()),
    }
}

/// The payload of type `kind` claiming `digest` as `reference`.
fn payload_for(kind: &str, reference: &Reference, digest: &Digest) -> anyhow::Result<Vec<u8>> {
    let identity =
        imaged_model::signature::identity(reference).context("a pushed reference has a tag")?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let creator = format!("imagectl {}", env!("CARGO_PKG_VERSION"));
    Ok(payload::build(kind, &identity, digest, &creator, timestamp))
}

/// A client for the registry at `host`: plain HTTP for a loopback
/// registry (Docker's default insecure registries, 127.0.0.0/8), else
/// HTTPS.
pub fn registry_client(host: &str) -> oci_client::Client {
    use oci_client::client::{ClientConfig, ClientProtocol};
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let loopback = name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    oci_client::Client::new(ClientConfig {
        protocol: if loopback {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    })
}

/// Credentials as the API holds them, as oci-client takes them.
pub fn to_oci_auth(
    auth: Option<&imaged_api::v1::RegistryAuth>,
) -> anyhow::Result<oci_client::secrets::RegistryAuth> {
    use oci_client::secrets::RegistryAuth;
    let Some(auth) = auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    Ok(if !auth.registry_token.is_empty() {
        RegistryAuth::Bearer(auth.registry_token.clone())
    } else if !auth.identity_token.is_empty() {
        anyhow::bail!("signing with an identity token is not supported: log in with a password")
    } else if !auth.username.is_empty() {
        RegistryAuth::Basic(auth.username.clone(), auth.password.clone())
    } else {
        RegistryAuth::Anonymous
    })
}
