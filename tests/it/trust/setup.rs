//! What the policy tests share: gpg keys in a home of their own,
//! signatures by `skopeo standalone-sign`, skopeo's decision, one small
//! image per case, and the registry, lookaside and imaged they run on.

use std::path::{Path, PathBuf};
use std::process::Command;

use imaged_common::config::Service;
use imaged_e2e::{Imaged, TestRegistry};
use imaged_fixtures::{Compression, ImageBuilder, LayerBuilder, MediaTypes};

/// A signing key in the test's own gpg home.
pub struct Key {
    pub fingerprint: String,
    /// Its public keyring, as `gpg --export` writes it.
    pub public: PathBuf,
}

/// gpg with the test's home.
pub fn gpg(home: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--quiet"])
        .args(args)
        .output()
        .expect("gpg runs (make test installs it)");
    assert!(
        out.status.success(),
        "gpg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn make_key(home: &Path, name: &str) -> Key {
    let params = home.join(format!("{name}.params"));
    std::fs::write(
        &params,
        format!(
            "%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: {name}\nName-Email: {name}@imaged.invalid\nExpire-Date: 0\n%commit\n"
        ),
    )
    .unwrap();
    gpg(home, &["--gen-key", params.to_str().unwrap()]);
    let listed = gpg(
        home,
        &[
            "--with-colons",
            "--list-keys",
            &format!("{name}@imaged.invalid"),
        ],
    );
    let fingerprint = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_string())
        })
        .expect("a fingerprint");
    let public = home.join(format!("{name}.gpg"));
    let exported = gpg(home, &["--export", &fingerprint]);
    std::fs::write(&public, exported.stdout).unwrap();
    Key {
        fingerprint,
        public,
    }
}

/// `skopeo standalone-sign`: a simple-signing signature of `manifest`
/// claiming `identity`, by `key`.
pub fn sign(home: &Path, manifest: &[u8], identity: &str, key: &Key) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("manifest.json");
    std::fs::write(&manifest_path, manifest).unwrap();
    let out_path = dir.path().join("signature");
    let out = skopeo()
        .env("GNUPGHOME", home)
        .args(["standalone-sign", "--output"])
        .arg(&out_path)
        .arg(&manifest_path)
        .args([identity, &key.fingerprint])
        .output()
        .expect("skopeo runs (make test installs it)");
    assert!(
        out.status.success(),
        "skopeo standalone-sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(out_path).unwrap()
}

/// Where `deploy/install-skopeo-sigstore.sh` (run by `make test`) puts
/// Debian trixie's skopeo 1.18: bookworm's 1.9 is built with sigstore
/// disabled, so it cannot judge sigstore signatures. One oracle judges
/// every case.
pub const SKOPEO: &str = "/opt/imaged-test/skopeo-trixie/skopeo";

/// The oracle, as a command.
pub fn skopeo() -> Command {
    assert!(
        Path::new(SKOPEO).exists(),
        "{SKOPEO} is missing: run `make test` (deploy/install-skopeo-sigstore.sh installs it)"
    );
    Command::new(SKOPEO)
}

/// A sigstore key pair made by `imagectl generate-sigstore-key`.
pub struct SigstoreKey {
    pub private: PathBuf,
    pub public: PathBuf,
    pub passphrase_file: PathBuf,
}

