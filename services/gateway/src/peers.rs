//! The gateway's clients to the three internal services.

use std::path::Path;

use imaged_common::config::{PeerArgs, Service};
use imaged_common::peer::Peer;

/// One lazily connected peer per internal service.
#[derive(Clone, Debug)]
pub struct Peers {
    pub metadata: Peer,
    pub transfer: Peer,
    pub events: Peer,
}

impl Peers {
    pub fn new(args: &PeerArgs, root: &Path) -> anyhow::Result<Self> {
        let peer = |service| Peer::new(service, args.endpoint(service, root));
        Ok(Peers {
            metadata: peer(Service::Metadata)?,
            transfer: peer(Service::Transfer)?,
            events: peer(Service::Events)?,
        })
    }
}
