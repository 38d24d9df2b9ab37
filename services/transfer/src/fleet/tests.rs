//! The fleet's rules against a directory in memory: one node of the fleet
//! claims a blob, the others read from it; holders come first; a claim
//! passes on when released or stale; an in-flight blob streams as it
//! grows and a short one ends in an error.

use std::time::Duration;

use futures::StreamExt;

use super::directory::MemoryDirectory;
use super::*;

fn node(name: &str, directory: &Arc<MemoryDirectory>) -> Arc<Fleet> {
    Fleet::with_directory(
        Peer {
            node: name.into(),
            url: format!("http://{name}:5000"),
        },
        Arc::clone(directory) as Arc<dyn Directory>,
        Duration::from_secs(5),
        false,
        PeerTls::default(),
        None,
    )
}

fn paths(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("ingest"), dir.join("stored"))
}

fn peers(plan: &Plan) -> Vec<String> {
    match plan {
        Plan::Holders(peers) => peers.iter().map(|p| p.node.clone()).collect(),
        Plan::Claimer(peer) => vec![peer.node.clone()],
        Plan::Fetch(_) => vec!["<mine>".into()],
        Plan::Alone => vec!["<alone>".into()],
        Plan::Waiting => vec!["<waiting>".into()],
    }
}

#[tokio::test]
async fn one_node_fetches_and_the_others_read_from_it() {
    let directory = Arc::new(MemoryDirectory::new(Duration::from_secs(5)));
    let (a, b, c) = (
        node("a", &directory),
        node("b", &directory),
        node("c", &directory),
    );
    let dir = tempfile::tempdir().unwrap();
    let blob = Digest::sha256_of(b"layer");
    let claim = a
        .plan(&blob, 5, paths(dir.path()), Some("repo".into()), &[])
        .await;
    assert_eq!(peers(&claim), ["<mine>"]);
    assert!(
        a.in_flight().get(&blob).is_some(),
        "served while it arrives"
    );
    assert_eq!(
        peers(
            &b.plan(&blob, 5, paths(dir.path()), Some("repo".into()), &[])
                .await
        ),
        ["a"]
    );
    // a failed b already: b waits for a's claim to pass on.
    let failed = ["http://a:5000".to_string()];
    assert_eq!(
        peers(
            &b.plan(&blob, 5, paths(dir.path()), Some("repo".into()), &failed)
                .await
        ),
        ["<waiting>"]
    );
    // Held: the holders come first, the claim is let go.
    a.holding(&blob, true);
    drop(claim);
    tokio::task::yield_now().await;
    assert!(a.in_flight().get(&blob).is_none());
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = peers(
            &c.plan(&blob, 5, paths(dir.path()), Some("repo".into()), &[])
                .await,
        );
        if seen == ["a"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["a"]);
    // A holder that failed c is passed over: c claims the fetch itself.
    let failed = ["http://a:5000".to_string()];
    assert_eq!(
        peers(
            &c.plan(&blob, 5, paths(dir.path()), Some("repo".into()), &failed)
                .await
        ),
        ["<mine>"]
    );

    // Another blob: a released claim passes on.
    let other = Digest::sha256_of(b"other");
    let first = b
        .plan(&other, 5, paths(dir.path()), Some("repo".into()), &[])
        .await;
    assert_eq!(peers(&first), ["<mine>"]);
    drop(first);
    let mut next = Vec::new();
    for _ in 0..100 {
        next = peers(
            &c.plan(&other, 5, paths(dir.path()), Some("repo".into()), &[])
                .await,
        );
        if next == ["<mine>"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(next, ["<mine>"], "b's released claim is c's to take");
}

#[tokio::test]
async fn a_stale_claim_is_taken_over() {
    let directory = Arc::new(MemoryDirectory::new(Duration::from_millis(50)));
    let me = |name: &str| Peer {
        node: name.into(),
        url: String::new(),
    };
    let blob = Digest::sha256_of(b"layer");
    assert_eq!(
        directory.claim(&blob, &me("dead")).await.unwrap(),
        Claimed::Mine
    );
    assert_eq!(
        directory.claim(&blob, &me("b")).await.unwrap(),
        Claimed::By(me("dead"))
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        directory.claim(&blob, &me("b")).await.unwrap(),
        Claimed::Mine
    );
    assert!(directory.renew(&blob, &me("dead")).await.is_err());
}

#[tokio::test]
async fn an_in_flight_blob_streams_as_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let (ingest, stored) = paths(dir.path());
    let in_flight = InFlight::default();
    let blob = Digest::sha256_of(b"0123456789");
    in_flight.start(
        &blob,
        Flight {
            size: 10,
            path: ingest.clone(),
            stored: stored.clone(),
            public_in: None,
        },
    );
    let flight = in_flight.get(&blob).unwrap();
    let reader = in_flight.stream(&blob, flight, 2..u64::MAX, Duration::from_secs(5));
    let writer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&ingest, b"01234").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Stored whole: the ingest renamed.
        std::fs::write(&ingest, b"0123456789").unwrap();
        std::fs::rename(&ingest, &stored).unwrap();
    };
    let (read, ()) = tokio::join!(reader.collect::<Vec<_>>(), writer);
    let bytes: Vec<u8> = read
        .into_iter()
        .flat_map(|chunk| chunk.unwrap().to_vec())
        .collect();
    assert_eq!(bytes, b"23456789");

    // A range with an end stops there.
    let flight = in_flight.get(&blob).unwrap();
    let part: Vec<u8> = in_flight
        .stream(&blob, flight, 3..6, Duration::from_secs(5))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|chunk| chunk.unwrap().to_vec())
        .collect();
    assert_eq!(part, b"345");

    // A fetch that ends short ends the stream in an error.
    let short = Digest::sha256_of(b"short");
    std::fs::write(&ingest, b"012").unwrap();
    in_flight.start(
        &short,
        Flight {
            size: 10,
            path: ingest.clone(),
            stored: dir.path().join("never"),
            public_in: None,
        },
    );
    let flight = in_flight.get(&short).unwrap();
    let reader = in_flight.stream(&short, flight, 0..u64::MAX, Duration::from_secs(5));
    in_flight.end(&short);
    let read: Vec<_> = reader.collect().await;
    assert!(read.last().unwrap().is_err(), "{read:?}");

    // One that stalls, too.
    let stalled = Digest::sha256_of(b"stalled");
    in_flight.start(
        &stalled,
        Flight {
            size: 10,
            path: ingest.clone(),
            stored: dir.path().join("never"),
            public_in: None,
        },
    );
    let flight = in_flight.get(&stalled).unwrap();
    let read: Vec<_> = in_flight
        .stream(&stalled, flight, 0..u64::MAX, Duration::from_millis(100))
        .collect()
        .await;
    assert!(read.last().unwrap().is_err(), "{read:?}");
}

