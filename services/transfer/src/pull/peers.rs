//! A layer's blob and the fleet (issue 31): the peers to read it from
//! before the pull's own sources, or this node's claim to fetch it for
//! the fleet; and, when the peers failed, the fleet asked again until
//! another peer has it or the claim passes on.

use super::layers::LayerJob;
use super::*;
use crate::fleet::{ClaimGuard, Plan};

/// What the fleet said about one blob.
pub(super) struct Answer {
    /// Peers not tried yet, as sources.
    pub(super) peers: Vec<Source>,
    /// Whether `peers` hold the blob whole (else they are its claimer,
    /// serving it as it arrives): a big one may be read from several.
    pub(super) whole: bool,
    /// This node's claim to fetch it for the fleet.
    pub(super) claim: Option<ClaimGuard>,
    /// Whether it named only peers tried already (a claimer that failed
    /// this node and still holds its claim).
    only_tried: bool,
}

impl Puller {
    /// What the fleet says of `job`'s blob before it is fetched: its
    /// peers (holders, or the node fetching it now), to read before the
    /// pull's own sources; or this node's claim to fetch it for the
    /// fleet. Without a fleet, nothing.
    pub(super) async fn fleet_sources(&self, job: &LayerJob) -> Answer {
        self.ask_fleet(job, &[]).await
    }

    /// The fleet asked again once the peers `tried` failed: the new peers
    /// to read from, or this node's claim. A failed claimer's claim passes
    /// on within the directory's TTL, so that long the fleet is asked
    /// again; past it, the pull's own sources go on without a claim.
    pub(super) async fn fleet_again(&self, job: &LayerJob, tried: &[Source]) -> Answer {
        let Some(fleet) = &self.fleet else {
            return Answer::nothing();
        };
        let patience = fleet.ttl() + fleet.ttl() / 2;
        let started = std::time::Instant::now();
        loop {
            let answer = self.ask_fleet(job, tried).await;
            if !answer.only_tried || started.elapsed() >= patience {
                if answer.claim.is_some() {
                    crate::metrics::fleet_claim("handed_over");
                }
                return answer;
            }
            tokio::time::sleep(fleet.ttl() / 4).await;
        }
    }

    async fn ask_fleet(&self, job: &LayerJob, tried: &[Source]) -> Answer {
        let alone = Answer::nothing();
        let Some(fleet) = &self.fleet else {
            return alone;
        };
        let upstream = job
            .sources
            .last()
            .expect("the registry itself is always a source");
        let public_in = (matches!(upstream.auth, RegistryAuth::Anonymous) && !upstream.identified)
            .then(|| upstream.oref.repository().to_string());
        let paths = (
            self.content.ingest_path(&job.blob),
            self.content.path(&job.blob),
        );
        let size = job.desc.size.max(0) as u64;
        let tried: Vec<String> = tried
            .iter()
            .filter(|s| s.peer)
            .map(|s| s.peer_url())
            .collect();
        match fleet.plan(&job.blob, size, paths, public_in, &tried).await {
            Plan::Alone => alone,
            Plan::Fetch(claim) => Answer {
                claim: Some(claim),
                ..alone
            },
            Plan::Waiting => Answer {
                only_tried: true,
                ..alone
            },
            Plan::Holders(named) => Answer {
                peers: named
                    .iter()
                    .map(|p| self.registries.peer(&upstream.oref, &p.url, fleet.tls()))
                    .collect(),
                whole: true,
                ..alone
            },
            Plan::Claimer(peer) => Answer {
                peers: vec![self.registries.peer(&upstream.oref, &peer.url, fleet.tls())],
                ..alone
            },
        }
    }
}

impl Answer {
    /// No peer and no claim: the pull's own sources.
    fn nothing() -> Answer {
        Answer {
            peers: Vec::new(),
            whole: false,
            claim: None,
            only_tried: false,
        }
    }
}
