//! The metadata store: one redb database under `<root>/metadata/`, every
//! change one transaction.

use std::path::Path;

use anyhow::Context;
use imaged_common::Error;
use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

/// Image ID (`sha256:<hex>`) to the image's config bytes, stored exactly as
/// received so the ID stays the digest of what is stored.
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// The image and reference store.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database in `dir`, creating its tables so
    /// that readers never meet a missing table.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("metadata.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open metadata store {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(IMAGES)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// Number of images stored (intermediate images included).
    pub fn image_count(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read().map_err(Error::internal)?;
        let table = txn.open_table(IMAGES).map_err(Error::internal)?;
        table.len().map_err(Error::internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_store_counts_zero_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.image_count().unwrap(), 0);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.image_count().unwrap(), 0);
    }
}
