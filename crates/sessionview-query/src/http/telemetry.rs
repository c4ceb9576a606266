//! The query service's metrics: names, buckets, descriptions, and the read-pool gauges.

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge};
use sessionview_store::ReadModel;

pub const REQUESTS: &str = "sessionview_query_requests_total";
pub const REQUEST_SECONDS: &str = "sessionview_query_request_seconds";
pub const DB_CONNECTIONS: &str = "sessionview_query_db_connections";
pub const DB_CONNECTIONS_MAX: &str = "sessionview_query_db_connections_max";
pub const DB_WAITING: &str = "sessionview_query_db_waiting";
pub const RESPONSE_CACHE: &str = "sessionview_query_response_cache_total";
pub const RESPONSE_CACHE_BYTES: &str = "sessionview_query_response_cache_bytes";
pub(crate) const EVENT_STREAMS: &str = "sessionview_event_streams";
pub(crate) const EVENT_STREAMS_CUT: &str = "sessionview_event_streams_cut_total";
/// Histogram buckets for [`REQUEST_SECONDS`].
pub const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Registers metric descriptions (call once after installing a recorder).
pub fn describe_metrics() {
    describe_counter!(
        REQUESTS,
        "Requests (GraphQL and event streams) by endpoint, operation (an allow-listed operation \
         name, `other` or `anonymous`) and outcome (ok, graphql_error, auth_failed, \
         bad_request, too_large, timeout, unavailable, behind: X-SessionView-Min-Positions was \
         not reached in time)."
    );
    describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer a GraphQL request, by endpoint."
    );
    describe_gauge!(
        DB_CONNECTIONS,
        "Database connections of the reads, by state (in_use, idle), when the metrics were read."
    );
    describe_gauge!(
        DB_CONNECTIONS_MAX,
        "The most database connections the reads may open (--db-max-connections)."
    );
    describe_gauge!(EVENT_STREAMS, "Open GET /events/session streams.");
    describe_counter!(
        RESPONSE_CACHE,
        "GraphQL requests the response cache was asked about, by outcome: hit (answered from \
         it), miss (no answer kept), stale (one kept, changed since), behind (its follower had \
         not applied the commits up to the positions the response reports)."
    );
    describe_gauge!(
        RESPONSE_CACHE_BYTES,
        "Bytes of answers the response cache holds (--response-cache-bytes bounds it)."
    );
    describe_counter!(
        EVENT_STREAMS_CUT,
        "Event streams closed because they fell more than the buffer behind (the client may \
         resume with Last-Event-ID)."
    );
    describe_gauge!(
        DB_WAITING,
        "Reads waiting for a database connection when the metrics were read."
    );
}

/// Sets the read-connection gauges from `store` (call before rendering the metrics). Stores
/// without a separate read pool (SQLite) report nothing.
pub fn record_read_connections(store: &dyn ReadModel) {
    if let Some(c) = store.read_connections() {
        gauge!(DB_CONNECTIONS, "state" => "in_use").set(c.in_use as f64);
        gauge!(DB_CONNECTIONS, "state" => "idle").set(c.idle as f64);
        gauge!(DB_CONNECTIONS_MAX).set(c.max as f64);
        gauge!(DB_WAITING).set(c.waiting as f64);
    }
}
