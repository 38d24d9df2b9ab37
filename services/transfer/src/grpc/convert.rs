//! From the wire to the engines' inputs: the conversions every RPC of
//! the adapter shares.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use imaged_api::v1::{
    ImportImageRequest, LoadImagesRequest, PullImageRequest, PushImageRequest,
    RegistryAuth as WireAuth,
};
use imaged_common::Error;
use imaged_model::Platform;
use oci_client::secrets::RegistryAuth;

use crate::import::ImportOrder;
use crate::load::events::LoadOptions;
use crate::pull::PullOrder;
use crate::push::PushOrder;

/// The credentials of a request as oci-client takes them. An identity
/// token is sent as Docker's credential helpers do (user `<token>`).
pub fn auth(wire: Option<&WireAuth>) -> RegistryAuth {
    let Some(wire) = wire else {
        return RegistryAuth::Anonymous;
    };
    if !wire.registry_token.is_empty() {
        RegistryAuth::Bearer(wire.registry_token.clone())
    } else if !wire.identity_token.is_empty() {
        RegistryAuth::Basic(
            crate::registry::token::IDENTITY_TOKEN_USER.into(),
            wire.identity_token.clone(),
        )
    } else if !wire.username.is_empty() || !wire.password.is_empty() {
        RegistryAuth::Basic(wire.username.clone(), wire.password.clone())
    } else {
        RegistryAuth::Anonymous
    }
}

/// A platform as the wire spells it.
pub fn platform(wire: imaged_api::v1::Platform) -> Platform {
    Platform::new(&wire.os, &wire.architecture, &wire.variant)
}

/// What a PullImage request asks the pull engine for.
pub fn pull_order(request: PullImageRequest) -> PullOrder {
    PullOrder {
        auth: auth(request.auth.as_ref()),
        platform: request.platform.map(platform),
        reference: request.reference,
        all_tags: request.all_tags,
        namespace: Some(request.policy_namespace).filter(|n| !n.is_empty()),
    }
}

/// What a PushImage request asks the push engine for.
pub fn push_order(request: PushImageRequest) -> PushOrder {
    PushOrder {
        auth: auth(request.auth.as_ref()),
        platform: request.platform.map(platform),
        reference: request.reference,
        all_tags: request.all_tags,
    }
}

/// A byte stream the caller sends in messages: the first one's `chunk`,
/// then each later message's.
pub type Chunks = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

fn chunks<M: Send + 'static>(
    first: Vec<u8>,
    rest: tonic::Streaming<M>,
    chunk: fn(M) -> Vec<u8>,
) -> Chunks {
    let rest = rest.map(move |m| {
        m.map(|m| Bytes::from(chunk(m)))
            .map_err(|s| Error::invalid_argument(s.message()))
    });
    Box::pin(futures::stream::once(async move { Ok(Bytes::from(first)) }).chain(rest))
}

/// A Load call's options (its first message says them) and its archive.
pub fn load_stream(
    first: LoadImagesRequest,
    rest: tonic::Streaming<LoadImagesRequest>,
) -> (LoadOptions, Chunks) {
    let options = LoadOptions {
        quiet: first.quiet,
        platform: first
            .platform
            .filter(|p| !p.os.is_empty() || !p.architecture.is_empty())
            .map(platform),
    };
    (options, chunks(first.chunk, rest, |m| m.chunk))
}

/// An Import call's order (its first message says it) and its tar.
pub fn import_stream(
    first: ImportImageRequest,
    rest: tonic::Streaming<ImportImageRequest>,
) -> (ImportOrder, Chunks) {
    let order = ImportOrder {
        reference: first.reference,
        platform: first.platform.map(platform),
        message: first.message,
        changes: first.changes,
    };
    (order, chunks(first.chunk, rest, |m| m.chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_prefers_tokens() {
        let wire = WireAuth {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert!(matches!(auth(Some(&wire)), RegistryAuth::Basic(u, p) if u == "u" && p == "p"));
        let wire = WireAuth {
            registry_token: "t".into(),
            ..wire
        };
        assert!(matches!(auth(Some(&wire)), RegistryAuth::Bearer(t) if t == "t"));
        assert!(matches!(auth(None), RegistryAuth::Anonymous));
    }
}
