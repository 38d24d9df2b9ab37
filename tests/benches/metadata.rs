//! `make bench`: imaged-metadata with 10,000 images and 20,000 tags.
//! ListImages (no filter, reference= filter), InspectImage (by tag, by
//! short ID) and TagImage, each through the gateway and direct to
//! imaged-metadata, alternated call by call (`imaged_e2e::latency`), so
//! the gateway hop's cost shows.

use std::time::{Duration, Instant};

use imaged_api::internal::v1::metadata_client::MetadataClient;
use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::{CreateImageRequest, InspectImageRequest, ListImagesRequest, TagImageRequest};
use imaged_common::config::Service;
use imaged_e2e::figures::{Figures, Unit};
use imaged_e2e::latency::{Latency, paired};
use imaged_e2e::{Imaged, usage};

const IMAGES: usize = 10_000;
const TAGS_PER_IMAGE: usize = 2;
const MAX_MESSAGE: usize = 64 << 20;
/// InspectImage calls measured a side, per row.
const INSPECTS: usize = 2000;

fn config(i: usize) -> Vec<u8> {
    format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:{:02}.{:06}Z","config":{{"Env":["I={i}"],"Labels":{{"team":"t{}"}}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#,
        i % 60,
        i,
        i % 10
    )
    .into_bytes()
}

