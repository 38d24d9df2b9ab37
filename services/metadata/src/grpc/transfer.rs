//! The real [`LayerStore`]: imaged-transfer's internal contract.

use imaged_api::internal::v1::{
    GetLayersRequest, ReleaseLayersRequest, RetainLayersRequest, TransferInfoRequest,
};
use imaged_common::Error;
use imaged_common::clients::TransferClient;
use imaged_common::peer::Peer;

use crate::inspect::Layout;
use crate::layer_store::{HeldImage, LayerStore, Retained};

/// imaged-transfer, reached through its peer channel (each call retried
/// while it cannot be reached).
pub struct Transfer {
    pub peer: Peer,
}

#[tonic::async_trait]
impl LayerStore for Transfer {
    async fn hold(&self, chains: Vec<String>, image: &str) -> Result<Vec<i64>, Error> {
        let request = GetLayersRequest {
            chain_ids: chains,
            hold_for_image: image.to_string(),
        };
        let answer = self
            .peer
            .rpc(|mut client: TransferClient| {
                let request = request.clone();
                async move { client.get_layers(request).await }
            })
            .await?;
        Ok(answer.layers.iter().map(|l| l.size).collect())
    }

    async fn release(&self, images: Vec<String>) -> Result<usize, Error> {
        let request = ReleaseLayersRequest { image_ids: images };
        let answer = self
            .peer
            .rpc(|mut client: TransferClient| {
                let request = request.clone();
                async move { client.release_layers(request).await }
            })
            .await?;
        Ok(answer.removed.len())
    }

    async fn retain(&self, images: Vec<HeldImage>) -> Result<Retained, Error> {
        let request = RetainLayersRequest {
            images: images
                .into_iter()
                .map(|i| imaged_api::internal::v1::HeldImage {
                    id: i.id,
                    top_chain: i.top_chain,
                })
                .collect(),
        };
        let answer = self
            .peer
            .rpc(|mut client: TransferClient| {
                let request = request.clone();
                async move { client.retain_layers(request).await }
            })
            .await?;
        Ok(Retained {
            removed: answer.removed.len(),
            missing: answer.missing,
        })
    }

    async fn layout(&self) -> Result<Layout, Error> {
        let info =
            self.peer
                .rpc(|mut client: TransferClient| async move {
                    client.info(TransferInfoRequest {}).await
                })
                .await?;
        Ok(Layout {
            driver: info.storage_driver,
            layers_dir: info.layers_dir.into(),
        })
    }
}
