//! The contract's rules for one event against one session: the heart of the projection.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sessionview_events::{
    Event, EventBody, MASTER_ROLE, ResourceSlots, SessionEnqueued, SlotError, Status,
};
use uuid::Uuid;

use crate::rows::{
    KernelRow, RESULT_FAILURE, RESULT_SUCCESS, RESULT_UNDEFINED, SessionRow, SessionState,
};

/// What applying a valid event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The rows changed (or were confirmed) as the catalogue says.
    Applied,
    /// Counted, not applied: the event targets a kernel that is already terminal (rule 2).
    IgnoredTerminal,
    /// The session has not been enqueued yet: the event waits (rule 5).
    Park,
}

/// Why a valid event cannot be applied; it becomes a dead letter (rule 6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("session {0} was already enqueued by another event")]
    AlreadyEnqueued(Uuid),
    #[error("kernel {kernel} is not one of session {session}'s kernels")]
    UnknownKernel { session: Uuid, kernel: Uuid },
    /// A `session_enqueued` lists a kernel id that another session already has.
    #[error("kernel {kernel} already belongs to session {owner}")]
    KernelTaken { kernel: Uuid, owner: Uuid },
    #[error(transparent)]
    Slots(#[from] SlotError),
}

impl Reject {
    /// A short, stable label for metrics and filtering.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::AlreadyEnqueued(_) => "duplicate_enqueue",
            Reject::UnknownKernel { .. } => "unknown_kernel",
            Reject::KernelTaken { .. } => "kernel_conflict",
            Reject::Slots(_) => "bad_slots",
        }
    }
}

/// Applies one decoded event to the session it belongs to (`None` when not enqueued yet).
///
/// On `Err` the state and the event are unchanged: every check that can fail runs before the
/// first mutation. On `Ok(Effect::Applied)` the statistics the event carried (`stat` of
/// `kernel_stat_sync`, `last_stat` of `kernel_terminated`) have moved into the kernel's row
/// instead of being copied: half of a stream is statistics, and copying a JSON object costs an
/// allocation per key.
pub fn apply(slot: &mut Option<SessionState>, event: &mut Event) -> Result<Effect, Reject> {
    let at = event.occurred_at;
    let state = match (slot.as_mut(), &event.body) {
        (None, EventBody::SessionEnqueued(p)) => {
            *slot = Some(enqueue(event.session_id, at, p)?);
            return Ok(Effect::Applied);
        }
        (Some(_), EventBody::SessionEnqueued(_)) => {
            return Err(Reject::AlreadyEnqueued(event.session_id));
        }
        (None, _) => return Ok(Effect::Park),
        (Some(state), _) => state,
    };

    if let Some(kernel_id) = event.kernel_id {
        let session = state.session.id;
        let kernel = state.kernel_mut(kernel_id).ok_or(Reject::UnknownKernel {
            session,
            kernel: kernel_id,
        })?;
        let effect = apply_to_kernel(kernel, &mut event.body, at);
        if effect == Effect::Applied {
            if let EventBody::KernelStarted(p) = &event.body
                && let Some(slots) = &p.occupied_slots
            {
                replace_slots(state, kernel_id, slots)?;
            }
            state.mirror_master();
        }
        return Ok(effect);
    }

    let s = &mut state.session;
    match &event.body {
        EventBody::SessionScheduled(p) => {
            // Check every listed kernel before touching any.
            let ids: HashSet<Uuid> = state.kernels.iter().map(|k| k.id).collect();
            if let Some(unknown) = p.agents.keys().find(|id| !ids.contains(id)) {
                return Err(Reject::UnknownKernel {
                    session: state.session.id,
                    kernel: *unknown,
                });
            }
            state.session.scaling_group = Some(p.scaling_group.clone());
            for kernel in &mut state.kernels {
                if let Some(agent) = p.agents.get(&kernel.id) {
                    kernel.agent = Some(agent.clone());
                    if kernel.status == Status::Pending {
                        set_status(kernel, Status::Preparing, Some("scheduled".into()), at);
                    }
                }
            }
            state.mirror_master();
        }
        EventBody::SessionSuccess(_) => s.result = RESULT_SUCCESS.into(),
        EventBody::SessionFailure(_) => s.result = RESULT_FAILURE.into(),
        EventBody::ExecutionStarted => s.num_queries = s.num_queries.saturating_add(1),
        // Kernel events always carry a kernel_id (the decoder guarantees it) and were handled above.
        _ => {}
    }
    Ok(Effect::Applied)
}

