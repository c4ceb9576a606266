//! The read model's row shapes, written once for every backend: each table's columns (name, kind,
//! whether an upsert overwrites it), how a row becomes column values, and how a backend's decoded
//! cells become a row again.
//!
//! A new column is one entry in its [`Table`], one line in its `*_values` function and one in its
//! `*_from` function here; the `roundtrip` tests fail until all three agree. Each backend stores a
//! kind its own way (PostgreSQL natively, SQLite as text) in its `Cells` and value binding.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sessionview_events::{JsonObject, ResourceSlots, Status};
use sessionview_projection::{DeadLetter, KernelRow, ParkedEvent, Position, SessionRow};
use uuid::Uuid;

use crate::read::{KeyPair, Role};
use crate::{StoreCounts, StoreError, StoredDeadLetter};

/// How a column's values are typed (each backend maps a kind to its own SQL type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Uuid,
    Text,
    Int4,
    Int8,
    Bool,
    Time,
    Json,
    Bytes,
}

/// One column of a [`Table`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// Whether an upsert of an existing row overwrites it (the others are fixed at creation).
    pub updated: bool,
}

const fn fixed(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        updated: false,
    }
}

const fn updated(name: &'static str, kind: Kind) -> Column {
    Column {
        name,
        kind,
        updated: true,
    }
}

/// A table's columns, in the order rows are written and decoded.
#[derive(Debug)]
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
}

impl Table {
    /// `a, b, c`.
    pub(crate) fn list(&self) -> String {
        self.names(self.columns.len()).join(", ")
    }

    /// `x.a, x.b, x.c`.
    pub(crate) fn prefixed(&self, alias: &str) -> String {
        self.prefixed_first(alias, self.columns.len())
    }

