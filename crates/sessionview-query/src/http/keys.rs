//! Who is calling: request authentication against the stored keypairs, the keypair cache, and
//! each key's turns (how many of its requests run at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, Uri};
use sessionview_store::{KeyPair, ReadModel};
use tracing::warn;

use crate::auth::{self, AuthError, SigningInput};
use crate::schema::Caller;

/// Per keypair, how many of its requests may run at once: a caller that floods the service
/// waits behind its own requests, not in front of other callers'. (A global limit would let one
/// caller's queue fill every slot; the database pool behind it is shared, and its wait is
/// first come, first served.) Semaphores of keys with nothing in flight are dropped when the map
/// grows, so a flood of keys cannot grow it without bound.
#[derive(Debug)]
pub(super) struct KeyTurns {
    per_key: usize,
    keys: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl KeyTurns {
    const PRUNE_AT: usize = 10_000;

    pub(super) fn new(per_key: usize) -> Self {
        Self {
            per_key: per_key.max(1),
            keys: std::sync::Mutex::default(),
        }
    }

    pub(super) fn semaphore(&self, access_key: &str) -> Arc<tokio::sync::Semaphore> {
        // The map holds no invariant a panic could break.
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= Self::PRUNE_AT && !keys.contains_key(access_key) {
            keys.retain(|_, s| s.available_permits() < self.per_key || Arc::strong_count(s) > 1);
        }
        Arc::clone(
            keys.entry(access_key.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_key))),
        )
    }
}

/// Keypairs read recently, each reused for at most `ttl` after it was read: a dashboard polling
/// every second no longer costs a keypair lookup per request. Only keys found are kept (a flood of
/// unknown keys cannot grow it), and at most [`KeyCache::CAPACITY`] of them.
#[derive(Debug)]
pub(super) struct KeyCache {
    ttl: Duration,
    entries: std::sync::Mutex<HashMap<String, (Instant, KeyPair)>>,
}

impl KeyCache {
    const CAPACITY: usize = 10_000;

    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: std::sync::Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, KeyPair)>> {
        // The map holds no invariant a panic could break.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, access_key: &str, now: Instant) -> Option<KeyPair> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries();
        let (read_at, kp) = entries.get(access_key)?;
        (now.saturating_duration_since(*read_at) < self.ttl).then(|| kp.clone())
    }

    fn put(&self, kp: &KeyPair, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, (read_at, _)| now.saturating_duration_since(*read_at) < self.ttl);
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(kp.access_key.clone(), (now, kp.clone()));
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates a signed request against the stored keypairs.
pub(super) async fn authenticate(
    store: &dyn ReadModel,
    keys: &KeyCache,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Caller, AuthError> {
    let authorization =
        header_str(headers, "authorization").ok_or(AuthError::MissingAuthorization)?;
    let (access_key, signature) = auth::parse_authorization(authorization)?;
    let date = header_str(headers, "x-backendai-date")
        .or_else(|| header_str(headers, "date"))
        .ok_or(AuthError::MissingDate)?;
    let input = SigningInput {
        method: method.as_str(),
        path_and_query: uri.path_and_query().map_or(uri.path(), |p| p.as_str()),
        date,
        host: header_str(headers, "host").unwrap_or_default(),
        // What the manager's web framework reports for a request without one (the 20.3.10
        // client signs it for the event stream, whose request has no Content-Type).
        content_type: header_str(headers, "content-type").unwrap_or("application/octet-stream"),
        version: header_str(headers, "x-backendai-version").unwrap_or_default(),
    };
    // The date is checked before the key is looked up: a skewed clock is the client's parameter.
    let checked_date = auth::check_date(date, chrono::Utc::now())?;
    let now = Instant::now();
    // A cached entry is never refreshed by its own use: it expires `ttl` after it was read.
    let looked_up = match keys.get(&access_key, now) {
        Some(kp) => Ok(Some(kp)),
        None => store.keypair(&access_key).await.inspect(|found| {
            if let Some(kp) = found {
                keys.put(kp, now);
            }
        }),
    };
    let keypair = match looked_up {
        Ok(Some(kp)) => kp,
        Ok(None) => return Err(AuthError::UnknownAccessKey(access_key)),
        Err(e) => {
            warn!(error = %e, "keypair lookup failed");
            return Err(AuthError::Unavailable(
                "the keypair store cannot answer now; retry".into(),
            ));
        }
    };
    if !keypair.is_active {
        return Err(AuthError::InactiveAccessKey(access_key));
    }
    auth::verify_signature(&keypair.secret_key, &input, &checked_date, &signature)?;
    Ok(Caller { keypair })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionview_store::Role;

    fn keypair(access_key: &str) -> KeyPair {
        KeyPair {
            access_key: access_key.into(),
            secret_key: "secret".into(),
            user_id: uuid::Uuid::nil(),
            user_email: "u@example.com".into(),
            domain_name: "default".into(),
            role: Role::User,
            is_active: true,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_cached_keypair_expires_after_the_ttl() {
        let cache = KeyCache::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(cache.get("AKIA1", t0).is_none());
        cache.put(&keypair("AKIA1"), t0);
        assert_eq!(
            cache
                .get("AKIA1", t0 + Duration::from_millis(999))
                .map(|k| k.access_key),
            Some("AKIA1".to_owned())
        );
        assert!(cache.get("AKIA1", t0 + Duration::from_secs(1)).is_none());
        assert!(cache.get("AKIA2", t0).is_none());
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        let t0 = Instant::now();
        cache.put(&keypair("AKIA1"), t0);
        assert!(cache.get("AKIA1", t0).is_none());
    }

    #[test]
    fn the_cache_never_grows_beyond_its_capacity() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..KeyCache::CAPACITY + 5 {
            cache.put(&keypair(&format!("AKIA{i}")), t0);
        }
        assert!(cache.entries().len() <= KeyCache::CAPACITY);
        assert!(
            cache
                .get(&format!("AKIA{}", KeyCache::CAPACITY + 4), t0)
                .is_some()
        );
    }
}
