//! imaged-events through the gateway: publish, subscribe with filters,
//! replay after restart, lagging subscribers, producers buffering while
//! imaged-events is down.

use std::time::Duration;

use imaged_api::internal::v1::event_log_client::EventLogClient;
use imaged_api::internal::v1::{EventLogInfoRequest, PublishRequest};
use imaged_api::v1::events_client::EventsClient;
use imaged_api::v1::{Actor, Event, SubscribeRequest};
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::events::{ImageEvents, Publisher};
use imaged_common::peer::{Peer, PeerChannel};
use imaged_e2e::Imaged;
use tonic::{Code, Streaming};

fn event(action: &str, id: &str, name: &str, labels: &[(&str, &str)]) -> Event {
    let mut attributes: std::collections::HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    attributes.insert("name".into(), name.into());
    Event {
        sequence: 0,
        r#type: "image".into(),
        action: action.into(),
        actor: Some(Actor {
            id: id.into(),
            attributes,
        }),
        scope: "local".into(),
        time_nano: now_nanos(),
        time: None,
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn log_client(imaged: &Imaged) -> EventLogClient<PeerChannel> {
    EventLogClient::new(imaged.channel(Service::Events))
}

async fn publish(imaged: &Imaged, source: &str, first: u64, events: Vec<Event>) {
    log_client(imaged)
        .publish(PublishRequest {
            source: source.into(),
            first_source_sequence: first,
            events,
        })
        .await
        .unwrap();
}

async fn subscribe(
    imaged: &Imaged,
    filters: &[&str],
    since: &str,
    until: &str,
) -> Streaming<Event> {
    EventsClient::new(imaged.channel(Service::Gateway))
        .subscribe(SubscribeRequest {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            since: since.into(),
            until: until.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until imaged-events counts `n` live subscribers.
async fn wait_subscribers(imaged: &Imaged, n: u64) {
    for _ in 0..200 {
        let info = log_client(imaged)
            .info(EventLogInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        if info.subscribers >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("subscribers never reached {n}");
}

async fn next(stream: &mut Streaming<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no event within 10s")
        .unwrap()
        .expect("stream ended")
}

fn summary(e: &Event) -> (String, String, String) {
    let actor = e.actor.clone().unwrap();
    (
        e.action.clone(),
        actor.id,
        actor.attributes.get("name").cloned().unwrap_or_default(),
    )
}

#[tokio::test]
async fn subscribers_get_matching_events_in_order_with_attributes() {
    let imaged = Imaged::start().await.unwrap();
    let mut all = subscribe(&imaged, &[], "", "").await;
    let mut tags = subscribe(&imaged, &["event=tag", "image=busybox"], "", "").await;
    let mut labelled = subscribe(&imaged, &["label=tier=web"], "", "").await;
    wait_subscribers(&imaged, 3).await;

    let id = format!("sha256:{}", "a".repeat(64));
    publish(
        &imaged,
        "test/1",
        1,
        vec![
            event("tag", &id, "busybox:latest", &[("tier", "web")]),
            event("tag", &id, "alpine:3", &[]),
            event("untag", &id, &id, &[]),
            event("delete", &id, &id, &[]),
        ],
    )
    .await;

    let mut seen = Vec::new();
    let mut last_sequence = 0;
    for _ in 0..4 {
        let e = next(&mut all).await;
        assert!(e.sequence > last_sequence, "sequence must increase");
        last_sequence = e.sequence;
        assert_eq!((e.r#type.as_str(), e.scope.as_str()), ("image", "local"));
        seen.push(summary(&e));
    }
    assert_eq!(
        seen,
        [
            ("tag".into(), id.clone(), "busybox:latest".into()),
            ("tag".into(), id.clone(), "alpine:3".into()),
            ("untag".into(), id.clone(), id.clone()),
            ("delete".into(), id.clone(), id.clone()),
        ]
    );
    let tag = next(&mut tags).await;
    assert_eq!(summary(&tag).2, "busybox:latest");
    let web = next(&mut labelled).await;
    assert_eq!(web.actor.unwrap().attributes["tier"], "web");

    // Nothing else matched those two subscriptions.
    publish(
        &imaged,
        "test/1",
        5,
        vec![event("tag", &id, "busybox:2", &[])],
    )
    .await;
    assert_eq!(summary(&next(&mut tags).await).2, "busybox:2");
}

#[tokio::test]
async fn since_replays_the_log_after_a_restart_then_continues_live() {
    let mut imaged = Imaged::start().await.unwrap();
    let start = now_nanos();
    publish(
        &imaged,
        "test/1",
        1,
        vec![
            event("pull", "busybox:latest", "busybox", &[]),
            event("tag", "sha256:1", "a:1", &[]),
        ],
    )
    .await;
    imaged.terminate(Service::Events).await.unwrap();
    imaged.start_service(Service::Events).await.unwrap();

    let since = format!("{}.{:09}", start / 1_000_000_000, start % 1_000_000_000);
    let mut stream = subscribe(&imaged, &[], &since, "").await;
    assert_eq!(next(&mut stream).await.action, "pull");
    let replayed = next(&mut stream).await;
    assert_eq!(replayed.action, "tag");
    wait_subscribers(&imaged, 1).await;
    publish(
        &imaged,
        "test/1",
        3,
        vec![event("delete", "sha256:1", "sha256:1", &[])],
    )
    .await;
    let live = next(&mut stream).await;
    assert_eq!(live.action, "delete");
    assert_eq!(
        live.sequence,
        replayed.sequence + 1,
        "no gap and no duplicate"
    );

    // A window wholly in the past replays and ends.
    let until = format!("{}", now_nanos() / 1_000_000_000 + 1);
    let mut past = subscribe(&imaged, &[], &since, &until).await;
    for action in ["pull", "tag", "delete"] {
        assert_eq!(next(&mut past).await.action, action);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let end = tokio::time::timeout(Duration::from_secs(10), past.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn until_in_the_future_ends_the_stream_then() {
    let imaged = Imaged::start().await.unwrap();
    let mut stream = subscribe(&imaged, &[], "", "-1s").await;
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_while_a_fast_one_gets_everything() {
    let imaged = Imaged::builder()
        .arg(Service::Events, "--subscriber-backlog=2048")
        .start()
        .await
        .unwrap();
    let mut fast = subscribe(&imaged, &[], "", "").await;
    let mut slow = subscribe(&imaged, &[], "", "").await;
    wait_subscribers(&imaged, 2).await;

    // Large events (1 KiB each), and enough of them to overflow every
    // buffer on the way (HTTP/2 windows and send buffers, a few MiB) as
    // well as the backlog.
    let padding = "p".repeat(1024);
    let total = 30_000u64;
    let batch = 500u64;
    let mut received = 0u64;
    for first in (1..=total).step_by(batch as usize) {
        let events = (0..batch)
            .map(|_| event("tag", "sha256:x", "x:1", &[("padding", padding.as_str())]))
            .collect();
        publish(&imaged, "flood", first, events).await;
        // The fast subscriber keeps up with each batch.
        while received < first + batch - 1 {
            next(&mut fast).await;
            received += 1;
        }
    }
    assert_eq!(received, total);

    let mut slow_got = 0;
    let status = loop {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(10), slow.message()).await
        else {
            panic!("slow subscriber stuck after {slow_got} events");
        };
        match message {
            Ok(Some(_)) => slow_got += 1,
            Ok(None) => panic!("slow stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("subscriber lagged by "),
        "{}",
        status.message()
    );
    assert!(slow_got < total);
}

#[tokio::test]
async fn bad_subscriptions_are_refused() {
    let imaged = Imaged::start().await.unwrap();
    let mut client = EventsClient::new(imaged.channel(Service::Gateway));
    for (filters, since, until, message) in [
        // An unknown key is ignored, as Docker ignores it; a filter that
        // is not key=value is refused.
        (
            vec!["colour"],
            "",
            "",
            "bad format of filter (expected name=value): \"colour\"",
        ),
        (
            vec![],
            "tomorrow",
            "",
            "failed to parse value as time or duration: \"tomorrow\"",
        ),
        (
            vec![],
            "1700000002",
            "1700000001",
            "`since` time (1700000002) cannot be after `until` (1700000001)",
        ),
    ] {
        let err = client
            .subscribe(SubscribeRequest {
                filters: filters.into_iter().map(String::from).collect(),
                since: since.into(),
                until: until.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), message);
    }
}

#[tokio::test]
async fn a_producer_buffers_while_imaged_events_is_down() {
    let mut imaged = Imaged::start().await.unwrap();
    let peer = Peer::new(
        Service::Events,
        Endpoint::Unix(imaged.socket(Service::Events)),
    )
    .unwrap();
    let publisher = Publisher::start(peer, "test-producer", 100);
    let start = now_nanos();
    imaged.terminate(Service::Events).await.unwrap();

    let labels = [("tier".to_string(), "web".to_string())]
        .into_iter()
        .collect();
    for tag in ["a:1", "a:2", "a:3"] {
        publisher.image("tag", "sha256:buffered", &labels, Some(tag));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(publisher.pending(), 3, "nothing can be delivered yet");

    imaged.start_service(Service::Events).await.unwrap();
    assert!(
        publisher.flush(Duration::from_secs(20)).await,
        "events not delivered"
    );
    let since = format!("{}", start / 1_000_000_000);
    let mut stream = subscribe(&imaged, &["image=sha256:buffered"], &since, "").await;
    for tag in ["a:1", "a:2", "a:3"] {
        let e = next(&mut stream).await;
        assert_eq!(summary(&e).2, tag);
        assert_eq!(e.actor.unwrap().attributes["tier"], "web");
    }
}