pub fn make_sigstore_key(dir: &Path, name: &str) -> SigstoreKey {
    let passphrase_file = dir.join(format!("{name}.passphrase"));
    std::fs::write(&passphrase_file, format!("{name} passphrase\n")).unwrap();
    let prefix = dir.join(name);
    let out = Command::new(imaged_e2e::bin_dir().join("imagectl"))
        .args(["generate-sigstore-key", "--output-prefix"])
        .arg(&prefix)
        .arg("--passphrase-file")
        .arg(&passphrase_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imagectl generate-sigstore-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    SigstoreKey {
        private: prefix.with_extension("private"),
        public: prefix.with_extension("pub"),
        passphrase_file,
    }
}

/// `skopeo copy --sign-by-sigstore-private-key` of `reference` onto
/// itself (digests kept): a sigstore signature by `key`, claiming
/// `reference`, attached in the registry. The key is imagectl's, so this
/// also shows skopeo reads the keys imagectl writes.
pub fn sigstore_sign(work: &Path, registries_d: &Path, reference: &str, key: &SigstoreKey) {
    let open = work.join("open-policy.json");
    std::fs::write(&open, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    let out = skopeo()
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--policy",
        ])
        .arg(&open)
        .arg("--registries.d")
        .arg(registries_d)
        .arg("--sign-by-sigstore-private-key")
        .arg(&key.private)
        .arg("--sign-passphrase-file")
        .arg(&key.passphrase_file)
        .arg(format!("docker://{reference}"))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo copy --sign-by-sigstore-private-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// skopeo's decision: whether it copies `reference` under the files.
pub fn skopeo_accepts(policy: &Path, registries_d: &Path, reference: &str) -> (bool, String) {
    let dest = tempfile::tempdir().unwrap();
    let out = skopeo()
        .args(["copy", "--quiet", "--src-tls-verify=false", "--policy"])
        .arg(policy)
        .arg("--registries.d")
        .arg(registries_d)
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dest.path().join("out").display()))
        .output()
        .expect("skopeo runs");
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        assert!(
            said.contains("Source image rejected"),
            "skopeo failed for another reason than the policy: {said}"
        );
    }
    (out.status.success(), said)
}

/// A distinct small image for each case, so what a refusal leaves is
/// visible.
pub fn image_for(seed: &str) -> imaged_fixtures::Image {
    let layer = LayerBuilder::new()
        .file(seed, format!("{seed}\n").as_bytes())
        .build(Compression::Gzip)
        .unwrap();
    ImageBuilder::new(MediaTypes::Docker)
        .layer(layer)
        .build()
        .unwrap()
}

/// What each test of the policy starts from: a loopback registry, two
/// gpg keys in the test's own home, two sigstore keys, and a registries.d
/// whose lookaside for the registry is the `file://` directory `sigs`,
/// with sigstore attachments read and written.
pub struct Setup {
    pub registry: TestRegistry,
    /// The registry's `host:port`.
    pub host: String,
    pub work: tempfile::TempDir,
    pub home: PathBuf,
    /// The trusted key, then a stranger's.
    pub keys: [Key; 2],
    /// The trusted sigstore key, then a stranger's.
    pub sigstore_keys: [SigstoreKey; 2],
    pub sigs: PathBuf,
    pub registries_d: PathBuf,
}

impl Setup {
    pub async fn new() -> Setup {
        let registry = TestRegistry::start().await.unwrap();
        let host = registry
            .fixtures()
            .reference("x")
            .trim_end_matches("/x")
            .to_string();
        let work = tempfile::tempdir().unwrap();
        let home = work.path().join("gnupg");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let keys = [make_key(&home, "signer"), make_key(&home, "stranger")];
        let sigstore_keys = [
            make_sigstore_key(work.path(), "sigstore-signer"),
            make_sigstore_key(work.path(), "sigstore-stranger"),
        ];
        let sigs = work.path().join("sigs");
        let registries_d = work.path().join("registries.d");
        std::fs::create_dir(&registries_d).unwrap();
        std::fs::write(
            registries_d.join("test.yaml"),
            format!(
                "docker:\n  {host}:\n    lookaside: file://{}\n    use-sigstore-attachments: true\n",
                sigs.display()
            ),
        )
        .unwrap();
        Setup {
            registry,
            host,
            work,
            home,
            keys,
            sigstore_keys,
            sigs,
            registries_d,
        }
    }

    /// `repo` (a path) in the registry.
    pub fn full(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host)
    }

    /// imaged, checking pulls against `policy` (and `namespaces`' files).
    pub async fn imaged(&self, policy: &Path, namespaces: Option<&Path>) -> Imaged {
        let mut builder = Imaged::builder()
            .arg(
                Service::Transfer,
                &format!("--signature-policy={}", policy.display()),
            )
            .arg(
                Service::Transfer,
                &format!("--registries-d={}", self.registries_d.display()),
            );
        if let Some(dir) = namespaces {
            builder = builder.arg(
                Service::Transfer,
                &format!("--signature-policy-dir={}", dir.display()),
            );
        }
        builder.start().await.unwrap()
    }
}
