use super::conflict::short;
use super::*;
use imaged_model::digest::chain_ids;

fn refs(list: &[&str]) -> Vec<Reference> {
    list.iter().map(|r| Reference::parse(r).unwrap()).collect()
}

#[test]
fn single_reference_follows_docker() {
    let d = format!("@sha256:{}", "a".repeat(64));
    assert!(!single_reference(&[]));
    assert!(single_reference(&refs(&["a:1"])));
    assert!(single_reference(&refs(&["a:1", &format!("a{d}")])));
    assert!(!single_reference(&refs(&["a:1", "a:2"])));
    assert!(!single_reference(&refs(&["a:1", &format!("b{d}")])));
    assert!(!single_reference(&refs(&["a:1", "b:1"])));
    assert!(single_reference(&refs(&[&format!("a{d}")])));
}

#[test]
fn short_ids() {
    assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    assert_eq!(short("c0ffee"), "c0ffee");
}

use crate::testing::Fixture;

/// The removal operations, as the service runs them.
trait Removals {
    fn rmi(&self, input: &str, force: bool) -> Result<Vec<String>, Error>;
    fn prune(&self, filters: &[&str]) -> Vec<String>;
}

impl Removals for Fixture {
    fn rmi(&self, input: &str, force: bool) -> Result<Vec<String>, Error> {
        let mut events = Vec::new();
        let items = self
            .store
            .update(|tx| remove(tx, input, force, true, &mut events))?;
        Ok(items.into_iter().map(describe).collect())
    }

    fn prune(&self, filters: &[&str]) -> Vec<String> {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let mut events = Vec::new();
        let (items, _) = self
            .store
            .update(|tx| prune(tx, &filters, &mut events))
            .unwrap();
        items.into_iter().map(describe).collect()
    }
}

fn describe(item: Line) -> String {
    match item {
        Line::Untagged(r) => format!("untagged {r}"),
        Line::Deleted(id) => format!("deleted {}", short(&id)),
    }
}

#[test]
fn deleting_names_the_layers_no_image_holds_any_more_top_first() {
    let f = Fixture::new();
    let shared = f.layered("a", None, &["a:1"], &["base", "a-top"]);
    let other = f.layered("b", None, &["b:1"], &["base", "b-mid", "b-top"]);
    let chains = |layers: &[&str]| -> Vec<String> {
        let diff_ids: Vec<imaged_model::Digest> = layers
            .iter()
            .map(|l| imaged_model::Digest::sha256_of(l.as_bytes()))
            .collect();
        chain_ids(&diff_ids)
            .iter()
            .map(|c| format!("deleted {}", short(&c.to_string())))
            .collect()
    };
    let b = chains(&["base", "b-mid", "b-top"]);
    // base is still held by a:1.
    assert_eq!(
        f.rmi("b:1", false).unwrap(),
        [
            "untagged b:1".to_string(),
            format!("deleted {}", short(&other)),
            b[2].clone(),
            b[1].clone(),
        ]
    );
    let a = chains(&["base", "a-top"]);
    let mut events = Vec::new();
    let (items, reclaimed) = f
        .store
        .update(|tx| prune(tx, &["dangling=false".to_string()], &mut events))
        .unwrap();
    let lines: Vec<String> = items.into_iter().map(describe).collect();
    assert_eq!(
        lines,
        [
            "untagged a:1".to_string(),
            format!("deleted {}", short(&shared)),
            a[1].clone(),
            a[0].clone(),
        ]
    );
    assert_eq!(reclaimed, 20, "the two layers a:1 held alone");
}

#[test]
fn rmi_by_tag_untags_and_deletes_only_with_the_last_reference() {
    let f = Fixture::new();
    let id = f.image("a", None, &["app:1", "app:2"]);
    assert_eq!(f.rmi("app:1", false).unwrap(), ["untagged app:1"]);
    assert!(f.has(&id));
    let lines = f.rmi("app:2", false).unwrap();
    assert_eq!(
        lines,
        [
            "untagged app:2".to_string(),
            format!("deleted {}", short(&id))
        ]
    );
    assert!(!f.has(&id));
    assert!(
        f.rmi("app:2", false)
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::NotFound))
    );
}

#[test]
fn rmi_by_id_of_an_image_in_several_repositories_must_be_forced() {
    let f = Fixture::new();
    let id = f.image("a", None, &["one:1", "two:1"]);
    let err = f.rmi(&id, false).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("(must be forced) - image is referenced in multiple repositories"),
        "{err}"
    );
    assert!(f.has(&id), "a refused rmi changes nothing");
    let lines = f.rmi(&id, true).unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(!f.has(&id));
}

#[test]
fn hard_conflicts_cannot_be_forced() {
    let f = Fixture::new();
    let parent = f.image("parent", None, &["base:1"]);
    let child = f.image("child", Some(&parent), &["app:1"]);
    let err = f.rmi(&parent, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("(cannot be forced) - image has dependent child images"),
        "{err}"
    );
    // The conflict is the error's typed cause; its code is the kind's.
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        matches!(
            err.cause::<super::DeleteConflict>(),
            Some(super::DeleteConflict::Image {
                conflict: super::Conflict::Child,
                ..
            })
        ),
        "{err:?}"
    );
    f.container("c0ffee0123456789", &child, true);
    let err = f.rmi(&child, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("(cannot be forced) - image is being used by running container c0ffee012345"),
        "{err}"
    );
    assert!(f.has(&parent) && f.has(&child));
}

#[test]
fn a_stopped_container_holds_a_reference_unless_forced() {
    let f = Fixture::new();
    let id = f.image("a", None, &["app:1"]);
    f.container("feedface00000000", &id, false);
    let err = f.rmi("app:1", false).unwrap_err();
    assert!(
        err.to_string().starts_with("conflict: unable to remove repository reference \"app:1\" (must force) - container feedface0000 is using its referenced image"),
        "{err}"
    );
    // Forced: a stopped container is a soft conflict, so the image goes
    // too (Docker's imageDeleteHelper; the container keeps its layers).
    let lines = f.rmi("app:1", true).unwrap();
    assert_eq!(
        lines,
        [
            "untagged app:1".to_string(),
            format!("deleted {}", short(&id))
        ]
    );
    assert!(!f.has(&id));
}

#[test]
fn prune_takes_dangling_heads_by_default_and_unused_ones_when_asked() {
    let f = Fixture::new();
    let tagged = f.image("tagged", None, &["app:1"]);
    let dangling = f.image("dangling", None, &[]);
    let used = f.image("used", None, &["used:1"]);
    f.container("0123456789abcdef", &used, false);
    let parent = f.image("parent", None, &[]);
    f.image("child", Some(&parent), &["child:1"]);

    assert_eq!(f.prune(&[]), [format!("deleted {}", short(&dangling))]);
    assert!(
        f.has(&tagged) && f.has(&parent),
        "tagged and intermediate images stay"
    );

    let lines = f.prune(&["dangling=false"]);
    assert!(lines.contains(&"untagged app:1".to_string()), "{lines:?}");
    assert!(!f.has(&tagged));
    assert!(f.has(&used), "an image a container uses is never pruned");
}
