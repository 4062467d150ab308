//! One analysis per executable: a hundred processes of one binary cost one
//! parse. Keyed by the file's identity (device, inode, size, mtime), then
//! by build ID, so the same binary under two paths or in two containers is
//! analysed once too.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex},
};

use super::{GoBinError, GoBinary};

/// The cheap identity of a file, from `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
}

/// Analysed binaries, and the reasons others were refused.
#[derive(Default)]
pub struct BinaryCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_file: HashMap<FileKey, Result<Arc<GoBinary>, (&'static str, String)>>,
    by_build_id: HashMap<String, Arc<GoBinary>>,
}

impl BinaryCache {
    /// The analysis of the executable at `path` (often `/proc/PID/exe`).
    /// A refusal is remembered as its message, so an unwatchable binary is
    /// not parsed again either.
    pub fn get(&self, path: &Path) -> anyhow::Result<Arc<GoBinary>> {
        let meta = std::fs::metadata(path).map_err(|source| GoBinError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
        };
        if let Some(hit) = self.lock().by_file.get(&key) {
            return hit.clone().map_err(|(reason, message)| {
                anyhow::Error::new(GoBinError::Refused { reason, message })
            });
        }
        // Parse outside the lock: other lookups need not wait for it.
        let result = GoBinary::open(path).map(|bin| {
            let mut inner = self.lock();
            match bin.build_id.clone() {
                Some(id) => inner
                    .by_build_id
                    .entry(id)
                    .or_insert_with(|| Arc::new(bin))
                    .clone(),
                None => Arc::new(bin),
            }
        });
        let stored = result
            .as_ref()
            .map(Arc::clone)
            .map_err(|e| (e.reason(), e.to_string()));
        self.lock().by_file.insert(key, stored);
        result.map_err(anyhow::Error::new)
    }

    /// Drops the analysis of the file `(dev, ino)` once no process runs it,
    /// so the mapping is released.
    pub fn forget(&self, dev: u64, ino: u64) {
        let mut inner = self.lock();
        inner.by_file.retain(|k, _| (k.dev, k.ino) != (dev, ino));
        let Inner {
            by_file,
            by_build_id,
        } = &mut *inner;
        by_build_id.retain(|_, bin| {
            by_file
                .values()
                .any(|r| r.as_ref().is_ok_and(|b| Arc::ptr_eq(b, bin)))
        });
    }

    /// Number of distinct analyses held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().by_file.values().filter(|r| r.is_ok()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The maps stay consistent even if a holder panicked.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_remembered() {
        let cache = BinaryCache::default();
        let first = cache.get(Path::new("/bin/ls")).unwrap_err();
        let second = cache.get(Path::new("/bin/ls")).unwrap_err();
        assert_eq!(first.to_string(), second.to_string());
        assert!(first.to_string().contains("not a Go binary"), "{first}");
        for e in [first, second] {
            assert_eq!(
                e.downcast_ref::<GoBinError>().map(GoBinError::reason),
                Some("not_go")
            );
        }
        assert_eq!(cache.len(), 0);
    }
}
