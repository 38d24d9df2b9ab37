//! Reading an image's signatures from the lookaside registries.d says
//! they are kept in (`file://` or `http(s)://`), bounded.

use std::path::Path;

use imaged_model::signature::registries_d::signature_url;
use imaged_model::{Digest, Reference};

/// A signature is refused past this size (containers/image's limit).
pub const MAX_SIGNATURE: u64 = 4 << 20;

/// At most this many signatures are read for one image.
pub const MAX_SIGNATURES: usize = 64;

/// Reads the signatures of `digest` from the lookaside `base`, in order,
/// until one is missing.
pub async fn read_signatures(
    http: &reqwest::Client,
    base: &str,
    reference: &Reference,
    digest: &Digest,
) -> Result<Vec<Vec<u8>>, String> {
    let mut signatures = Vec::new();
    if base.is_empty() {
        return Ok(signatures);
    }
    for index in 1..=MAX_SIGNATURES {
        let url = signature_url(base, reference, digest, index);
        match read_one(http, &url).await? {
            Some(bytes) => signatures.push(bytes),
            None => break,
        }
    }
    Ok(signatures)
}

/// One signature; `None` when there is none at `url`.
async fn read_one(http: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = Path::new(path);
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading signature {url}: {e}")),
        };
        let mut bytes = Vec::new();
        use std::io::Read;
        file.take(MAX_SIGNATURE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading signature {url}: {e}"))?;
        if bytes.len() as u64 > MAX_SIGNATURE {
            return Err(format!(
                "signature {url} is larger than {MAX_SIGNATURE} bytes"
            ));
        }
        return Ok(Some(bytes));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("unsupported lookaside URL {url}"));
    }
    let response = http
        .get(url)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("reading signature {url}: {e}"))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(format!(
            "reading signature {url}: status {}",
            response.status()
        ));
    }
    let mut bytes = Vec::new();
    let mut response = response;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading signature {url}: {e}"))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > MAX_SIGNATURE {
            return Err(format!(
                "signature {url} is larger than {MAX_SIGNATURE} bytes"
            ));
        }
    }
    Ok(Some(bytes))
}
