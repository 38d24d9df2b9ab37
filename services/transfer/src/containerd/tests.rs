use super::*;

#[test]
fn gc_labels_tie_index_manifest_config_and_snapshot_together() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:l0"},{"digest":"sha256:l1"}]}"#;
    let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:m"}]}"#;
    let chain = Digest::sha256_of(b"top");
    let image = Image {
        id: Digest::sha256_of(b"config"),
        blobs: [&index[..], &manifest[..], b"{}"]
            .into_iter()
            .map(|b| Blob {
                digest: Digest::sha256_of(b),
                bytes: Bytes::copy_from_slice(b),
            })
            .collect(),
        chains: vec![Digest::sha256_of(b"bottom"), chain.clone()],
        names: vec![],
    };
    let (target_type, labels) = describe(&image, "imaged");
    assert_eq!(labels[0]["containerd.io/gc.ref.content.m.0"], "sha256:m");
    assert_eq!(labels[1]["containerd.io/gc.ref.content.config"], "sha256:c");
    assert_eq!(labels[1]["containerd.io/gc.ref.content.l.1"], "sha256:l1");
    assert_eq!(
        labels[2]["containerd.io/gc.ref.snapshot.imaged"],
        chain.to_string()
    );
    assert_eq!(
        target_type,
        imaged_model::media_type::OCI_INDEX,
        "from its shape"
    );
    let alone = Image {
        blobs: image.blobs[1..].to_vec(),
        ..image
    };
    assert_eq!(
        describe(&alone, "imaged").0,
        "application/vnd.oci.image.manifest.v1+json"
    );
}
