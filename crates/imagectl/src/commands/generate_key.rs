//! `imagectl generate-sigstore-key`: skopeo's command of that name (1.10
//! and later), so a team can make the key it signs with (`push
//! --sign-by-sigstore-private-key`) and the public key its policy names
//! (`sigstoreSigned`'s `keyPath`) without another tool.

use anyhow::{Context, bail};

use crate::cli::GenerateKeyArgs;
use crate::sign::key;

/// Writes `PREFIX.private` and `PREFIX.pub`; refuses to overwrite either.
pub fn run(args: &GenerateKeyArgs) -> anyhow::Result<()> {
    let prefix = std::path::absolute(&args.output_prefix)?
        .display()
        .to_string();
    let (private_path, public_path) = (format!("{prefix}.private"), format!("{prefix}.pub"));
    for path in [&private_path, &public_path] {
        if std::path::Path::new(path).exists() {
            bail!("{path} exists already");
        }
    }
    let passphrase = key::passphrase(
        args.passphrase_file.as_deref(),
        "Enter a passphrase for the new key: ",
    )?;
    let (private, public) = key::generate(&passphrase)?;
    imaged_client::durable::replace(std::path::Path::new(&private_path), private.as_bytes())
        .with_context(|| format!("writing {private_path}"))?;
    std::fs::set_permissions(
        &private_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    imaged_client::durable::replace(std::path::Path::new(&public_path), public.as_bytes())
        .with_context(|| format!("writing {public_path}"))?;
    std::fs::set_permissions(
        &public_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    println!("Key written to {private_path} and {public_path}");
    Ok(())
}
