//! The projector's commit on PostgreSQL: a batch's positions (compare-and-set) and rows in one
//! transaction of few statements — one for the positions, one for the rows every batch has, one
//! each for the rare ones (parked events, dead letters) — so that a small steady-state batch
//! costs the database three round trips and its statements' work, little else.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sessionview_events::JsonObject;
use sessionview_projection::Position;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{Advance, Commit, CommitOutcome, StoreError};

/// The constraint that makes a second record of one event id fail.
const SEEN_EVENTS_KEY: &str = "seen_events_pkey";

pub(crate) async fn commit(pool: &PgPool, commit: Commit<'_>) -> Result<CommitOutcome, StoreError> {
    let mut tx = pool.begin().await?;
    // Positions first: the row locks taken here make a competing instance wait for us and then
    // fail its own compare-and-set, before either touches a session row.
    let conflicts = advance_positions(&mut tx, commit.source, commit.advances).await?;
    if !conflicts.is_empty() {
        tx.rollback().await?;
        return Ok(CommitOutcome::Conflict {
            partitions: conflicts,
        });
    }
    match write_rows(&mut tx, &commit).await {
        Ok(()) => {}
        Err(StoreError::Database(sqlx::Error::Database(e)))
            if e.is_unique_violation() && e.constraint() == Some(SEEN_EVENTS_KEY) =>
        {
            // An event id this batch applies was recorded after the batch was loaded: another
            // instance applied the same event from another partition (a duplicate published
            // twice). Nothing of this batch is written; re-read, it sees the id as seen.
            tx.rollback().await?;
            return Ok(CommitOutcome::Conflict {
                partitions: commit.advances.iter().map(|a| a.partition).collect(),
            });
        }
        Err(e) => return Err(e),
    }
    write_rare(&mut tx, &commit).await?;
    tx.commit().await?;
    Ok(CommitOutcome::Committed)
}

/// Compare-and-set of every advanced partition's stored position; returns the partitions whose
/// stored position was not the expected one (in `advances` order), empty when all moved.
async fn advance_positions(
    conn: &mut PgConnection,
    source: &str,
    advances: &[Advance],
) -> Result<Vec<i32>, StoreError> {
    let mut moved: HashSet<i32> = HashSet::with_capacity(advances.len());
    let (new, known): (Vec<&Advance>, Vec<&Advance>) =
        advances.iter().partition(|a| a.expected.is_none());
    if !new.is_empty() {
        // First positions of partitions: a row another instance inserted first is a conflict.
        let partitions: Vec<i32> = new.iter().map(|a| a.partition).collect();
        let next: Vec<i64> = new.iter().map(|a| a.next).collect();
        let inserted: Vec<i32> = sqlx::query_scalar(
            "INSERT INTO source_positions (source, partition, next_offset) \
             SELECT $1, p, n FROM UNNEST($2::int4[], $3::int8[]) AS u(p, n) ORDER BY p \
             ON CONFLICT DO NOTHING RETURNING partition",
        )
        .bind(source)
        .bind(&partitions)
        .bind(&next)
        .fetch_all(&mut *conn)
        .await?;
        moved.extend(inserted);
    }
    if !known.is_empty() {
        // The rows are locked in partition order first (`locked`), so two instances advancing
        // overlapping partitions wait for each other instead of deadlocking. A row changed by a
        // transaction we waited for is re-checked against its new offset (READ COMMITTED's
        // re-check of an updated row), so it counts as moved only if it still held `expected`.
        let partitions: Vec<i32> = known.iter().map(|a| a.partition).collect();
        let expected: Vec<i64> = known.iter().filter_map(|a| a.expected).collect();
        let next: Vec<i64> = known.iter().map(|a| a.next).collect();
        let updated: Vec<i32> = sqlx::query_scalar(
            "WITH locked AS MATERIALIZED ( \
                SELECT partition FROM source_positions \
                WHERE source = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE) \
             UPDATE source_positions p SET next_offset = u.next, updated_at = now() \
             FROM UNNEST($2::int4[], $3::int8[], $4::int8[]) AS u(partition, expected, next) \
             WHERE p.source = $1 AND p.partition = u.partition AND p.next_offset = u.expected \
                AND p.partition IN (SELECT partition FROM locked) \
             RETURNING p.partition",
        )
        .bind(source)
        .bind(&partitions)
        .bind(&expected)
        .bind(&next)
        .fetch_all(&mut *conn)
        .await?;
        moved.extend(updated);
    }
    Ok(advances
        .iter()
        .filter(|a| !moved.contains(&a.partition))
        .map(|a| a.partition)
        .collect())
}