    /// The first `n` columns, `x.a, x.b`.
    pub(crate) fn prefixed_first(&self, alias: &str, n: usize) -> String {
        self.names(n)
            .iter()
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `ON CONFLICT (id) DO UPDATE SET`'s assignments: `a = EXCLUDED.a, ...` for every updated
    /// column.
    pub(crate) fn upsert_assignments(&self) -> String {
        self.columns
            .iter()
            .filter(|c| c.updated)
            .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn names(&self, n: usize) -> Vec<&'static str> {
        self.columns[..n].iter().map(|c| c.name).collect()
    }
}

use Kind::{Bool, Int4, Int8, Json as J, Text, Time, Uuid as U};

/// `sessions`: a `ComputeSession` (its dependencies are rows of `session_dependencies`).
pub(crate) static SESSIONS: Table = Table {
    name: "sessions",
    columns: &[
        fixed("id", U),
        fixed("name", Text),
        fixed("type", Text),
        fixed("tag", Text),
        fixed("image", Text),
        fixed("registry", Text),
        fixed("cluster_template", Text),
        fixed("domain_name", Text),
        fixed("group_name", Text),
        fixed("group_id", U),
        fixed("user_email", Text),
        fixed("user_id", U),
        fixed("access_key", Text),
        fixed("created_user_email", Text),
        fixed("created_user_id", U),
        updated("status", Text),
        updated("status_changed", Time),
        updated("status_info", Text),
        fixed("created_at", Time),
        updated("terminated_at", Time),
        fixed("startup_command", Text),
        updated("result", Text),
        fixed("resource_opts", J),
        updated("scaling_group", Text),
        updated("service_ports", J),
        fixed("mounts", J),
        updated("occupied_slots", J),
        updated("num_queries", Int8),
    ],
};

/// `kernels`: a `ComputeContainer`. Its JSON columns come last, after [`KERNEL_SCALARS`].
pub(crate) static KERNELS: Table = Table {
    name: "kernels",
    columns: &[
        fixed("id", U),
        fixed("session_id", U),
        fixed("ordinal", Int4),
        fixed("role", Text),
        fixed("hostname", Text),
        fixed("image", Text),
        fixed("registry", Text),
        updated("status", Text),
        updated("status_changed", Time),
        updated("status_info", Text),
        fixed("created_at", Time),
        updated("terminated_at", Time),
        updated("agent", Text),
        updated("container_id", Text),
        fixed("resource_opts", J),
        updated("occupied_slots", J),
        updated("service_ports", J),
        updated("last_stat", J),
    ],
};

/// The kernel columns before the JSON ones: what a read without JSON fields selects.
pub(crate) const KERNEL_SCALARS: usize = 14;

/// `keypairs`.
pub(crate) static KEYPAIRS: Table = Table {
    name: "keypairs",
    columns: &[
        fixed("access_key", Text),
        fixed("secret_key", Text),
        fixed("user_id", U),
        fixed("user_email", Text),
        fixed("domain_name", Text),
        fixed("role", Text),
        updated("is_active", Bool),
        fixed("created_at", Time),
    ],
};

/// `dead_letters`, the columns a commit writes; reads add the database's `id` before them and
/// `recorded_at` after them (see [`dead_letter_from`]).
pub(crate) static DEAD_LETTERS: Table = Table {
    name: "dead_letters",
    columns: &[
        fixed("source", Text),
        fixed("partition", Int4),
        fixed("\"offset\"", Int8),
        fixed("event_id", U),
        fixed("event_type", Text),
        fixed("session_id", U),
        fixed("label", Text),
        fixed("reason", Text),
        fixed("payload", Kind::Bytes),
    ],
};

/// `parked_events`, as a load reads them.
pub(crate) static PARKED_EVENTS: Table = Table {
    name: "parked_events",
    columns: &[
        fixed("source", Text),
        fixed("partition", Int4),
        fixed("\"offset\"", Int8),
        fixed("session_id", U),
        fixed("event_id", U),
        fixed("payload", Kind::Bytes),
    ],
};

/// The statement that counts every table (the same SQL on every backend), decoded by
/// [`counts_from`]; `schema` is `""` for the search path or a checked `"name."`.
pub(crate) fn counts_sql(schema: &str) -> String {
    let counts = [
        "count(*) FROM {}sessions",
        "count(*) FROM {}kernels",
        // Event ids recorded (16 bytes each).
        "coalesce(sum(length(ids)), 0) / 16 FROM {}session_seen",
        "count(*) FROM {}parked_events",
        "count(*) FROM {}dead_letters",
    ]
    .map(|t| format!("(SELECT {})", t.replace("{}", schema)));
    format!("SELECT {}", counts.join(", "))
}

/// One column's value, borrowed from the row it was taken from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Uuid(Option<Uuid>),
    Text(Option<&'a str>),
    Int4(Option<i32>),
    Int8(Option<i64>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
    /// Serialized JSON.
    Json(Option<String>),
    Bytes(Option<&'a [u8]>),
}

impl Value<'_> {
    #[cfg(test)]
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Value::Uuid(_) => U,
            Value::Text(_) => Text,
            Value::Int4(_) => Int4,
            Value::Int8(_) => Int8,
            Value::Bool(_) => Bool,
            Value::Time(_) => Time,
            Value::Json(_) => J,
            Value::Bytes(_) => Kind::Bytes,
        }
    }
}

fn json(v: &impl serde::Serialize) -> Value<'static> {
    // Serializing a JSON value or a map of them cannot fail.
    Value::Json(serde_json::to_string(v).ok())
}

fn opt_json(v: Option<&impl serde::Serialize>) -> Value<'static> {
    Value::Json(v.and_then(|v| serde_json::to_string(v).ok()))
}

fn text(s: &str) -> Value<'_> {
    Value::Text(Some(s))
}

fn uuid(id: Uuid) -> Value<'static> {
    Value::Uuid(Some(id))
}

fn time(t: DateTime<Utc>) -> Value<'static> {
    Value::Time(Some(t))
}

