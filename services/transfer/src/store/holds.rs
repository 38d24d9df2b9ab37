//! What each image holds, by image ID: the small blobs its pull or push
//! stored (manifests, config) and the top of the layer chain it stands
//! on. imaged-transfer records it itself, before imaged-metadata records
//! the image, so garbage collection decides what is in use from its own
//! records alone (`crate::store::gc`): metadata only says which images
//! are gone.
//!
//! One file an image, `content/owners/<image ID hex>`, written whole and
//! atomically: a digest a line for the blobs, and `chain <digest>` for the
//! chain.

use std::collections::HashMap;
use std::{fs, io};

use imaged_common::Error;
use imaged_model::Digest;

use super::content::ContentStore;
use super::leases::{ImageLease, Leases};

/// What an engine does before it asks imaged-metadata to record the image
/// `config` describes: leases the image (so no release decided earlier
/// forgets it) and records it as holding `chain`. Keep the lease until
/// metadata has answered.
pub fn hold_for_record<'a>(
    content: &ContentStore,
    leases: &'a Leases,
    config: &[u8],
    chain: Option<&Digest>,
) -> Result<ImageLease<'a>, Error> {
    let image = Digest::sha256_of(config);
    let lease = leases.lease_image(&image);
    content.hold(&image, &[], chain)?;
    Ok(lease)
}

/// How many images own each small blob and stand on each top chain: the
/// records, counted once and then kept current, so that a collection
/// (run at every container, snapshot or mount release) reads no file.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    blobs: HashMap<Digest, usize>,
    chains: HashMap<Digest, usize>,
}

impl Counts {
    fn add(&mut self, held: &Held) {
        for blob in &held.blobs {
            *self.blobs.entry(blob.clone()).or_default() += 1;
        }
        if let Some(chain) = &held.chain {
            *self.chains.entry(chain.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, held: &Held) {
        fn down(counts: &mut HashMap<Digest, usize>, key: &Digest) {
            if let Some(count) = counts.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(key);
                }
            }
        }
        for blob in &held.blobs {
            down(&mut self.blobs, blob);
        }
        if let Some(chain) = &held.chain {
            down(&mut self.chains, chain);
        }
    }
}

/// One image's record.
#[derive(Clone, Debug, Default, PartialEq)]
struct Held {
    blobs: Vec<Digest>,
    chain: Option<Digest>,
}

impl Held {
    fn parse(text: &str) -> Held {
        let mut held = Held::default();
        for line in text.lines() {
            match line.strip_prefix("chain ") {
                Some(chain) => held.chain = chain.parse().ok(),
                None => held.blobs.extend(line.parse().ok()),
            }
        }
        held
    }

    fn text(&self) -> String {
        let mut text: String = self.blobs.iter().map(|d| format!("{d}\n")).collect();
        if let Some(chain) = &self.chain {
            text.push_str(&format!("chain {chain}\n"));
        }
        text
    }
}

impl ContentStore {
    /// Records that `image` needs the small blobs `blobs` (beside what it
    /// needed before) and stands on the layer chain `chain` (`None`: no
    /// layers, or unchanged); written atomically, and only when something
    /// changed.
    pub fn hold(
        &self,
        image: &Digest,
        blobs: &[Digest],
        chain: Option<&Digest>,
    ) -> Result<(), Error> {
        let mut counts = self.owning.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.held_by(image)?;
        let mut held = before.clone();
        let mut new: Vec<Digest> = blobs
            .iter()
            .filter(|d| !held.blobs.contains(d))
            .cloned()
            .collect();
        new.sort_by_key(|d| d.to_string());
        new.dedup();
        let chain_changes = chain.is_some_and(|c| held.chain.as_ref() != Some(c));
        if new.is_empty() && !chain_changes {
            return Ok(()); // a warm pull: nothing new, nothing written
        }
        held.blobs.extend(new.iter().cloned());
        held.blobs.sort_by_key(|d| d.to_string());
        if chain_changes {
            held.chain = chain.cloned();
        }
        crate::durable::replace(&self.owners.join(image.hex()), held.text().as_bytes())?;
        if let Some(counts) = counts.as_mut() {
            counts.remove(&before);
            counts.add(&held);
        }
        Ok(())
    }

