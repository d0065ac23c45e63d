//! Partitions cached for distributed fits (`Clustering.PutPartition`).
//!
//! In memory only (a cache, not storage: nothing reaches the disk), keyed by
//! the caller, the driver's fit id and the partition index, so a key of
//! another caller never reaches these rows. Uploading a key again replaces
//! its rows at once; an entry unused for its TTL is dropped at the next
//! access to the cache; the whole cache is bounded in bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2};

use crate::service::error::{ServiceError, ServiceResult};

/// A partition's rows and optional weights.
pub struct PartitionRows {
    pub x: Array2<f32>,
    pub weights: Option<Array1<f32>>,
}

/// What an entry costs beyond its rows: the key, the map's slot, the bookkeeping.
const ENTRY_OVERHEAD: u64 = 512;
/// Entries in the cache at most, all callers together: keeps every sweep short.
pub const MAX_ENTRIES: usize = 65_536;
/// The longest TTL an upload may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Expired entries are looked for at most this often (and whenever room is short).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl PartitionRows {
    /// The bytes the entry is charged: its rows, weights and overhead.
    pub fn bytes(&self) -> u64 {
        4 * (self.x.len() + self.weights.as_ref().map_or(0, |w| w.len())) as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    owner: String,
    fit_id: String,
    index: u32,
}

struct Entry {
    rows: Arc<PartitionRows>,
    ttl: Duration,
    last_used: Instant,
}

struct Inner {
    entries: HashMap<Key, Entry>,
    /// Bytes of cached rows.
    bytes: u64,
    /// Bytes of uploads still streaming in.
    reserved: u64,
    last_sweep: Instant,
}

impl Inner {
    /// Drops expired entries, at most once per [`SWEEP_EVERY`] unless `force`.
    fn sweep_if_due(&mut self, now: Instant, force: bool) {
        if force || now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let before = self.entries.len();
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let live = now.duration_since(e.last_used) < e.ttl;
            if !live {
                freed += e.rows.bytes();
            }
            live
        });
        self.bytes -= freed;
        if self.entries.len() < before {
            tracing::debug!(expired = before - self.entries.len(), "partitions expired");
        }
    }
}

pub struct PartitionCache {
    inner: Mutex<Inner>,
    max_bytes: u64,
    default_ttl: Duration,
}

/// Bytes held for one upload while it streams in (see [`PartitionCache::reserve`]).
pub struct Reservation<'a> {
    cache: &'a PartitionCache,
    bytes: u64,
}

impl Reservation<'_> {
    /// Holds `more` bytes, or RESOURCE_EXHAUSTED when the cache's budget
    /// (cached rows and every upload in progress) would pass its limit.
    pub fn grow(&mut self, more: u64) -> ServiceResult<()> {
        let cache = self.cache;
        let mut inner = cache.lock();
        let now = Instant::now();
        inner.sweep_if_due(now, false);
        if inner.bytes + inner.reserved + more > cache.max_bytes {
            inner.sweep_if_due(now, true);
        }
        if inner.bytes + inner.reserved + more > cache.max_bytes {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_partition_cache_bytes",
                // Other callers' bytes are not named: only the limit.
                message: format!(
                    "the partition cache (all callers together, uploads in progress included) \
                     has no room for {more} more bytes; its limit is {} bytes (release finished \
                     fits' partitions, or use smaller partitions)",
                    cache.max_bytes
                ),
            });
        }
        inner.reserved += more;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.cache.lock().reserved -= self.bytes;
        }
    }
}

/// What a put did.
#[derive(Debug)]
pub struct Stored {
    pub replaced: bool,
    pub ttl: Duration,
}

/// A fit id: 1 to 128 bytes of `[A-Za-z0-9._-]` (a UUID, a Spark app id).
pub fn check_fit_id(fit_id: &str) -> ServiceResult<()> {
    let ok = (1..=128).contains(&fit_id.len())
        && fit_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "key.fit_id",
            "1 to 128 letters, digits, '-', '_' or '.'",
        ))
    }
}

