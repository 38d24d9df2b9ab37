//! Reading an image's signatures from the lookaside registries.d says
//! they are kept in (`file://` or `http(s)://`), bounded.

use imaged_common::Error;
use tokio::io::AsyncReadExt;

use imaged_model::signature::registries_d::signature_url;
use imaged_model::{Digest, Reference};

/// A signature is refused past this size (containers/image's limit).
pub const MAX_SIGNATURE: u64 = 4 << 20;

/// At most this many signatures are read for one image.
pub const MAX_SIGNATURES: usize = 64;

/// Reads the signatures of `digest` from the lookaside `base`, in order,
/// until one is missing. A lookaside that cannot be reached is
/// `UNAVAILABLE`; one that cannot be used (an unknown scheme, a signature
/// past [`MAX_SIGNATURE`]) is `FAILED_PRECONDITION`.
pub async fn read_signatures(
    http: &reqwest::Client,
    base: &str,
    reference: &Reference,
    digest: &Digest,
) -> Result<Vec<Vec<u8>>, Error> {
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
async fn read_one(http: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, Error> {
    let unreachable =
        |e: &dyn std::fmt::Display| Error::unavailable(format!("reading signature {url}: {e}"));
    let too_large = || {
        Error::failed_precondition(format!(
            "signature {url} is larger than {MAX_SIGNATURE} bytes"
        ))
    };
    let mut bytes = Vec::new();
    if let Some(path) = url.strip_prefix("file://") {
        let file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreachable(&e)),
        };
        file.take(MAX_SIGNATURE + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| unreachable(&e))?;
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let mut response = http
            .get(url)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(unreachable(&format!("status {}", response.status())));
        }
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&e))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > MAX_SIGNATURE {
                return Err(too_large());
            }
        }
    } else {
        return Err(Error::failed_precondition(format!(
            "unsupported lookaside URL {url}: file://, http:// or https:// only"
        )));
    }
    if bytes.len() as u64 > MAX_SIGNATURE {
        return Err(too_large());
    }
    Ok(Some(bytes))
}
