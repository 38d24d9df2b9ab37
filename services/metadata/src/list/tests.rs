use super::*;
use crate::testing::Fixture;

/// The listed images' seeds (the `seed` label), in the order listed.
fn seeds(f: &Fixture, query: ListQuery) -> Result<Vec<String>, Error> {
    Ok(list(&f.store.read(), &query)?
        .iter()
        .map(|row| row.image.config.labels["seed"].clone())
        .collect())
}

fn filtered(filters: &[&str]) -> ListQuery {
    ListQuery {
        filters: filters.iter().map(|f| f.to_string()).collect(),
        ..ListQuery::default()
    }
}

/// Three tagged images a day apart, and a dangling one.
fn three_days() -> Fixture {
    let f = Fixture::new();
    f.made("old", "2024-01-01T00:00:00Z", None, &["app:1"], &["base"]);
    f.made(
        "mid",
        "2024-01-02T00:00:00Z",
        None,
        &["app:2", "tool:1"],
        &["base", "mid"],
    );
    f.made("new", "2024-01-03T00:00:00Z", None, &["other:1"], &["new"]);
    f.made("none", "2024-01-04T00:00:00Z", None, &[], &["none"]);
    f
}

#[test]
fn lists_newest_first_with_every_reference() {
    let f = three_days();
    assert_eq!(
        seeds(&f, ListQuery::default()).unwrap(),
        ["none", "new", "mid", "old"]
    );
    let rows = list(&f.store.read(), &ListQuery::default()).unwrap();
    let mid = rows.iter().find(|r| r.image.config.labels["seed"] == "mid");
    assert_eq!(mid.unwrap().repo_tags, ["app:2", "tool:1"]);
    assert!(rows.iter().all(|r| r.shared_size == -1));
}

#[test]
fn filters_as_docker_does() {
    let f = three_days();
    assert_eq!(seeds(&f, filtered(&["dangling=true"])).unwrap(), ["none"]);
    assert_eq!(
        seeds(&f, filtered(&["dangling=false"])).unwrap(),
        ["new", "mid", "old"]
    );
    assert_eq!(
        seeds(&f, filtered(&["reference=app"])).unwrap(),
        ["mid", "old"]
    );
    // A reference filter lists only the matching references.
    let rows = list(&f.store.read(), &filtered(&["reference=tool:*"])).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].repo_tags, ["tool:1"]);
    assert_eq!(seeds(&f, filtered(&["label=seed=new"])).unwrap(), ["new"]);
    assert_eq!(seeds(&f, filtered(&["before=app:2"])).unwrap(), ["old"]);
    assert_eq!(
        seeds(&f, filtered(&["since=app:2"])).unwrap(),
        ["none", "new"]
    );
    assert_eq!(
        seeds(&f, filtered(&["until=2024-01-02T12:00:00Z"])).unwrap(),
        ["mid", "old"]
    );
}

#[test]
fn refuses_what_docker_refuses_and_names_it() {
    let f = three_days();
    let err = seeds(&f, filtered(&["colour=red"])).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.to_string().contains("colour"), "{err}");
    let err = seeds(&f, filtered(&["before=missing:1"])).unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = seeds(&f, filtered(&["dangling=maybe"])).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn intermediate_images_show_with_all_only() {
    let f = Fixture::new();
    let parent = f.made("parent", "2024-01-01T00:00:00Z", None, &[], &["a"]);
    f.made(
        "child",
        "2024-01-02T00:00:00Z",
        Some(&parent),
        &["c:1"],
        &["a", "b"],
    );
    assert_eq!(seeds(&f, ListQuery::default()).unwrap(), ["child"]);
    let all = ListQuery {
        all: true,
        ..ListQuery::default()
    };
    assert_eq!(seeds(&f, all).unwrap(), ["child", "parent"]);
    // An intermediate image is not dangling: it has a child.
    assert!(seeds(&f, filtered(&["dangling=true"])).unwrap().is_empty());
}

#[test]
fn shared_size_counts_the_layers_other_images_use() {
    let f = three_days();
    f.container(
        "c1",
        &f.made("used", "2024-01-05T00:00:00Z", None, &["u:1"], &["u"]),
        false,
    );
    let query = ListQuery {
        shared_size: true,
        ..ListQuery::default()
    };
    let rows = list(&f.store.read(), &query).unwrap();
    let of = |seed: &str| {
        rows.iter()
            .find(|r| r.image.config.labels["seed"] == seed)
            .unwrap()
    };
    // old and mid share "base" (10 bytes each layer); new shares nothing.
    assert_eq!(of("old").shared_size, 10);
    assert_eq!(of("mid").shared_size, 10);
    assert_eq!(of("new").shared_size, 0);
    assert_eq!(of("used").containers, 1);
    assert_eq!(of("new").containers, 0);

    let usage = disk_usage(&f.store.read());
    // base, mid, new, none and u, each once.
    assert_eq!(usage.layers_size, 50);
    assert_eq!(usage.images.len(), 5);
}
