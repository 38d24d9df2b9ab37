//! Which events a subscriber asked for: Docker's event filters and the
//! since/until window.

use chrono::{DateTime, Utc};
use imaged_api::v1::{Event, SubscribeRequest};
use imaged_common::Error;
use imaged_model::Reference;
use imaged_model::filters::Filters;
use imaged_model::timestamp::{self, UnixNanos};

/// A parsed subscription. The filters are sorted by key here, once, so
/// that testing an event, which every live event costs every subscriber,
/// looks nothing up.
#[derive(Debug)]
pub struct Subscription {
    /// `type=`: any of these (all when empty).
    types: Vec<String>,
    /// `scope=`: any of these.
    scopes: Vec<String>,
    /// `event=` and `action=` together: any of these.
    actions: Vec<String>,
    /// `image=`: an ID or reference, with or without its tag.
    images: Vec<String>,
    /// `label=`: `key` or `key=value`, all of these.
    labels: Vec<String>,
    /// Replay from this time on (nanoseconds since the epoch).
    pub since: Option<UnixNanos>,
    /// End at this time.
    pub until: Option<UnixNanos>,
}

impl Subscription {
    /// Parses a request, with Docker's messages for bad input.
    pub fn parse(request: &SubscribeRequest, now: DateTime<Utc>) -> Result<Self, Error> {
        // Keys other than type, scope, event, action, image and label are
        // ignored, as Docker's events endpoint ignores them.
        let filters = Filters::parse_any(&request.filters)?;
        let time = |value: &str| -> Result<Option<UnixNanos>, Error> {
            if value.is_empty() {
                Ok(None)
            } else {
                Ok(Some(timestamp::parse(value, now)?))
            }
        };
        let since = time(&request.since)?;
        let until = time(&request.until)?;
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(Error::invalid_argument(format!(
                "`since` time ({}) cannot be after `until` ({})",
                request.since, request.until
            )));
        }
        let values = |key: &str| filters.get(key).to_vec();
        Ok(Subscription {
            types: values("type"),
            scopes: values("scope"),
            actions: [values("event"), values("action")].concat(),
            images: values("image"),
            labels: values("label"),
            since,
            until,
        })
    }

    /// Whether the log should be replayed before live events.
    pub fn replays(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }

    /// Whether `event` falls in the since/until window.
    pub fn in_window(&self, event: &Event) -> bool {
        let t = event.time_nano as UnixNanos;
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// Whether `event` passes every filter key (values of one key are
    /// alternatives, except `label`, whose values must all match).
    pub fn matches(&self, event: &Event) -> bool {
        let any =
            |wanted: &[String], value: &str| wanted.is_empty() || wanted.iter().any(|w| w == value);
        if !any(&self.types, &event.r#type)
            || !any(&self.scopes, &event.scope)
            || !any(&self.actions, &event.action)
        {
            return false;
        }
        let empty = Default::default();
        let (id, attributes) = match &event.actor {
            Some(actor) => (actor.id.as_str(), &actor.attributes),
            None => ("", &empty),
        };
        if !self.images.is_empty() {
            let name = attributes.get("name").map(String::as_str).unwrap_or("");
            // The names without their tags only when needed: parsing a
            // reference costs more than the rest of the test.
            let found = self.images.iter().any(|w| w == id || w == name) || {
                let untagged = [strip_tag(id), strip_tag(name)];
                self.images.iter().any(|w| untagged.contains(w))
            };
            if !found {
                return false;
            }
        }
        self.labels.iter().all(|label| match label.split_once('=') {
            Some((k, v)) => attributes.get(k).is_some_and(|have| have == v),
            None => attributes.contains_key(label.as_str()),
        })
    }
}

/// The familiar repository name of a reference (`busybox` for
/// `busybox:latest`), or the input when it is not a reference.
fn strip_tag(image: &str) -> String {
    match Reference::parse(image) {
        Ok(reference) => reference.familiar_name(),
        Err(_) => image.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imaged_api::v1::Actor;

    fn request(filters: &[&str], since: &str, until: &str) -> SubscribeRequest {
        SubscribeRequest {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            since: since.into(),
            until: until.into(),
        }
    }

    fn event(action: &str, id: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            sequence: 1,
            r#type: "image".into(),
            action: action.into(),
            actor: Some(Actor {
                id: id.into(),
                attributes: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            scope: "local".into(),
            time_nano: 1_700_000_000_000_000_000,
            time: None,
        }
    }

    #[test]
    fn filters_by_type_action_image_and_label() {
        let now = Utc::now();
        let tag = event(
            "tag",
            "sha256:abc",
            &[("name", "busybox:latest"), ("tier", "web")],
        );
        let sub = |f: &[&str]| Subscription::parse(&request(f, "", ""), now).unwrap();
        assert!(sub(&[]).matches(&tag));
        assert!(sub(&["type=image", "event=tag"]).matches(&tag));
        assert!(sub(&["event=untag", "action=tag"]).matches(&tag));
        assert!(!sub(&["event=delete"]).matches(&tag));
        assert!(!sub(&["type=container"]).matches(&tag));
        assert!(sub(&["image=busybox"]).matches(&tag));
        assert!(sub(&["image=busybox:latest"]).matches(&tag));
        assert!(sub(&["image=sha256:abc"]).matches(&tag));
        assert!(!sub(&["image=alpine"]).matches(&tag));
        assert!(sub(&["label=tier"]).matches(&tag));
        assert!(sub(&["label=tier=web"]).matches(&tag));
        assert!(!sub(&["label=tier=web", "label=owner"]).matches(&tag));
    }

    #[test]
    fn windows_and_bad_input() {
        let now = Utc::now();
        let e = event("tag", "x", &[]);
        let sub = Subscription::parse(&request(&[], "1699999999", "1700000001"), now).unwrap();
        assert!(sub.replays() && sub.in_window(&e));
        let later = Subscription::parse(&request(&[], "1700000001", ""), now).unwrap();
        assert!(!later.in_window(&e));

        let err = |f: &[&str], s: &str, u: &str| {
            Subscription::parse(&request(f, s, u), now)
                .unwrap_err()
                .to_string()
        };
        // An unknown key filters nothing, as in Docker.
        let any = Subscription::parse(&request(&["colour=red"], "", ""), now).unwrap();
        assert!(any.matches(&e));
        assert_eq!(
            err(&[], "soon", ""),
            "failed to parse value as time or duration: \"soon\""
        );
        assert_eq!(
            err(&[], "1700000002", "1700000001"),
            "`since` time (1700000002) cannot be after `until` (1700000001)"
        );
    }
}
