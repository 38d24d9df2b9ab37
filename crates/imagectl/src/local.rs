//! What the docker CLI checks itself before it asks the daemon, in its
//! words: these errors print bare, without "Error response from daemon:".

use std::path::Path;

use imaged_model::{ImageRef, Reference};

/// A reference as `docker pull`, `push` and `import` parse it
/// (`ParseNormalizedNamed`).
pub fn named(text: &str) -> anyhow::Result<Reference> {
    Ok(Reference::parse(text)?)
}

/// `docker tag`'s checks (the client library's): the source is any
/// reference or ID, the target a name that is not a digest.
pub fn tag(source: &str, target: &str) -> anyhow::Result<()> {
    ImageRef::parse(source)?;
    if named(target)?.digest().is_some() {
        anyhow::bail!("refusing to create a tag with a digest reference");
    }
    Ok(())
}

/// Whether `docker pull` of `reference` says "Using default tag: latest"
/// first: it names neither a tag nor a digest.
pub fn default_tag(reference: &Reference) -> bool {
    reference.tag().is_none() && reference.digest().is_none()
}

/// Opens a file the user named, failing as Go's `os.Open` words it
/// (`open /x: no such file or directory`).
pub fn open(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(path)
        .map_err(|err| anyhow::anyhow!("open {}: {}", path.display(), go_text(&err)))
}

/// An OS error as Go prints it: the C library's text, lower case, without
/// Rust's "(os error N)".
fn go_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_docker_cli_prints_them() {
        let err = open(Path::new("/nonexistent/x")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "open /nonexistent/x: no such file or directory"
        );
        let err = tag(
            "busybox",
            "x@sha256:0123456789012345678901234567890123456789012345678901234567890123",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to create a tag with a digest reference"
        );
        assert_eq!(
            named("a@sha256:1234").unwrap_err().to_string(),
            "invalid reference format"
        );
        assert!(default_tag(&named("busybox").unwrap()));
        assert!(!default_tag(&named("busybox:1").unwrap()));
    }
}