/// The rows every batch may have, in one statement: sessions, kernels (whole, or only their
/// statistics), running counts, dependencies and seen event ids. An empty array makes its part a
/// no-op, so the statement text (and its prepared plan) is one for every batch.
async fn write_rows(conn: &mut PgConnection, commit: &Commit<'_>) -> Result<(), StoreError> {
    let changes = commit.changes;
    if changes.sessions.is_empty() && changes.seen.is_empty() && changes.counts.is_empty() {
        return Ok(());
    }
    let mut s = SessionColumns::default();
    for r in changes.session_rows() {
        s.id.push(r.id);
        s.name.push(&r.name);
        s.kind.push(&r.session_type);
        s.tag.push(r.tag.as_deref());
        s.image.push(&r.image);
        s.registry.push(&r.registry);
        s.cluster_template.push(r.cluster_template.as_deref());
        s.domain_name.push(&r.domain_name);
        s.group_name.push(&r.group_name);
        s.group_id.push(r.group_id);
        s.user_email.push(&r.user_email);
        s.user_id.push(r.user_id);
        s.access_key.push(&r.access_key);
        s.created_user_email.push(r.created_user_email.as_deref());
        s.created_user_id.push(r.created_user_id);
        s.status.push(r.status.as_str());
        s.status_changed.push(r.status_changed);
        s.status_info.push(r.status_info.as_deref());
        s.created_at.push(r.created_at);
        s.terminated_at.push(r.terminated_at);
        s.startup_command.push(r.startup_command.as_deref());
        s.result.push(&r.result);
        s.resource_opts.push(Json(&r.resource_opts));
        s.scaling_group.push(r.scaling_group.as_deref());
        s.service_ports.push(r.service_ports.as_ref().map(Json));
        s.mounts.push(Json(&r.mounts));
        s.occupied_slots.push(r.occupied_slots.to_json());
        s.num_queries.push(r.num_queries);
    }
    let mut k = KernelColumns::default();
    for kr in changes.whole_kernel_rows() {
        k.id.push(kr.id);
        k.session_id.push(kr.session_id);
        k.ordinal.push(kr.ordinal);
        k.role.push(&kr.role);
        k.hostname.push(kr.hostname.as_deref());
        k.image.push(&kr.image);
        k.registry.push(&kr.registry);
        k.status.push(kr.status.as_str());
        k.status_changed.push(kr.status_changed);
        k.status_info.push(kr.status_info.as_deref());
        k.created_at.push(kr.created_at);
        k.terminated_at.push(kr.terminated_at);
        k.agent.push(kr.agent.as_deref());
        k.container_id.push(kr.container_id.as_deref());
        k.resource_opts.push(Json(&kr.resource_opts));
        k.occupied_slots.push(kr.occupied_slots.to_json());
        k.service_ports.push(kr.service_ports.as_ref().map(Json));
        k.last_stat.push(kr.last_stat.as_ref().map(Json));
    }
    // Kernels of which only `last_stat` changed: an UPDATE of that column, not an upsert of
    // the whole row (half of a stream is `kernel_stat_sync`).
    let (stat_id, stat): (Vec<Uuid>, Vec<Option<Json<&JsonObject>>>) = changes
        .stat_kernel_rows()
        .map(|kr| (kr.id, kr.last_stat.as_ref().map(Json)))
        .unzip();

    // Count deltas in key order (the fold sorts them): concurrent writers lock rows in one order.
    let shard = commit
        .advances
        .iter()
        .map(|a| a.partition)
        .min()
        .unwrap_or(0);
    let c = &changes.counts;
    let count_keys: Vec<&str> = c.iter().map(|d| d.access_key.as_str()).collect();
    let count_statuses: Vec<&str> = c.iter().map(|d| d.status.as_str()).collect();
    let count_domains: Vec<&str> = c.iter().map(|d| d.domain_name.as_str()).collect();
    let count_groups: Vec<Uuid> = c.iter().map(|d| d.group_id).collect();
    let count_deltas: Vec<i64> = c.iter().map(|d| d.delta).collect();

    // Dependencies never change after the enqueue: written once, for sessions created here.
    let created: HashSet<Uuid> = changes.created.iter().copied().collect();
    let (mut dep_session, mut dep_ordinal, mut dep_on) = (Vec::new(), Vec::new(), Vec::new());
    for state in changes
        .sessions
        .iter()
        .filter(|s| created.contains(&s.session.id))
    {
        for (d, i) in state.session.dependencies.iter().zip(0i32..) {
            dep_session.push(state.session.id);
            dep_ordinal.push(i);
            dep_on.push(*d);
        }
    }

    // Seen ids without ON CONFLICT: the batch's load found none of them recorded, so one that is
    // recorded now was recorded meanwhile by another instance (see `commit`). A plain insert also
    // saves the conflict check's second index search per id (1,000,000 random ids: 5.2 s with
    // it, 3.4 s without, on the bench machine).
    let (seen_ids, seen_sessions): (Vec<Uuid>, Vec<Uuid>) = changes.seen.iter().copied().unzip();

    sqlx::query(WRITE_ROWS)
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.kind)
        .bind(&s.tag)
        .bind(&s.image)
        .bind(&s.registry)
        .bind(&s.cluster_template)
        .bind(&s.domain_name)
        .bind(&s.group_name)
        .bind(&s.group_id)
        .bind(&s.user_email)
        .bind(&s.user_id)
        .bind(&s.access_key)
        .bind(&s.created_user_email)
        .bind(&s.created_user_id)
        .bind(&s.status)
        .bind(&s.status_changed)
        .bind(&s.status_info)
        .bind(&s.created_at)
        .bind(&s.terminated_at)
        .bind(&s.startup_command)
        .bind(&s.result)
        .bind(&s.resource_opts)
        .bind(&s.scaling_group)
        .bind(&s.service_ports)
        .bind(&s.mounts)
        .bind(&s.occupied_slots)
        .bind(&s.num_queries)
        .bind(&k.id)
        .bind(&k.session_id)
        .bind(&k.ordinal)
        .bind(&k.role)
        .bind(&k.hostname)
        .bind(&k.image)
        .bind(&k.registry)
        .bind(&k.status)
        .bind(&k.status_changed)
        .bind(&k.status_info)
        .bind(&k.created_at)
        .bind(&k.terminated_at)
        .bind(&k.agent)
        .bind(&k.container_id)
        .bind(&k.resource_opts)
        .bind(&k.occupied_slots)
        .bind(&k.service_ports)
        .bind(&k.last_stat)
        .bind(&stat_id)
        .bind(&stat)
        .bind(&count_keys)
        .bind(&count_statuses)
        .bind(&count_domains)
        .bind(&count_groups)
        .bind(shard)
        .bind(&count_deltas)
        .bind(&dep_session)
        .bind(&dep_ordinal)
        .bind(&dep_on)
        .bind(&seen_ids)
        .bind(&seen_sessions)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Writes of [`write_rows`]: data-modifying CTEs, each on its own table except the two of