/// A session's values, in the order of [`SESSIONS`].
pub(crate) fn session_values(r: &SessionRow) -> [Value<'_>; 28] {
    [
        uuid(r.id),
        text(&r.name),
        text(&r.session_type),
        Value::Text(r.tag.as_deref()),
        text(&r.image),
        text(&r.registry),
        Value::Text(r.cluster_template.as_deref()),
        text(&r.domain_name),
        text(&r.group_name),
        uuid(r.group_id),
        text(&r.user_email),
        uuid(r.user_id),
        text(&r.access_key),
        Value::Text(r.created_user_email.as_deref()),
        Value::Uuid(r.created_user_id),
        text(r.status.as_str()),
        time(r.status_changed),
        Value::Text(r.status_info.as_deref()),
        time(r.created_at),
        Value::Time(r.terminated_at),
        Value::Text(r.startup_command.as_deref()),
        text(&r.result),
        json(&r.resource_opts),
        Value::Text(r.scaling_group.as_deref()),
        opt_json(r.service_ports.as_ref()),
        json(&r.mounts),
        json(&r.occupied_slots.to_json()),
        Value::Int8(Some(r.num_queries)),
    ]
}

/// A kernel's values, in the order of [`KERNELS`].
pub(crate) fn kernel_values(k: &KernelRow) -> [Value<'_>; 18] {
    [
        uuid(k.id),
        uuid(k.session_id),
        Value::Int4(Some(k.ordinal)),
        text(&k.role),
        Value::Text(k.hostname.as_deref()),
        text(&k.image),
        text(&k.registry),
        text(k.status.as_str()),
        time(k.status_changed),
        Value::Text(k.status_info.as_deref()),
        time(k.created_at),
        Value::Time(k.terminated_at),
        Value::Text(k.agent.as_deref()),
        Value::Text(k.container_id.as_deref()),
        json(&k.resource_opts),
        json(&k.occupied_slots.to_json()),
        opt_json(k.service_ports.as_ref()),
        opt_json(k.last_stat.as_ref()),
    ]
}

/// A keypair's values, in the order of [`KEYPAIRS`].
pub(crate) fn keypair_values(kp: &KeyPair) -> [Value<'_>; 8] {
    [
        text(&kp.access_key),
        text(&kp.secret_key),
        uuid(kp.user_id),
        text(&kp.user_email),
        text(&kp.domain_name),
        text(kp.role.as_str()),
        Value::Bool(Some(kp.is_active)),
        time(kp.created_at),
    ]
}

/// A parked event's values, in the order of [`PARKED_EVENTS`].
pub(crate) fn parked_values(e: &ParkedEvent) -> [Value<'_>; 6] {
    [
        text(&e.source),
        Value::Int4(Some(e.position.partition)),
        Value::Int8(Some(e.position.offset)),
        uuid(e.session_id),
        uuid(e.event_id),
        Value::Bytes(Some(&e.bytes)),
    ]
}

/// A new dead letter's values, in the order of [`DEAD_LETTERS`].
pub(crate) fn dead_letter_values(d: &DeadLetter) -> [Value<'_>; 9] {
    [
        text(&d.source),
        Value::Int4(Some(d.position.partition)),
        Value::Int8(Some(d.position.offset)),
        Value::Uuid(d.event_id),
        Value::Text(d.event_type.as_deref()),
        Value::Uuid(d.session_id),
        text(d.label),
        text(&d.reason),
        Value::Bytes(Some(&d.bytes)),
    ]
}

/// The cells of one row, read in column order by a backend that knows how it stores each kind.
/// The required methods read the next cell as its kind, `None` for NULL; the provided ones add
/// what a non-null or structured column requires, naming the table when a value is not what
/// the schema promises.
pub(crate) trait Cells {
    /// The table whose columns these are (for errors).
    fn table(&self) -> &'static str;
    fn opt_uuid(&mut self) -> Result<Option<Uuid>, StoreError>;
    fn opt_text(&mut self) -> Result<Option<String>, StoreError>;
    fn opt_int4(&mut self) -> Result<Option<i32>, StoreError>;
    fn opt_int8(&mut self) -> Result<Option<i64>, StoreError>;
    fn opt_bool(&mut self) -> Result<Option<bool>, StoreError>;
    fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, StoreError>;
    fn opt_json(&mut self) -> Result<Option<Json>, StoreError>;
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, StoreError>;

