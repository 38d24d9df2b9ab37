//! The gateway's clients to the three internal services.

use std::path::Path;

use imaged_common::config::{PeerArgs, Service};
use imaged_common::peer::Peer;

/// One peer per internal service, each dialled ahead of its first call.
#[derive(Clone, Debug)]
pub struct Peers {
    pub metadata: Peer,
    pub transfer: Peer,
    pub events: Peer,
}

impl Peers {
    pub fn new(args: &PeerArgs, root: &Path) -> anyhow::Result<Self> {
        Ok(Peers {
            metadata: args.peer(Service::Metadata, root)?,
            transfer: args.peer(Service::Transfer, root)?,
            events: args.peer(Service::Events, root)?,
        })
    }
}
