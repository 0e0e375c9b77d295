//! The near cache: session records kept in the gateway's memory while Redis has promised to
//! say when they change (client-side caching, `CLIENT TRACKING`; see `tracking`).
//!
//! A record may be served from here only while every tracking connection is tracking, so
//! that no change can go unannounced; whenever one is not (lost, reconnecting, behind on its
//! messages), everything is dropped and nothing is filled until it is tracking again.
//!
//! The classic race of client-side caching: a read is sent, the key changes, the
//! invalidation is handled, and then the (now stale) reply arrives and would be cached for
//! good. So a read first leaves a *pending* marker under its key ([`NearCache::begin`]);
//! every invalidation, local write and flush removes markers along with entries, and a reply
//! is only cached ([`NearCache::fill`]) over its own marker. The marker is placed under the
//! same lock that a flush takes, after checking that every connection tracks, so a read
//! cannot slip between a connection's loss and the flush that follows it.
//!
//! A record is kept with the generation of the read shape it was read in (the policies'
//! counters and quota states; see `codec::Shaped`) and served only to readers of the same
//! shape: after a configuration reload, a request still running on the old policies neither
//! serves nor is served a record of the other shape.
//!
//! Plain data and locks: this module never talks to Redis and never decides what a record
//! means.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::model::session::SessionRecord;
use crate::telemetry;

/// Lock stripes: serving threads rarely wait for each other on a lookup.
const STRIPES: usize = 16;

/// The cache, shared by every store of a process (one per serving thread); cheap to clone.
#[derive(Clone)]
pub struct NearCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("records", &self.len())
            .finish()
    }
}

struct Inner {
    stripes: Box<[Mutex<Stripe>]>,
    /// Entries per stripe at most.
    stripe_capacity: usize,
    /// Tracking connections not tracking now; fills are refused while it is above 0.
    untracked: AtomicUsize,
    next_ticket: AtomicU64,
    /// Changes Redis announced.
    invalidations: AtomicU64,
}

#[derive(Default)]
struct Stripe {
    slots: HashMap<Uuid, Slot>,
    /// Ids in the order their records were cached, oldest first, for eviction; may name ids
    /// already gone (dropped entries are not searched for here).
    order: VecDeque<Uuid>,
    /// Records (not markers) in `slots`.
    records: usize,
}

enum Slot {
    /// A read of this id is in flight; its reply may be cached under this ticket.
    Pending(u64),
    /// A record, and the generation of the shape it was read in.
    Ready(SessionRecord, u64),
}

/// A read's claim to cache its reply (see the module doc).
#[must_use]
pub struct Ticket {
    id: Uuid,
    number: u64,
}

/// Why the whole cache was dropped, as the flush metric labels it.
#[derive(Clone, Copy, Debug)]
pub enum Flush {
    /// A tracking connection was lost: changes may go unannounced until it is back.
    Lost,
    /// A tracking connection is new: it tracks nothing read before.
    Reconnected,
    /// Invalidations came faster than they were handled, and some were missed.
    Lagged,
    /// Redis said every key changed (`FLUSHALL`, `FLUSHDB`).
    Everything,
    /// The configuration was reloaded: what was read in the old shape is of no more use.
    Reload,
}

impl Flush {
    fn label(self) -> &'static str {
        match self {
            Flush::Lost => "lost",
            Flush::Reconnected => "reconnected",
            Flush::Lagged => "lagged",
            Flush::Everything => "everything",
            Flush::Reload => "reload",
        }
    }
}

impl NearCache {
    /// A cache of at most `capacity` records (rounded up to a whole number per stripe).
    /// It starts with nothing tracking: see [`NearCache::connection_added`].
    pub fn new(capacity: usize) -> NearCache {
        NearCache {
            inner: Arc::new(Inner {
                stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
                stripe_capacity: capacity.div_ceil(STRIPES).max(1),
                untracked: AtomicUsize::new(0),
                next_ticket: AtomicU64::new(1),
                invalidations: AtomicU64::new(0),
            }),
        }
    }

    /// The cached record of `id` read in the shape of generation `shape`, if any.
    pub(super) fn get(&self, id: &Uuid, shape: u64) -> Option<SessionRecord> {
        let found = match self.stripe(id).slots.get(id) {
            Some(Slot::Ready(record, read_in)) if *read_in == shape => Some(record.clone()),
            _ => None,
        };
        telemetry::near_cache_lookup(found.is_some());
        found
    }

