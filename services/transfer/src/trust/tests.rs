//! The policy file's strictness, scope choice, and verification of a
//! signature skopeo 1.9 made (`testdata/`: `skopeo copy --sign-by` of
//! 127.0.0.1:5999/app/signed:1 with an ed25519 key made by gpg 2.2).

use super::identity::SignedIdentity;
use super::keys::GpgKeys;
use super::policy::{Policy, Requirement};
use super::signatures::{Attachment, MemoryAttachments};
use super::*;
use imaged_model::signature::scopes_of;

const SIGNED_DIGEST: &str =
    "sha256:65855d7eaf01d6d664dfafe2cd651fd2cae08a09f7b9e259d960e7b5a4cdd925";

fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/trust/testdata")
        .join(name)
}

fn parse(text: &str) -> Result<Policy, String> {
    Policy::parse(text, "policy.json".into()).map_err(|e| e.to_string())
}

fn r(text: &str) -> Reference {
    Reference::parse(text).unwrap()
}

#[test]
fn a_policy_that_is_not_valid_is_refused_whole_naming_where() {
    let key = testdata("signer.gpg").display().to_string();
    let cases = [
        (
            r#"{"default":[{"type":"reject"}],"extra":1}"#,
            "unknown field",
        ),
        (r#"{"default":[]}"#, "no policy requirements"),
        (r#"{"transports":{}}"#, "missing field `default`"),
        (
            "{\"default\":[{\"type\":\"reject\"}],\n\"transports\":{\"docker\":{\"a.io/x\":[{\"type\":\"reject\"}],\n\"a.io/x\":[{\"type\":\"reject\"}]}}}",
            "duplicate key \"a.io/x\"",
        ),
        (r#"{"default":[{"type":"nope"}]}"#, "unknown variant"),
        (r#"{"default":[{"type":"reject","x":1}]}"#, "unknown field"),
        (
            r#"{"default":[{"type":"signedBy","keyType":"X509","keyPath":"/k"}]}"#,
            "unknown keyType",
        ),
        (
            &format!(
                r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key}","keyData":"AA=="}}]}}"#
            ),
            "exactly one of keyPath, keyPaths and keyData",
        ),
        (
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/nonexistent/key.gpg"}]}"#,
            "cannot read key /nonexistent/key.gpg",
        ),
        (
            r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"bm90IGEga2V5"}]}"#,
            "not a GPG keyring",
        ),
        (
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{"busybox:latest":[{"type":"reject"}]}}}"#,
            "fully expanded form",
        ),
        (
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{"*.":[{"type":"reject"}]}}}"#,
            "*.domain",
        ),
        (
            &format!(
                r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key}","signedIdentity":{{"type":"exactReference","dockerReference":"a.io/x"}}}}]}}"#
            ),
            "needs a tag or a digest",
        ),
    ];
    for (text, words) in cases {
        let err = parse(text).unwrap_err();
        assert!(err.starts_with("policy.json: "), "{err}");
        assert!(err.contains(words), "{text}: {err}");
    }
    // serde_json's position: the line the duplicate is on.
    let err = parse(cases[3].0).unwrap_err();
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn the_most_specific_scope_decides() {
    assert_eq!(
        scopes_of(&r("reg.example.com:5000/ns/app:1")),
        [
            "reg.example.com:5000/ns/app:1",
            "reg.example.com:5000/ns/app",
            "reg.example.com:5000/ns",
            "reg.example.com:5000",
            "*.example.com",
            "*.com",
        ]
    );
    let policy = parse(
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{
            "reg.example.com/ns":[{"type":"insecureAcceptAnything"}],
            "reg.example.com/ns/app:1":[{"type":"reject"}],
            "*.example.com":[{"type":"insecureAcceptAnything"}]}}}"#,
    )
    .unwrap();
    let scope = |text: &str| policy.requirements_for(&r(text)).0.to_string();
    assert_eq!(
        scope("reg.example.com/ns/app:1"),
        "reg.example.com/ns/app:1"
    );
    assert_eq!(scope("reg.example.com/ns/app:2"), "reg.example.com/ns");
    assert_eq!(scope("other.example.com/app:1"), "*.example.com");
    assert_eq!(scope("docker.io/library/busybox:latest"), "default");
    let open = parse(r#"{"default":[{"type":"reject"}],"transports":{"docker":{"":[{"type":"insecureAcceptAnything"}]}}}"#).unwrap();
    let (scope, requirements) = open.requirements_for(&r("busybox"));
    assert_eq!(scope, "");
    assert!(matches!(
        requirements,
        [Requirement::InsecureAcceptAnything]
    ));
}