/// One row: the call through the gateway against the same call direct
/// to imaged-metadata.
fn row(name: &str, gateway: &Latency, direct: &Latency) {
    println!(
        "{name:<34} {:>10.2?} {:>10.2?} {:>8.0} | {:>10.2?} {:>10.2?} {:>8.0} | {:>+6.1}%",
        gateway.p50,
        gateway.p99,
        gateway.ops,
        direct.p50,
        direct.p99,
        direct.ops,
        (gateway.p50.as_secs_f64() / direct.p50.as_secs_f64() - 1.0) * 100.0
    );
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("metadata");
    let imaged = Imaged::start().await.expect("start imaged");
    let gateway =
        ImagesClient::new(imaged.channel(Service::Gateway)).max_decoding_message_size(MAX_MESSAGE);
    let direct = MetadataClient::new(imaged.channel(Service::Metadata))
        .max_decoding_message_size(MAX_MESSAGE);

    // Seed: 10,000 images, two tags each, with 16 writers at a time.
    let seeding = Instant::now();
    let mut ids = vec![String::new(); IMAGES];
    for chunk in (0..IMAGES).collect::<Vec<_>>().chunks(16) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let mut c = direct.clone();
            tasks.push(tokio::spawn(async move {
                let id = c
                    .create_image(CreateImageRequest {
                        config: config(i),
                        parent: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .id;
                for t in 0..TAGS_PER_IMAGE {
                    c.tag_image(TagImageRequest {
                        source: id.clone(),
                        target: format!("bench/app{}:v{t}", i % 100) + &format!("-{i}"),
                    })
                    .await
                    .unwrap();
                }
                (i, id)
            }));
        }
        for t in tasks {
            let (i, id) = t.await.unwrap();
            ids[i] = id;
        }
    }
    println!(
        "\nseeded {IMAGES} images and {} tags in {:.1?}",
        IMAGES * TAGS_PER_IMAGE,
        seeding.elapsed()
    );

    let list_all = ListImagesRequest::default();
    let list_ref = ListImagesRequest {
        filters: vec!["reference=bench/app7:*".into()],
        ..Default::default()
    };

    let (g, d) = (gateway.clone(), direct.clone());
    let gw_list_call = |request: &ListImagesRequest, expected: usize| {
        let (mut g, r) = (g.clone(), request.clone());
        async move {
            assert_eq!(
                g.list_images(r).await.unwrap().into_inner().images.len(),
                expected
            )
        }
    };
    // Direct: the call the gateway makes (the encoded answer), decoded
    // here, so the ratio shows only the hop.
    let md_list_call = |request: &ListImagesRequest, expected: usize| {
        let (mut d, r) = (d.clone(), request.clone());
        async move {
            let encoded = d
                .list_images_encoded(r)
                .await
                .unwrap()
                .into_inner()
                .list_images_response;
            let decoded: imaged_api::v1::ListImagesResponse =
                prost::Message::decode(encoded).unwrap();
            assert_eq!(decoded.images.len(), expected)
        }
    };
    let (gw_list, md_list) = paired(
        10,
        100,
        |_| gw_list_call(&list_all, IMAGES),
        |_| md_list_call(&list_all, IMAGES),
    )
    .await;
    // What the client's decoding alone costs: the same answer, held in
    // memory, decoded by prost as the generated client decodes it, with no
    // call. ListImages' median cannot be below this on this machine.
    let answer = d
        .clone()
        .list_images_encoded(list_all.clone())
        .await
        .unwrap()
        .into_inner()
        .list_images_response;
    let mut decodes: Vec<Duration> = (0..100)
        .map(|_| {
            let started = Instant::now();
            let decoded: imaged_api::v1::ListImagesResponse =
                prost::Message::decode(answer.clone()).unwrap();
            assert_eq!(decoded.images.len(), IMAGES);
            started.elapsed()
        })
        .collect();
    decodes.sort_unstable();
    let decode_only = decodes[decodes.len() / 2];
    let (gw_ref, md_ref) = paired(
        20,
        200,
        |_| gw_list_call(&list_ref, IMAGES / 100),
        |_| md_list_call(&list_ref, IMAGES / 100),
    )
    .await;

    let by_tag = |i: usize| InspectImageRequest {
        image: format!("bench/app{}:v0-{i}", i % 100),
        platform: None,
    };
    let ids_ref = &ids;
    let by_short = |i: usize| InspectImageRequest {
        image: ids_ref[i][7..19].to_string(),
        platform: None,
    };
    // InspectImage through the gateway against the same request direct:
    // call `i` asks for image `image_of(i)`, named by `by`.
    let inspect = |image_of: fn(usize) -> usize, by: &dyn Fn(usize) -> InspectImageRequest| {
        let requests: Vec<InspectImageRequest> = (0..INSPECTS).map(|i| by(image_of(i))).collect();
        let (g, d) = (g.clone(), d.clone());
        async move {
            paired(
                20,
                INSPECTS,
                |i| {
                    let (mut g, r) = (g.clone(), requests[i].clone());
                    async move {
                        g.inspect_image(r).await.unwrap();
                    }
                },
                |i| {
                    let (mut d, r) = (d.clone(), requests[i].clone());
                    async move {
                        d.inspect_image(r).await.unwrap();
                    }
                },
            )
            .await
        }
    };
    // The gateway answers InspectImage from its read model, which the
    // first call after a change starts loading (InspectAll, in the
    // background; calls are forwarded to imaged-metadata meanwhile). The
    // seeding made 30,000 changes: one call starts the load and the pause
    // lets it finish, so that the figures below are those of a store at
    // rest, as a node's is between pulls, and not of the load running
    // beside the first thousand calls.
    g.clone().inspect_image(by_tag(0)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (gw_tag, md_tag) = inspect(|i| i * 7 % IMAGES, &by_tag).await;
    // The same few images again and again, as kubelet and scripts ask.
    let (gw_again, md_again) = inspect(|i| i % 10, &by_tag).await;
    let (gw_short, md_short) = inspect(|i| i * 7 % IMAGES, &by_short).await;
    let (gw_tagging, md_tagging) = paired(
        20,
        1000,
        |i| {
            let mut g = g.clone();
            let r = TagImageRequest {
                source: ids_ref[i % IMAGES].clone(),
                target: format!("moved:gw{}", i % 50),
            };
            async move {
                g.tag_image(r).await.unwrap();
            }
        },
        |i| {
            let mut d = d.clone();
            let r = TagImageRequest {
                source: ids_ref[i % IMAGES].clone(),
                target: format!("moved:md{}", i % 50),
            };
            async move {
                d.tag_image(r).await.unwrap();
            }
        },
    )
    .await;

    println!(
        "{:<34} {:>10} {:>10} {:>8} | {:>10} {:>10} {:>8} | {:>7}",
        "call (10k images, 20k tags)",
        "gw p50",
        "gw p99",
        "gw op/s",
        "md p50",
        "md p99",
        "md op/s",
        "gw cost"
    );
    row("ListImages (all 10,000)", &gw_list, &md_list);
    println!(
        "{:<34} {decode_only:>10.2?}",
        "  its decoding alone, no call"
    );
    row("ListImages reference=bench/app7:*", &gw_ref, &md_ref);
    row("InspectImage by tag", &gw_tag, &md_tag);
    row("InspectImage by tag, 10 repeated", &gw_again, &md_again);
    row("InspectImage by short ID", &gw_short, &md_short);
    row("TagImage", &gw_tagging, &md_tagging);
    println!(
        "targets: ListImages over 10,000 images < 10ms median through the gateway; gateway cost <= 25%"
    );
    figures.at_most(
        "ListImages over 10,000 images, through the gateway, median",
        Unit::Seconds,
        gw_list.p50.as_secs_f64(),
        0.010,
    );
    figures.info(
        "ListImages over 10,000 images, the answer decoded from memory, median",
        Unit::Seconds,
        decode_only.as_secs_f64(),
    );
    for (call, gw, md) in [
        ("InspectImage by tag, each image once", &gw_tag, &md_tag),
        (
            "InspectImage by tag, 10 images repeated",
            &gw_again,
            &md_again,
        ),
        (
            "InspectImage by short ID, each image once",
            &gw_short,
            &md_short,
        ),
    ] {
        figures.ratio(
            format!("{call}, gateway median"),
            Unit::Seconds,
            gw.p50.as_secs_f64(),
            "direct",
            md.p50.as_secs_f64(),
            1.25,
        );
    }
    figures.info(
        "peak RSS of the gateway, 10,000 images in its read model",
        Unit::MiB,
        imaged
            .pid(Service::Gateway)
            .map_or(0.0, usage::peak_rss_mib),
    );
    figures.info(
        "peak RSS of metadata, 10,000 images",
        Unit::MiB,
        imaged
            .pid(Service::Metadata)
            .map_or(0.0, usage::peak_rss_mib),
    );
    figures.info(
        "TagImage through the gateway, median",
        Unit::Seconds,
        gw_tagging.p50.as_secs_f64(),
    );
    figures.write();
}
