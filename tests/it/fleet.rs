//! Nodes that feed each other: five imaged stacks on one machine (own
//! roots, content served on 127.0.0.2–6), each listing the other four as
//! mirrors in its `hosts.toml`, in front of one upstream registry behind
//! a byte-counting proxy. Rolling an image out (one node first, then the
//! other four at once) costs the upstream about one copy of the image;
//! five independent pulls cost five. Run with `--nocapture` to see the
//! figures.

use std::time::{Duration, Instant};

use imaged_common::config::Service;
use imaged_e2e::throttle::Throttle;
use imaged_e2e::{Imaged, TestRegistry, client, free_port};

const NODES: usize = 5;

/// `NODES` running stacks, their `hosts.toml` directories and the
/// addresses they serve their content on.
struct Fleet {
    nodes: Vec<Imaged>,
    _configs: Vec<tempfile::TempDir>,
    addresses: Vec<String>,
}

/// Starts `NODES` stacks; with `peers`, each serves its content on
/// 127.0.0.(2+i):`port` and lists the others as pull mirrors of
/// `registry`.
async fn fleet(registry: &str, peers: bool) -> Fleet {
    let port = free_port();
    let address = |i: usize| format!("127.0.0.{}:{port}", i + 2);
    let mut nodes = Vec::new();
    let mut configs = Vec::new();
    for i in 0..NODES {
        let mut builder = Imaged::builder();
        if peers {
            let others: Vec<String> = (0..NODES).filter(|&o| o != i).map(address).collect();
            let dir = imaged_e2e::peers_hosts_dir(registry, &others);
            builder = builder
                .arg(
                    Service::Transfer,
                    &format!("--registry-config-dir={}", dir.path().display()),
                )
                .arg(
                    Service::Transfer,
                    &format!("--serve-content={}", address(i)),
                );
            configs.push(dir);
        }
        nodes.push(builder.start().await.unwrap());
    }
    Fleet {
        nodes,
        _configs: configs,
        addresses: (0..NODES).map(address).collect(),
    }
}