#[test]
fn a_signature_skopeo_made_is_accepted_by_its_key_only_for_its_manifest_and_identity() {
    let signature = std::fs::read(testdata("signature-1")).unwrap();
    let signer = GpgKeys::parse(&[std::fs::read(testdata("signer.gpg")).unwrap()]).unwrap();
    let stranger = GpgKeys::parse(&[std::fs::read(testdata("stranger.gpg")).unwrap()]).unwrap();
    let image = r("127.0.0.1:5999/app/signed:1");
    let digest: Digest = SIGNED_DIGEST.parse().unwrap();
    let default = SignedIdentity::MatchRepoDigestOrExact;

    signer
        .accepts(&signature, &default, &image, &digest)
        .unwrap();
    let err = stranger
        .accepts(&signature, &default, &image, &digest)
        .unwrap_err();
    assert!(err.contains("not made by a trusted key"), "{err}");

    let other: Digest = format!("sha256:{}", "1".repeat(64)).parse().unwrap();
    let err = signer
        .accepts(&signature, &default, &image, &other)
        .unwrap_err();
    assert!(err.contains("does not match"), "{err}");

    let err = signer
        .accepts(
            &signature,
            &default,
            &r("127.0.0.1:5999/app/signed:2"),
            &digest,
        )
        .unwrap_err();
    assert!(err.contains("is not accepted"), "{err}");
    signer
        .accepts(
            &signature,
            &SignedIdentity::MatchRepository,
            &r("127.0.0.1:5999/app/signed:2"),
            &digest,
        )
        .unwrap();

    // Any byte changed, anywhere, and it is no signature at all.
    for at in [10, signature.len() / 2, signature.len() - 5] {
        let mut tampered = signature.clone();
        tampered[at] ^= 1;
        assert!(
            signer
                .accepts(&tampered, &default, &image, &digest)
                .is_err(),
            "byte {at} flipped"
        );
    }
}

#[tokio::test]
async fn the_lookaside_is_read_until_a_signature_is_missing_and_decisions_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let sigs = dir.path().join("sigs");
    let hex = SIGNED_DIGEST.trim_start_matches("sha256:");
    let at = sigs.join(format!("app/signed@sha256={hex}"));
    std::fs::create_dir_all(&at).unwrap();
    std::fs::copy(testdata("signature-1"), at.join("signature-1")).unwrap();
    std::fs::write(
        at.join("signature-3"),
        b"never read: signature-2 is missing",
    )
    .unwrap();
    let registries = dir.path().join("registries.d");
    std::fs::create_dir(&registries).unwrap();
    std::fs::write(
        registries.join("a.yaml"),
        format!(
            "docker:\n  127.0.0.1:5999:\n    lookaside: file://{}\n",
            sigs.display()
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}]}}"#,
            testdata("signer.gpg").display()
        ),
    )
    .unwrap();
    let trust = Trust::read(Some(&policy), None, Some(&registries)).unwrap();
    let digest: Digest = SIGNED_DIGEST.parse().unwrap();
    let http = reqwest::Client::new();
    // Read in order, up to the first number missing.
    let base = format!("file://{}", sigs.display());
    let read = lookaside::read_signatures(&http, &base, &r("127.0.0.1:5999/app/signed:1"), &digest)
        .await
        .unwrap();
    assert_eq!(read, [std::fs::read(testdata("signature-1")).unwrap()]);
    trust
        .check(
            &http,
            &MemoryAttachments::none(),
            &r("127.0.0.1:5999/app/signed:1"),
            &digest,
            None,
        )
        .await
        .unwrap();
    let err = trust
        .check(
            &http,
            &MemoryAttachments::none(),
            &r("127.0.0.1:5999/app/unsigned:1"),
            &digest,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let refusal = err.cause::<Refusal>().expect("a Refusal");
    assert_eq!(
        refusal.reason,
        "A signature was required, but no signature exists"
    );
    assert!(err.message().starts_with(POLICY_REJECTED), "{err}");
    assert!(
        err.message().contains("127.0.0.1:5999/app/unsigned:1"),
        "{err}"
    );

    // Accepted once: the signature is not read again.
    std::fs::remove_dir_all(&sigs).unwrap();
    trust
        .check(
            &http,
            &MemoryAttachments::none(),
            &r("127.0.0.1:5999/app/signed:1"),
            &digest,
            None,
        )
        .await
        .unwrap();

    // Two registries.d files configuring one scope refuse the directory.
    std::fs::write(
        registries.join("b.yaml"),
        "docker:\n  127.0.0.1:5999:\n    lookaside: file:///elsewhere\n",
    )
    .unwrap();
    let err = Trust::read(Some(&policy), None, Some(&registries))
        .err()
        .unwrap();
    assert!(err.contains("more than one file"), "{err}");
}

