//! `imagectl push --sign-by`, checked by skopeo: the signatures imagectl
//! makes are the ones skopeo accepts.

use super::*;

/// `imagectl push --sign-by` signs as skopeo's does: skopeo accepts an
/// image imagectl signed with the trusted key, and refuses one signed
/// with another; imaged decides the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_push_sign_by_signs_what_skopeo_accepts() {
    let setup = Setup::new().await;
    let (home, keys, registries_d) = (&setup.home, &setup.keys, &setup.registries_d);
    let full = |repo: &str| setup.full(repo);
    let fixtures = setup.registry.fixtures();
    fixtures
        .push_image("staging/app:1", &image_for("staging"))
        .await
        .unwrap();
    let signed_by = format!(
        r#"[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}]"#,
        keys[0].public.display()
    );
    let policy = setup.work.path().join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"{}":{signed_by},"{}":{signed_by}}}}}}}"#,
            full("signed/app"),
            full("stranger/app")
        ),
    )
    .unwrap();
    let imaged = setup.imaged(&policy, None).await;
    let staged = full("staging/app:1");
    pull(imaged.images(), pull_request(&staged)).await.unwrap();

    for (repo, key, trusted) in [
        ("signed/app", &keys[0], true),
        ("stranger/app", &keys[1], false),
    ] {
        let target = full(&format!("{repo}:1"));
        imaged
            .images()
            .tag_image(imaged_api::v1::TagImageRequest {
                source: staged.clone(),
                target: target.clone(),
            })
            .await
            .unwrap();
        let out = tokio::process::Command::new(imaged_e2e::bin_dir().join("imagectl"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                imaged.socket(Service::Gateway).display()
            ))
            .args(["push", "--sign-by", &key.fingerprint, "--registries-d"])
            .arg(registries_d)
            .arg(&target)
            .env("GNUPGHOME", home)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "imagectl push --sign-by: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (oracle, said) = skopeo_accepts(&policy, registries_d, &target);
        assert_eq!(
            oracle, trusted,
            "{repo}: skopeo on imagectl's signature: {said}"
        );
        remove(&imaged, &target).await;
        let ours = pull(imaged.images(), pull_request(&target)).await;
        assert_eq!(
            ours.is_ok(),
            trusted,
            "{repo}: imaged on imagectl's signature: {ours:?}"
        );
    }
}