fn enqueue(
    session_id: Uuid,
    at: DateTime<Utc>,
    p: &SessionEnqueued,
) -> Result<SessionState, Reject> {
    let occupied_slots = ResourceSlots::sum(p.kernels.iter().map(|k| &k.occupied_slots))?;
    // Master first, then the others in the order the event lists them.
    let mut specs: Vec<_> = p.kernels.iter().collect();
    specs.sort_by_key(|k| k.role != MASTER_ROLE);
    let kernels = specs
        .into_iter()
        .zip(0..)
        .map(|(k, ordinal)| KernelRow {
            id: k.kernel_id,
            session_id,
            ordinal,
            role: k.role.clone(),
            hostname: k.hostname.clone(),
            image: k.image.clone().unwrap_or_else(|| p.image.clone()),
            registry: k.registry.clone().unwrap_or_else(|| p.registry.clone()),
            status: Status::Pending,
            status_changed: at,
            status_info: None,
            created_at: at,
            terminated_at: None,
            agent: None,
            container_id: None,
            resource_opts: k.resource_opts.clone().unwrap_or_default(),
            occupied_slots: k.occupied_slots.clone(),
            service_ports: None,
            last_stat: None,
        })
        .collect();
    let session = SessionRow {
        id: session_id,
        name: p.name.clone(),
        session_type: p.session_type.as_str().into(),
        tag: p.tag.clone(),
        image: p.image.clone(),
        registry: p.registry.clone(),
        cluster_template: p.cluster_template.clone(),
        domain_name: p.domain_name.clone(),
        group_name: p.group_name.clone(),
        group_id: p.group_id,
        user_email: p.user_email.clone(),
        user_id: p.user_id,
        access_key: p.access_key.clone(),
        created_user_email: p.created_user_email.clone(),
        created_user_id: p.created_user_id,
        status: Status::Pending,
        status_changed: at,
        status_info: None,
        created_at: at,
        terminated_at: None,
        startup_command: p.startup_command.clone(),
        result: RESULT_UNDEFINED.into(),
        resource_opts: p.resource_opts.clone().unwrap_or_default(),
        scaling_group: p.scaling_group.clone(),
        service_ports: None,
        mounts: p.mounts.clone().unwrap_or_default(),
        occupied_slots,
        num_queries: 0,
        dependencies: p.dependencies.clone().unwrap_or_default(),
    };
    let mut state = SessionState { session, kernels };
    state.mirror_master();
    Ok(state)
}

/// `kernel_started` may carry the actual allocation: replace the kernel's and update the
/// session's sum by the difference (a session of thousands of kernels is not re-summed per event).
fn replace_slots(
    state: &mut SessionState,
    kernel_id: Uuid,
    slots: &ResourceSlots,
) -> Result<(), Reject> {
    let Some(old) = state
        .kernel_mut(kernel_id)
        .map(|k| k.occupied_slots.clone())
    else {
        return Ok(());
    };
    let mut total = state.session.occupied_slots.clone();
    total.sub_assign(&old)?;
    total.add_assign(slots)?;
    // The sum has a slot when some kernel has it: one only the old allocation had may go.
    for (slot, _) in old.iter() {
        if slots.get(slot).is_none()
            && !state
                .kernels
                .iter()
                .any(|k| k.id != kernel_id && k.occupied_slots.get(slot).is_some())
        {
            total.remove(slot);
        }
    }
    if let Some(k) = state.kernel_mut(kernel_id) {
        k.occupied_slots = slots.clone();
    }
    state.session.occupied_slots = total;
    Ok(())
}

fn apply_to_kernel(k: &mut KernelRow, body: &mut EventBody, at: DateTime<Utc>) -> Effect {
    if k.status.is_terminal() {
        return Effect::IgnoredTerminal;
    }
    match body {
        EventBody::KernelPreparing | EventBody::KernelCreating => {
            set_status(k, Status::Preparing, None, at);
        }
        EventBody::KernelPulling(p) => set_status(k, Status::Pulling, Some(p.image.clone()), at),
        EventBody::KernelStarted(p) => {
            set_status(k, Status::Running, None, at);
            k.container_id = Some(p.container_id.clone());
            k.service_ports = Some(Value::Array(p.service_ports.clone().unwrap_or_default()));
        }
        EventBody::KernelRestarting => set_status(k, Status::Restarting, None, at),
        EventBody::KernelTerminating(p) => {
            set_status(k, Status::Terminating, Some(p.reason.clone()), at);
        }
        EventBody::KernelTerminated(p) => {
            set_status(k, Status::Terminated, Some(p.reason.clone()), at);
            k.terminated_at = Some(at);
            if let Some(stat) = p.last_stat.take() {
                k.last_stat = Some(stat);
            }
        }
        EventBody::KernelCancelled(p) => {
            set_status(k, Status::Cancelled, Some(p.reason.clone()), at);
            k.terminated_at = Some(at);
        }
        EventBody::KernelError(p) => set_status(k, Status::Error, Some(p.reason.clone()), at),
        EventBody::KernelStatSync(p) => k.last_stat = Some(std::mem::take(&mut p.stat)),
        // Session events never reach a kernel.
        EventBody::SessionEnqueued(_)
        | EventBody::SessionScheduled(_)
        | EventBody::SessionSuccess(_)
        | EventBody::SessionFailure(_)
        | EventBody::ExecutionStarted => {}
    }
    Effect::Applied
}

/// Rule 1: `status_changed` moves only when the status value actually changes.
fn set_status(k: &mut KernelRow, status: Status, info: Option<String>, at: DateTime<Utc>) {
    if k.status != status {
        k.status = status;
        k.status_changed = at;
    }
    k.status_info = info;
}

#[cfg(test)]
mod tests;
