//! Signature policy (issue 30) against the oracle nobody here wrote:
//! skopeo reads the same policy.json and registries.d, and for every case
//! of the matrix imaged's decision must be skopeo's, through imaged.v1,
//! CRI and the Docker API. Keys are made with gpg and signatures with
//! `skopeo standalone-sign`, into a `file://` lookaside; the registry is
//! on loopback. A refused image leaves nothing behind.

use std::path::{Path, PathBuf};

use imaged_common::config::Service;
use imaged_e2e::Imaged;
use imaged_e2e::client::{list, pull, pull_request};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, PodSandboxConfig, PodSandboxMetadata, PullImageRequest};

/// One case of the matrix: a repository, its requirement, and how its
/// image is signed.
struct Case {
    repo: &'static str,
    requirement: String,
    /// (identity claimed, key index, tamper) for each signature; the
    /// identity is a repository path under the registry, or a full
    /// reference when it contains a `/` after a host.
    signatures: Vec<Signature>,
}

struct Signature {
    claims: String,
    key: usize,
    tampered: bool,
    /// Sign the manifest of another image instead.
    other_manifest: bool,
    /// A sigstore signature by sigstore key `key`, attached by `skopeo
    /// copy` (claiming the case's own reference), instead of a GPG one.
    sigstore: bool,
}

fn signed(claims: &str, key: usize) -> Signature {
    Signature {
        claims: claims.into(),
        key,
        tampered: false,
        other_manifest: false,
        sigstore: false,
    }
}