    /// Starts a read of `id` whose reply may be cached; `None` while a connection is not
    /// tracking (then the reply must not be cached).
    pub(super) fn begin(&self, id: &Uuid) -> Option<Ticket> {
        let mut stripe = self.stripe(id);
        // Under the stripe's lock: a flush marks a connection untracked before it takes it.
        if self.inner.untracked.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let number = self.inner.next_ticket.fetch_add(1, Ordering::Relaxed);
        if let Some(Slot::Ready(..)) = stripe.slots.insert(*id, Slot::Pending(number)) {
            stripe.records -= 1;
        }
        Some(Ticket { id: *id, number })
    }

    /// Caches the reply of the read `ticket` began, read in the shape of generation `shape`,
    /// unless its key changed meanwhile (its marker is gone). A missing session is not
    /// cached, only its marker removed.
    pub(super) fn fill(&self, ticket: Ticket, record: Option<&SessionRecord>, shape: u64) {
        let mut stripe = self.stripe(&ticket.id);
        let Some(Slot::Pending(number)) = stripe.slots.get(&ticket.id) else {
            return;
        };
        if *number != ticket.number {
            return;
        }
        let Some(record) = record else {
            stripe.slots.remove(&ticket.id);
            return;
        };
        stripe
            .slots
            .insert(ticket.id, Slot::Ready(record.clone(), shape));
        stripe.records += 1;
        stripe.order.push_back(ticket.id);
        self.evict(&mut stripe);
    }

    /// Drops what is known of `id`: it changed (an invalidation, or a write of this process).
    pub(super) fn forget(&self, id: &Uuid) {
        let mut stripe = self.stripe(id);
        if let Some(Slot::Ready(..)) = stripe.slots.remove(id) {
            stripe.records -= 1;
        }
    }

    /// Redis announced that `id` changed.
    pub(super) fn invalidate(&self, id: &Uuid) {
        self.forget(id);
        self.inner.invalidations.fetch_add(1, Ordering::Relaxed);
        telemetry::near_cache_invalidated();
    }

    /// A tracking connection was created; it is not tracking yet.
    pub(super) fn connection_added(&self) {
        self.inner.untracked.fetch_add(1, Ordering::SeqCst);
    }

    /// A tracking connection stopped tracking: drop everything, fill nothing until it is
    /// back ([`NearCache::tracking`]).
    pub(super) fn not_tracking(&self, why: Flush) {
        self.inner.untracked.fetch_add(1, Ordering::SeqCst);
        self.flush(why);
    }

    /// A tracking connection tracks again (or for the first time).
    pub(super) fn tracking(&self) {
        self.inner.untracked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Drops every entry and every pending read's claim.
    pub(super) fn flush(&self, why: Flush) {
        for stripe in self.inner.stripes.iter() {
            let mut stripe = lock(stripe);
            stripe.slots.clear();
            stripe.order.clear();
            stripe.records = 0;
        }
        telemetry::near_cache_flushed(why.label());
    }

    /// Drops every entry after a configuration reload.
    pub fn drop_all(&self) {
        self.flush(Flush::Reload);
    }

    /// Whether a record of `id` is cached now.
    pub fn holds(&self, id: &Uuid) -> bool {
        matches!(self.stripe(id).slots.get(id), Some(Slot::Ready(..)))
    }

    /// Changes Redis has announced since the cache was made.
    pub fn invalidations(&self) -> u64 {
        self.inner.invalidations.load(Ordering::Relaxed)
    }

    /// Records cached now, over all stripes.
    pub fn len(&self) -> usize {
        self.inner.stripes.iter().map(|s| lock(s).records).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn stripe(&self, id: &Uuid) -> MutexGuard<'_, Stripe> {
        lock(&self.inner.stripes[(id.as_u128() % STRIPES as u128) as usize])
    }

    /// Drops the oldest records past the stripe's capacity (first in, first out: an entry
    /// read often is refilled at the cost of one Redis read).
    fn evict(&self, stripe: &mut Stripe) {
        while stripe.records > self.inner.stripe_capacity {
            let Some(oldest) = stripe.order.pop_front() else {
                break;
            };
            if let Some(Slot::Ready(..)) = stripe.slots.get(&oldest) {
                stripe.slots.remove(&oldest);
                stripe.records -= 1;
            }
        }
        // Ids of dropped entries linger in `order`; keep it within twice the capacity.
        if stripe.order.len() > 2 * self.inner.stripe_capacity {
            let Stripe { slots, order, .. } = stripe;
            order.retain(|id| matches!(slots.get(id), Some(Slot::Ready(..))));
        }
    }
}

/// A poisoned stripe only means a thread panicked while holding it; its map is still whole.
fn lock(stripe: &Mutex<Stripe>) -> MutexGuard<'_, Stripe> {
    stripe
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(created_at: i64) -> SessionRecord {
        SessionRecord {
            created_at,
            last_active: created_at,
            usage: Default::default(),
            preferences: None,
            plan: None,
            quota_states: Vec::new(),
        }
    }

