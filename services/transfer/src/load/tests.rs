//! The load engine against a fake recorder: archives as `docker save`
//! writes them, built by the fixture code, loaded into fresh stores.

use imaged_fixtures::{Compression, ImageBuilder, LayerBuilder, MediaTypes};

use super::*;
use crate::neighbours::fakes::FakeRecorder;
use crate::neighbours::recorder::Recorder;

fn links(count: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "target", &b"x"[..])
        .unwrap();
    for n in 0..count {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, format!("l{n}"), "target")
            .unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn an_archive_is_bounded_in_bytes_and_in_links() {
    let dir = tempfile::tempdir().unwrap();
    let ok = links(10);
    assert_eq!(
        extract(ok.as_slice(), dir.path(), u64::MAX).unwrap().len(),
        10
    );
    let dir = tempfile::tempdir().unwrap();
    let err = extract(ok.as_slice(), dir.path(), 2048).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let many = links(MAX_LINKS + 1);
    let err = extract(many.as_slice(), dir.path(), u64::MAX).unwrap_err();
    assert!(err.to_string().contains("links"), "{err}");
}

struct Rig {
    _dir: tempfile::TempDir,
    loader: Loader,
    recorder: Arc<FakeRecorder>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(FakeRecorder::default());
    let loader = Loader::new(
        ContentStore::open(&dir.path().join("content")).unwrap(),
        Arc::new(LayerStore::open(dir.path()).unwrap()),
        Arc::new(Leases::new()),
        Arc::clone(&recorder) as Arc<dyn Recorder>,
    );
    Rig {
        _dir: dir,
        loader,
        recorder,
    }
}

/// Loads `archive` in chunks of 1000 bytes; answers the result and the
/// events said.
async fn load(
    loader: &Loader,
    archive: &[u8],
    options: LoadOptions,
) -> (Result<(), Error>, Vec<LoadEvent>) {
    let chunks: Vec<Result<Bytes, Error>> = archive
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let (tx, mut rx) = mpsc::channel(8);
    let collect = async {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    let loading = loader.load(options, tokio_stream::iter(chunks), tx);
    tokio::join!(loading, collect)
}

fn layer(name: &str) -> imaged_fixtures::Layer {
    LayerBuilder::new()
        .file(name, name.as_bytes())
        .build(Compression::Gzip)
        .unwrap()
}

fn loading_layers(events: &[LoadEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, LoadEvent::LoadingLayer { .. }))
        .count()
}

#[tokio::test]
async fn two_images_load_with_their_tags_and_a_shared_layer_once() {
    let rig = rig();
    let base = layer("base");
    let one = ImageBuilder::new(MediaTypes::Docker)
        .layer(base.clone())
        .layer(layer("one"))
        .build()
        .unwrap();
    let two = ImageBuilder::new(MediaTypes::Docker)
        .layer(base)
        .build()
        .unwrap();
    let archive =
        imaged_fixtures::archive::with_linked_layers(&[(&one, "app/one:1"), (&two, "app/two:1")]);

    let (result, events) = load(&rig.loader, &archive, LoadOptions::default()).await;
    result.unwrap();
    // Three layers in the archive, two distinct: each loaded once.
    assert_eq!(loading_layers(&events), 2, "{events:?}");
    let loaded: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            LoadEvent::Loaded { tag } => Some(tag.familiar()),
            _ => None,
        })
        .collect();
    assert_eq!(loaded, ["app/one:1", "app/two:1"]);
    let records = rig.recorder.records.lock().unwrap().clone();
    assert_eq!(rig.recorder.actions(), ["load", "load"]);
    assert_eq!(records[0].tags, ["docker.io/app/one:1"]);
    assert_eq!(records[0].layer_sizes.len(), 2);
    assert_eq!(records[1].config, two.config.data);

    // Again, quietly: every layer is stored, so none is loaded.
    let quiet = LoadOptions {
        quiet: true,
        ..Default::default()
    };
    let (result, events) = load(&rig.loader, &archive, quiet).await;
    result.unwrap();
    assert_eq!(loading_layers(&events), 0, "{events:?}");
    assert_eq!(rig.recorder.actions().len(), 4);
}

#[tokio::test]
async fn a_cut_archive_is_refused_and_records_nothing() {
    let rig = rig();
    let image = ImageBuilder::new(MediaTypes::Docker)
        .layer(layer("only"))
        .build()
        .unwrap();
    let archive = imaged_fixtures::archive::with_linked_layers(&[(&image, "cut/image:1")]);
    let cut = &archive[..archive.len() / 2];

    let (result, _) = load(&rig.loader, cut, LoadOptions::default()).await;
    let err = result.unwrap_err();
    assert!(err.is(tonic::Code::InvalidArgument), "{err}");
    assert!(rig.recorder.actions().is_empty());
}

#[tokio::test]
async fn an_image_of_another_platform_is_skipped_when_a_platform_is_asked() {
    let rig = rig();
    let image = ImageBuilder::new(MediaTypes::Docker)
        .layer(layer("only"))
        .build()
        .unwrap();
    let archive = imaged_fixtures::archive::with_linked_layers(&[(&image, "plat/image:1")]);
    let other = LoadOptions {
        quiet: false,
        platform: Some(Platform::new("linux", "s390x", "")),
    };
    let (result, events) = load(&rig.loader, &archive, other).await;
    result.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert!(rig.recorder.actions().is_empty());
}