/// `kernels`, whose rows are disjoint (a kernel is written whole or by its statistics).
const WRITE_ROWS: &str = "\
WITH sessions_written AS ( \
    INSERT INTO sessions (id, name, type, tag, image, registry, cluster_template, \
        domain_name, group_name, group_id, user_email, user_id, access_key, \
        created_user_email, created_user_id, status, status_changed, status_info, \
        created_at, terminated_at, startup_command, result, resource_opts, scaling_group, \
        service_ports, mounts, occupied_slots, num_queries) \
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
        $6::text[], $7::text[], $8::text[], $9::text[], $10::uuid[], $11::text[], \
        $12::uuid[], $13::text[], $14::text[], $15::uuid[], $16::text[], \
        $17::timestamptz[], $18::text[], $19::timestamptz[], $20::timestamptz[], \
        $21::text[], $22::text[], $23::jsonb[], $24::text[], $25::jsonb[], $26::jsonb[], \
        $27::jsonb[], $28::int8[]) \
    ON CONFLICT (id) DO UPDATE SET \
        status = EXCLUDED.status, status_changed = EXCLUDED.status_changed, \
        status_info = EXCLUDED.status_info, terminated_at = EXCLUDED.terminated_at, \
        result = EXCLUDED.result, scaling_group = EXCLUDED.scaling_group, \
        service_ports = EXCLUDED.service_ports, occupied_slots = EXCLUDED.occupied_slots, \
        num_queries = EXCLUDED.num_queries \
), kernels_written AS ( \
    INSERT INTO kernels (id, session_id, ordinal, role, hostname, image, registry, status, \
        status_changed, status_info, created_at, terminated_at, agent, container_id, \
        resource_opts, occupied_slots, service_ports, last_stat) \
    SELECT * FROM UNNEST($29::uuid[], $30::uuid[], $31::int4[], $32::text[], $33::text[], \
        $34::text[], $35::text[], $36::text[], $37::timestamptz[], $38::text[], \
        $39::timestamptz[], $40::timestamptz[], $41::text[], $42::text[], $43::jsonb[], \
        $44::jsonb[], $45::jsonb[], $46::jsonb[]) \
    ON CONFLICT (id) DO UPDATE SET \
        status = EXCLUDED.status, status_changed = EXCLUDED.status_changed, \
        status_info = EXCLUDED.status_info, terminated_at = EXCLUDED.terminated_at, \
        agent = EXCLUDED.agent, container_id = EXCLUDED.container_id, \
        occupied_slots = EXCLUDED.occupied_slots, service_ports = EXCLUDED.service_ports, \
        last_stat = EXCLUDED.last_stat \
), stats_written AS ( \
    UPDATE kernels k SET last_stat = u.last_stat \
    FROM UNNEST($47::uuid[], $48::jsonb[]) AS u(id, last_stat) WHERE k.id = u.id \
), counts_written AS ( \
    INSERT INTO session_counts AS c (access_key, status, domain_name, group_id, shard, n) \
    SELECT a, s, d, g, $53, n FROM UNNEST($49::text[], $50::text[], $51::text[], $52::uuid[], \
        $54::int8[]) AS u(a, s, d, g, n) \
    ON CONFLICT (access_key, status, domain_name, group_id, shard) \
    DO UPDATE SET n = c.n + EXCLUDED.n \
), dependencies_written AS ( \
    INSERT INTO session_dependencies (session_id, ordinal, depends_on) \
    SELECT * FROM UNNEST($55::uuid[], $56::int4[], $57::uuid[]) ON CONFLICT DO NOTHING \
) \
INSERT INTO seen_events (event_id, session_id) SELECT * FROM UNNEST($58::uuid[], $59::uuid[])";