    fn corrupt(&self, detail: impl ToString) -> StoreError {
        StoreError::Corrupt {
            table: self.table(),
            detail: detail.to_string(),
        }
    }

    fn required<T>(&self, v: Option<T>) -> Result<T, StoreError> {
        v.ok_or_else(|| self.corrupt("NULL in a column that is NOT NULL"))
    }

    fn uuid(&mut self) -> Result<Uuid, StoreError> {
        let v = self.opt_uuid()?;
        self.required(v)
    }

    fn text(&mut self) -> Result<String, StoreError> {
        let v = self.opt_text()?;
        self.required(v)
    }

    fn int4(&mut self) -> Result<i32, StoreError> {
        let v = self.opt_int4()?;
        self.required(v)
    }

    fn int8(&mut self) -> Result<i64, StoreError> {
        let v = self.opt_int8()?;
        self.required(v)
    }

    fn boolean(&mut self) -> Result<bool, StoreError> {
        let v = self.opt_bool()?;
        self.required(v)
    }

    fn time(&mut self) -> Result<DateTime<Utc>, StoreError> {
        let v = self.opt_time()?;
        self.required(v)
    }

    fn json(&mut self) -> Result<Json, StoreError> {
        let v = self.opt_json()?;
        self.required(v)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        let v = self.opt_bytes()?;
        self.required(v)
    }

    fn status(&mut self) -> Result<Status, StoreError> {
        let t = self.text()?;
        Status::from_str(&t).map_err(|e| self.corrupt(e))
    }

    fn object(&mut self) -> Result<JsonObject, StoreError> {
        let v = self.json()?;
        self.as_object(v)
    }

    fn opt_object(&mut self) -> Result<Option<JsonObject>, StoreError> {
        match self.opt_json()? {
            Some(v) => self.as_object(v).map(Some),
            None => Ok(None),
        }
    }

    fn as_object(&self, v: Json) -> Result<JsonObject, StoreError> {
        match v {
            Json::Object(o) => Ok(o),
            other => Err(self.corrupt(format!("expected a JSON object, got {other}"))),
        }
    }

    fn slots(&mut self) -> Result<ResourceSlots, StoreError> {
        let v = self.json()?;
        ResourceSlots::from_json(&v).map_err(|e| self.corrupt(e))
    }
}

/// The cells of a backend's row from column `next` on; each backend implements [`Cells`] for its
/// row type, decoding each kind as it stores it.
pub(crate) struct RowCells<'r, R> {
    row: &'r R,
    next: usize,
    table: &'static str,
}

impl<'r, R: sqlx::Row> RowCells<'r, R> {
    pub(crate) fn at(row: &'r R, first: usize, table: &'static str) -> Self {
        Self {
            row,
            next: first,
            table,
        }
    }

    pub(crate) fn table_name(&self) -> &'static str {
        self.table
    }

    /// The next cell, as the driver decodes `T`.
    pub(crate) fn get<T>(&mut self) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        let v = self.row.try_get(self.next)?;
        self.next += 1;
        Ok(v)
    }
}

/// A session from the next [`SESSIONS`] cells; its dependencies empty.
pub(crate) fn session_from(c: &mut impl Cells) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: c.uuid()?,
        name: c.text()?,
        session_type: c.text()?,
        tag: c.opt_text()?,
        image: c.text()?,
        registry: c.text()?,
        cluster_template: c.opt_text()?,
        domain_name: c.text()?,
        group_name: c.text()?,
        group_id: c.uuid()?,
        user_email: c.text()?,
        user_id: c.uuid()?,
        access_key: c.text()?,
        created_user_email: c.opt_text()?,
        created_user_id: c.opt_uuid()?,
        status: c.status()?,
        status_changed: c.time()?,
        status_info: c.opt_text()?,
        created_at: c.time()?,
        terminated_at: c.opt_time()?,
        startup_command: c.opt_text()?,
        result: c.text()?,
        resource_opts: c.object()?,
        scaling_group: c.opt_text()?,
        service_ports: c.opt_json()?,
        mounts: {
            let v = c.json()?;
            serde_json::from_value(v).map_err(|e| c.corrupt(e))?
        },
        occupied_slots: c.slots()?,
        num_queries: c.int8()?,
        dependencies: Vec::new(),
    })
}

