//! ListImages relayed as bytes: imaged-metadata answers it already encoded
//! (and keeps the unfiltered answer until the store changes), and the
//! gateway passes those bytes on without decoding and re-encoding them.
//! For 10,000 images that is most of what the call costs.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use imaged_api::v1::ListImagesRequest;
use imaged_common::clients::MetadataClient;
use imaged_common::pass::{Handler, Override, PassCodec};
use imaged_common::{deadline, version};
use tonic::server::UnaryService;
use tonic::{Request, Response, Status};

use crate::kept::Kept;
use crate::peers::Peers;

/// The one method served here.
const PATH: &str = "/imaged.v1.Images/ListImages";

struct Relay {
    peers: Peers,
    kept: Arc<KeptLists>,
}

/// Unfiltered answers by (`all`, `shared_size`), kept while the store does
/// not change ([`crate::kept`]). A filtered one is never kept: `until=10m`
/// moves with the clock.
type KeptLists = Kept<(bool, bool), Bytes>;

impl UnaryService<ListImagesRequest> for Relay {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<ListImagesRequest>) -> Self::Future {
        let peers = self.peers.clone();
        let kept = Arc::clone(&self.kept);
        Box::pin(async move {
            let (deadline, request) = deadline::split(request);
            let key = (request.all, request.shared_size);
            let keepable = request.filters.is_empty();
            if keepable && let Some(encoded) = kept.get(&key) {
                return Ok(Response::new(encoded));
            }
            let answer = peers
                .metadata
                .rpc(|mut client: MetadataClient| {
                    let request = request.clone();
                    async move {
                        client
                            .list_images_encoded(deadline::attach(request, deadline))
                            .await
                    }
                })
                .await?;
            if keepable {
                kept.keep(key, answer.version, answer.list_images_response.clone());
            }
            Ok(Response::new(answer.list_images_response))
        })
    }
}

/// The `imaged.v1.Images` server `inner` with ListImages served by the
/// relay. `version`: imaged-metadata's published version.
pub fn with_list_relay<S>(inner: S, peers: Peers, version: Arc<version::Reader>) -> Override<S> {
    let kept: Arc<KeptLists> = Arc::new(Kept::new(version, 4));
    let handler: Handler = Arc::new(move |request| {
        let relay = Relay {
            peers: peers.clone(),
            kept: Arc::clone(&kept),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(PassCodec::<ListImagesRequest>::default());
            grpc.unary(relay, request).await
        })
    });
    Override::new(inner, PATH, handler)
}
