//! `LegacyComputeSession`: what the 2020 web UI lists (its JS SDK's
//! `legacy_compute_session_list`), one item per session: the session's fields, its master
//! container's, and the legacy slot and metric fields computed from them.

use std::sync::Arc;

use async_graphql::{Object, SimpleObject};
use serde_json::Value;
use sessionview_projection::{KernelRow, SessionRow};
use uuid::Uuid;

use crate::scalars::{BigInt, DateTime, JsonString};

use super::session::json;

/// A page of legacy sessions.
#[derive(Debug, SimpleObject)]
#[graphql(rename_fields = "snake_case", serial)]
pub struct LegacyComputeSessionList {
    pub(crate) items: Vec<Option<LegacyComputeSession>>,
    pub(crate) total_count: i32,
}

/// A session as the 2020 web UI reads it: the session and its master container in one row.
#[derive(Debug)]
pub struct LegacyComputeSession {
    pub(crate) session: Arc<SessionRow>,
    /// The master container (absent only if the read model lost it: its fields are then null).
    pub(crate) master: Option<Arc<KernelRow>>,
    pub(crate) show_agent: bool,
}

/// A number in a stat, which agents send as a number or a decimal string.
fn number(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

impl LegacyComputeSession {
    fn master(&self) -> Option<&KernelRow> {
        self.master.as_deref()
    }

    /// `stat[metric][key]` of the master's stat (the latest one, live while RUNNING), 0 when
    /// missing.
    fn stat(&self, metric: &str, key: &str) -> f64 {
        number(
            self.master()
                .and_then(|k| k.last_stat.as_ref())
                .and_then(|s| s.get(metric))
                .and_then(|m| m.get(key)),
        )
    }

    /// A whole-number stat: floored and saturated into an i64.
    fn stat_int(&self, metric: &str, key: &str) -> BigInt {
        BigInt(saturating_i64(self.stat(metric, key)))
    }

    /// The master's allocation of `slot`, 0 when absent.
    fn slot(&self, slot: &str) -> f64 {
        self.master()
            .and_then(|k| k.occupied_slots.get(slot))
            .and_then(|d| d.to_string().parse().ok())
            .unwrap_or(0.0)
    }
}

fn saturating_i64(v: f64) -> i64 {
    // `as` saturates at the bounds and maps NaN to 0.
    v.floor() as i64
}

#[Object(rename_fields = "snake_case", serial)]
impl LegacyComputeSession {
    async fn id(&self) -> Option<Uuid> {
        Some(self.session.id)
    }
    /// The session's name (the 20.03 manager's `sess_id`).
    async fn sess_id(&self) -> Option<&str> {
        Some(&self.session.name)
    }
    async fn sess_type(&self) -> Option<&str> {
        Some(&self.session.session_type)
    }
    async fn session_name(&self) -> Option<&str> {
        Some(&self.session.name)
    }
    async fn session_type(&self) -> Option<&str> {
        Some(&self.session.session_type)
    }
    async fn role(&self) -> Option<&str> {
        self.master().map(|k| k.role.as_str())
    }
    async fn tag(&self) -> Option<&str> {
        self.session.tag.as_deref()
    }
    async fn image(&self) -> Option<&str> {
        Some(&self.session.image)
    }
    async fn registry(&self) -> Option<&str> {
        Some(&self.session.registry)
    }
    async fn domain_name(&self) -> Option<&str> {
        Some(&self.session.domain_name)
    }
    async fn group_name(&self) -> Option<&str> {
        Some(&self.session.group_name)
    }
    async fn group_id(&self) -> Option<Uuid> {
        Some(self.session.group_id)
    }
    async fn scaling_group(&self) -> Option<&str> {
        self.session.scaling_group.as_deref()
    }
    async fn user_uuid(&self) -> Option<Uuid> {
        Some(self.session.user_id)
    }
    async fn access_key(&self) -> Option<&str> {
        Some(&self.session.access_key)
    }
    async fn user_email(&self) -> Option<&str> {
        Some(&self.session.user_email)
    }
    async fn status(&self) -> Option<&str> {
        Some(self.session.status.as_str())
    }
    async fn status_changed(&self) -> Option<DateTime> {
        Some(DateTime(self.session.status_changed))
    }
    async fn status_info(&self) -> Option<&str> {
        self.session.status_info.as_deref()
    }
    async fn created_at(&self) -> Option<DateTime> {
        Some(DateTime(self.session.created_at))
    }
    async fn terminated_at(&self) -> Option<DateTime> {
        self.session.terminated_at.map(DateTime)
    }
    async fn startup_command(&self) -> Option<&str> {
        self.session.startup_command.as_deref()
    }
    async fn result(&self) -> Option<&str> {
        Some(&self.session.result)
    }
    /// Super-admin only: null for everyone else.
    async fn agent(&self) -> Option<&str> {
        self.master()
            .filter(|_| self.show_agent)
            .and_then(|k| k.agent.as_deref())
    }
    /// Super-admin only: null for everyone else.
    async fn container_id(&self) -> Option<&str> {
        self.master()
            .filter(|_| self.show_agent)
            .and_then(|k| k.container_id.as_deref())
    }
    async fn service_ports(&self) -> Option<JsonString> {
        self.session.service_ports.as_ref().map(json)
    }
    /// The master container's allocation.
    async fn occupied_slots(&self) -> Option<JsonString> {
        self.master()
            .map(|k| JsonString(k.occupied_slots.to_json()))
    }
    async fn resource_opts(&self) -> Option<JsonString> {
        self.master()
            .map(|k| JsonString(Value::Object(k.resource_opts.clone())))
    }
    /// Each mount name as a one-element list.
    async fn mounts(&self) -> Option<Vec<Option<Vec<Option<String>>>>> {
        Some(
            self.session
                .mounts
                .iter()
                .map(|m| Some(vec![Some(m.clone())]))
                .collect(),
        )
    }
    async fn num_queries(&self) -> Option<BigInt> {
        Some(BigInt(self.session.num_queries))
    }
    /// While RUNNING the latest stat, otherwise `last_stat`.
    async fn live_stat(&self) -> Option<JsonString> {
        self.master()
            .and_then(|k| k.last_stat.as_ref())
            .map(|s| JsonString(Value::Object(s.clone())))
    }
    async fn last_stat(&self) -> Option<JsonString> {
        self.master()
            .and_then(|k| k.last_stat.as_ref())
            .map(|s| JsonString(Value::Object(s.clone())))
    }
    /// `= image`.
    async fn lang(&self) -> Option<&str> {
        Some(&self.session.image)
    }
    /// Occupied memory in MiB (bytes / 2^20, floor).
    async fn mem_slot(&self) -> Option<i32> {
        let mib = (self.slot("mem") / f64::from(1 << 20)).floor();
        // `as` saturates; no allocation reaches 2^31 MiB.
        Some(mib as i32)
    }
    async fn cpu_slot(&self) -> Option<f64> {
        Some(self.slot("cpu"))
    }
    async fn gpu_slot(&self) -> Option<f64> {
        Some(self.slot("cuda.device"))
    }
    async fn tpu_slot(&self) -> Option<f64> {
        Some(self.slot("tpu.device"))
    }
    async fn cpu_used(&self) -> Option<BigInt> {
        Some(self.stat_int("cpu_used", "current"))
    }
    async fn cpu_using(&self) -> Option<f64> {
        Some(self.stat("cpu_util", "pct"))
    }
    async fn mem_max_bytes(&self) -> Option<BigInt> {
        Some(self.stat_int("mem", "stats.max"))
    }
    async fn mem_cur_bytes(&self) -> Option<BigInt> {
        Some(self.stat_int("mem", "current"))
    }
    async fn net_rx_bytes(&self) -> Option<BigInt> {
        Some(self.stat_int("net_rx", "stats.rate"))
    }
    async fn net_tx_bytes(&self) -> Option<BigInt> {
        Some(self.stat_int("net_tx", "stats.rate"))
    }
    async fn io_read_bytes(&self) -> Option<BigInt> {
        Some(self.stat_int("io_read", "current"))
    }
    async fn io_write_bytes(&self) -> Option<BigInt> {
        Some(self.stat_int("io_write", "current"))
    }
    async fn io_max_scratch_size(&self) -> Option<BigInt> {
        Some(self.stat_int("io_scratch_size", "stats.max"))
    }
    async fn io_cur_scratch_size(&self) -> Option<BigInt> {
        Some(self.stat_int("io_scratch_size", "current"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_numbers_may_be_strings_and_missing_is_zero() {
        assert_eq!(number(Some(&Value::from(12.5))), 12.5);
        assert_eq!(number(Some(&Value::from("1024"))), 1024.0);
        assert_eq!(number(Some(&Value::from(" 7.25 "))), 7.25);
        assert_eq!(number(Some(&Value::from("n/a"))), 0.0);
        assert_eq!(number(Some(&Value::Null)), 0.0);
        assert_eq!(number(None), 0.0);
        assert_eq!(saturating_i64(1e300), i64::MAX);
        assert_eq!(saturating_i64(f64::NAN), 0);
        assert_eq!(saturating_i64(2.9), 2);
    }
}
