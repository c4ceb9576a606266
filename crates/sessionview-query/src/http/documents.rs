//! The parsed-document cache: a query text seen before is not parsed again.

use async_graphql::Request;
use async_graphql::parser::types::ExecutableDocument;

/// Parsed documents of recently seen query texts: a dashboard sends the same few queries again
/// and again, and parsing one is a good share of answering it. Only what parses is kept, and only
/// texts up to [`DocumentCache::MAX_QUERY_BYTES`], the [`DocumentCache::CAPACITY`] most recently
/// used. Validation (arguments, variables, depth, complexity) still runs for every request.
pub(super) struct DocumentCache(std::sync::Mutex<lru::LruCache<String, ExecutableDocument>>);

impl std::fmt::Debug for DocumentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentCache").finish_non_exhaustive()
    }
}

impl DocumentCache {
    const CAPACITY: std::num::NonZeroUsize = std::num::NonZeroUsize::new(256).unwrap();
    const MAX_QUERY_BYTES: usize = 16 * 1024;

    pub(super) fn new() -> Self {
        Self(std::sync::Mutex::new(lru::LruCache::new(Self::CAPACITY)))
    }

    fn documents(&self) -> std::sync::MutexGuard<'_, lru::LruCache<String, ExecutableDocument>> {
        // The cache holds no invariant a panic could break.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives `request` its parsed document: from the cache, or parsed now (and kept when the
    /// text is short). A text that does not parse is left to the schema, which answers with the
    /// parser's error.
    pub(super) fn attach(&self, request: &mut Request) {
        let query = request.query.as_str();
        let cacheable = query.len() <= Self::MAX_QUERY_BYTES;
        if cacheable && let Some(doc) = self.documents().get(query).cloned() {
            request.set_parsed_query(doc);
            return;
        }
        if let Ok(doc) = request.parsed_query()
            && cacheable
        {
            let doc = doc.clone();
            self.documents().put(request.query.clone(), doc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_that_parse_are_kept_and_reused() {
        let cache = DocumentCache::new();
        let query = "{ compute_session_list(limit: 1, offset: 0) { total_count } }";
        let mut first = Request::new(query);
        cache.attach(&mut first);
        assert_eq!(cache.documents().len(), 1);
        let mut second = Request::new(query);
        cache.attach(&mut second);
        assert_eq!(cache.documents().len(), 1);
        // The same document either way: the request's own parse is never needed again.
        assert_eq!(
            format!("{:?}", second.parsed_query().ok()),
            format!("{:?}", first.parsed_query().ok())
        );

        // Not kept: what does not parse (the schema reports the parser's error), what is long.
        cache.attach(&mut Request::new("{ compute_session_list(limit: 1"));
        let long = format!(
            "{{ {} }}",
            "keypair { access_key } ".repeat(DocumentCache::MAX_QUERY_BYTES / 20)
        );
        assert!(long.len() > DocumentCache::MAX_QUERY_BYTES);
        cache.attach(&mut Request::new(long));
        assert_eq!(cache.documents().len(), 1);

        // Bounded: the least recently used text goes first.
        for i in 0..DocumentCache::CAPACITY.get() {
            cache.attach(&mut Request::new(format!(
                "{{ a{i}: keypair {{ access_key }} }}"
            )));
        }
        assert_eq!(cache.documents().len(), DocumentCache::CAPACITY.get());
        assert!(!cache.documents().contains(query));
    }
}
