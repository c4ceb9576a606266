//! The SQLite backend (the embedded default): how it stores each column kind (UUIDs, times and
//! JSON as text: [`Cells`], [`Dialect`]) and its implementation of the store's traits. The files
//! mirror `postgres/`: `connect`, `load`, `commit`, `read`, `admin`.

mod admin;
mod commit;
mod connect;
mod load;
mod read;

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

pub use connect::SqliteStore;

use crate::StoreError;
use crate::columns::{Cells, RowCells, Value};
use crate::sql::Dialect;

/// Rows per multi-row statement, and ids per `IN` list (SQLite allows 32,766 bound values per
/// statement).
const CHUNK: usize = 500;

/// A time as stored: RFC 3339 with microseconds, so that text order is time order.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The cells of a SQLite row from column `next` on, as SQLite stores them.
pub(crate) type SqliteCells<'r> = RowCells<'r, SqliteRow>;

/// The next cell as text, parsed.
fn parsed<T, E: std::fmt::Display>(
    cells: &mut SqliteCells<'_>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, StoreError> {
    match cells.get::<Option<String>>()? {
        Some(s) => parse(&s)
            .map(Some)
            .map_err(|e| cells.corrupt(format!("{s:?}: {e}"))),
        None => Ok(None),
    }
}

impl Cells for SqliteCells<'_> {
    fn table(&self) -> &'static str {
        self.table_name()
    }
    fn opt_uuid(&mut self) -> Result<Option<Uuid>, StoreError> {
        parsed(self, Uuid::from_str)
    }
    fn opt_text(&mut self) -> Result<Option<String>, StoreError> {
        self.get()
    }
    fn opt_int4(&mut self) -> Result<Option<i32>, StoreError> {
        self.get()
    }
    fn opt_int8(&mut self) -> Result<Option<i64>, StoreError> {
        self.get()
    }
    fn opt_bool(&mut self) -> Result<Option<bool>, StoreError> {
        self.get()
    }
    fn opt_time(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        parsed(self, |s| {
            DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc))
        })
    }
    fn opt_json(&mut self) -> Result<Option<Json>, StoreError> {
        parsed(self, |s| serde_json::from_str(s))
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get()
    }
}

impl Dialect for Sqlite {
    fn push_value<'a>(qb: &mut QueryBuilder<'a, Self>, v: Value<'a>) {
        match v {
            Value::Uuid(v) => qb.push_bind(v.map(|u| u.to_string())),
            Value::Text(v) => qb.push_bind(v),
            Value::Int4(v) => qb.push_bind(v),
            Value::Int8(v) => qb.push_bind(v),
            Value::Bool(v) => qb.push_bind(v),
            Value::Time(v) => qb.push_bind(v.map(ts)),
            Value::Json(v) => qb.push_bind(v),
            Value::Bytes(v) => qb.push_bind(v),
        };
    }

    fn push_in<'a>(qb: &mut QueryBuilder<'a, Self>, values: Vec<Value<'a>>) {
        qb.push(" IN (");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                qb.push(", ");
            }
            Self::push_value(qb, v);
        }
        qb.push(")");
    }
}

/// `column IN (?, ...)` of ids, for one chunk.
fn push_ids<'a>(qb: &mut QueryBuilder<'a, Sqlite>, column: &str, ids: &[Uuid]) {
    qb.push(column);
    Sqlite::push_in(qb, ids.iter().map(|id| Value::Uuid(Some(*id))).collect());
}

crate::protocol::store_traits!(SqliteStore);
