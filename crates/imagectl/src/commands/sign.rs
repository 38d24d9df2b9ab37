//! `imagectl sign`: sign an image already in a registry, as `cosign
//! sign` does (or `skopeo copy --sign-by` of an image onto itself),
//! with the credentials `imagectl login` kept. The manifest is read from
//! the registry and its digest computed here, not taken from a header.

use anyhow::{Context, bail};
use imaged_model::Digest;
use imaged_model::media_type::PULLABLE;

use crate::cli::SignArgs;
use crate::sign::{Signer, registry_client, to_oci_auth};

/// Signs the manifest `args.reference` names, claiming that reference.
pub async fn run(args: &SignArgs) -> anyhow::Result<()> {
    let Some(signer) = Signer::new(&args.signing)? else {
        bail!("say how to sign: --sign-by or --sign-by-sigstore-private-key");
    };
    let reference = imaged_model::Reference::parse(&args.reference)?;
    if reference.tag().is_none() && reference.digest().is_none() {
        bail!("{}: name the tag or digest to sign", args.reference);
    }
    let auth = crate::login::kept_for(reference.domain())?;
    let client = registry_client(reference.domain());
    let at: oci_client::Reference = reference
        .to_string()
        .parse()
        .with_context(|| format!("{reference}"))?;
    let (manifest, _) = client
        .pull_manifest_raw(&at, &to_oci_auth(auth.as_ref())?, PULLABLE)
        .await
        .with_context(|| format!("reading the manifest of {reference}"))?;
    let digest = Digest::sha256_of(&manifest);
    if let Some(named) = reference.digest()
        && named.to_string() != digest.to_string()
    {
        bail!("the registry answered manifest {digest} for {reference}");
    }
    let said = signer.sign(&reference, &digest, auth.as_ref()).await?;
    println!("{said}: {reference} ({digest})");
    Ok(())
}