    fn tracking_cache(capacity: usize) -> NearCache {
        let cache = NearCache::new(capacity);
        cache.connection_added();
        cache.tracking();
        cache
    }

    #[test]
    fn a_reply_is_cached_over_its_own_marker() {
        let cache = tracking_cache(100);
        let id = Uuid::new_v4();
        let ticket = cache.begin(&id).expect("tracking");
        cache.fill(ticket, Some(&record(1)), 0);
        assert_eq!(cache.get(&id, 0), Some(record(1)));
    }

    #[test]
    fn a_change_during_the_read_keeps_its_reply_out() {
        let cache = tracking_cache(100);
        let id = Uuid::new_v4();
        let ticket = cache.begin(&id).expect("tracking");
        cache.forget(&id);
        cache.fill(ticket, Some(&record(1)), 0);
        assert_eq!(cache.get(&id, 0), None);
    }

    #[test]
    fn a_later_read_of_the_same_id_supersedes_an_earlier_one() {
        let cache = tracking_cache(100);
        let id = Uuid::new_v4();
        let first = cache.begin(&id).expect("tracking");
        let second = cache.begin(&id).expect("tracking");
        cache.fill(first, Some(&record(1)), 0);
        assert_eq!(cache.get(&id, 0), None);
        cache.fill(second, Some(&record(2)), 0);
        assert_eq!(cache.get(&id, 0), Some(record(2)));
    }

    #[test]
    fn nothing_is_begun_or_kept_while_a_connection_is_not_tracking() {
        let cache = tracking_cache(100);
        let id = Uuid::new_v4();
        let in_flight = cache.begin(&id).expect("tracking");
        let cached = Uuid::new_v4();
        let ticket = cache.begin(&cached).expect("tracking");
        cache.fill(ticket, Some(&record(1)), 0);
        cache.not_tracking(Flush::Lost);
        assert_eq!(cache.get(&cached, 0), None, "flushed");
        assert!(cache.begin(&id).is_none(), "untracked");
        cache.fill(in_flight, Some(&record(1)), 0);
        assert_eq!(cache.get(&id, 0), None);
        cache.tracking();
        assert!(cache.begin(&id).is_some());
    }

    #[test]
    fn a_missing_session_is_not_cached() {
        let cache = tracking_cache(100);
        let id = Uuid::new_v4();
        let ticket = cache.begin(&id).expect("tracking");
        cache.fill(ticket, None, 0);
        assert_eq!(cache.get(&id, 0), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_reader_gets_only_records_of_its_own_shape() {
        let cache = tracking_cache(100);
        let id = Uuid::new_v4();
        let ticket = cache.begin(&id).expect("tracking");
        cache.fill(ticket, Some(&record(1)), 1);
        assert_eq!(cache.get(&id, 2), None, "read in another shape");
        assert_eq!(cache.get(&id, 1), Some(record(1)));
    }

    #[test]
    fn the_oldest_records_go_first_past_the_capacity() {
        let cache = tracking_cache(STRIPES);
        // Ids of one stripe, so its capacity (1) is what bounds them.
        let ids: Vec<Uuid> = (0..3u128)
            .map(|n| Uuid::from_u128(n * STRIPES as u128))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            let ticket = cache.begin(id).expect("tracking");
            cache.fill(ticket, Some(&record(n as i64)), 0);
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&ids[0], 0), None);
        assert_eq!(cache.get(&ids[2], 0), Some(record(2)));
    }
}
