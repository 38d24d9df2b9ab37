//! The real [`Destination`]: oci-client, with the token exchange in
//! imaged's own bounded code ([`super::fetch::push_token`]) so oci-client
//! never asks a realm itself.

use std::sync::Arc;

use imaged_model::Reference;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use super::{Registries, oci_reference};
use crate::neighbours::destination::{BlobBody, Destination, PushSession};

/// Pushes over HTTP to the registries `registries` configures.
pub struct Http {
    pub registries: Arc<Registries>,
}

/// A client authenticated for pushing to one repository.
struct Session {
    client: Client,
    oref: oci_client::Reference,
}

#[tonic::async_trait]
impl Destination for Http {
    async fn open(
        &self,
        target: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Box<dyn PushSession>, OciDistributionError> {
        let client = self.registries.client(target, auth);
        let oref = oci_reference(target);
        let upstream = self.registries.registry(target, auth);
        let token = super::fetch::push_token(&upstream, &oref).await?;
        let pushing_as = token.map_or_else(|| auth.clone(), RegistryAuth::Bearer);
        client
            .auth(&oref, &pushing_as, RegistryOperation::Push)
            .await?;
        Ok(Box::new(Session { client, oref }))
    }
}

#[tonic::async_trait]
impl PushSession for Session {
    async fn blob_exists(&self, digest: &str) -> Result<bool, OciDistributionError> {
        self.client.blob_exists(&self.oref, digest).await
    }

    async fn mount_blob(
        &self,
        digest: &str,
        source: &oci_client::Reference,
    ) -> Result<(), OciDistributionError> {
        self.client.mount_blob(&self.oref, source, digest).await
    }

    async fn push_blob(
        &self,
        digest: &str,
        size: u64,
        body: BlobBody,
    ) -> Result<(), OciDistributionError> {
        self.client
            .push_blob_stream(&self.oref, body, digest, Some(size))
            .await
            .map(drop)
    }

    async fn push_manifest(
        &self,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<(), OciDistributionError> {
        let content_type = media_type
            .parse()
            .map_err(|_| OciDistributionError::GenericError(Some(media_type.to_string())))?;
        self.client
            .push_manifest_raw(&self.oref, body, content_type)
            .await
            .map(drop)
    }
}