/// A sigstore signature is accepted only whole: by the key, of the
/// digest, for the identity, of the signature media type, with its
/// annotation; a registry that cannot be read is no decision.
#[tokio::test]
async fn sigstore_attachments_are_verified() {
    use base64::Engine as _;
    use imaged_model::signature::attachment::{SIGNATURE_ANNOTATION, SIGNATURE_MEDIA_TYPE};
    use imaged_model::signature::payload::{SIGSTORE, build};
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey;

    let b64 = base64::engine::general_purpose::STANDARD;
    let key = |seed: u8| p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
    let public = key(7)
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registries = dir.path().join("registries.d");
    std::fs::create_dir(&registries).unwrap();
    std::fs::write(
        registries.join("a.yaml"),
        "docker:\n  127.0.0.1:5999:\n    lookaside: file:///nonexistent\n    use-sigstore-attachments: true\n",
    )
    .unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"sigstoreSigned","keyData":"{}"}}]}}"#,
            b64.encode(public)
        ),
    )
    .unwrap();
    let trust = Trust::read(Some(&policy), None, Some(&registries)).unwrap();
    let digest: Digest = SIGNED_DIGEST.parse().unwrap();
    let image = r("127.0.0.1:5999/app/signed:1");
    let attachment = |seed: u8, identity: &str, digest: &Digest| {
        let payload = build(SIGSTORE, identity, digest, "test", 1);
        let signature: p256::ecdsa::Signature = key(seed).sign(&payload);
        Attachment {
            media_type: SIGNATURE_MEDIA_TYPE.into(),
            annotations: [(
                SIGNATURE_ANNOTATION.to_string(),
                b64.encode(signature.to_der().as_bytes()),
            )]
            .into(),
            payload,
        }
    };
    let good = attachment(7, "127.0.0.1:5999/app/signed:1", &digest);
    let http = reqwest::Client::new();
    let decide = |found: Result<Vec<Attachment>, tonic::Code>| {
        let (trust, http, image, digest) = (&trust, &http, &image, &digest);
        async move {
            trust
                .check(http, &MemoryAttachments(found), image, digest, None)
                .await
        }
    };
    let refused = |result: Result<(), imaged_common::Error>| {
        let err = result.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        err.cause::<Refusal>().expect("a Refusal").reason.clone()
    };

    let mut tampered = good.clone();
    tampered.payload[10] ^= 1;
    let mut unannotated = good.clone();
    unannotated.annotations.clear();
    let mut attestation = good.clone();
    attestation.media_type = "application/vnd.dsse.envelope.v1+json".into();
    let other_digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    for (found, why) in [
        (vec![], "no signature exists"),
        (
            vec![attachment(8, "127.0.0.1:5999/app/signed:1", &digest)],
            "verification failed",
        ),
        (vec![tampered], "verification failed"),
        (
            vec![unannotated],
            "missing dev.cosignproject.cosign/signature",
        ),
        (vec![attestation], "1 signatures of another kind"),
        (
            vec![attachment(7, "127.0.0.1:5999/app/signed:1", &other_digest)],
            "does not match",
        ),
        (
            vec![attachment(7, "127.0.0.1:5999/app/other:1", &digest)],
            "is not accepted",
        ),
    ] {
        let reason = refused(decide(Ok(found)).await);
        assert!(reason.contains(why), "{why}: {reason}");
    }
    let unreadable = decide(Err(tonic::Code::Unavailable)).await.unwrap_err();
    assert_eq!(unreadable.code(), tonic::Code::Unavailable);
    // One good signature among bad ones is enough.
    let stranger = attachment(8, "127.0.0.1:5999/app/signed:1", &digest);
    decide(Ok(vec![stranger, good])).await.unwrap();
}