#[tokio::test]
async fn a_node_advertises_and_claims_only_what_it_would_serve() {
    let directory = Arc::new(MemoryDirectory::new(Duration::from_secs(5)));
    let plain = node("plain", &directory);
    let dir = tempfile::tempdir().unwrap();
    let private = Digest::sha256_of(b"private layer");
    // Fetched with credentials, served to nobody without a certificate:
    // neither claimed nor announced.
    let planned = plain.plan(&private, 5, paths(dir.path()), None, &[]).await;
    assert_eq!(peers(&planned), ["<alone>"]);
    plain.holding(&private, false);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(directory.holders(&private).await.unwrap().is_empty());
    // A node serving fleet peers with certificates claims and announces it.
    let tls = Fleet::with_directory(
        Peer {
            node: "tls".into(),
            url: "https://tls:5000".into(),
        },
        Arc::clone(&directory) as Arc<dyn Directory>,
        Duration::from_secs(5),
        true,
        PeerTls::default(),
        None,
    );
    let planned = tls.plan(&private, 5, paths(dir.path()), None, &[]).await;
    assert_eq!(peers(&planned), ["<mine>"]);
    tls.holding(&private, false);
    let mut held = Vec::new();
    for _ in 0..100 {
        held = directory.holders(&private).await.unwrap();
        if !held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(held.len(), 1);
}

#[tokio::test]
async fn nodes_asking_at_once_spread_over_the_holders() {
    let directory = Arc::new(MemoryDirectory::new(Duration::from_secs(5)));
    let blob = Digest::sha256_of(b"popular");
    for name in ["a", "b"] {
        let peer = Peer {
            node: name.into(),
            url: format!("http://{name}:5000"),
        };
        directory.hold(&blob, &peer).await.unwrap();
    }
    let asker = node("c", &directory);
    let dir = tempfile::tempdir().unwrap();
    let mut first = std::collections::HashSet::new();
    for _ in 0..64 {
        let named = peers(&asker.plan(&blob, 5, paths(dir.path()), None, &[]).await);
        assert_eq!(named.len(), 2);
        first.insert(named[0].clone());
    }
    assert_eq!(first.len(), 2, "each holder comes first sometimes");
}

#[tokio::test]
async fn records_that_would_steer_requests_elsewhere_are_ignored() {
    use super::directory::{MAX_HOLDERS, dialable};
    assert!(dialable("http://10.0.0.7:5001"));
    assert!(dialable("https://node-7.fleet:5001"));
    assert!(dialable("http://[::1]:5001"));
    for bad in [
        "ftp://node:21",
        "http://",
        "http://user@node:5001",
        "http://node:5001/path",
        "http://node:5001?x",
        "node:5001",
    ] {
        assert!(!dialable(bad), "{bad}");
    }
    let directory = Arc::new(MemoryDirectory::new(Duration::from_secs(5)));
    let blob = Digest::sha256_of(b"steered");
    for (name, url) in [
        ("evil", "http://169.254.169.254/latest"),
        ("good", "http://good:5000"),
    ] {
        let peer = Peer {
            node: name.into(),
            url: url.into(),
        };
        directory.hold(&blob, &peer).await.unwrap();
    }
    let asker = node("c", &directory);
    let dir = tempfile::tempdir().unwrap();
    let named = peers(&asker.plan(&blob, 5, paths(dir.path()), None, &[]).await);
    assert_eq!(named, ["good"]);
    // However many nodes hold a blob, its record keeps the newest few.
    for i in 0..(MAX_HOLDERS + 10) {
        let peer = Peer {
            node: format!("n{i}"),
            url: format!("http://n{i}:5000"),
        };
        directory.hold(&blob, &peer).await.unwrap();
    }
    let held = directory.holders(&blob).await.unwrap();
    assert_eq!(held.len(), MAX_HOLDERS);
    assert_eq!(held.last().unwrap().node, format!("n{}", MAX_HOLDERS + 9));
}
