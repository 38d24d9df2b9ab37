//! `make bench`: what the signature policy (issue 30) costs a pull. Two
//! imaged run side by side on one registry, one with a policy that
//! requires a signature on every image and one with none; each small
//! image is pulled cold on both, alternately, then pulled again (warm:
//! on the node, the manifest asked again, the decision cached).
//!
//! Half the images are signed with GPG (simple signing, `skopeo
//! standalone-sign`, in a `file://` lookaside), half with a sigstore key
//! (`imagectl sign`, attached in the registry). Goals: the check adds at
//! most 20 ms to a cold pull's p50, of either kind, and nothing
//! measurable to a warm one (its p50 within 10% of the unchecked one's).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use imaged_common::config::Service;
use imaged_e2e::client::{pull, pull_request};
use imaged_e2e::figures::{Figures, Unit};
use imaged_e2e::{Imaged, TestRegistry};

/// Images of each kind of signature.
const IMAGES: usize = 15;

fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> Vec<u8> {
    let mut command = Command::new(program);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The median of `samples`.
fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn timed_pull(imaged: &Imaged, reference: &str) -> Duration {
    let started = Instant::now();
    pull(imaged.images(), pull_request(reference))
        .await
        .unwrap_or_else(|e| panic!("{reference}: {e}"));
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("trust");
    let registry = TestRegistry::start().await.expect("start docker-registry");
    let fixtures = registry.fixtures();
    let host = fixtures.reference("x").trim_end_matches("/x").to_string();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // A gpg key, a sigstore key, and where their signatures go.
    let home = dir.join("gnupg");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg_env = [("GNUPGHOME", home.as_path())];
    let params = dir.join("key.params");
    std::fs::write(
        &params,
        "%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: bench\nName-Email: bench@imaged.invalid\nExpire-Date: 0\n%commit\n",
    )
    .unwrap();
    run(
        "gpg",
        &["--batch", "--quiet", "--gen-key", params.to_str().unwrap()],
        &gpg_env,
    );
    let keyring = dir.join("bench.gpg");
    std::fs::write(
        &keyring,
        run(
            "gpg",
            &["--batch", "--export", "bench@imaged.invalid"],
            &gpg_env,
        ),
    )
    .unwrap();
    let imagectl = imaged_e2e::bin_dir().join("imagectl");
    let imagectl = imagectl.to_str().unwrap();
    let passphrase = dir.join("passphrase");
    std::fs::write(&passphrase, "bench\n").unwrap();
    let prefix = dir.join("cosign");
    run(
        imagectl,
        &[
            "generate-sigstore-key",
            "--output-prefix",
            prefix.to_str().unwrap(),
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ],
        &[],
    );
    let sigs = dir.join("sigs");
    let registries_d = dir.join("registries.d");
    std::fs::create_dir(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("bench.yaml"),
        format!(
            "docker:\n  {host}:\n    lookaside: file://{}\n    use-sigstore-attachments: true\n",
            sigs.display()
        ),
    )
    .unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{host}/gpg":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}],"{host}/sigstore":[{{"type":"sigstoreSigned","keyPath":"{}.pub"}}]}}}}}}"#,
            keyring.display(),
            prefix.display()
        ),
    )
    .unwrap();

    // The images, signed.
    let mut images: Vec<(&str, String)> = Vec::new();
    for i in 0..IMAGES {
        for kind in ["gpg", "sigstore"] {
            let image = imaged_fixtures::generated_image(
                1,
                3,
                1024 * 1024,
                900 + i as u64 * 2 + (kind == "gpg") as u64,
            )
            .expect("an image");
            let repo = format!("{kind}/small{i}:1");
            fixtures.push_image(&repo, &image).await.expect("push");
            let reference = fixtures.reference(&repo);
            if kind == "gpg" {
                let (manifest, _) = registry.manifest(&reference).await;
                let digest = imaged_model::Digest::sha256_of(&manifest);
                let manifest_file = dir.join("manifest.json");
                std::fs::write(&manifest_file, &manifest).unwrap();
                let at = sigs.join(format!("gpg/small{i}@sha256={}", digest.hex()));
                std::fs::create_dir_all(&at).unwrap();
                let out = at.join("signature-1");
                run(
                    "skopeo",
                    &[
                        "standalone-sign",
                        "--output",
                        out.to_str().unwrap(),
                        manifest_file.to_str().unwrap(),
                        &reference,
                        "bench@imaged.invalid",
                    ],
                    &gpg_env,
                );
            } else {
                run(
                    imagectl,
                    &[
                        "sign",
                        "--sign-by-sigstore-private-key",
                        &format!("{}.private", prefix.display()),
                        "--sign-passphrase-file",
                        passphrase.to_str().unwrap(),
                        "--registries-d",
                        registries_d.to_str().unwrap(),
                        &reference,
                    ],
                    &[],
                );
            }
            images.push((kind, reference));
        }
    }

    let checked = Imaged::builder()
        .arg(
            Service::Transfer,
            &format!("--signature-policy={}", policy.display()),
        )
        .arg(
            Service::Transfer,
            &format!("--registries-d={}", registries_d.display()),
        )
        .start()
        .await
        .expect("imaged with a policy");
    let open = Imaged::start().await.expect("imaged without a policy");
    // One pull each first, of an image outside the measure, so neither
    // pays a first connection inside it.
    let warm_up = fixtures.reference("gpg/small0:1");
    for imaged in [&checked, &open] {
        timed_pull(imaged, &warm_up).await;
    }

    let mut cold: Vec<(&str, Duration, Duration)> = Vec::new();
    for (kind, reference) in images.iter().skip(2) {
        // Alternate which goes first, so neither is always second.
        let (a, b) = if cold.len().is_multiple_of(2) {
            let a = timed_pull(&checked, reference).await;
            (a, timed_pull(&open, reference).await)
        } else {
            let b = timed_pull(&open, reference).await;
            (timed_pull(&checked, reference).await, b)
        };
        cold.push((kind, a, b));
    }
    let (mut warm_checked, mut warm_open) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (_, reference) in images.iter().skip(2) {
            warm_checked.push(timed_pull(&checked, reference).await);
            warm_open.push(timed_pull(&open, reference).await);
        }
    }

    println!("\nsignature policy: small pulls (1 layer, 3 MiB), imaged.v1 PullImage, p50");
    for kind in ["gpg", "sigstore"] {
        let mut with: Vec<Duration> = cold.iter().filter(|c| c.0 == kind).map(|c| c.1).collect();
        let mut without: Vec<Duration> = cold.iter().filter(|c| c.0 == kind).map(|c| c.2).collect();
        let (with, without) = (p50(&mut with), p50(&mut without));
        let added = with.as_secs_f64() - without.as_secs_f64();
        println!(
            "cold, {kind:<8}: checked {with:.1?}, unchecked {without:.1?}, added {:.2} ms",
            added * 1e3
        );
        figures.at_most(
            format!("signature check ({kind}) added to a cold small pull, p50"),
            Unit::Seconds,
            added.max(0.0),
            0.020,
        );
    }
    let (warm_checked, warm_open) = (p50(&mut warm_checked), p50(&mut warm_open));
    println!("warm (cached decision): checked {warm_checked:.1?}, unchecked {warm_open:.1?}");
    figures.ratio(
        "warm small pull with a policy (cached decision), p50",
        Unit::Seconds,
        warm_checked.as_secs_f64(),
        "no policy",
        warm_open.as_secs_f64(),
        1.10,
    );
    figures.write();
    drop(checked.stop());
    drop(open.stop());
}