fn sigstore_signed(claims: &str, key: usize) -> Signature {
    Signature {
        sigstore: true,
        ..signed(claims, key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaged_decides_as_skopeo_on_every_path() {
    let setup = Setup::new().await;
    let (registry, home, keys, work) = (&setup.registry, &setup.home, &setup.keys, &setup.work);
    let (sigs, registries_d) = (&setup.sigs, &setup.registries_d);
    let fixtures = registry.fixtures();
    let k1 = keys[0].public.display().to_string();
    let k2 = keys[1].public.display().to_string();
    let signed_by = |identity: &str| {
        format!(r#"{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{k1}"{identity}}}"#)
    };
    let with = |identity: &str| format!(r#","signedIdentity":{identity}"#);
    let full = |repo: &str| setup.full(repo);
    let base64 = |path: &Path| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
    };
    let key_data = base64(&keys[0].public);
    let s1 = setup.sigstore_keys[0].public.display().to_string();
    let sigstore_by = format!(r#"{{"type":"sigstoreSigned","keyPath":"{s1}"}}"#);

    let cases = vec![
        Case {
            repo: "trust/unsigned",
            requirement: signed_by(""),
            signatures: vec![],
        },
        Case {
            repo: "trust/signed",
            requirement: signed_by(""),
            signatures: vec![signed("trust/signed:1", 0)],
        },
        Case {
            repo: "trust/stranger",
            requirement: signed_by(""),
            signatures: vec![signed("trust/stranger:1", 1)],
        },
        Case {
            repo: "trust/tampered",
            requirement: signed_by(""),
            signatures: vec![Signature {
                tampered: true,
                ..signed("trust/tampered:1", 0)
            }],
        },
        Case {
            repo: "trust/otherdigest",
            requirement: signed_by(""),
            signatures: vec![Signature {
                other_manifest: true,
                ..signed("trust/otherdigest:1", 0)
            }],
        },
        Case {
            repo: "trust/elsewhere-default",
            requirement: signed_by(""),
            signatures: vec![signed("trust/elsewhere:1", 0)],
        },
        Case {
            repo: "trust/elsewhere-exact",
            requirement: signed_by(&with(r#"{"type":"matchExact"}"#)),
            signatures: vec![signed("trust/elsewhere:1", 0)],
        },
        Case {
            repo: "trust/othertag-exact",
            requirement: signed_by(&with(r#"{"type":"matchExact"}"#)),
            signatures: vec![signed("trust/othertag-exact:2", 0)],
        },
        Case {
            repo: "trust/othertag-repository",
            requirement: signed_by(&with(r#"{"type":"matchRepository"}"#)),
            signatures: vec![signed("trust/othertag-repository:2", 0)],
        },
        Case {
            repo: "trust/elsewhere-repository",
            requirement: signed_by(&with(r#"{"type":"matchRepository"}"#)),
            signatures: vec![signed("trust/elsewhere:1", 0)],
        },
        Case {
            repo: "trust/exactreference",
            requirement: signed_by(&with(&format!(
                r#"{{"type":"exactReference","dockerReference":"{}"}}"#,
                full("trust/elsewhere:1")
            ))),
            signatures: vec![signed("trust/elsewhere:1", 0)],
        },
        Case {
            repo: "trust/exactrepository",
            requirement: signed_by(&with(&format!(
                r#"{{"type":"exactRepository","dockerRepository":"{}"}}"#,
                full("trust/elsewhere")
            ))),
            signatures: vec![signed("trust/elsewhere:7", 0)],
        },
        Case {
            repo: "mirror/app",
            requirement: signed_by(&with(&format!(
                r#"{{"type":"remapIdentity","prefix":"{}","signedPrefix":"{}"}}"#,
                full("mirror"),
                full("vendor")
            ))),
            signatures: vec![signed("vendor/app:1", 0)],
        },
        Case {
            repo: "mirror/other",
            requirement: signed_by(&with(&format!(
                r#"{{"type":"remapIdentity","prefix":"{}","signedPrefix":"{}"}}"#,
                full("mirror"),
                full("vendor")
            ))),
            signatures: vec![signed("vendor/app:1", 0)],
        },
        Case {
            repo: "trust/rejected",
            requirement: r#"{"type":"reject"}"#.into(),
            signatures: vec![],
        },
        Case {
            repo: "trust/open",
            requirement: r#"{"type":"insecureAcceptAnything"}"#.into(),
            signatures: vec![],
        },
        Case {
            repo: "trust/keydata",
            requirement: format!(
                r#"{{"type":"signedBy","keyType":"GPGKeys","keyData":"{key_data}"}}"#
            ),
            signatures: vec![signed("trust/keydata:1", 0)],
        },
        Case {
            repo: "trust/keypaths",
            requirement: format!(
                r#"{{"type":"signedBy","keyType":"GPGKeys","keyPaths":["{k2}","{k1}"]}}"#
            ),
            signatures: vec![
                signed("trust/stranger-signed:1", 1),
                signed("trust/keypaths:1", 0),
            ],
        },
        Case {
            repo: "trust/sigstore-signed",
            requirement: sigstore_by.clone(),
            signatures: vec![sigstore_signed("trust/sigstore-signed:1", 0)],
        },
        Case {
            repo: "trust/sigstore-stranger",
            requirement: sigstore_by.clone(),
            signatures: vec![sigstore_signed("trust/sigstore-stranger:1", 1)],
        },
        Case {
            repo: "trust/sigstore-unsigned",
            requirement: sigstore_by.clone(),
            signatures: vec![],
        },
        Case {
            repo: "trust/sigstore-gpg-only",
            requirement: sigstore_by.clone(),
            signatures: vec![signed("trust/sigstore-gpg-only:1", 0)],
        },
        Case {
            repo: "trust/sigstore-keydata",
            requirement: format!(
                r#"{{"type":"sigstoreSigned","keyData":"{}"}}"#,
                base64(&setup.sigstore_keys[0].public)
            ),
            signatures: vec![sigstore_signed("trust/sigstore-keydata:1", 0)],
        },
        Case {
            repo: "trust/gpg-sigstore-only",
            requirement: signed_by(""),
            signatures: vec![sigstore_signed("trust/gpg-sigstore-only:1", 0)],
        },
        Case {
            repo: "trust/both",
            requirement: format!("{},{sigstore_by}", signed_by("")),
            signatures: vec![
                signed("trust/both:1", 0),
                sigstore_signed("trust/both:1", 0),
            ],
        },
        Case {
            repo: "trust/both-gpg-only",
            requirement: format!("{},{sigstore_by}", signed_by("")),
            signatures: vec![signed("trust/both-gpg-only:1", 0)],
        },
    ];

    // Images, signatures in the file:// lookaside, and the policy.
    let mut scopes = Vec::new();
    let decoy = image_for("decoy");
    fixtures.push_image("trust/decoy:1", &decoy).await.unwrap();
    let (decoy_manifest, _) = registry.manifest(&full("trust/decoy:1")).await;
    let mut images = Vec::new();
    for case in &cases {
        let image = image_for(case.repo);
        fixtures
            .push_image(&format!("{}:1", case.repo), &image)
            .await
            .unwrap();
        let (manifest, _) = registry.manifest(&full(&format!("{}:1", case.repo))).await;
        let digest = imaged_model::Digest::sha256_of(&manifest);
        let dir = sigs.join(format!("{}@sha256={}", case.repo, digest.hex()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut number = 0;
        for signature in &case.signatures {
            if signature.sigstore {
                let reference = full(&format!("{}:1", case.repo));
                assert_eq!(full(&signature.claims), reference, "skopeo signs as copied");
                let key = &setup.sigstore_keys[signature.key];
                sigstore_sign(work.path(), registries_d, &reference, key);
                continue;
            }
            number += 1;
            let signed_manifest = if signature.other_manifest {
                &decoy_manifest
            } else {
                &manifest
            };
            let mut bytes = sign(
                home,
                signed_manifest,
                &full(&signature.claims),
                &keys[signature.key],
            );
            if signature.tampered {
                let at = bytes.len() - 5;
                bytes[at] ^= 1;
            }
            std::fs::write(dir.join(format!("signature-{number}")), bytes).unwrap();
        }
        scopes.push(format!(r#""{}":[{}]"#, full(case.repo), case.requirement));
        images.push(image);
    }
    let policy = work.path().join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{{}}}}}}}"#,
            scopes.join(",")
        ),
    )
    .unwrap();
    // A namespace whose policy accepts anything.
    let namespaces = work.path().join("policies");
    std::fs::create_dir(&namespaces).unwrap();
    std::fs::write(
        namespaces.join("team-open.json"),
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();

    let imaged = setup.imaged(&policy, Some(&namespaces)).await;
    let mut cri = ImageServiceClient::new(imaged.channel(Service::Gateway));
    let docker = imaged.docker_cli();

    let (mut accepted, mut refused) = (0, 0);
    let mut decided = Vec::new();
    for (case, image) in cases.iter().zip(&images) {
        let reference = full(&format!("{}:1", case.repo));
        let (oracle, said) = skopeo_accepts(&policy, registries_d, &reference);
        if oracle {
            accepted += 1
        } else {
            refused += 1
        }
        decided.push((case.repo, oracle));
        let decision = if oracle { "accepts" } else { "refuses" };
        eprintln!("{}: skopeo {decision}", case.repo);

        // imaged.v1
        let grpc = pull(imaged.images(), pull_request(&reference)).await;
        check(
            case.repo,
            "imaged.v1",
            oracle,
            &said,
            grpc.as_ref()
                .err()
                .map(|s| (s.code(), s.message().to_string())),
        );
        if let Err(status) = &grpc {
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{}: {status:?}",
                case.repo
            );
            assert!(
                status.message().contains(&reference),
                "{}: names the image: {}",
                case.repo,
                status.message()
            );
        }
        remove(&imaged, &reference).await;

        // CRI, from a namespace without a policy of its own.
        let answer = cri.pull_image(cri_pull(&reference, "team-default")).await;
        check(
            case.repo,
            "CRI",
            oracle,
            &said,
            answer
                .as_ref()
                .err()
                .map(|s| (s.code(), s.message().to_string())),
        );
        if let Err(status) = &answer {
            assert!(
                status.message().starts_with("SignatureValidationFailed"),
                "{}: kubelet's reason: {}",
                case.repo,
                status.message()
            );
        }
        remove(&imaged, &reference).await;

        // The Docker API, through the docker CLI.
        let out = docker.docker(&["pull", "-q", &reference]).await.unwrap();
        let err = (!out.status.success()).then(|| {
            (
                tonic::Code::Unknown,
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        });
        check(case.repo, "Docker API", oracle, &said, err);
        remove(&imaged, &reference).await;

        if !oracle {
            left_nothing(&imaged, image, &reference).await;
        }
    }
    assert!(
        accepted >= 5 && refused >= 5,
        "the matrix exercises both: {accepted} accepted, {refused} refused"
    );
    // The event log: a pull for each accepted image, nothing at all about
    // a refused one.
    let logged = logged_events(&imaged).await;
    for (repo, oracle) in decided {
        let about: Vec<&String> = logged.iter().filter(|e| e.contains(repo)).collect();
        if oracle {
            assert!(
                about.iter().any(|e| e.starts_with("pull ")),
                "{repo}: {about:?}"
            );
        } else {
            assert!(about.is_empty(), "{repo} was refused, yet: {about:?}");
        }
    }

    // The namespace's own policy, through CRI: accepted there, and the
    // same image, now on the node, refused again for a namespace under
    // the global policy.
    let unsigned = full("trust/unsigned:1");
    let (oracle, _) = skopeo_accepts(&namespaces.join("team-open.json"), registries_d, &unsigned);
    assert!(oracle, "skopeo accepts under the open policy");
    cri.pull_image(cri_pull(&unsigned, "team-open"))
        .await
        .expect("accepted under team-open's policy");
    let again = cri.pull_image(cri_pull(&unsigned, "team-default")).await;
    assert!(
        again.is_err(),
        "an image on the node is checked again under another namespace's policy"
    );
}

fn check(repo: &str, path: &str, oracle: bool, said: &str, err: Option<(tonic::Code, String)>) {
    match (oracle, err) {
        (true, None) | (false, Some(_)) => {}
        (true, Some(err)) => panic!("{repo} via {path}: skopeo accepts, imaged refused: {err:?}"),
        (false, None) => panic!("{repo} via {path}: skopeo refuses ({said}), imaged accepted"),
    }
}

fn cri_pull(reference: &str, namespace: &str) -> PullImageRequest {
    PullImageRequest {
        image: Some(ImageSpec {
            image: reference.into(),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: Some(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "pod".into(),
                uid: "uid".into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            ..Default::default()
        }),
    }
}

/// Removes `reference` if it was pulled, so the next path pulls afresh.
async fn remove(imaged: &Imaged, reference: &str) {
    let _ = imaged
        .images()
        .remove_image(imaged_api::v1::RemoveImageRequest {
            image: reference.into(),
            force: true,
            ..Default::default()
        })
        .await;
}

/// No tag, no config, no layer blob and no layer of a refused image.
async fn left_nothing(imaged: &Imaged, image: &imaged_fixtures::Image, reference: &str) {
    let listed = list(imaged.images()).await;
    assert!(
        !listed.iter().any(|i| i.id == image.id()),
        "{reference}: refused, yet listed"
    );
    let content = imaged.root().join("transfer").join("content");
    for digest in
        std::iter::once(&image.config.digest).chain(image.layers.iter().map(|l| &l.digest))
    {
        let hex = digest.trim_start_matches("sha256:");
        let found = walk(&content)
            .into_iter()
            .any(|p| p.file_name().is_some_and(|n| n == hex));
        assert!(!found, "{reference}: refused, yet blob {digest} is stored");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Every image event logged so far, as `action actor name`.
async fn logged_events(imaged: &Imaged) -> Vec<String> {
    let mut stream =
        imaged_api::v1::events_client::EventsClient::new(imaged.channel(Service::Gateway))
            .subscribe(imaged_api::v1::SubscribeRequest {
                filters: vec!["type=image".into()],
                since: "0".into(),
                until: "0s".into(),
            })
            .await
            .unwrap()
            .into_inner();
    let mut out = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        let actor = event.actor.unwrap_or_default();
        let name = actor.attributes.get("name").cloned().unwrap_or_default();
        out.push(format!("{} {} {name}", event.action, actor.id));
    }
    out
}

mod mirrors;
mod setup;
mod signing;

use setup::{Setup, image_for, sign, sigstore_sign, skopeo_accepts};
