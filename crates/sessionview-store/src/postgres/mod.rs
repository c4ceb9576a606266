//! The PostgreSQL backend: how it stores each column kind ([`Cells`], [`Dialect`]) and its
//! implementation of the store's traits. The files mirror `sqlite/`: `connect`, `load`, `commit`,
//! `read`, `admin`; `read_pool` is the read side's own connection pool.

mod admin;
mod commit;
mod connect;
mod load;
mod read;
mod read_pool;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

pub use admin::{Freeze, LIVE_SCHEMA, SESSION_COUNTS_TABLE};
pub use connect::{PgSettings, PgStore, PlanCache};

use crate::StoreError;
use crate::columns::{Cells, RowCells, Value};
use crate::sql::Dialect;

/// The cells of a PostgreSQL row from column `next` on, in their native types.
pub(crate) type PgCells<'r> = RowCells<'r, PgRow>;

impl Cells for PgCells<'_> {
    fn table(&self) -> &'static str {
        self.table_name()
    }
    fn opt_uuid(&mut self) -> Result<Option<Uuid>, StoreError> {
        self.get()
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
        self.get()
    }
    fn opt_json(&mut self) -> Result<Option<Json>, StoreError> {
        self.get()
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get()
    }
}

impl Dialect for Postgres {
    fn push_value<'a>(qb: &mut QueryBuilder<'a, Self>, v: Value<'a>) {
        match v {
            Value::Uuid(v) => qb.push_bind(v),
            Value::Text(v) => qb.push_bind(v),
            Value::Int4(v) => qb.push_bind(v),
            Value::Int8(v) => qb.push_bind(v),
            Value::Bool(v) => qb.push_bind(v),
            Value::Time(v) => qb.push_bind(v),
            Value::Json(v) => qb.push_bind(v).push("::jsonb"),
            Value::Bytes(v) => qb.push_bind(v),
        };
    }

    fn push_in<'a>(qb: &mut QueryBuilder<'a, Self>, mut values: Vec<Value<'a>>) {
        if values.len() == 1
            && let Some(one) = values.pop()
        {
            qb.push(" = ");
            Self::push_value(qb, one);
            return;
        }
        // One array parameter (the statement text is the same for every number of values) for
        // the kinds membership is tested on: text (statuses), ids, int8 (dead-letter ids).
        let texts: Option<Vec<&str>> = values
            .iter()
            .map(|v| {
                if let Value::Text(Some(t)) = v {
                    Some(*t)
                } else {
                    None
                }
            })
            .collect();
        let ids: Option<Vec<Uuid>> = values
            .iter()
            .map(|v| {
                if let Value::Uuid(Some(u)) = v {
                    Some(*u)
                } else {
                    None
                }
            })
            .collect();
        let ints: Option<Vec<i64>> = values
            .iter()
            .map(|v| {
                if let Value::Int8(Some(i)) = v {
                    Some(*i)
                } else {
                    None
                }
            })
            .collect();
        qb.push(" = ANY(");
        match (texts, ids, ints) {
            (Some(t), _, _) => qb.push_bind(t),
            (_, Some(u), _) => qb.push_bind(u),
            (_, _, Some(i)) => qb.push_bind(i),
            // Any other list: each value bound as itself.
            _ => {
                qb.push("ARRAY[");
                for (i, v) in values.into_iter().enumerate() {
                    if i > 0 {
                        qb.push(", ");
                    }
                    Self::push_value(qb, v);
                }
                qb.push("]")
            }
        };
        qb.push(")");
    }
}

crate::protocol::store_traits!(PgStore);