async fn pull_on(nodes: &[Imaged], reference: &str) {
    let pulls: Vec<_> = nodes
        .iter()
        .map(|node| tokio::spawn(client::pull(node.images(), client::pull_request(reference))))
        .collect();
    for pull in pulls {
        pull.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_to_five_nodes_costs_the_upstream_about_one_copy() {
    let upstream = TestRegistry::start().await.unwrap();
    let image = imaged_fixtures::generated_image(4, 8, 256 << 10, 41).unwrap();
    let compressed: u64 = image.layers.iter().map(|l| l.data.len() as u64).sum();
    upstream
        .fixtures()
        .push_image("fleet/app:1", &image)
        .await
        .unwrap();
    let counted = Throttle::start(&upstream.host, 200 << 20).await.unwrap();
    let reference = format!("{}/fleet/app:1", counted.host);

    // The rollout: one node first, then the other four at once.
    // (`_configs` is bound: the hosts.toml files must outlive the pulls.)
    let Fleet {
        nodes,
        addresses,
        _configs,
    } = fleet(&counted.host, true).await;
    let started = Instant::now();
    pull_on(&nodes[..1], &reference).await;
    let first_time = started.elapsed();
    let first = counted.bytes();
    pull_on(&nodes[1..], &reference).await;
    let rollout_time = started.elapsed();
    let rollout = counted.bytes();

    // What a node serves: blobs by digest, of the images it pulled
    // anonymously, under their repository; no tags.
    let served = |path: String| {
        let url = format!("http://{}{path}", addresses[0]);
        async move {
            let out = tokio::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{size_download}",
                    &url,
                ])
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let layer = &image.layers[0];
    assert_eq!(
        served(format!("/v2/fleet/app/blobs/{}", layer.digest)).await,
        format!("200 {}", layer.data.len())
    );
    // Only under the repository it was pulled from.
    assert!(
        served(format!("/v2/any/name/blobs/{}", layer.digest))
            .await
            .starts_with("404")
    );
    assert_eq!(
        served(format!("/v2/fleet/app/manifests/{}", image.manifest.digest)).await,
        format!("200 {}", image.manifest.data.len())
    );
    assert!(
        served("/v2/fleet/app/manifests/1".into())
            .await
            .starts_with("404")
    );
    let absent = format!("sha256:{}", "0".repeat(64));
    assert!(
        served(format!("/v2/fleet/app/blobs/{absent}"))
            .await
            .starts_with("404")
    );
    drop(nodes);

    // Five independent pulls of the same image.
    let before = counted.bytes();
    let nodes = fleet(&counted.host, false).await.nodes;
    let started = Instant::now();
    pull_on(&nodes, &reference).await;
    let independent_time = started.elapsed();
    let independent = counted.bytes() - before;
    drop(nodes);

    eprintln!(
        "fleet of {NODES}: image {:.1} MiB compressed; upstream bytes: rollout {:.1} MiB \
         (first node {:.1} MiB in {:.2?}) in {:.2?}, {NODES} independent pulls {:.1} MiB in {:.2?}",
        compressed as f64 / 1048576.0,
        rollout as f64 / 1048576.0,
        first as f64 / 1048576.0,
        first_time,
        rollout_time,
        independent as f64 / 1048576.0,
        independent_time,
    );
    assert!(
        first >= compressed,
        "the first node pulls the image upstream"
    );
    // About one copy: the four later nodes fetched only the manifest
    // (tags are resolved upstream) and took the blobs from their peers.
    assert!(
        rollout < compressed + compressed / 10,
        "rollout cost the upstream {rollout} bytes for a {compressed}-byte image"
    );
    assert!(independent >= NODES as u64 * compressed);
}

/// `NODES` stacks that find each other through the NATS directory
/// (`--peer-directory nats`), with no `hosts.toml`: each serves its
/// content on 127.0.0.(2+i) and says so in the directory.
async fn directory_fleet(nats: &str, count: usize) -> Vec<Imaged> {
    let port = free_port();
    let mut nodes = Vec::new();
    for i in 0..count {
        let node = Imaged::builder()
            .fleet_node(
                &format!("127.0.0.{}:{port}", i + 2),
                nats,
                &format!("node{i}"),
            )
            .arg(Service::Transfer, "--peer-ttl=3")
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    nodes
}

/// Every node pulls the same fresh image at the same moment. Each blob is
/// claimed by one node, which fetches it upstream and serves it to the
/// others while it arrives: the upstream serves about one copy, where
/// four independent pulls cost four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simultaneous_rollout_fetches_each_blob_once_through_the_directory() {
    let nats = imaged_e2e::nats::NatsServer::start().await.unwrap();
    let upstream = TestRegistry::start().await.unwrap();
    let image = imaged_fixtures::generated_image(4, 4, 512 << 10, 43).unwrap();
    let compressed: u64 = image.layers.iter().map(|l| l.data.len() as u64).sum();
    upstream
        .fixtures()
        .push_image("fleet/together:1", &image)
        .await
        .unwrap();
    // A link slow enough that the nodes' downloads overlap.
    let counted = Throttle::start(&upstream.host, 4 << 20).await.unwrap();
    let reference = format!("{}/fleet/together:1", counted.host);
    let nodes = directory_fleet(&nats.url, 4).await;

    let started = Instant::now();
    pull_on(&nodes, &reference).await;
    let took = started.elapsed();
    let bytes = counted.bytes();
    eprintln!(
        "4 nodes at once through the directory: image {:.2} MiB compressed, upstream served {:.2} MiB ({:.2}x) in {took:.2?}",
        compressed as f64 / 1048576.0,
        bytes as f64 / 1048576.0,
        bytes as f64 / compressed as f64,
    );
    for node in &nodes {
        let listed = client::list(node.images()).await;
        assert!(
            listed.iter().any(|i| i.id == image.id()),
            "every node has the image"
        );
    }
    let gets = upstream.blob_gets();
    for layer in &image.layers {
        let fetched = gets.iter().filter(|g| g.contains(&layer.digest)).count();
        assert_eq!(
            fetched, 1,
            "layer {} fetched upstream {fetched} times: {gets:#?}",
            layer.digest
        );
    }
    assert!(
        bytes < compressed + compressed / 10,
        "the upstream served {bytes} bytes for a {compressed}-byte image"
    );
}

/// The node fetching a layer for the others is killed (SIGKILL) in the
/// middle of it: its claim passes on within the TTL, another node resumes
/// the fetch from what it had, the last reads from that one, and both end
/// with the image, its digests checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimer_killed_mid_layer_hands_its_claim_over() {
    let nats = imaged_e2e::nats::NatsServer::start().await.unwrap();
    let upstream = TestRegistry::start().await.unwrap();
    let image = imaged_fixtures::generated_image(1, 4, 1 << 20, 44).unwrap();
    let compressed: u64 = image.layers.iter().map(|l| l.data.len() as u64).sum();
    upstream
        .fixtures()
        .push_image("fleet/handover:1", &image)
        .await
        .unwrap();
    let counted = Throttle::start(&upstream.host, 1 << 20).await.unwrap();
    let reference = format!("{}/fleet/handover:1", counted.host);
    let mut nodes = directory_fleet(&nats.url, 3).await;

    let pull = |node: &Imaged| {
        tokio::spawn(client::pull(
            node.images(),
            client::pull_request(&reference),
        ))
    };
    let first = pull(&nodes[0]);
    // node0 claims the layer and fetches it; the others read from it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let others = [pull(&nodes[1]), pull(&nodes[2])];
    tokio::time::sleep(Duration::from_millis(700)).await;
    nodes[0].kill(Service::Transfer).await;
    let _ = first.await;
    for (i, pull) in others.into_iter().enumerate() {
        pull.await
            .unwrap()
            .unwrap_or_else(|e| panic!("node{} after the claimer died: {e}", i + 1));
    }
    for node in &nodes[1..] {
        let listed = client::list(node.images()).await;
        assert!(listed.iter().any(|i| i.id == image.id()));
    }
    let bytes = counted.bytes();
    eprintln!(
        "claimer killed: image {:.2} MiB, upstream served {:.2} MiB ({:.2}x)",
        compressed as f64 / 1048576.0,
        bytes as f64 / 1048576.0,
        bytes as f64 / compressed as f64
    );
    // node0's part, then the rest once, resumed: under two copies.
    assert!(
        bytes < 2 * compressed,
        "the upstream served {bytes} bytes for a {compressed}-byte image"
    );
}

/// NATS away: the nodes pull alone, as without a directory; NATS back:
/// they share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_directory_nodes_pull_alone_and_share_again_when_it_is_back() {
    let mut nats = imaged_e2e::nats::NatsServer::start().await.unwrap();
    let upstream = TestRegistry::start().await.unwrap();
    let images: Vec<_> = (0..2)
        .map(|i| imaged_fixtures::generated_image(2, 2, 512 << 10, 50 + i).unwrap())
        .collect();
    for (i, image) in images.iter().enumerate() {
        upstream
            .fixtures()
            .push_image(&format!("fleet/away{i}:1"), image)
            .await
            .unwrap();
    }
    let counted = Throttle::start(&upstream.host, 4 << 20).await.unwrap();
    let nodes = directory_fleet(&nats.url, 2).await;

    nats.stop().await;
    let before = counted.bytes();
    pull_on(&nodes, &format!("{}/fleet/away0:1", counted.host)).await;
    let alone = counted.bytes() - before;

    nats.restart().await.unwrap();
    let before = counted.bytes();
    pull_on(&nodes, &format!("{}/fleet/away1:1", counted.host)).await;
    let shared = counted.bytes() - before;
    let size = |i: usize| {
        images[i]
            .layers
            .iter()
            .map(|l| l.data.len() as u64)
            .sum::<u64>()
    };
    eprintln!("NATS away: {alone} bytes upstream for 2 nodes; back: {shared}");
    assert!(
        alone >= 2 * size(0),
        "alone, each node fetched its own copy"
    );
    assert!(
        shared < size(1) + size(1) / 10,
        "with the directory back, one copy: {shared} for {}",
        size(1)
    );
}