    /// The counts, read from every record the first time.
    fn counted<'a>(&self, counts: &'a mut Option<Counts>) -> Result<&'a mut Counts, Error> {
        if counts.is_none() {
            let mut counted = Counts::default();
            for image in self.owners()? {
                counted.add(&self.held_by(&image)?);
            }
            *counts = Some(counted);
        }
        Ok(counts.as_mut().expect("counted just now"))
    }

    /// Whether some image owns the small blob `digest` (a manifest or
    /// config of an image this node holds). The first call reads every
    /// record; later ones are a lookup.
    pub fn is_owned(&self, digest: &Digest) -> Result<bool, Error> {
        let mut counts = self.owning.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.counted(&mut counts)?.blobs.contains_key(digest))
    }

    /// Forgets the gone `images`; answers the blobs no other image needs
    /// any more (for the caller to delete, unless a layer came from one)
    /// and the chains the gone images stood on. The remaining records are
    /// read once, however many images go (a prune of thousands stays one
    /// pass).
    pub fn disown(&self, images: &[Digest]) -> Result<(Vec<Digest>, Vec<Digest>), Error> {
        let mut guard = self.owning.lock().unwrap_or_else(|e| e.into_inner());
        // Counted before any record goes, so each goes from the counts once.
        let counts = self.counted(&mut guard)?;
        let mut freed = std::collections::BTreeSet::new();
        let mut chains = Vec::new();
        for image in images {
            let held = self.held_by(image)?;
            match fs::remove_file(self.owners.join(image.hex())) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
            counts.remove(&held);
            freed.extend(held.blobs);
            chains.extend(held.chain);
        }
        // What another image still owns stays.
        freed.retain(|blob| !counts.blobs.contains_key(blob));
        Ok((freed.into_iter().collect(), chains))
    }

    /// The images that hold anything.
    pub fn owners(&self) -> Result<Vec<Digest>, Error> {
        let mut images = Vec::new();
        for entry in fs::read_dir(&self.owners)? {
            let name = entry?.file_name();
            // Temporary files and anything else that is not a digest.
            if let Ok(image) = Digest::sha256_from_hex(&name.to_string_lossy()) {
                images.push(image);
            }
        }
        Ok(images)
    }

    /// The top chains the images stand on (from the counts: no file read
    /// after the first call).
    pub fn held_chains(&self) -> Result<Vec<Digest>, Error> {
        let mut counts = self.owning.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.counted(&mut counts)?.chains.keys().cloned().collect())
    }

    fn held_by(&self, image: &Digest) -> Result<Held, Error> {
        match fs::read_to_string(self.owners.join(image.hex())) {
            Ok(text) => Ok(Held::parse(&text)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Held::default()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    #[test]
    fn owned_blobs_are_counted_across_hold_and_disown() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let (a, b) = (d("image a"), d("image b"));
        let (shared, only_a) = (d("manifest"), d("config a"));
        store
            .hold(&a, &[shared.clone(), only_a.clone()], None)
            .unwrap();
        // Counted from the files on first use, kept current after.
        assert!(store.is_owned(&shared).unwrap());
        store.hold(&b, std::slice::from_ref(&shared), None).unwrap();
        store.hold(&b, std::slice::from_ref(&shared), None).unwrap(); // again: no double count
        assert_eq!(
            store.disown(std::slice::from_ref(&a)).unwrap().0,
            vec![only_a.clone()]
        );
        assert!(store.is_owned(&shared).unwrap());
        assert!(!store.is_owned(&only_a).unwrap());
        store.disown(std::slice::from_ref(&b)).unwrap();
        assert!(!store.is_owned(&shared).unwrap());
        // A store opened afresh counts the same from the files.
        store.hold(&a, std::slice::from_ref(&only_a), None).unwrap();
        let reopened = ContentStore::open(dir.path()).unwrap();
        assert!(reopened.is_owned(&only_a).unwrap());
        assert!(!reopened.is_owned(&shared).unwrap());
    }

    #[test]
    fn an_images_chain_is_held_until_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let (a, b) = (d("image a"), d("image b"));
        let (chain_a, chain_b) = (d("chain a"), d("chain b"));
        store.hold(&a, &[d("config a")], Some(&chain_a)).unwrap();
        store.hold(&b, &[], Some(&chain_b)).unwrap();
        // A push adds blobs and keeps the chain.
        store.hold(&a, &[d("manifest a")], None).unwrap();
        let mut held = store.held_chains().unwrap();
        held.sort_by_key(|c| c.to_string());
        let mut both = vec![chain_a.clone(), chain_b.clone()];
        both.sort_by_key(|c| c.to_string());
        assert_eq!(held, both);
        let (freed, gone) = store.disown(std::slice::from_ref(&a)).unwrap();
        assert_eq!(freed.len(), 2);
        assert_eq!(gone, std::slice::from_ref(&chain_a));
        assert_eq!(store.held_chains().unwrap(), std::slice::from_ref(&chain_b));

        // Kept in memory after the first read: a chain two images stand on
        // stays held until both go, and a record's new chain replaces its
        // old one; a store opened afresh counts the same from the files.
        let c = d("image c");
        store.hold(&c, &[], Some(&chain_a)).unwrap();
        store.hold(&c, &[], Some(&chain_b)).unwrap();
        assert_eq!(store.held_chains().unwrap(), std::slice::from_ref(&chain_b));
        let reopened = ContentStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.held_chains().unwrap(),
            std::slice::from_ref(&chain_b)
        );
        store.disown(std::slice::from_ref(&b)).unwrap();
        assert_eq!(store.held_chains().unwrap(), [chain_b]);
        store.disown(std::slice::from_ref(&c)).unwrap();
        assert!(store.held_chains().unwrap().is_empty());
    }

    #[test]
    fn records_read_back_as_written() {
        let held = Held {
            blobs: vec![d("m"), d("c")],
            chain: Some(d("chain")),
        };
        assert_eq!(Held::parse(&held.text()), held);
        // A record written before chains were kept reads as blobs only.
        assert_eq!(
            Held::parse(&format!("{}\n", d("m"))),
            Held {
                blobs: vec![d("m")],
                chain: None
            }
        );
    }
}