/// A kernel from the next [`KERNELS`] cells, or with `scalars_only` from its first
/// [`KERNEL_SCALARS`] (the JSON fields left empty).
pub(crate) fn kernel_from(c: &mut impl Cells, scalars_only: bool) -> Result<KernelRow, StoreError> {
    let mut k = KernelRow {
        id: c.uuid()?,
        session_id: c.uuid()?,
        ordinal: c.int4()?,
        role: c.text()?,
        hostname: c.opt_text()?,
        image: c.text()?,
        registry: c.text()?,
        status: c.status()?,
        status_changed: c.time()?,
        status_info: c.opt_text()?,
        created_at: c.time()?,
        terminated_at: c.opt_time()?,
        agent: c.opt_text()?,
        container_id: c.opt_text()?,
        resource_opts: JsonObject::new(),
        occupied_slots: ResourceSlots::default(),
        service_ports: None,
        last_stat: None,
    };
    if !scalars_only {
        k.resource_opts = c.object()?;
        k.occupied_slots = c.slots()?;
        k.service_ports = c.opt_json()?;
        k.last_stat = c.opt_object()?;
    }
    Ok(k)
}

/// A keypair from the next [`KEYPAIRS`] cells.
pub(crate) fn keypair_from(c: &mut impl Cells) -> Result<KeyPair, StoreError> {
    Ok(KeyPair {
        access_key: c.text()?,
        secret_key: c.text()?,
        user_id: c.uuid()?,
        user_email: c.text()?,
        domain_name: c.text()?,
        role: {
            let role = c.text()?;
            role.parse::<Role>().map_err(|e| c.corrupt(e))?
        },
        is_active: c.boolean()?,
        created_at: c.time()?,
    })
}

/// A dead letter from the next [`DEAD_LETTERS`] cells.
pub(crate) fn dead_letter_from(c: &mut impl Cells) -> Result<StoredDeadLetter, StoreError> {
    Ok(StoredDeadLetter {
        id: c.int8()?,
        source: c.text()?,
        partition: c.int4()?,
        offset: c.int8()?,
        event_id: c.opt_uuid()?,
        event_type: c.opt_text()?,
        session_id: c.opt_uuid()?,
        label: c.text()?,
        reason: c.text()?,
        payload: c.bytes()?,
        recorded_at: c.time()?,
    })
}

/// A parked event from the next [`PARKED_EVENTS`] cells.
pub(crate) fn parked_from(c: &mut impl Cells) -> Result<ParkedEvent, StoreError> {
    Ok(ParkedEvent {
        source: c.text()?,
        position: Position {
            partition: c.int4()?,
            offset: c.int8()?,
        },
        session_id: c.uuid()?,
        event_id: c.uuid()?,
        bytes: c.bytes()?,
    })
}

