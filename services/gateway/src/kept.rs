//! Answers the gateway keeps between changes of the metadata store: each
//! is kept with the store's version it was read at and given again only
//! while imaged-metadata's published version ([`imaged_common::version`],
//! one `pread`) is the same. A change is published before it returns to
//! its caller, so a kept answer is never older than a change someone has
//! seen complete; without a published version nothing is kept.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use imaged_common::version::{self, Version};

/// Kept answers by key.
pub struct Kept<K, V> {
    version: Arc<version::Reader>,
    answers: Mutex<HashMap<K, (Version, V)>>,
    /// The most answers kept; past it all are dropped and kept anew.
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> Kept<K, V> {
    pub fn new(version: Arc<version::Reader>, capacity: usize) -> Self {
        Kept {
            version,
            answers: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The answer kept for `key`, if the store has not changed since.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let now = self.version.current()?;
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let (at, answer) = answers.get(key)?;
        (*at == now).then(|| answer.clone())
    }

    /// Keeps `answer`, read at `at` (the version the answer came with;
    /// none, nothing is kept).
    pub fn keep(&self, key: K, at: Option<impl Into<Version>>, answer: V) {
        let Some(at) = at.map(Into::into) else {
            return;
        };
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= self.capacity {
            answers.clear();
        }
        answers.insert(key, (at, answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_given_only_while_the_version_is_the_one_it_was_read_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.version");
        let reader = Arc::new(version::Reader::new(path.clone()));
        let kept: Kept<&str, u32> = Kept::new(Arc::clone(&reader), 2);
        kept.keep("a", None::<Version>, 1);
        assert_eq!(kept.get(&"a"), None, "no version, nothing kept");

        let publisher = version::Publisher::create(&path).unwrap();
        publisher.publish(1).unwrap();
        let v1 = reader.current();
        kept.keep("a", v1, 1);
        assert_eq!(kept.get(&"a"), Some(1));
        publisher.publish(2).unwrap();
        assert_eq!(kept.get(&"a"), None, "the store changed");
        kept.keep("a", reader.current(), 2);
        kept.keep("b", reader.current(), 3);
        kept.keep("c", reader.current(), 4);
        assert_eq!(kept.get(&"a"), None, "over capacity: dropped");
        assert_eq!(kept.get(&"c"), Some(4));
    }
}
