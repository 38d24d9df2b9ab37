//! `make install`: the binaries, the systemd units (which systemd's own
//! checker accepts, pointing at the installed binaries and configuration)
//! and the one configuration file, under a private prefix.

use std::path::Path;
use std::process::Command;

use imaged_e2e::bin_dir;

#[test]
fn make_install_lays_out_binaries_units_and_configuration() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path();
    let status = Command::new("make")
        .current_dir(repo)
        .arg("-s")
        .arg("install-files")
        .arg(format!("TARGET_DIR={}", bin_dir().display()))
        .arg(format!("PREFIX={}", p.display()))
        .arg(format!("SYSCONFDIR={}", p.join("etc").display()))
        .status()
        .expect("make runs");
    assert!(status.success());
    for binary in [
        "imaged-metadata",
        "imaged-transfer",
        "imaged-events",
        "imaged-gateway",
        "imaged-run",
        "imagectl",
    ] {
        let out = Command::new(p.join("bin").join(binary))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{binary}: {out:?}");
    }
    let config = p.join("etc/imaged/imaged.toml");
    assert!(config.is_file());
    // It may hold a NATS URL with credentials: root's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(&config.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let units = p.join("lib/systemd/system");
    let gateway = std::fs::read_to_string(units.join("imaged-gateway.service")).unwrap();
    assert!(
        gateway.contains(&format!(
            "ExecStart={}/bin/imaged-gateway --config {}",
            p.display(),
            config.display()
        )),
        "{gateway}"
    );
    let mut verify = Command::new("systemd-analyze");
    verify.args(["verify", "--man=no"]);
    for unit in [
        "imaged-metadata.service",
        "imaged-transfer.service",
        "imaged-events.service",
        "imaged-gateway.service",
        "imaged.target",
    ] {
        verify.arg(units.join(unit));
    }
    let out = verify
        .output()
        .expect("systemd-analyze (systemd) is installed: `make test-deps` installs it");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An existing configuration is kept.
    std::fs::write(&config, "root = \"/mine\"\n").unwrap();
    let status = Command::new("make")
        .current_dir(repo)
        .args(["-s", "install-files"])
        .arg(format!("TARGET_DIR={}", bin_dir().display()))
        .arg(format!("PREFIX={}", p.display()))
        .arg(format!("SYSCONFDIR={}", p.join("etc").display()))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "root = \"/mine\"\n"
    );
}