/// The counts of [`COUNTS_SQL`].
pub(crate) fn counts_from(c: &mut impl Cells) -> Result<StoreCounts, StoreError> {
    Ok(StoreCounts {
        sessions: c.int8()?,
        kernels: c.int8()?,
        seen_events: c.int8()?,
        parked_events: c.int8()?,
        dead_letters: c.int8()?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::VecDeque;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    /// Cells that give back values as a backend would have stored them.
    pub(crate) struct Stored(VecDeque<Value<'static>>);

    impl Stored {
        pub(crate) fn of(values: &[Value<'_>]) -> Self {
            Stored(
                values
                    .iter()
                    .map(|v| match v {
                        Value::Text(t) => Value::Text(t.map(|t| &*t.to_owned().leak())),
                        Value::Uuid(v) => Value::Uuid(*v),
                        Value::Int4(v) => Value::Int4(*v),
                        Value::Int8(v) => Value::Int8(*v),
                        Value::Bool(v) => Value::Bool(*v),
                        Value::Time(v) => Value::Time(*v),
                        Value::Json(v) => Value::Json(v.clone()),
                        Value::Bytes(v) => Value::Bytes(v.map(|b| &*b.to_vec().leak())),
                    })
                    .collect(),
            )
        }

        fn next(&mut self) -> Value<'static> {
            self.0.pop_front().unwrap_or(Value::Bool(None))
        }
    }

    impl Cells for Stored {
        fn table(&self) -> &'static str {
            "test"
        }
        fn opt_uuid(&mut self) -> Result<Option<Uuid>, StoreError> {
            match self.next() {
                Value::Uuid(v) => Ok(v),
                other => Err(self.corrupt(format!("uuid read from {other:?}"))),
            }
        }
        fn opt_text(&mut self) -> Result<Option<String>, StoreError> {
            match self.next() {
                Value::Text(v) => Ok(v.map(str::to_owned)),
                other => Err(self.corrupt(format!("text read from {other:?}"))),
            }
        }
        fn opt_int4(&mut self) -> Result<Option<i32>, StoreError> {
            match self.next() {
                Value::Int4(v) => Ok(v),
                other => Err(self.corrupt(format!("int4 read from {other:?}"))),
            }
        }
        fn opt_int8(&mut self) -> Result<Option<i64>, StoreError> {
            match self.next() {
                Value::Int8(v) => Ok(v),
                other => Err(self.corrupt(format!("int8 read from {other:?}"))),
            }
        }
        fn opt_bool(&mut self) -> Result<Option<bool>, StoreError> {
            match self.next() {
                Value::Bool(v) => Ok(v),
                other => Err(self.corrupt(format!("bool read from {other:?}"))),
            }
        }
        fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
            match self.next() {
                Value::Time(v) => Ok(v),
                other => Err(self.corrupt(format!("time read from {other:?}"))),
            }
        }
        fn opt_json(&mut self) -> Result<Option<Json>, StoreError> {
            match self.next() {
                Value::Json(v) => v
                    .map(|s| serde_json::from_str(&s).map_err(|e| self.corrupt(e)))
                    .transpose(),
                other => Err(self.corrupt(format!("json read from {other:?}"))),
            }
        }
        fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
            match self.next() {
                Value::Bytes(v) => Ok(v.map(<[u8]>::to_vec)),
                other => Err(self.corrupt(format!("bytes read from {other:?}"))),
            }
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0)
            .single()
            .unwrap_or_default()
    }

    pub(crate) fn session() -> SessionRow {
        SessionRow {
            id: Uuid::from_u128(1),
            name: "name".into(),
            session_type: "batch".into(),
            tag: Some("tag".into()),
            image: "image".into(),
            registry: "registry".into(),
            cluster_template: Some("template".into()),
            domain_name: "domain".into(),
            group_name: "group".into(),
            group_id: Uuid::from_u128(2),
            user_email: "user@example.com".into(),
            user_id: Uuid::from_u128(3),
            access_key: "AKIA".into(),
            created_user_email: Some("creator@example.com".into()),
            created_user_id: Some(Uuid::from_u128(4)),
            status: Status::Running,
            status_changed: at(1),
            status_info: Some("info".into()),
            created_at: at(2),
            terminated_at: Some(at(3)),
            startup_command: Some("run".into()),
            result: "SUCCESS".into(),
            resource_opts: json!({"shmem": 1}).as_object().cloned().unwrap_or_default(),
            scaling_group: Some("default".into()),
            service_ports: Some(json!([{"name": "jupyter"}])),
            mounts: vec!["data".into(), "home".into()],
            occupied_slots: ResourceSlots::from_json(&json!({"cpu": "2", "mem": "1g"}))
                .unwrap_or_default(),
            num_queries: 7,
            dependencies: Vec::new(),
        }
    }

    fn kernel() -> KernelRow {
        KernelRow {
            id: Uuid::from_u128(10),
            session_id: Uuid::from_u128(1),
            ordinal: 3,
            role: "sub".into(),
            hostname: Some("sub3".into()),
            image: "image".into(),
            registry: "registry".into(),
            status: Status::Terminating,
            status_changed: at(4),
            status_info: Some("info".into()),
            created_at: at(5),
            terminated_at: Some(at(6)),
            agent: Some("i-agent".into()),
            container_id: Some("c0ffee".into()),
            resource_opts: json!({"a": 1}).as_object().cloned().unwrap_or_default(),
            occupied_slots: ResourceSlots::from_json(&json!({"cpu": "1"})).unwrap_or_default(),
            service_ports: Some(json!([])),
            last_stat: json!({"cpu_used": {"current": "1"}}).as_object().cloned(),
        }
    }

    fn kinds(values: &[Value<'_>]) -> Vec<Kind> {
        values.iter().map(Value::kind).collect()
    }

    fn table_kinds(t: &Table) -> Vec<Kind> {
        t.columns.iter().map(|c| c.kind).collect()
    }

    #[test]
    fn a_session_roundtrips_through_its_columns() {
        let s = session();
        let values = session_values(&s);
        assert_eq!(kinds(&values), table_kinds(&SESSIONS));
        let mut cells = Stored::of(&values);
        assert_eq!(session_from(&mut cells).ok(), Some(s));
        assert!(cells.0.is_empty(), "every column decoded");
    }

    #[test]
    fn a_kernel_roundtrips_through_its_columns_and_its_scalars_lead() {
        let k = kernel();
        let values = kernel_values(&k);
        assert_eq!(kinds(&values), table_kinds(&KERNELS));
        let mut cells = Stored::of(&values);
        assert_eq!(kernel_from(&mut cells, false).ok(), Some(k.clone()));
        assert!(cells.0.is_empty(), "every column decoded");

        // The scalar prefix decodes alone, and nothing but JSON follows it.
        let mut cells = Stored::of(&values[..KERNEL_SCALARS]);
        let scalars = kernel_from(&mut cells, true).ok();
        assert_eq!(
            scalars,
            Some(crate::KernelFields::WithoutJson.keep(k)),
            "the scalar columns are a prefix"
        );
        assert!(
            KERNELS.columns[KERNEL_SCALARS..]
                .iter()
                .all(|c| c.kind == J)
        );
    }

    #[test]
    fn a_keypair_roundtrips_through_its_columns() {
        let kp = KeyPair {
            access_key: "AKIA".into(),
            secret_key: "secret".into(),
            user_id: Uuid::from_u128(5),
            user_email: "a@b".into(),
            domain_name: "default".into(),
            role: Role::Admin,
            is_active: true,
            created_at: at(9),
        };
        let values = keypair_values(&kp);
        assert_eq!(kinds(&values), table_kinds(&KEYPAIRS));
        assert_eq!(keypair_from(&mut Stored::of(&values)).ok(), Some(kp));
    }

    #[test]
    fn a_null_in_a_required_column_names_its_table() {
        let s = session();
        let mut values = session_values(&s).to_vec();
        values[1] = Value::Text(None);
        let err = session_from(&mut Stored::of(&values)).err();
        assert!(
            matches!(&err, Some(StoreError::Corrupt { detail, .. }) if detail.contains("NULL")),
            "{err:?}"
        );
    }

    #[test]
    fn upserts_overwrite_only_what_changes_after_creation() {
        let s = SESSIONS.upsert_assignments();
        assert!(s.starts_with("status = EXCLUDED.status, "), "{s}");
        assert!(
            !s.contains("access_key") && !s.contains("created_at"),
            "{s}"
        );
        assert_eq!(KERNELS.prefixed_first("k", 2), "k.id, k.session_id");
    }
}
