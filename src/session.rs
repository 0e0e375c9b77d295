//! Sessions: the create-or-get, sync and read rules of the contract.
//!
//! This module decides *which* session a request ends up with (the precedence rules of
//! `contract.md`) and when activity is recorded. It knows nothing of HTTP (callers hand it
//! parsed ids) and nothing of Redis commands (it calls [`Store`] operations, each one round
//! trip). Ids are only ever generated here, server-side, from a CSPRNG: a client-supplied id
//! is looked up, never created. Creation is throttled per client network and per process
//! ([`CreationThrottle`]), so a script cannot fill Redis with sessions.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::flush::ReadThrough;
use crate::model::session::Session;
use crate::service_error::ServiceError;
use crate::store::{Store, StoreError};
use crate::telemetry;
use crate::throttle::CreationThrottle;

/// The session operations, over a [`Store`].
#[derive(Clone)]
pub struct Sessions {
    store: Store,
    creations: Arc<CreationThrottle>,
    read_through: Option<ReadThrough>,
}

/// How many fresh ids to try before giving up; a collision of 122 random bits is not
/// expected in the lifetime of the universe, so a second failure means something is wrong.
const CREATE_ATTEMPTS: usize = 3;

impl Sessions {
    /// Creations are throttled by `creations` (one throttle for every serving thread);
    /// sessions missing from Redis are looked up through `read_through` when given.
    pub fn new(
        store: Store,
        creations: Arc<CreationThrottle>,
        read_through: Option<ReadThrough>,
    ) -> Self {
        Sessions {
            store,
            creations,
            read_through,
        }
    }

    /// The first of `ids` that names a live session (read-through included), for a request
    /// that names several: a stale or planted cookie must not shadow the live one.
    pub async fn first_known(&self, ids: &[Uuid]) -> Result<Option<Uuid>, ServiceError> {
        for id in ids {
            if self.read(*id).await?.is_some() {
                return Ok(Some(*id));
            }
        }
        Ok(None)
    }

    /// `POST /api/session/`: the current session if known, else the client's if known, else a
    /// new one. Returns the session and whether it was created by this call.
    pub async fn create_or_get(
        &self,
        current: Option<Uuid>,
        client: Option<Uuid>,
        origin: IpAddr,
    ) -> Result<(Session, bool), ServiceError> {
        for candidate in [current, client].into_iter().flatten() {
            if let Some(session) = self.touch(candidate).await? {
                return Ok((session, false));
            }
        }
        Ok((self.create(origin).await?, true))
    }

    /// `POST /api/session/sync`: adopt the client's session if it exists, else keep the
    /// current one if it exists, else create one. Returns the session and whether it is the
    /// client's (`is_synced`).
    pub async fn sync(
        &self,
        current: Option<Uuid>,
        client: Uuid,
        origin: IpAddr,
    ) -> Result<(Session, bool), ServiceError> {
        if let Some(session) = self.touch(client).await? {
            telemetry::session_synced("adopted");
            return Ok((session, true));
        }
        if let Some(current) = current.filter(|c| *c != client) {
            if let Some(session) = self.touch(current).await? {
                telemetry::session_synced("kept");
                return Ok((session, false));
            }
        }
        let session = self.create(origin).await?;
        telemetry::session_synced("created");
        Ok((session, false))
    }

    /// `GET /api/session/info` and other reads: one plain read. Activity is recorded in the
    /// background, and only when `last_active` is older than the touch interval, so a busy
    /// session costs Redis one write per interval instead of one per read.
    pub async fn read(&self, id: Uuid) -> Result<Option<Session>, ServiceError> {
        let read = || self.store.read(&id);
        let Some(mut record) = or_read_through(self.read_through.as_ref(), &id, read).await? else {
            return Ok(None);
        };
        telemetry::session_read();
        let now = unix_now();
        if self.store.is_stale(record.last_active, now) {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.touch(&id).await {
                    tracing::debug!(%error, "background touch failed");
                }
            });
            record.last_active = now;
        }
        Ok(Some(Session { id, record }))
    }

    /// The whole session for support staff, with its version, as Redis holds it (never a
    /// cached copy); `None` if it does not exist.
    pub async fn inspect(&self, id: Uuid) -> Result<Option<(Session, i64)>, ServiceError> {
        let inspect = || self.store.inspect(&id);
        let found = or_read_through(self.read_through.as_ref(), &id, inspect).await?;
        Ok(found.map(|(record, version)| (Session { id, record }, version)))
    }

    /// Replaces a session's preferences (compact JSON, already validated); `None` if the
    /// session does not exist.
    pub async fn set_preferences(
        &self,
        id: Uuid,
        preferences: &str,
    ) -> Result<Option<()>, ServiceError> {
        let stored = if preferences == "{}" { "" } else { preferences };
        Ok(self.store.set_preferences(&id, stored).await?.map(|_| ()))
    }

    async fn touch(&self, id: Uuid) -> Result<Option<Session>, ServiceError> {
        let touch = || self.store.touch(&id);
        let record = or_read_through(self.read_through.as_ref(), &id, touch).await?;
        Ok(record.map(|record| Session { id, record }))
    }

    async fn create(&self, origin: IpAddr) -> Result<Session, ServiceError> {
        if let Err(retry_after) = self.creations.check(origin) {
            telemetry::creation_throttled();
            return Err(ServiceError::Throttled { retry_after });
        }
        for _ in 0..CREATE_ATTEMPTS {
            let id = Uuid::new_v4();
            let created = self.store.create(&id).await.inspect_err(|error| {
                if matches!(error, StoreError::Backlog) {
                    telemetry::flush_refusal();
                }
            })?;
            if let Some(record) = created {
                telemetry::session_created();
                return Ok(Session { id, record });
            }
            tracing::warn!("a freshly drawn session id already existed; drawing another");
        }
        Err(StoreError::Reply("could not draw an unused session id").into())
    }
}

/// Runs `operation` on a session; if the session is missing from Redis and a read-through
/// is configured, restores it from the system of record and runs `operation` once more.
pub(crate) async fn or_read_through<T, F, Fut>(
    read_through: Option<&ReadThrough>,
    id: &Uuid,
    operation: F,
) -> Result<Option<T>, ServiceError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
{
    if let Some(found) = operation().await? {
        return Ok(Some(found));
    }
    match read_through {
        // Boxed: the HTTP round trip to Supabase is a large future, and rare.
        Some(read_through) if Box::pin(read_through.recover(id)).await? => Ok(operation().await?),
        _ => Ok(None),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
