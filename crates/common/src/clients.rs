//! One typed client per internal peer, built one way: on the peer's
//! traced channel, with the internal message limit both ways. Every call
//! from one process to another goes through [`Peer::rpc`] (retried while
//! the peer cannot be reached) or [`Peer::client`] (a stream held open).

use std::future::Future;

use imaged_api::internal::v1::{event_log_client, metadata_client, transfer_client};
use tonic::Status;

use crate::peer::{Peer, PeerChannel};
use crate::server::INTERNAL_MESSAGE_LIMIT;

/// imaged-metadata's client.
pub type MetadataClient = metadata_client::MetadataClient<PeerChannel>;
/// imaged-transfer's client.
pub type TransferClient = transfer_client::TransferClient<PeerChannel>;
/// imaged-events' client.
pub type EventLogClient = event_log_client::EventLogClient<PeerChannel>;

/// A generated client of an internal service, as every caller builds it.
pub trait PeerClient: Sized {
    /// The client on `channel`, with the internal message limit.
    fn on(channel: PeerChannel) -> Self;
}

macro_rules! peer_client {
    ($client:ty, $module:ident, $name:ident) => {
        impl PeerClient for $client {
            fn on(channel: PeerChannel) -> Self {
                $module::$name::new(channel)
                    .max_decoding_message_size(INTERNAL_MESSAGE_LIMIT)
                    .max_encoding_message_size(INTERNAL_MESSAGE_LIMIT)
            }
        }
    };
}

peer_client!(MetadataClient, metadata_client, MetadataClient);
peer_client!(TransferClient, transfer_client, TransferClient);
peer_client!(EventLogClient, event_log_client, EventLogClient);

impl Peer {
    /// Runs `call` (one RPC on a fresh typed client), retried while the
    /// peer cannot be reached, as [`Peer::call`].
    pub async fn rpc<C, T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        C: PeerClient,
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| call(C::on(channel))).await
    }

    /// A typed client on the peer's channel, for a call that is not
    /// retried (a stream relayed as it flows).
    pub fn client<C: PeerClient>(&self) -> C {
        C::on(self.channel())
    }
}
