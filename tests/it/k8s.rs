//! The manifests under k8s/ validate offline against the Kubernetes
//! schemas (PyPI's kubernetes-validate, installed by `make test`), and
//! every kustomization names files that are there.

use std::path::{Path, PathBuf};
use std::process::Command;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn manifests_validate_and_kustomizations_resolve() {
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
    let mut files = Vec::new();
    yaml_files(&k8s, &mut files);
    files.sort();
    let (kustomizations, manifests): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .partition(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"));
    assert!(!manifests.is_empty() && !kustomizations.is_empty());

    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate (PyPI) is installed: `make test-deps` installs it");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = String::from_utf8_lossy(&out.stdout)
        .matches(" passed ")
        .count()
        + String::from_utf8_lossy(&out.stderr)
            .matches(" passed ")
            .count();
    assert!(passed >= manifests.len(), "each manifest checked: {out:?}");

    for kustomization in &kustomizations {
        let text = std::fs::read_to_string(kustomization).unwrap();
        let dir = kustomization.parent().unwrap();
        let mut in_resources = false;
        for line in text.lines() {
            if !line.starts_with(' ') && !line.starts_with('-') {
                in_resources = line.starts_with("resources:");
                continue;
            }
            // A patch file is named by `- path: <file>`.
            if let Some(patch) = line.trim().strip_prefix("- path: ") {
                assert!(
                    dir.join(patch).exists(),
                    "{}: patch {patch} is not there",
                    kustomization.display()
                );
            }
            if let Some(resource) = line.trim().strip_prefix("- ").filter(|_| in_resources) {
                assert!(
                    dir.join(resource).exists(),
                    "{}: {resource} is not there",
                    kustomization.display()
                );
            }
        }
    }
}
