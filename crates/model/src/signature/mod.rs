//! containers/image's signature vocabulary, shared by the side that
//! verifies (imaged-transfer's policy) and the side that signs
//! (`imagectl push --sign-by`): the identity a reference shows, the
//! policy scopes it falls under, the signed payload
//! (containers-signature(5)) and where signatures are kept
//! (containers-registries.d(5), and sigstore's attachments).

pub mod attachment;
pub mod payload;
pub mod registries_d;

use crate::Reference;

/// The identity a reference shows to a policy: `name@digest` when it
/// has a digest, else `name:tag` (containers/image drops the tag of a
/// reference that has both); `None` for neither.
pub fn identity(reference: &Reference) -> Option<String> {
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => Some(format!("{}@{digest}", reference.name())),
        (None, Some(tag)) => Some(format!("{}:{tag}", reference.name())),
        (None, None) => None,
    }
}

/// The docker transport's scopes of `reference`, most specific first
/// (containers/image's identity and namespaces): `host/repo:tag` (or
/// `@digest`), `host/repo`, each parent namespace, `host[:port]`, then
/// `*.domain` for each parent domain of the host without its port.
pub fn scopes_of(reference: &Reference) -> Vec<String> {
    let mut scopes = Vec::new();
    if let Some(identity) = identity(reference) {
        scopes.push(identity);
    }
    let mut name = reference.name();
    loop {
        scopes.push(name.clone());
        match name.rfind('/') {
            Some(at) => name.truncate(at),
            None => break,
        }
    }
    let mut host = name.split(':').next().unwrap_or_default().to_string();
    while let Some(dot) = host.find('.') {
        host = host[dot + 1..].to_string();
        scopes.push(format!("*.{host}"));
    }
    scopes
}

/// The files of `dir` ending in `.{extension}`, sorted: how containers'
/// configuration directories (registries.d, a policy directory) are read.
pub fn config_files(
    dir: &std::path::Path,
    extension: &str,
) -> Result<Vec<std::path::PathBuf>, String> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    files.sort();
    Ok(files)
}