/// Peers the directory names that answer wrong bytes, or headers and then
/// nothing: each is dropped for that blob (the wrong bytes at once, the
/// silent one within the stall timeout) and the pull completes from the
/// upstream, digests checked. The liars are registered in the directory
/// as holders, the way a compromised node would register itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_lies_or_stalls_is_dropped_and_the_pull_completes() {
    use imaged_e2e::front::{Answer, Front};
    let nats = imaged_e2e::nats::NatsServer::start().await.unwrap();
    let upstream = TestRegistry::start().await.unwrap();
    let image = imaged_fixtures::generated_image(2, 2, 256 << 10, 60).unwrap();
    upstream
        .fixtures()
        .push_image("fleet/liars:1", &image)
        .await
        .unwrap();
    let (liar, silent) = (
        Front::start(&upstream.host).await.unwrap(),
        Front::start(&upstream.host).await.unwrap(),
    );
    let (lied, stalled) = (&image.layers[0], &image.layers[1]);
    liar.rule(
        "GET",
        &lied.digest,
        Answer::Body {
            status: 200,
            headers: vec![],
            body: vec![0x5a; lied.data.len()],
        },
        usize::MAX,
    );
    silent.rule("GET", &stalled.digest, Answer::Silent, usize::MAX);
    // The directory says the liar holds one layer and the silent one the
    // other.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "KV_imaged-peers".into(),
        subjects: vec!["$KV.imaged-peers.>".into()],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(60),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let kv = js.get_key_value("imaged-peers").await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (layer, peer) in [(lied, &liar), (stalled, &silent)] {
        let record = serde_json::json!([{
            "node": format!("rogue-{}", peer.host.replace([':', '.'], "-")),
            "url": format!("http://{}", peer.host),
            "at": now + 60_000,
        }]);
        let hex = layer.digest.trim_start_matches("sha256:");
        kv.put(format!("held.{hex}"), record.to_string().into())
            .await
            .unwrap();
    }

    let node = Imaged::builder()
        .fleet_node(&format!("127.0.0.2:{}", free_port()), &nats.url, "honest")
        .arg(Service::Transfer, "--stall-timeout-secs=2")
        .start()
        .await
        .unwrap();
    let reference = upstream.fixtures().reference("fleet/liars:1");
    let started = Instant::now();
    client::pull(node.images(), client::pull_request(&reference))
        .await
        .expect("the pull completes despite the peers");
    let took = started.elapsed();
    let listed = client::list(node.images()).await;
    assert!(listed.iter().any(|i| i.id == image.id()));
    for (layer, peer) in [(lied, &liar), (stalled, &silent)] {
        assert!(
            peer.requests().iter().any(|r| r.contains(&layer.digest)),
            "the peer was asked: {:?}",
            peer.requests()
        );
        let from_upstream = upstream
            .blob_gets()
            .iter()
            .filter(|g| g.contains(&layer.digest))
            .count();
        assert_eq!(
            from_upstream, 1,
            "then the upstream served {}",
            layer.digest
        );
    }
    assert!(
        node.logs().contains("mirror failed"),
        "the peers' failures are logged"
    );
    eprintln!("liar and silent peer dropped; pull took {took:.2?}");
    assert!(
        took < Duration::from_secs(20),
        "dropped within the stall timeout: {took:?}"
    );
}

