//! Mirrors serve bytes but cannot vouch for them: a pull through a
//! mirror is checked against the signatures of the name the user asked
//! for, on the manifest the mirror answered. An honest pull-through
//! mirror's images pass (GPG from the lookaside, sigstore attachments
//! read through the mirror); a mirror that answers another image under
//! the same name is refused, and what it sent is not kept.

use super::*;

/// `DIR/<upstream>/hosts.toml` with the one mirror `url`, which may
/// answer tags.
fn hosts_dir(upstream: &str, url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(upstream)).unwrap();
    std::fs::write(
        dir.path().join(upstream).join("hosts.toml"),
        format!(
            "server = \"http://{upstream}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_cannot_vouch_for_what_it_serves() {
    let setup = Setup::new().await;
    let (registry, keys) = (&setup.registry, &setup.keys);
    let fixtures = registry.fixtures();
    let full = |repo: &str| setup.full(repo);

    // Upstream: one image signed with GPG, one with sigstore.
    let gpg_image = image_for("mirrored-gpg");
    fixtures.push_image("app/gpg:1", &gpg_image).await.unwrap();
    let gpg_ref = full("app/gpg:1");
    let (manifest, _) = registry.manifest(&gpg_ref).await;
    let digest = imaged_model::Digest::sha256_of(&manifest);
    let dir = setup.sigs.join(format!("app/gpg@sha256={}", digest.hex()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("signature-1"),
        sign(&setup.home, &manifest, &gpg_ref, &keys[0]),
    )
    .unwrap();
    fixtures
        .push_image("app/sigstore:1", &image_for("mirrored-sigstore"))
        .await
        .unwrap();
    let sigstore_ref = full("app/sigstore:1");
    sigstore_sign(
        setup.work.path(),
        &setup.registries_d,
        &sigstore_ref,
        &setup.sigstore_keys[0],
    );

    let policy = setup.work.path().join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}],"{}":[{{"type":"sigstoreSigned","keyPath":"{}"}}]}}}}}}"#,
            full("app/gpg"),
            keys[0].public.display(),
            full("app/sigstore"),
            setup.sigstore_keys[0].public.display()
        ),
    )
    .unwrap();
    let node = |hosts: tempfile::TempDir| {
        let (setup, policy) = (&setup, &policy);
        async move {
            let imaged = Imaged::builder()
                .arg(
                    Service::Transfer,
                    &format!("--signature-policy={}", policy.display()),
                )
                .arg(
                    Service::Transfer,
                    &format!("--registries-d={}", setup.registries_d.display()),
                )
                .arg(
                    Service::Transfer,
                    &format!("--registry-config-dir={}", hosts.path().display()),
                )
                .start()
                .await
                .unwrap();
            (imaged, hosts)
        }
    };

    // An honest pull-through mirror: both pass, and the mirror served them.
    let honest = imaged_e2e::TestRegistry::start_mirror_of(&setup.host)
        .await
        .unwrap();
    let (imaged, _hosts) = node(hosts_dir(&setup.host, &format!("http://{}", honest.host))).await;
    for reference in [&gpg_ref, &sigstore_ref] {
        pull(imaged.images(), pull_request(reference))
            .await
            .unwrap_or_else(|e| panic!("{reference} through an honest mirror: {e}"));
    }
    let served = honest.requests();
    assert!(
        served.iter().any(|(_, path, _)| path.contains("/blobs/")),
        "the mirror served the blobs: {served:?}"
    );
    assert!(
        served.iter().any(|(_, path, _)| path.contains(".sig")),
        "the attachments were read through the mirror: {served:?}"
    );
    drop(imaged);

    // A mirror answering its own images under the same names: refused,
    // nothing of them kept.
    let evil = imaged_e2e::TestRegistry::start().await.unwrap();
    let forged = image_for("forged");
    for repo in ["app/gpg:1", "app/sigstore:1"] {
        evil.fixtures().push_image(repo, &forged).await.unwrap();
    }
    let (imaged, _hosts) = node(hosts_dir(&setup.host, &format!("http://{}", evil.host))).await;
    for reference in [&gpg_ref, &sigstore_ref] {
        let refused = pull(imaged.images(), pull_request(reference)).await;
        let status = refused.expect_err("a forged image through a mirror");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        left_nothing(&imaged, &forged, reference).await;
    }
}
