//! The CRI v1 ImageService as kubelet sees it, through the upstream
//! `k8s-cri` client (generated from cri-api's own proto, not ours), against
//! the real registry: ImageFsInfo on an empty node, status of a missing
//! image, pull answering the image ID, list and filter, verbose status,
//! removal of present and missing images.

use imaged_common::config::Service;
use imaged_e2e::{Imaged, TestRegistry};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{
    ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_sees_what_it_expects() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let mut cri = ImageServiceClient::new(imaged.channel(Service::Gateway));

    // kubelet's connection check, on an empty node.
    let fs = cri
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.timestamp > 0);
    assert!(
        usage
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .ends_with("transfer")
    );
    let empty_bytes = usage.used_bytes.as_ref().unwrap().value;

    let reference = registry.fixtures().reference("fixtures/app:1.0");
    let status = cri
        .image_status(ImageStatusRequest {
            image: spec(&reference),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.image.is_none(),
        "a missing image has an empty status"
    );
    assert!(
        cri.list_images(ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images
            .is_empty()
    );

    let pulled = cri
        .pull_image(PullImageRequest {
            image: spec(&reference),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.image_ref, catalog.app.id());

    let status = cri
        .image_status(ImageStatusRequest {
            image: spec(&reference),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let image = status.image.unwrap();
    assert_eq!(image.id, catalog.app.id());
    assert!(image.size > 0);
    assert_eq!(image.repo_tags, vec![reference.clone()]);
    assert_eq!(image.repo_digests.len(), 1);
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "/app/run");
    assert!(info["chainID"].as_str().unwrap().starts_with("sha256:"));

    // By ID too, and in the list with and without a filter.
    let by_id = cri
        .image_status(ImageStatusRequest {
            image: spec(&pulled.image_ref),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.image.unwrap().id, catalog.app.id());
    let all = cri
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(all.len(), 1);
    assert!(all[0].size > 0 && !all[0].id.is_empty());
    let filtered = cri
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec("no/such:image"),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(filtered.is_empty());

    let fs = cri
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().unwrap().value > empty_bytes);
    assert!(usage.inodes_used.as_ref().unwrap().value > 0);

    // Removal: present (every tag goes), then missing (still succeeds).
    cri.remove_image(RemoveImageRequest {
        image: spec(&reference),
    })
    .await
    .unwrap();
    let status = cri
        .image_status(ImageStatusRequest {
            image: spec(&pulled.image_ref),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.image.is_none());
    cri.remove_image(RemoveImageRequest {
        image: spec(&reference),
    })
    .await
    .unwrap();

    // An empty image is kubelet's error to see.
    let err = cri
        .image_status(ImageStatusRequest {
            image: spec(""),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // An unparsable one names no image: an empty status, as containerd.
    let status = cri
        .image_status(ImageStatusRequest {
            image: spec("::not a reference::"),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.image.is_none());
}

/// containerd removes an image's names whatever stands on it; imaged's
/// Docker rmi refuses an image with children, its CRI does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_image_with_child_images_removes_its_references() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let mut cri = ImageServiceClient::new(imaged.channel(Service::Gateway));
    let reference = registry.fixtures().reference("fixtures/base:latest");
    let parent = cri
        .pull_image(PullImageRequest {
            image: spec(&reference),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    // A child image made on it (as a build or commit would).
    let mut images = imaged.images();
    let mut config: serde_json::Value = serde_json::from_slice(&catalog.base.config.data).unwrap();
    config["config"]["Env"] = serde_json::json!(["CHILD=1"]);
    let child = images
        .create_image(imaged_api::v1::CreateImageRequest {
            config: serde_json::to_vec(&config).unwrap(),
            parent: parent.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let docker_rmi = images
        .remove_image(imaged_api::v1::RemoveImageRequest {
            image: parent.clone(),
            force: true,
            prune_children: None,
        })
        .await
        .unwrap_err();
    assert_eq!(docker_rmi.code(), tonic::Code::FailedPrecondition);

    cri.remove_image(RemoveImageRequest {
        image: spec(&reference),
    })
    .await
    .unwrap();
    let status = cri
        .image_status(ImageStatusRequest {
            image: spec(&reference),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.image.is_none(), "its name is gone");
    let child_status = cri
        .image_status(ImageStatusRequest {
            image: spec(&child),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(child_status.image.is_some(), "the child stays");
}

/// The gateway keeps CRI answers between changes; none is ever stale
/// after a change has returned to its caller, whichever API made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_list_are_current_right_after_each_change() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let mut cri = ImageServiceClient::new(imaged.channel(Service::Gateway));
    let mut images = imaged.images();
    let reference = registry.fixtures().reference("fixtures/base:latest");
    let other = "docker.io/library/other:1".to_string();

    async fn status(
        cri: &mut ImageServiceClient<imaged_common::peer::PeerChannel>,
        name: &str,
    ) -> Option<k8s_cri::v1::Image> {
        cri.image_status(ImageStatusRequest {
            image: spec(name),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
    }
    async fn listed(cri: &mut ImageServiceClient<imaged_common::peer::PeerChannel>) -> Vec<String> {
        let mut tags: Vec<String> = cri
            .list_images(ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect();
        tags.sort();
        tags
    }

    // The gateway keeps answers only while this says nothing changed.
    assert!(
        imaged.root().join("run/metadata.version").exists(),
        "imaged-metadata publishes its version"
    );

    // Asked before the image exists: the empty answer is not kept past
    // the pull.
    for _ in 0..3 {
        assert!(status(&mut cri, &reference).await.is_none());
        assert!(listed(&mut cri).await.is_empty());
    }
    cri.pull_image(PullImageRequest {
        image: spec(&reference),
        auth: None,
        sandbox_config: None,
    })
    .await
    .unwrap();
    assert!(status(&mut cri, &reference).await.is_some());
    assert_eq!(listed(&mut cri).await, std::slice::from_ref(&reference));

    images
        .tag_image(imaged_api::v1::TagImageRequest {
            source: reference.clone(),
            target: other.clone(),
        })
        .await
        .unwrap();
    let tags = status(&mut cri, &reference).await.unwrap().repo_tags;
    assert!(tags.contains(&other), "{tags:?}");
    assert!(status(&mut cri, &other).await.is_some());
    assert_eq!(listed(&mut cri).await, [reference.clone(), other.clone()]);

    images
        .remove_image(imaged_api::v1::RemoveImageRequest {
            image: other.clone(),
            force: false,
            prune_children: None,
        })
        .await
        .unwrap();
    assert!(status(&mut cri, &other).await.is_none());
    assert_eq!(
        status(&mut cri, &reference).await.unwrap().repo_tags,
        std::slice::from_ref(&reference)
    );
    assert_eq!(listed(&mut cri).await, std::slice::from_ref(&reference));

    cri.remove_image(RemoveImageRequest {
        image: spec(&reference),
    })
    .await
    .unwrap();
    assert!(status(&mut cri, &reference).await.is_none());
    assert!(listed(&mut cri).await.is_empty());

    cri.pull_image(PullImageRequest {
        image: spec(&reference),
        auth: None,
        sandbox_config: None,
    })
    .await
    .unwrap();
    assert!(status(&mut cri, &reference).await.is_some());
    assert_eq!(listed(&mut cri).await, [reference]);
}