/// A node that leaves stops refreshing its records: the directory drops
/// them (the bucket's age limit is three TTLs) and nobody is sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_drops_out_of_the_directory() {
    let nats = imaged_e2e::nats::NatsServer::start().await.unwrap();
    let upstream = TestRegistry::start().await.unwrap();
    let image = imaged_fixtures::generated_image(1, 2, 64 << 10, 70).unwrap();
    upstream
        .fixtures()
        .push_image("fleet/leaving:1", &image)
        .await
        .unwrap();
    let node = Imaged::builder()
        .fleet_node(&format!("127.0.0.2:{}", free_port()), &nats.url, "leaving")
        .arg(Service::Transfer, "--peer-ttl=1")
        .start()
        .await
        .unwrap();
    client::pull(
        node.images(),
        client::pull_request(&upstream.fixtures().reference("fleet/leaving:1")),
    )
    .await
    .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let kv = js.get_key_value("imaged-peers").await.unwrap();
    let key = format!(
        "held.{}",
        image.layers[0].digest.trim_start_matches("sha256:")
    );
    let mut held = None;
    for _ in 0..50 {
        held = kv.get(&key).await.unwrap();
        if held.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = held.expect("the node says it holds the layer");
    assert!(String::from_utf8_lossy(&held).contains("\"leaving\""));
    // Refreshed while the node lives, past the bucket's age limit.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        kv.get(&key).await.unwrap().is_some(),
        "refreshed while alive"
    );

    drop(node.stop());
    let mut gone = false;
    for _ in 0..60 {
        if kv.get(&key).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the record outlived its node by more than the age limit"
    );
}
