//! The read model's rows as the fold sees them: one session with its kernels (containers).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sessionview_events::{JsonObject, ResourceSlots, Status};
use uuid::Uuid;

/// `ComputeSession.result` before any outcome event.
pub const RESULT_UNDEFINED: &str = "UNDEFINED";
/// `ComputeSession.result` after `session_success`.
pub const RESULT_SUCCESS: &str = "SUCCESS";
/// `ComputeSession.result` after `session_failure`.
pub const RESULT_FAILURE: &str = "FAILURE";

/// One row of the `sessions` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: Uuid,
    pub name: String,
    /// `"interactive"` or `"batch"`.
    pub session_type: String,
    pub tag: Option<String>,
    pub image: String,
    pub registry: String,
    pub cluster_template: Option<String>,
    pub domain_name: String,
    pub group_name: String,
    pub group_id: Uuid,
    pub user_email: String,
    pub user_id: Uuid,
    pub access_key: String,
    pub created_user_email: Option<String>,
    pub created_user_id: Option<Uuid>,
    /// Mirrors the master kernel.
    pub status: Status,
    /// Mirrors the master kernel.
    pub status_changed: DateTime<Utc>,
    /// Mirrors the master kernel.
    pub status_info: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Mirrors the master kernel.
    pub terminated_at: Option<DateTime<Utc>>,
    pub startup_command: Option<String>,
    /// `UNDEFINED`, `SUCCESS` or `FAILURE`.
    pub result: String,
    pub resource_opts: JsonObject,
    pub scaling_group: Option<String>,
    /// The master kernel's, `None` until it has started.
    pub service_ports: Option<Value>,
    pub mounts: Vec<String>,
    /// Sum over all kernels of the session.
    pub occupied_slots: ResourceSlots,
    pub num_queries: i64,
    /// Sessions this one depends on, in the order the event listed them.
    pub dependencies: Vec<Uuid>,
}

/// One row of the `kernels` table (a `ComputeContainer`).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRow {
    pub id: Uuid,
    pub session_id: Uuid,
    /// Position within the session: 0 is the master, the others follow the enqueue order.
    pub ordinal: i32,
    pub role: String,
    pub hostname: Option<String>,
    pub image: String,
    pub registry: String,
    pub status: Status,
    pub status_changed: DateTime<Utc>,
    pub status_info: Option<String>,
    pub created_at: DateTime<Utc>,
    pub terminated_at: Option<DateTime<Utc>>,
    pub agent: Option<String>,
    pub container_id: Option<String>,
    pub resource_opts: JsonObject,
    pub occupied_slots: ResourceSlots,
    pub service_ports: Option<Value>,
    pub last_stat: Option<JsonObject>,
}

/// A session together with its kernels, master first: the unit the fold reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub session: SessionRow,
    pub kernels: Vec<KernelRow>,
}

impl SessionState {
    /// The master kernel (ordinal 0).
    pub fn master(&self) -> Option<&KernelRow> {
        self.kernels.first()
    }

    /// Finds a kernel by id.
    pub fn kernel_mut(&mut self, id: Uuid) -> Option<&mut KernelRow> {
        self.kernels.iter_mut().find(|k| k.id == id)
    }

    /// Copies the master's status fields and service ports onto the session (rule 3).
    pub(crate) fn mirror_master(&mut self) {
        if let Some(master) = self.kernels.first() {
            let s = &mut self.session;
            s.status = master.status;
            s.status_changed = master.status_changed;
            s.status_info.clone_from(&master.status_info);
            s.terminated_at = master.terminated_at;
            s.service_ports.clone_from(&master.service_ports);
        }
    }
}
