//! imagectl's signing, checked by skopeo: the GPG signatures `push
//! --sign-by` makes, and the sigstore signatures `push
//! --sign-by-sigstore-private-key` and `sign` attach with a key
//! `generate-sigstore-key` made, are the ones skopeo accepts.

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
        tag(&imaged, &staged, &target).await;
        let args = ["push", "--sign-by", &key.fingerprint, "--registries-d"];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend([registries_d.display().to_string(), target.clone()]);
        imagectl(&imaged, &args, home).await;
        decide_alike(&imaged, &policy, registries_d, &target, trusted).await;
    }
}

/// `imagectl push --sign-by-sigstore-private-key` and `imagectl sign`
/// attach sigstore signatures skopeo accepts under the key imagectl
/// generated, and refuses under another; imaged decides the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_sigstore_signatures_are_what_skopeo_accepts() {
    let setup = Setup::new().await;
    let (keys, registries_d) = (&setup.sigstore_keys, &setup.registries_d);
    let full = |repo: &str| setup.full(repo);
    let fixtures = setup.registry.fixtures();
    fixtures
        .push_image("staging/app:1", &image_for("sigstore-staging"))
        .await
        .unwrap();
    let sigstore_by = format!(
        r#"[{{"type":"sigstoreSigned","keyPath":"{}"}}]"#,
        keys[0].public.display()
    );
    let repos = ["pushed/app", "pushed-stranger/app", "signed/app"];
    let scopes: Vec<String> = repos
        .iter()
        .map(|repo| format!(r#""{}":{sigstore_by}"#, full(repo)))
        .collect();
    let policy = setup.work.path().join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{{}}}}}}}"#,
            scopes.join(",")
        ),
    )
    .unwrap();
    let imaged = setup.imaged(&policy, None).await;
    let staged = full("staging/app:1");
    pull(imaged.images(), pull_request(&staged)).await.unwrap();
    let signing = |key: &setup::SigstoreKey| {
        vec![
            "--sign-by-sigstore-private-key".to_string(),
            key.private.display().to_string(),
            "--sign-passphrase-file".into(),
            key.passphrase_file.display().to_string(),
            "--registries-d".into(),
            registries_d.display().to_string(),
        ]
    };

    // Pushed and signed in one step.
    for (repo, key, trusted) in [
        ("pushed/app", &keys[0], true),
        ("pushed-stranger/app", &keys[1], false),
    ] {
        let target = full(&format!("{repo}:1"));
        tag(&imaged, &staged, &target).await;
        let mut args = vec!["push".to_string()];
        args.extend(signing(key));
        args.push(target.clone());
        imagectl(&imaged, &args, &setup.home).await;
        decide_alike(&imaged, &policy, registries_d, &target, trusted).await;
    }

    // An image already in the registry, signed where it is: unsigned
    // first, refused; then signed, accepted.
    fixtures
        .push_image("signed/app:1", &image_for("sigstore-signed"))
        .await
        .unwrap();
    let target = full("signed/app:1");
    decide_alike(&imaged, &policy, registries_d, &target, false).await;
    let mut args = vec!["sign".to_string()];
    args.extend(signing(&keys[0]));
    args.push(target.clone());
    imagectl(&imaged, &args, &setup.home).await;
    decide_alike(&imaged, &policy, registries_d, &target, true).await;
}

/// skopeo and imaged both decide `trusted` for `target`.
async fn decide_alike(
    imaged: &imaged_e2e::Imaged,
    policy: &std::path::Path,
    registries_d: &std::path::Path,
    target: &str,
    trusted: bool,
) {
    let (oracle, said) = skopeo_accepts(policy, registries_d, target);
    assert_eq!(oracle, trusted, "{target}: skopeo: {said}");
    remove(imaged, target).await;
    let ours = pull(imaged.images(), pull_request(target)).await;
    assert_eq!(ours.is_ok(), trusted, "{target}: imaged: {ours:?}");
}

/// Tags `source` as `target` in imaged.
async fn tag(imaged: &imaged_e2e::Imaged, source: &str, target: &str) {
    imaged
        .images()
        .tag_image(imaged_api::v1::TagImageRequest {
            source: source.into(),
            target: target.into(),
        })
        .await
        .unwrap();
}

/// Runs imagectl against `imaged`, with the test's gpg home.
async fn imagectl(imaged: &imaged_e2e::Imaged, args: &[String], home: &std::path::Path) {
    let out = tokio::process::Command::new(imaged_e2e::bin_dir().join("imagectl"))
        .arg("--host")
        .arg(format!(
            "unix://{}",
            imaged.socket(Service::Gateway).display()
        ))
        .args(args)
        .env("GNUPGHOME", home)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "imagectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
