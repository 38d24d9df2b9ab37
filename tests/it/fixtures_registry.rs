//! The fixture images, pushed to a real registry and read back.

use imaged_e2e::TestRegistry;
use imaged_fixtures::catalog;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

#[tokio::test]
async fn catalog_pushes_and_reads_back_byte_for_byte() {
    let registry = TestRegistry::start().await.unwrap();
    let fixtures = registry.fixtures();
    let catalog = catalog().unwrap();
    catalog.push_all(&fixtures).await.unwrap();

    let client = fixtures.client();
    let accept = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ];
    for (repo_tag, image) in catalog.images() {
        let reference: Reference = fixtures.reference(repo_tag).parse().unwrap();
        let (manifest, digest) = client
            .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &accept)
            .await
            .unwrap();
        assert_eq!(digest, image.manifest.digest, "{repo_tag}");
        assert_eq!(
            manifest.as_ref(),
            image.manifest.data.as_slice(),
            "{repo_tag}"
        );
        for layer in &image.layers {
            let mut data = Vec::new();
            let descriptor = oci_client::manifest::OciDescriptor {
                digest: layer.digest.clone(),
                size: layer.data.len() as i64,
                ..Default::default()
            };
            client
                .pull_blob(&reference, &descriptor, &mut data)
                .await
                .unwrap();
            assert_eq!(data, layer.data, "{repo_tag} {}", layer.digest);
        }
    }

    let reference: Reference = fixtures.reference("fixtures/multi:latest").parse().unwrap();
    let (index, digest) = client
        .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &accept)
        .await
        .unwrap();
    assert_eq!(digest, catalog.multi.index.digest);
    assert_eq!(index.as_ref(), catalog.multi.index.data.as_slice());
}
