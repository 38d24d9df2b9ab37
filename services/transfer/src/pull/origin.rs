//! Where a pull's layer bytes came from (issue 31): the registry itself,
//! one of its mirrors (`hosts.toml`, Docker's registry-mirrors, peers
//! listed there), or a fleet peer the directory named. Each pull answers
//! its own on its last message; `imagectl system df` shows the node's
//! since imaged-transfer started ([`crate::metrics::pulled`]).

use crate::registry::Source;

/// Where one layer's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Registry,
    Mirror,
    Peer,
}

impl Origin {
    /// Where bytes read from `source` come from.
    pub fn of(source: &Source) -> Origin {
        if source.peer {
            Origin::Peer
        } else if source.mirror.is_some() {
            Origin::Mirror
        } else {
            Origin::Registry
        }
    }
}

/// Layer bytes by where they came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByOrigin {
    pub registry: u64,
    pub mirrors: u64,
    pub peers: u64,
}

impl ByOrigin {
    /// Counts `bytes` from `origin`.
    pub fn add(&mut self, origin: Origin, bytes: u64) {
        match origin {
            Origin::Registry => self.registry += bytes,
            Origin::Mirror => self.mirrors += bytes,
            Origin::Peer => self.peers += bytes,
        }
    }

    /// Adds another tally (the pulls of `--all-tags`).
    pub fn merge(&mut self, other: ByOrigin) {
        self.registry += other.registry;
        self.mirrors += other.mirrors;
        self.peers += other.peers;
    }
}