impl PartitionCache {
    pub fn new(max_bytes: u64, default_ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                reserved: 0,
                last_sweep: Instant::now(),
            }),
            max_bytes,
            default_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for a partition that is streaming in. Bytes are reserved as they
    /// arrive, so concurrent uploads together stay under the budget; a key's
    /// earlier rows count until the new ones replace them (both are in memory
    /// meanwhile). Dropping the reservation (a failed upload) frees it.
    pub fn reserve(&self) -> Reservation<'_> {
        Reservation {
            cache: self,
            bytes: 0,
        }
    }

    /// Caches `rows` under the key, replacing what was there, in place of
    /// the reservation they arrived under.
    pub fn put(
        &self,
        owner: &str,
        fit_id: &str,
        index: u32,
        rows: PartitionRows,
        ttl: Option<Duration>,
        mut reservation: Reservation<'_>,
    ) -> ServiceResult<Stored> {
        reservation.grow(rows.bytes().saturating_sub(reservation.bytes))?;
        let ttl = ttl.unwrap_or(self.default_ttl);
        let key = Key {
            owner: owner.into(),
            fit_id: fit_id.into(),
            index,
        };
        let bytes = rows.bytes();
        let entry = Entry {
            rows: Arc::new(rows),
            ttl,
            last_used: Instant::now(),
        };
        let mut inner = self.lock();
        if !inner.entries.contains_key(&key) && inner.entries.len() >= MAX_ENTRIES {
            inner.sweep_if_due(Instant::now(), true);
            if inner.entries.len() >= MAX_ENTRIES {
                return Err(ServiceError::ResourceExhausted {
                    limit: "partition_entries",
                    message: format!(
                        "{MAX_ENTRIES} partitions are cached; release finished fits' partitions"
                    ),
                });
            }
        }
        inner.reserved -= std::mem::take(&mut reservation.bytes);
        let old = inner.entries.insert(key, entry);
        let replaced = old.is_some();
        inner.bytes = inner.bytes - old.map_or(0, |e| e.rows.bytes()) + bytes;
        Ok(Stored { replaced, ttl })
    }

    /// The rows under the key (and a fresh TTL), or NOT_FOUND saying what to do.
    pub fn get(&self, owner: &str, fit_id: &str, index: u32) -> ServiceResult<Arc<PartitionRows>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep_if_due(now, false);
        let key = Key {
            owner: owner.into(),
            fit_id: fit_id.into(),
            index,
        };
        match inner.entries.get_mut(&key) {
            // Expired but not yet swept: gone all the same.
            Some(e) if now.duration_since(e.last_used) < e.ttl => {
                e.last_used = now;
                Ok(e.rows.clone())
            }
            _ => Err(ServiceError::NotFound {
                what: "partition",
                id: format!(
                    "{}/{index} (never uploaded by this caller, released, or expired unused; upload it again)",
                    crate::service::auth::clip(fit_id)
                ),
            }),
        }
    }

    /// Drops every partition of the caller's fit; returns how many.
    pub fn release(&self, owner: &str, fit_id: &str) -> usize {
        let mut inner = self.lock();
        let before = inner.entries.len();
        let mut freed = 0;
        inner.entries.retain(|k, e| {
            let keep = !(k.owner == owner && k.fit_id == fit_id);
            if !keep {
                freed += e.rows.bytes();
            }
            keep
        });
        inner.bytes -= freed;
        let released = before - inner.entries.len();
        inner.sweep_if_due(Instant::now(), false);
        released
    }

    /// Bytes cached now (after dropping expired entries).
    pub fn bytes(&self) -> u64 {
        let mut inner = self.lock();
        inner.sweep(Instant::now());
        inner.bytes
    }

    /// Partitions cached now (after dropping expired entries).
    pub fn count(&self) -> usize {
        let mut inner = self.lock();
        inner.sweep(Instant::now());
        inner.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> PartitionRows {
        PartitionRows {
            x: Array2::zeros((n, 2)),
            weights: None,
        }
    }

    #[test]
    fn keys_are_per_caller_replaced_whole_bounded_and_expire() {
        // rows(n) costs 8n bytes of rows plus the entry's overhead.
        let cost = |n: u64| 8 * n + ENTRY_OVERHEAD;
        let cache = PartitionCache::new(cost(120) + cost(20) + 40, Duration::from_secs(60));
        let put = |owner: &str, fit: &str, i: u32, n: usize, ttl: Option<Duration>| {
            cache.put(owner, fit, i, rows(n), ttl, cache.reserve())
        };
        assert!(!put("a", "fit", 0, 10, None).unwrap().replaced);
        assert!(put("a", "fit", 0, 20, None).unwrap().replaced);
        assert_eq!(cache.get("a", "fit", 0).unwrap().x.nrows(), 20);
        assert_eq!((cache.bytes(), cache.count()), (cost(20), 1));
        // Another caller's key of the same name is not these rows.
        assert!(matches!(
            cache.get("b", "fit", 0),
            Err(ServiceError::NotFound { .. })
        ));
        // Over the budget: refused, naming the limit; the old rows stay.
        let e = put("a", "fit", 1, 200, None).unwrap_err();
        assert!(e.to_string().contains("max_partition_cache_bytes"), "{e}");
        assert_eq!(cache.bytes(), cost(20));
        // Uploads in progress count: two streams cannot each take the budget.
        let mut first = cache.reserve();
        first.grow(cost(60)).unwrap();
        let mut second = cache.reserve();
        assert!(second.grow(cost(60)).is_err(), "both would pass the budget");
        drop(first); // a failed upload frees its bytes
        second.grow(cost(60)).unwrap();
        drop(second);
        put("a", "fit", 0, 120, None).unwrap();
        assert_eq!(cache.bytes(), cost(120), "a replaced key counts once");
        assert!(
            put("b", "fit", 0, 10, None).is_ok(),
            "room left: one budget for all callers"
        );
        assert!(put("c", "fit", 0, 10, None).is_err(), "and no more");
        // Release counts the caller's own partitions only.
        put("b", "short", 0, 1, Some(Duration::from_millis(1))).unwrap_err();
        assert_eq!(cache.release("a", "fit"), 1);
        assert_eq!(cache.bytes(), cost(10));
        put("b", "short", 0, 1, Some(Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            cache.get("b", "short", 0).is_err(),
            "expired, even before a sweep"
        );
        assert_eq!(
            cache.release("a", "short"),
            0,
            "others' expired entries are not counted"
        );
        assert_eq!((cache.bytes(), cache.count()), (cost(10), 1));
        assert!(check_fit_id("fit-1_a.b").is_ok());
        assert!(check_fit_id("../x").is_err() && check_fit_id("").is_err());
    }
}
