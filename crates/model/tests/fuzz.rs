//! Properties of the parsers that read user and registry input, checked
//! on generated input: they never panic, and what they accept reads back
//! the same. `make test` runs the default 256 cases each; `make fuzz`
//! runs many more (`PROPTEST_CASES`).

use imaged_model::filters::{Filters, RefPattern};
use imaged_model::reference::ImageRef;
use imaged_model::{Digest, Reference};
use proptest::prelude::*;

/// Strings made of the characters references are made of, plus a few
/// that are not.
fn reference_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9./:@_+-]{0,90}").unwrap()
}

proptest! {
    #[test]
    fn reference_parse_never_panics_and_round_trips(s in reference_like()) {
        if let Ok(reference) = Reference::parse(&s) {
            let again = Reference::parse(&reference.to_string()).unwrap();
            prop_assert_eq!(again.to_string(), reference.to_string());
            let _ = reference.familiar();
        }
        let _ = ImageRef::parse(&s);
    }

    #[test]
    fn reference_parse_never_panics_on_any_text(s in any::<String>()) {
        let _ = Reference::parse(&s);
        let _ = ImageRef::parse(&s);
        let _ = s.parse::<Digest>();
    }

    #[test]
    fn filters_parse_never_panics(items in proptest::collection::vec(any::<String>(), 0..6)) {
        if let Ok(filters) = Filters::parse(&items, &["dangling", "label", "reference", "before", "since", "until"]) {
            let _ = filters.bool("dangling");
            for pattern in filters.get("reference") {
                if let Ok(pattern) = RefPattern::new(pattern) {
                    let _ = pattern.matches(&Reference::parse("busybox:latest").unwrap());
                }
            }
        }
    }
}
