//! imaged.v1.Layers against the real processes: a container layer on a
//! pulled image, mounted here with the mounts imaged answers (overlayfs,
//! as root), changes and sizes seen back, the image held while the
//! container exists, read-only image mounts, scratch layers.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use imaged_api::v1::layers_client::LayersClient;
use imaged_api::v1::*;
use imaged_common::config::Service;
use imaged_e2e::{Imaged, TestRegistry, client};
use tonic::Code;

/// Mounts `mount` at `target` as a runtime would; false when the mount
/// fails.
fn mount(mount: &Mount, target: &Path) -> bool {
    let mut flags = 0;
    let mut data = Vec::new();
    for option in &mount.options {
        match option.as_str() {
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => {}
            other => data.push(other.to_string()),
        }
    }
    let source = CString::new(mount.source.as_bytes()).unwrap();
    let fstype = CString::new(mount.r#type.as_bytes()).unwrap();
    let target = CString::new(target.as_os_str().as_bytes()).unwrap();
    let data = CString::new(data.join(",")).unwrap();
    // SAFETY: every pointer is a valid NUL-terminated string for the call.
    unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        ) == 0
    }
}

fn unmount(target: &Path) {
    let target = CString::new(target.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_layers_on_a_pulled_image() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let app = registry.fixtures().reference("fixtures/app:1.0");
    client::pull(imaged.images(), client::pull_request(&app))
        .await
        .unwrap();
    let mut layers = LayersClient::new(imaged.channel(Service::Gateway));

    // A mount label becomes a mount option: one that would end the option
    // and add its own (`upperdir=` of the host's choosing) is refused, and
    // nothing is made.
    for label in [
        "x\",upperdir=/etc,workdir=/tmp",
        "system_u:object_r:container_file_t:s0:c1,volatile",
    ] {
        let err = layers
            .create_layer(CreateLayerRequest {
                container_id: "injected".into(),
                image: app.clone(),
                mount_label: label.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{label}: {err}");
        let gone = layers
            .get_layer(GetLayerRequest {
                container_id: "injected".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{label}: {gone}");
    }

    let created = layers
        .create_layer(CreateLayerRequest {
            container_id: "c1".into(),
            image: app.clone(),
            mount_label: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.folders.len(),
        4,
        "three image layers and the container's"
    );
    let overlay = &created.mounts[0];
    assert_eq!(overlay.r#type, "overlay");
    assert!(overlay.options.iter().any(|o| o.starts_with("lowerdir=")));

    let got = layers
        .get_layer(GetLayerRequest {
            container_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.mount_id, created.mount_id);
    assert_eq!(got.image_id, catalog.app.id());

    // As a runtime: mount, look, write, unmount.
    let rootfs = tempfile::tempdir().unwrap();
    assert!(
        mount(overlay, rootfs.path()),
        "mounting the container's layer failed: {} (the mounts need root; CI runs as root)",
        std::io::Error::last_os_error()
    );
    {
        let root = rootfs.path();
        assert_eq!(
            std::fs::read(root.join("etc/os-release")).unwrap(),
            b"NAME=imaged-fixture-app\n"
        );
        assert!(!root.join("etc/motd").exists(), "whiteout applied");
        assert!(
            !root.join("var/cache/old").exists(),
            "opaque directory applied"
        );
        assert!(root.join("var/cache/new").exists());
        assert!(root.join("app/run").exists());
        std::fs::write(root.join("new.txt"), b"written by the container").unwrap();
        std::fs::write(root.join("etc/os-release"), b"NAME=changed\n").unwrap();
        std::fs::remove_file(root.join("bin/busybox")).unwrap();
        unmount(root);

        let changes = layers
            .changes(ChangesRequest {
                container_id: "c1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .changes;
        let seen: Vec<(String, i32)> = changes.iter().map(|c| (c.path.clone(), c.kind)).collect();
        for want in [
            ("/new.txt", change::Kind::Add),
            ("/etc/os-release", change::Kind::Modify),
            ("/bin/busybox", change::Kind::Delete),
            ("/etc", change::Kind::Modify),
        ] {
            assert!(
                seen.contains(&(want.0.to_string(), want.1 as i32)),
                "{want:?} missing from {seen:?}"
            );
        }
        let size = layers
            .layer_size(LayerSizeRequest {
                container_id: "c1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(size.rw_size >= 24, "{size:?}");
        assert!(size.virtual_size > size.rw_size, "{size:?}");
    }

    // The image is in use: rmi without force is a conflict.
    let err = imaged
        .images()
        .remove_image(RemoveImageRequest {
            image: app.clone(),
            force: false,
            prune_children: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("container c1"), "{err}");

    // The runtime says the container runs: not even a forced rmi by ID
    // goes (Docker's hard conflict). Stopped, it is a soft one again.
    let rmi_forced = || {
        let mut images = imaged.images();
        let id = catalog.app.id().to_string();
        async move {
            images
                .remove_image(RemoveImageRequest {
                    image: id,
                    force: true,
                    prune_children: None,
                })
                .await
        }
    };
    let state = |running: bool| {
        let mut layers = layers.clone();
        async move {
            layers
                .set_container_state(SetContainerStateRequest {
                    container_id: "c1".into(),
                    running,
                })
                .await
        }
    };
    state(true).await.unwrap();
    let id = catalog.app.id();
    let err = rmi_forced().await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "conflict: unable to delete {} (cannot be forced) - image is being used by running container c1",
            &id.trim_start_matches("sha256:")[..12]
        )
    );
    state(false).await.unwrap();
    let err = imaged
        .images()
        .remove_image(RemoveImageRequest {
            image: id.to_string(),
            force: false,
            prune_children: None,
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("image is being used by stopped container c1"),
        "{err}"
    );
    let unknown = layers
        .set_container_state(SetContainerStateRequest {
            container_id: "nobody".into(),
            running: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Bad requests.
    let again = layers
        .create_layer(CreateLayerRequest {
            container_id: "c1".into(),
            image: app.clone(),
            mount_label: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let bad = layers
        .create_layer(CreateLayerRequest {
            container_id: "../escape".into(),
            image: String::new(),
            mount_label: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let unknown = layers
        .create_layer(CreateLayerRequest {
            container_id: "c9".into(),
            image: "no/such:image".into(),
            mount_label: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // A read-only view of the image, held by a lease.
    let view = layers
        .mount_image(MountImageRequest {
            image: app.clone(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.image_id, catalog.app.id());
    {
        let dir = tempfile::tempdir().unwrap();
        assert!(mount(&view.mounts[0], dir.path()));
        assert!(dir.path().join("app/run").exists());
        assert!(
            std::fs::write(dir.path().join("x"), b"x").is_err(),
            "read-only"
        );
        unmount(dir.path());
    }
    layers
        .release_image(ReleaseImageRequest {
            lease_id: view.lease_id,
        })
        .await
        .unwrap();

    // Release: the layer goes, the image can be removed.
    layers
        .release_layer(ReleaseLayerRequest {
            container_id: "c1".into(),
        })
        .await
        .unwrap();
    assert!(!imaged.root().join("transfer/containers/c1").exists());
    let gone = layers
        .get_layer(GetLayerRequest {
            container_id: "c1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    layers
        .release_layer(ReleaseLayerRequest {
            container_id: "c1".into(),
        })
        .await
        .unwrap();
    imaged
        .images()
        .remove_image(RemoveImageRequest {
            image: app.clone(),
            force: false,
            prune_children: None,
        })
        .await
        .unwrap();

    // Scratch: an empty layer, bind mounted.
    let scratch = layers
        .create_layer(CreateLayerRequest {
            container_id: "c2".into(),
            image: String::new(),
            mount_label: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scratch.mounts[0].r#type, "bind");
    assert_eq!(scratch.folders.len(), 1);
    let changes = layers
        .changes(ChangesRequest {
            container_id: "c2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert!(changes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copying_driver_gives_a_full_copy() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--storage-driver=vfs")
        .start()
        .await
        .unwrap();
    let info = imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.storage_driver, "vfs");
    let app = registry.fixtures().reference("fixtures/app:1.0");
    client::pull(imaged.images(), client::pull_request(&app))
        .await
        .unwrap();
    let mut layers = LayersClient::new(imaged.channel(Service::Gateway));
    let created = layers
        .create_layer(CreateLayerRequest {
            container_id: "v1".into(),
            image: app.clone(),
            mount_label: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let bind = &created.mounts[0];
    assert_eq!(bind.r#type, "bind");
    let copy = Path::new(&bind.source);
    assert_eq!(
        std::fs::read(copy.join("etc/os-release")).unwrap(),
        b"NAME=imaged-fixture-app\n"
    );
    assert!(
        !copy.join("etc/motd").exists(),
        "whiteout applied to the copy"
    );
    assert!(
        !copy.join("var/cache/old").exists(),
        "opaque directory applied"
    );
    assert!(copy.join("bin/ls").exists() && copy.join("app/run").exists());

    std::fs::write(copy.join("added"), b"new").unwrap();
    std::fs::remove_file(copy.join("etc/os-release")).unwrap();
    let changes = layers
        .changes(ChangesRequest {
            container_id: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    let seen: Vec<(String, i32)> = changes.iter().map(|c| (c.path.clone(), c.kind)).collect();
    assert!(
        seen.contains(&("/added".into(), change::Kind::Add as i32)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("/etc/os-release".into(), change::Kind::Delete as i32)),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(p, _)| p == "/app/run"),
        "unchanged files are not changes: {seen:?}"
    );
    layers
        .release_layer(ReleaseLayerRequest {
            container_id: "v1".into(),
        })
        .await
        .unwrap();
}

/// `mknod` of an overlay whiteout at `path` (as a container's delete
/// leaves it in its upper dir).
fn whiteout(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) },
        0,
        "mknod needs root"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_squash_make_new_images() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let app = registry.fixtures().reference("fixtures/app:1.0");
    let base = registry.fixtures().reference("fixtures/base:latest");
    for r in [&app, &base] {
        client::pull(imaged.images(), client::pull_request(r))
            .await
            .unwrap();
    }
    let mut layers = LayersClient::new(imaged.channel(Service::Gateway));
    let mut images = imaged.images();
    let inspect = |image: String| {
        let mut images = imaged.images();
        async move {
            images
                .inspect_image(InspectImageRequest {
                    image,
                    platform: None,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let diff_of = |inspect: &ImageInspect| {
        let layers = &inspect.root_fs.as_ref().unwrap().layers;
        let mut chain: Option<String> = None;
        for diff in layers {
            chain = Some(match &chain {
                None => diff.clone(),
                Some(parent) => {
                    imaged_fixtures::sha256_digest(format!("{parent} {diff}").as_bytes())
                }
            });
        }
        imaged
            .root()
            .join("transfer/layers")
            .join(&chain.unwrap()[7..])
            .join("diff")
    };

    // Commit: a container's writes and a delete become one more layer.
    let created = layers
        .create_layer(CreateLayerRequest {
            container_id: "c3".into(),
            image: app.clone(),
            mount_label: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let upper = Path::new(created.folders.last().unwrap());
    std::fs::write(upper.join("new.txt"), b"committed").unwrap();
    std::fs::create_dir_all(upper.join("bin")).unwrap();
    whiteout(&upper.join("bin/busybox"));
    let committed = images
        .commit_image(CommitImageRequest {
            container_id: "c3".into(),
            reference: "committed/app:v2".into(),
            author: "tester".into(),
            comment: "did things".into(),
            changes: vec![r#"CMD ["/app/run", "--fast"]"#.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let record = inspect("committed/app:v2".into()).await;
    assert_eq!(record.id, committed);
    assert_eq!(record.parent, catalog.app.id());
    assert_eq!(record.author, "tester");
    assert_eq!(record.comment, "did things");
    assert_eq!(
        record.config.as_ref().unwrap().cmd,
        vec!["/app/run", "--fast"]
    );
    assert_eq!(record.root_fs.as_ref().unwrap().layers.len(), 4);
    let top = diff_of(&record);
    assert_eq!(std::fs::read(top.join("new.txt")).unwrap(), b"committed");
    let gone = std::fs::symlink_metadata(top.join("bin/busybox")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &gone.file_type()
    ));
    layers
        .release_layer(ReleaseLayerRequest {
            container_id: "c3".into(),
        })
        .await
        .unwrap();

    // Squash everything: one layer with the merged files, no whiteouts.
    let flat = images
        .squash_image(SquashImageRequest {
            image: app.clone(),
            parent: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let record = inspect(flat.clone()).await;
    assert_eq!(record.root_fs.as_ref().unwrap().layers.len(), 1);
    let dir = diff_of(&record);
    assert_eq!(
        std::fs::read(dir.join("etc/os-release")).unwrap(),
        b"NAME=imaged-fixture-app\n"
    );
    assert!(
        std::fs::symlink_metadata(dir.join("etc/motd")).is_err(),
        "no whiteout left"
    );
    assert!(!dir.join("var/cache/old").exists() && dir.join("var/cache/new").exists());
    assert!(dir.join("app/run").exists() && dir.join("bin/busybox").exists());
    let history = images
        .image_history(ImageHistoryRequest {
            image: flat,
            platform: None,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        history[0].comment.starts_with("create new from sha256:"),
        "{history:?}"
    );

    // Squash onto base: base's layer plus one holding the rest, whiteouts
    // kept so base's motd stays hidden.
    let onto = images
        .squash_image(SquashImageRequest {
            image: app.clone(),
            parent: base.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let record = inspect(onto).await;
    let ids = &record.root_fs.as_ref().unwrap().layers;
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], catalog.base.layers[0].diff_id);
    let dir = diff_of(&record);
    let motd = std::fs::symlink_metadata(dir.join("etc/motd")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &motd.file_type()
    ));

    let zstd = registry.fixtures().reference("fixtures/zstd:latest");
    client::pull(imaged.images(), client::pull_request(&zstd))
        .await
        .unwrap();
    let err = images
        .squash_image(SquashImageRequest {
            image: app.clone(),
            parent: zstd,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("is not a parent of the specified layer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_layers_survive_restarts_and_keep_their_image_layers() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let mut imaged = Imaged::start().await.unwrap();
    let base = registry.fixtures().reference("fixtures/base:latest");
    client::pull(imaged.images(), client::pull_request(&base))
        .await
        .unwrap();
    let mut layers = LayersClient::new(imaged.channel(Service::Gateway));
    let created = layers
        .create_layer(CreateLayerRequest {
            container_id: "keep".into(),
            image: base.clone(),
            mount_label: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let upper = std::path::PathBuf::from(created.folders.last().unwrap());
    std::fs::write(upper.join("state"), b"kept across restarts").unwrap();

    // The image goes (forced), the container stays; then everything
    // restarts and reconciles.
    imaged
        .images()
        .remove_image(RemoveImageRequest {
            image: base.clone(),
            force: true,
            prune_children: None,
        })
        .await
        .unwrap();
    imaged.terminate_all().await.unwrap();
    for service in Service::ALL {
        imaged.start_service(service).await.unwrap();
    }
    let mut layers = LayersClient::new(imaged.channel(Service::Gateway));
    // Give the start-up reconciliation its moment.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let got = layers
        .get_layer(GetLayerRequest {
            container_id: "keep".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.mount_id, created.mount_id);
    let lower = Path::new(&got.folders[0]);
    assert!(
        lower.join("bin/busybox").exists(),
        "the image's layer was kept for the container"
    );
    assert_eq!(
        std::fs::read(Path::new(got.folders.last().unwrap()).join("state")).unwrap(),
        b"kept across restarts"
    );
    layers
        .release_layer(ReleaseLayerRequest {
            container_id: "keep".into(),
        })
        .await
        .unwrap();
}
