//! Fleet events on NATS JetStream, against Debian's `nats-server -js`:
//! two imaged stacks publish their events (`--nats-url`, their own
//! `--node-name`), NATS is killed and started again while they work, and
//! one consumer of the stream then reads every event of both nodes, in
//! each node's order.

use std::collections::BTreeMap;
use std::time::Duration;

use imaged_api::v1::{SystemInfoRequest, TagImageRequest};
use imaged_common::config::Service;
use imaged_e2e::nats::NatsServer;
use imaged_e2e::{Imaged, client};
use imaged_fixtures::{Compression, LayerBuilder};

async fn node(nats: &NatsServer, name: &str) -> Imaged {
    Imaged::builder()
        .arg(Service::Events, &format!("--nats-url={}", nats.url))
        .arg(Service::Events, &format!("--node-name={name}"))
        .start()
        .await
        .unwrap()
}

/// Tags the image `base:1` on `node` as `t:<from>` … `t:<to - 1>`.
async fn tag(node: &Imaged, from: usize, to: usize) {
    for i in from..to {
        node.images()
            .tag_image(TagImageRequest {
                source: "base:1".into(),
                target: format!("t:{i}"),
            })
            .await
            .unwrap();
    }
}

async fn last_sequence(node: &Imaged) -> u64 {
    node.images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .event_log
        .unwrap()
        .last_sequence
}

/// Every message of the stream: each node's sequences, in stream order.
async fn published(url: &str) -> BTreeMap<String, Vec<u64>> {
    let client = async_nats::connect(url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream("IMAGED_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut by_node: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let node = event["node"].as_str().unwrap().to_string();
        assert_eq!(message.subject.as_str(), format!("imaged.events.{node}"));
        by_node
            .entry(node)
            .or_default()
            .push(event["sequence"].as_u64().unwrap());
    }
    by_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_events_reach_one_consumer_across_a_nats_restart() {
    let mut nats = NatsServer::start().await.unwrap();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let rootfs = LayerBuilder::new()
        .dir("bin")
        .file("bin/hello", b"hello\n")
        .build(Compression::None)
        .unwrap();
    for node in [&a, &b] {
        client::import(node.images(), "base:1", &rootfs.data)
            .await
            .unwrap();
    }
    tag(&a, 0, 20).await;
    tag(&b, 0, 20).await;

    // NATS goes away mid-stream; the nodes go on working.
    nats.stop().await;
    tag(&a, 20, 40).await;
    tag(&b, 20, 30).await;
    nats.restart().await.unwrap();
    tag(&b, 30, 40).await;

    let expected = [
        ("node-a".to_string(), last_sequence(&a).await),
        ("node-b".to_string(), last_sequence(&b).await),
    ];
    assert!(expected.iter().all(|(_, last)| *last >= 41), "{expected:?}");
    let mut seen = BTreeMap::new();
    for _ in 0..300 {
        seen = published(&nats.url).await;
        if expected
            .iter()
            .all(|(node, last)| seen.get(node).and_then(|s| s.last()) == Some(last))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (node, last) in &expected {
        let sequences = seen.get(node).cloned().unwrap_or_default();
        // Every event, in the node's order (a resend JetStream did not
        // drop would show as a repeat, which at-least-once allows).
        let mut distinct = sequences.clone();
        distinct.dedup();
        assert_eq!(
            distinct,
            (1..=*last).collect::<Vec<_>>(),
            "{node}: {sequences:?}\n{}\n{}",
            nats.log(),
            a.logs()
        );
    }
}
