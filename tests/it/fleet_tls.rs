//! Private images across the fleet directory, over mTLS: nodes whose
//! serve-content speaks TLS with the fleet's CA announce and claim blobs
//! they fetched with credentials, and a peer presenting the fleet's
//! client certificate (`--fleet-tls-cert`) reads them from the node that
//! has them, not from the registry. Without TLS, a node neither announces
//! nor claims such a blob (it would serve it to nobody).

use imaged_e2e::{Imaged, TestRegistry, client, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_blobs_go_between_fleet_peers_over_mtls_only() {
    const PASSWORD: &str = "fleet-tls-pw";
    let nats = imaged_e2e::nats::NatsServer::start().await.unwrap();
    let private = TestRegistry::start_with_auth("tenant", PASSWORD)
        .await
        .unwrap();
    let image = imaged_fixtures::generated_image(2, 2, 256 << 10, 80).unwrap();
    private
        .fixtures_as("tenant", PASSWORD)
        .push_image("team/private:1", &image)
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    imaged_e2e::certs::write(certs.path());
    let mut nodes = Vec::new();
    for i in 0..2 {
        let node = Imaged::builder()
            .fleet_node(
                &format!("127.0.0.1:{}", free_port()),
                &nats.url,
                &format!("tls{i}"),
            )
            .serve_content_tls(certs.path())
            .fleet_tls(certs.path())
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    let reference = private.fixtures().reference("team/private:1");
    let with_credentials = || imaged_api::v1::PullImageRequest {
        auth: Some(imaged_api::v1::RegistryAuth {
            username: "tenant".into(),
            password: PASSWORD.into(),
            ..Default::default()
        }),
        ..client::pull_request(&reference)
    };
    client::pull(nodes[0].images(), with_credentials())
        .await
        .unwrap();
    // The second node, later: its layers come from the first over mTLS.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    client::pull(nodes[1].images(), with_credentials())
        .await
        .unwrap();
    let listed = client::list(nodes[1].images()).await;
    assert!(listed.iter().any(|i| i.id == image.id()));
    let gets = private.blob_gets();
    for layer in &image.layers {
        let fetched = gets.iter().filter(|g| g.contains(&layer.digest)).count();
        assert_eq!(
            fetched,
            1,
            "layer {} fetched from the registry {fetched} times\n{}",
            layer.digest,
            nodes[1].logs()
        );
    }
}
