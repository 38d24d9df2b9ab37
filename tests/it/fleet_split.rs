//! A big layer that several nodes hold comes to the next node from
//! several of them at once (issue 31, item 3): parts by byte range, one
//! stream, one digest check. Each holder serves its content behind a
//! byte-counting proxy that it advertises as its peer URL, so the test
//! sees who served what. A holder that then lies about its parts costs
//! the next pull time, never integrity: the digest is checked over the
//! whole, and the layer is fetched again.

use std::time::Duration;

use imaged_common::config::Service;
use imaged_e2e::front::{Answer, Front};
use imaged_e2e::throttle::Throttle;
use imaged_e2e::{Imaged, TestRegistry, client, free_port};
use imaged_fixtures::{Compression, ImageBuilder, LayerBuilder, MediaTypes};

/// Fast enough to be no limit.
const UNLIMITED: u64 = 1 << 30;

/// A directory node serving on 127.0.0.(2+i):`port`, advertised as
/// `front` (the host of a proxy in front of it).
async fn node(i: usize, port: u16, nats: &str, front: &str) -> Imaged {
    Imaged::builder()
        .fleet_node(
            &format!("127.0.0.{}:{port}", i + 2),
            nats,
            &format!("node{i}"),
        )
        .arg(Service::Transfer, &format!("--peer-url=http://{front}"))
        .arg(Service::Transfer, "--peer-split-mib=1")
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_layer_comes_from_several_holders_at_once() {
    let nats = imaged_e2e::nats::NatsServer::start().await.unwrap();
    let upstream = TestRegistry::start().await.unwrap();
    // One layer of about 10 MiB: five parts, one for each holder at least.
    let layer = LayerBuilder::new()
        .dir("data")
        .generated_files("data", 16, 1 << 20, 91)
        .build(Compression::Gzip)
        .unwrap();
    let size = layer.data.len() as u64;
    let image = ImageBuilder::new(MediaTypes::Oci)
        .layer(layer.clone())
        .build()
        .unwrap();
    upstream
        .fixtures()
        .push_image("fleet/big:1", &image)
        .await
        .unwrap();
    let reference = upstream.fixtures().reference("fleet/big:1");

    let port = free_port();
    let mut fronts = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let front = Throttle::start(&format!("127.0.0.{}:{port}", i + 2), UNLIMITED)
            .await
            .unwrap();
        nodes.push(node(i, port, &nats.url, &front.host).await);
        fronts.push(front);
    }
    // The fourth holder will lie, once it holds the layer.
    let liar = Front::start(&format!("127.0.0.5:{port}")).await.unwrap();
    nodes.push(node(3, port, &nats.url, &liar.host).await);
    // One node after the other: the first fetches upstream, the second
    // reads from the first, the third from two holders, the last from
    // three.
    let mut served = Vec::new();
    let mut from = Vec::new();
    for node in &nodes[..3] {
        let before: Vec<u64> = fronts.iter().map(Throttle::bytes).collect();
        let messages = client::pull(node.images(), client::pull_request(&reference))
            .await
            .expect("the pull");
        let last = messages.last().expect("a last message");
        from.push(last.fetched_from.expect("where the layer came from"));
        let listed = client::list(node.images()).await;
        assert!(
            listed.iter().any(|i| i.id == image.id()),
            "the image is there"
        );
        served.push(
            fronts
                .iter()
                .zip(before)
                .map(|(front, before)| front.bytes() - before)
                .collect::<Vec<u64>>(),
        );
        // The holding is announced just after the pull's commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("layer {size} bytes; served by each holder, pull by pull: {served:?}");
    let gets = upstream.blob_gets();
    let upstream_gets = gets.iter().filter(|g| g.contains(&layer.digest)).count();
    assert_eq!(
        upstream_gets, 1,
        "the layer came from upstream once: {gets:#?}"
    );
    // Each pull says where its layer came from.
    let size_i = size as i64;
    assert_eq!((from[0].registry, from[0].peers), (size_i, 0), "{from:?}");
    for pulled in &from[1..] {
        assert_eq!((pulled.registry, pulled.peers), (0, size_i), "{from:?}");
    }
    // And the first node, asked with imagectl, what it served.
    let peers = tokio::process::Command::new(imaged_e2e::bin_dir().join("imagectl"))
        .arg("--host")
        .arg(format!(
            "unix://{}",
            nodes[0].socket(Service::Gateway).display()
        ))
        .arg("peers")
        .output()
        .await
        .unwrap();
    let peers = String::from_utf8_lossy(&peers.stdout);
    let served_row = peers
        .lines()
        .find(|l| l.starts_with("served to other nodes"))
        .unwrap_or_else(|| panic!("imagectl peers: {peers}"));
    assert!(!served_row.ends_with(" 0B"), "{peers}");

    // The third node read parts from both holders.
    let by_holder = &served[2][..2];
    assert!(
        by_holder.iter().all(|&bytes| bytes > 0 && bytes < size),
        "pull 2: each holder served a part, none the whole: {by_holder:?}"
    );
    let total: u64 = by_holder.iter().sum();
    assert!(
        total >= size && total < size + size / 4,
        "pull 2: the parts add up to the layer: {total} for {size}"
    );
    // The fourth reads parts from the three, and one of them lies: the
    // pull completes with the right layer, fetched again upstream.
    let before: Vec<u64> = fronts.iter().map(Throttle::bytes).collect();
    client::pull(nodes[3].images(), client::pull_request(&reference))
        .await
        .expect("the fourth pull");
    let by_holder: Vec<u64> = fronts
        .iter()
        .zip(before)
        .map(|(front, before)| front.bytes() - before)
        .collect();
    assert!(
        by_holder.iter().all(|&bytes| bytes > 0 && bytes < size),
        "pull 3: every holder served a part, none the whole: {by_holder:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    liar.rule(
        "GET",
        &layer.digest,
        Answer::Body {
            status: 206,
            headers: vec![],
            body: vec![0x5a; 2 << 20],
        },
        usize::MAX,
    );
    let last = Imaged::builder()
        .fleet_node(&format!("127.0.0.6:{port}"), &nats.url, "node4")
        .arg(Service::Transfer, "--peer-split-mib=1")
        .start()
        .await
        .unwrap();
    client::pull(last.images(), client::pull_request(&reference))
        .await
        .expect("the pull completes despite the liar");
    let listed = client::list(last.images()).await;
    assert!(
        listed.iter().any(|i| i.id == image.id()),
        "the image is there"
    );
    assert!(
        liar.requests().iter().any(|r| r.contains(&layer.digest)),
        "the liar was asked for a part: {:?}",
        liar.requests()
    );
    let gets = upstream.blob_gets();
    let upstream_gets = gets.iter().filter(|g| g.contains(&layer.digest)).count();
    assert_eq!(
        upstream_gets, 2,
        "fetched again upstream after the mismatch: {gets:#?}"
    );
    assert!(
        last.logs().contains("digest mismatch"),
        "the mismatch is logged"
    );
}
