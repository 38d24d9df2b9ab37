//! `save` and `load`: image archives streamed to and from the gateway in
//! 1 MiB chunks, never held whole in memory.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::{ExportImagesRequest, ImportImageRequest, LoadImagesRequest};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const CHUNK: usize = 1 << 20;

/// Writes the archive of `names` to `output`, or to standard output when
/// that is not a terminal.
pub async fn save(
    images: &mut ImagesClient<Channel>,
    names: Vec<String>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None if std::io::stdout().is_terminal() => {
            bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect")
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut stream = images
        .export_images(ExportImagesRequest {
            names,
            platform: None,
        })
        .await?
        .into_inner();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?.chunk)?;
    }
    out.flush()?;
    Ok(())
}

/// Sends the archive read from `input` (or standard input) and prints the
/// lines the load answers.
pub async fn load(
    images: &mut ImagesClient<Channel>,
    input: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<()> {
    // As the docker CLI: the layer lines only on a terminal.
    let quiet = quiet || !std::io::stdout().is_terminal();
    let mut reader: Box<dyn Read + Send> = match input {
        Some(path) => Box::new(crate::local::open(path)?),
        None if std::io::stdin().is_terminal() => {
            bail!("requested load from stdin, but stdin is empty")
        }
        None => Box::new(std::io::stdin()),
    };
    // A reading thread feeds a bounded channel: the archive streams.
    let (tx, rx) = tokio::sync::mpsc::channel::<LoadImagesRequest>(4);
    let reading = std::thread::spawn(move || -> std::io::Result<()> {
        let mut first = true;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                let n = reader.read(&mut chunk[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            chunk.truncate(filled);
            if filled == 0 && !first {
                return Ok(());
            }
            let message = LoadImagesRequest {
                chunk,
                quiet: first && quiet,
                platform: None,
            };
            first = false;
            if tx.blocking_send(message).is_err() || filled < CHUNK {
                return Ok(());
            }
        }
    });
    let mut answers = images
        .load_images(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Docker's load answers errors in its stream: they print bare.
    while let Some(line) = answers.next().await {
        let line = line.map_err(|s| crate::progress::in_stream(s, true))?;
        println!("{}", line.message);
    }
    match reading.join() {
        Ok(result) => result.context("reading the archive")?,
        Err(_) => bail!("the archive reader failed"),
    }
    Ok(())
}

/// Sends the root filesystem tar at `file` (`-`: standard input) after
/// `first` (reference, platform, message, changes); answers the image ID.
pub async fn import(
    images: &mut ImagesClient<Channel>,
    file: &str,
    first: ImportImageRequest,
) -> anyhow::Result<String> {
    let mut reader: Box<dyn Read + Send> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(crate::local::open(Path::new(file))?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportImageRequest>(4);
    let reading = std::thread::spawn(move || -> std::io::Result<()> {
        if tx.blocking_send(first).is_err() {
            return Ok(());
        }
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            chunk.truncate(n);
            let message = ImportImageRequest {
                chunk,
                ..Default::default()
            };
            if tx.blocking_send(message).is_err() {
                return Ok(());
            }
        }
    });
    let id = images
        .import_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner()
        .id;
    match reading.join() {
        Ok(result) => result.context("reading the tar")?,
        Err(_) => bail!("the tar reader failed"),
    }
    Ok(id)
}