/// The source, partition and offset columns of events' positions, for `UNNEST`.
fn position_columns<'a>(
    positions: impl ExactSizeIterator<Item = (&'a str, Position)>,
) -> (Vec<&'a str>, Vec<i32>, Vec<i64>) {
    let n = positions.len();
    let mut columns = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (source, p) in positions {
        columns.0.push(source);
        columns.1.push(p.partition);
        columns.2.push(p.offset);
    }
    columns
}

/// What few batches have: released and newly parked events, retired and new dead letters.
async fn write_rare(conn: &mut PgConnection, commit: &Commit<'_>) -> Result<(), StoreError> {
    let changes = commit.changes;
    if !changes.released.is_empty() {
        let (sources, partitions, offsets) =
            position_columns(changes.released.iter().map(|(s, p)| (s.as_str(), *p)));
        sqlx::query(
            "DELETE FROM parked_events p USING UNNEST($1::text[], $2::int4[], $3::int8[]) \
                AS r(source, partition, off) \
             WHERE p.source = r.source AND p.partition = r.partition AND p.\"offset\" = r.off",
        )
        .bind(&sources)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&mut *conn)
        .await?;
    }

    if !changes.parked.is_empty() {
        let p = &changes.parked;
        let (sources, partitions, offsets) =
            position_columns(p.iter().map(|e| (e.source.as_str(), e.position)));
        let sessions: Vec<Uuid> = p.iter().map(|e| e.session_id).collect();
        let events: Vec<Uuid> = p.iter().map(|e| e.event_id).collect();
        let payloads: Vec<&[u8]> = p.iter().map(|e| e.bytes.as_slice()).collect();
        sqlx::query(
            "INSERT INTO parked_events (source, partition, \"offset\", session_id, event_id, payload) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::uuid[], $5::uuid[], \
                $6::bytea[]) ON CONFLICT DO NOTHING",
        )
        .bind(&sources)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&sessions)
        .bind(&events)
        .bind(&payloads)
        .execute(&mut *conn)
        .await?;
    }

    if !commit.retire.is_empty() {
        sqlx::query("DELETE FROM dead_letters WHERE id = ANY($1)")
            .bind(commit.retire)
            .execute(&mut *conn)
            .await?;
    }

    if !changes.dead_letters.is_empty() {
        let d = &changes.dead_letters;
        let (sources, partitions, offsets) =
            position_columns(d.iter().map(|e| (e.source.as_str(), e.position)));
        let event_ids: Vec<Option<Uuid>> = d.iter().map(|e| e.event_id).collect();
        let types: Vec<Option<&str>> = d.iter().map(|e| e.event_type.as_deref()).collect();
        let sessions: Vec<Option<Uuid>> = d.iter().map(|e| e.session_id).collect();
        let labels: Vec<&str> = d.iter().map(|e| e.label).collect();
        let reasons: Vec<&str> = d.iter().map(|e| e.reason.as_str()).collect();
        let payloads: Vec<&[u8]> = d.iter().map(|e| e.bytes.as_slice()).collect();
        sqlx::query(
            "INSERT INTO dead_letters (source, partition, \"offset\", event_id, event_type, \
                session_id, label, reason, payload) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::uuid[], $5::text[], \
                $6::uuid[], $7::text[], $8::text[], $9::bytea[]) ON CONFLICT DO NOTHING",
        )
        .bind(&sources)
        .bind(&partitions)
        .bind(&offsets)
        .bind(&event_ids)
        .bind(&types)
        .bind(&sessions)
        .bind(&labels)
        .bind(&reasons)
        .bind(&payloads)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Column vectors for one multi-row `UNNEST` upsert of sessions.
#[derive(Default)]
struct SessionColumns<'a> {
    id: Vec<Uuid>,
    name: Vec<&'a str>,
    kind: Vec<&'a str>,
    tag: Vec<Option<&'a str>>,
    image: Vec<&'a str>,
    registry: Vec<&'a str>,
    cluster_template: Vec<Option<&'a str>>,
    domain_name: Vec<&'a str>,
    group_name: Vec<&'a str>,
    group_id: Vec<Uuid>,
    user_email: Vec<&'a str>,
    user_id: Vec<Uuid>,
    access_key: Vec<&'a str>,
    created_user_email: Vec<Option<&'a str>>,
    created_user_id: Vec<Option<Uuid>>,
    status: Vec<&'static str>,
    status_changed: Vec<DateTime<Utc>>,
    status_info: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
    terminated_at: Vec<Option<DateTime<Utc>>>,
    startup_command: Vec<Option<&'a str>>,
    result: Vec<&'a str>,
    resource_opts: Vec<Json<&'a JsonObject>>,
    scaling_group: Vec<Option<&'a str>>,
    service_ports: Vec<Option<Json<&'a Value>>>,
    mounts: Vec<Json<&'a Vec<String>>>,
    occupied_slots: Vec<Value>,
    num_queries: Vec<i64>,
}

#[derive(Default)]
struct KernelColumns<'a> {
    id: Vec<Uuid>,
    session_id: Vec<Uuid>,
    ordinal: Vec<i32>,
    role: Vec<&'a str>,
    hostname: Vec<Option<&'a str>>,
    image: Vec<&'a str>,
    registry: Vec<&'a str>,
    status: Vec<&'static str>,
    status_changed: Vec<DateTime<Utc>>,
    status_info: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
    terminated_at: Vec<Option<DateTime<Utc>>>,
    agent: Vec<Option<&'a str>>,
    container_id: Vec<Option<&'a str>>,
    resource_opts: Vec<Json<&'a JsonObject>>,
    occupied_slots: Vec<Value>,
    service_ports: Vec<Option<Json<&'a Value>>>,
    last_stat: Vec<Option<Json<&'a JsonObject>>>,
}
