//! One test per rule of the event contract, on hand-written events.

use super::*;
use chrono::TimeZone;
use serde_json::json;
use sessionview_events::{
    Event, EventBody, JsonObject, KernelPulling, KernelSpec, KernelStarted, KernelStatSync,
    KernelTerminated, Reason, SessionEnqueued, SessionOutcome, SessionScheduled, SessionType,
};
use std::collections::BTreeMap;

const S: Uuid = Uuid::from_u128(0x12c45b55_ce3c_418d_9c58_223bbba307f1);
const K2: Uuid = Uuid::from_u128(0x12c45b55_ce3c_418d_9c58_223bbba307f2);

fn t(sec: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2020, 2, 16, 15, 47, sec).unwrap()
}

fn slots(pairs: &[(&str, &str)]) -> ResourceSlots {
    ResourceSlots::parse(pairs.iter().copied()).unwrap()
}

fn ev(sec: u32, kernel: Option<Uuid>, body: EventBody) -> Event {
    Event {
        event_id: Uuid::new_v4(),
        occurred_at: t(sec),
        session_id: S,
        kernel_id: kernel,
        body,
    }
}

fn enqueued() -> Event {
    let kernel = |id, role: &str, cpu| KernelSpec {
        kernel_id: id,
        role: role.into(),
        hostname: None,
        image: None,
        registry: None,
        resource_opts: None,
        occupied_slots: slots(&[("cpu", cpu), ("cuda.shares", "0.5")]),
    };
    ev(
        0,
        None,
        EventBody::SessionEnqueued(Box::new(SessionEnqueued {
            name: "mysession".into(),
            session_type: SessionType::Interactive,
            tag: None,
            image: "python:3.8".into(),
            registry: "cr.backend.ai".into(),
            cluster_template: None,
            domain_name: "default".into(),
            group_name: "default".into(),
            user_email: "user@lablup.com".into(),
            access_key: "AKIA".into(),
            group_id: Uuid::from_u128(1),
            user_id: Uuid::from_u128(2),
            created_user_email: None,
            created_user_id: None,
            startup_command: None,
            resource_opts: None,
            scaling_group: None,
            mounts: Some(vec!["data".into()]),
            dependencies: Some(vec![Uuid::from_u128(9)]),
            // The worker is listed first on purpose: the master must still come first.
            kernels: vec![kernel(K2, "worker", "1.5"), kernel(S, "master", "2")],
        })),
    )
}

fn session() -> Option<SessionState> {
    let mut slot = None;
    assert_eq!(apply(&mut slot, &mut enqueued()), Ok(Effect::Applied));
    slot
}

fn started(sec: u32, k: Uuid) -> Event {
    ev(
        sec,
        Some(k),
        EventBody::KernelStarted(KernelStarted {
            container_id: format!("c{sec}"),
            service_ports: Some(vec![json!({"name": "jupyter"})]),
            occupied_slots: None,
        }),
    )
}

fn reason(r: &str) -> Reason {
    Reason { reason: r.into() }
}

#[test]
fn enqueue_creates_pending_session_and_kernels_master_first() {
    let s = session().unwrap();
    assert_eq!(s.session.status, Status::Pending);
    assert_eq!(s.session.created_at, t(0));
    assert_eq!(s.session.status_changed, t(0));
    assert_eq!(s.session.result, "UNDEFINED");
    assert_eq!(s.session.num_queries, 0);
    assert_eq!(s.session.dependencies, vec![Uuid::from_u128(9)]);
    assert_eq!(s.kernels[0].id, S);
    assert_eq!(s.kernels[0].ordinal, 0);
    assert_eq!(s.kernels[1].id, K2);
    assert_eq!(
        s.kernels[1].image, "python:3.8",
        "kernel image defaults to the session's"
    );
    assert!(s.kernels.iter().all(|k| k.status == Status::Pending));
    // occupied_slots is the exact sum over kernels: 2 + 1.5, 0.5 + 0.5.
    assert_eq!(
        s.session.occupied_slots.to_json(),
        json!({"cpu": "3.5", "cuda.shares": "1"})
    );
}

#[test]
fn events_before_enqueue_park() {
    let mut slot = None;
    assert_eq!(apply(&mut slot, &mut started(1, S)), Ok(Effect::Park));
    assert!(slot.is_none());
}

#[test]
fn second_enqueue_is_rejected_and_changes_nothing() {
    let mut slot = session();
    let before = slot.clone();
    assert_eq!(
        apply(&mut slot, &mut enqueued()),
        Err(Reject::AlreadyEnqueued(S))
    );
    assert_eq!(slot, before);
}

#[test]
fn scheduled_sets_agents_scaling_group_and_prepares_pending_kernels() {
    let mut slot = session();
    let mut agents = BTreeMap::new();
    agents.insert(S, "i-agent01".to_string());
    agents.insert(K2, "i-agent02".to_string());
    let mut e = ev(
        1,
        None,
        EventBody::SessionScheduled(SessionScheduled {
            scaling_group: "gpu".into(),
            agents,
        }),
    );
    assert_eq!(apply(&mut slot, &mut e), Ok(Effect::Applied));
    let s = slot.unwrap();
    assert_eq!(s.session.scaling_group.as_deref(), Some("gpu"));
    assert_eq!(s.kernels[0].agent.as_deref(), Some("i-agent01"));
    assert_eq!(s.kernels[1].status, Status::Preparing);
    assert_eq!(s.kernels[1].status_info.as_deref(), Some("scheduled"));
    // The session mirrors its master.
    assert_eq!(s.session.status, Status::Preparing);
    assert_eq!(s.session.status_changed, t(1));
    assert_eq!(s.session.status_info.as_deref(), Some("scheduled"));
}

#[test]
fn scheduled_only_moves_pending_kernels_but_always_records_agent() {
    let mut slot = session();
    apply(&mut slot, &mut started(1, S)).unwrap();
    let mut e = ev(
        2,
        None,
        EventBody::SessionScheduled(SessionScheduled {
            scaling_group: "default".into(),
            agents: BTreeMap::from([(S, "i-late".to_string())]),
        }),
    );
    apply(&mut slot, &mut e).unwrap();
    let s = slot.unwrap();
    assert_eq!(s.kernels[0].status, Status::Running);
    assert_eq!(s.kernels[0].agent.as_deref(), Some("i-late"));
}

#[test]
fn scheduled_with_unknown_kernel_is_rejected_before_any_change() {
    let mut slot = session();
    let before = slot.clone();
    let mut e = ev(
        1,
        None,
        EventBody::SessionScheduled(SessionScheduled {
            scaling_group: "x".into(),
            agents: BTreeMap::from([(S, "a".into()), (Uuid::from_u128(77), "b".into())]),
        }),
    );
    assert!(matches!(
        apply(&mut slot, &mut e),
        Err(Reject::UnknownKernel { .. })
    ));
    assert_eq!(slot, before);
}

#[test]
fn status_changed_moves_only_when_status_changes() {
    let mut slot = session();
    apply(&mut slot, &mut ev(1, Some(S), EventBody::KernelPreparing)).unwrap();
    apply(&mut slot, &mut ev(2, Some(S), EventBody::KernelCreating)).unwrap();
    let s = slot.as_ref().unwrap();
    assert_eq!(s.kernels[0].status, Status::Preparing);
    assert_eq!(
        s.kernels[0].status_changed,
        t(1),
        "PREPARING → PREPARING is no change"
    );
    assert_eq!(s.session.status_changed, t(1));
    apply(&mut slot, &mut started(3, S)).unwrap();
    assert_eq!(slot.as_ref().unwrap().session.status_changed, t(3));
}

#[test]
fn each_kernel_event_sets_status_and_info() {
    let cases: Vec<(EventBody, Status, Option<&str>)> = vec![
        (EventBody::KernelPreparing, Status::Preparing, None),
        (
            EventBody::KernelPulling(KernelPulling {
                image: "img".into(),
            }),
            Status::Pulling,
            Some("img"),
        ),
        (EventBody::KernelCreating, Status::Preparing, None),
        (EventBody::KernelRestarting, Status::Restarting, None),
        (
            EventBody::KernelTerminating(reason("bye")),
            Status::Terminating,
            Some("bye"),
        ),
        (
            EventBody::KernelError(reason("boom")),
            Status::Error,
            Some("boom"),
        ),
        (
            EventBody::KernelCancelled(reason("nope")),
            Status::Cancelled,
            Some("nope"),
        ),
    ];
    for (body, status, info) in cases {
        let mut slot = session();
        apply(&mut slot, &mut ev(5, Some(K2), body)).unwrap();
        let k = &slot.as_ref().unwrap().kernels[1];
        assert_eq!((k.status, k.status_info.as_deref()), (status, info));
        assert_eq!(k.status_changed, t(5));
        // A worker's change does not touch the session (it mirrors the master).
        assert_eq!(slot.as_ref().unwrap().session.status, Status::Pending);
    }
}

#[test]
fn started_sets_container_ports_and_may_replace_slots() {
    let mut slot = session();
    let mut e = started(1, K2);
    if let EventBody::KernelStarted(p) = &mut e.body {
        p.occupied_slots = Some(slots(&[("cpu", "4"), ("mem", "1024")]));
    }
    apply(&mut slot, &mut e).unwrap();
    let s = slot.unwrap();
    assert_eq!(s.kernels[1].container_id.as_deref(), Some("c1"));
    assert_eq!(s.kernels[1].status_info, None);
    assert_eq!(
        s.session.occupied_slots.to_json(),
        json!({"cpu": "6", "cuda.shares": "0.5", "mem": "1024"})
    );
    assert_eq!(
        s.session.service_ports, None,
        "only the master's ports are the session's"
    );
}

#[test]
fn session_service_ports_are_the_masters_once_started() {
    let mut slot = session();
    apply(&mut slot, &mut started(1, S)).unwrap();
    assert_eq!(
        slot.unwrap().session.service_ports,
        Some(json!([{"name": "jupyter"}]))
    );
}

#[test]
fn restart_then_start_brings_back_running_with_new_container() {
    let mut slot = session();
    apply(&mut slot, &mut started(1, S)).unwrap();
    apply(&mut slot, &mut ev(2, Some(S), EventBody::KernelRestarting)).unwrap();
    assert_eq!(slot.as_ref().unwrap().session.status, Status::Restarting);
    assert_eq!(slot.as_ref().unwrap().session.status_info, None);
    apply(&mut slot, &mut started(3, S)).unwrap();
    let s = slot.unwrap();
    assert_eq!(s.session.status, Status::Running);
    assert_eq!(s.kernels[0].container_id.as_deref(), Some("c3"));
}

#[test]
fn terminated_sets_terminated_at_and_last_stat_when_given() {
    let mut slot = session();
    let stat: JsonObject = JsonObject::from_iter([("cpu".into(), json!("1"))]);
    apply(
        &mut slot,
        &mut ev(
            1,
            Some(S),
            EventBody::KernelStatSync(KernelStatSync { stat: stat.clone() }),
        ),
    )
    .unwrap();
    let mut e = ev(
        2,
        Some(S),
        EventBody::KernelTerminated(KernelTerminated {
            reason: "done".into(),
            exit_code: Some(0),
            last_stat: None,
        }),
    );
    apply(&mut slot, &mut e).unwrap();
    let s = slot.unwrap();
    assert_eq!(s.session.status, Status::Terminated);
    assert_eq!(s.session.terminated_at, Some(t(2)));
    assert_eq!(s.session.status_info.as_deref(), Some("done"));
    assert_eq!(
        s.kernels[0].last_stat,
        Some(stat),
        "not replaced when absent"
    );
}

#[test]
fn cancelled_sets_terminated_at() {
    let mut slot = session();
    apply(
        &mut slot,
        &mut ev(4, Some(S), EventBody::KernelCancelled(reason("x"))),
    )
    .unwrap();
    assert_eq!(slot.unwrap().session.terminated_at, Some(t(4)));
}

#[test]
fn terminal_is_final_for_status_and_stats() {
    for terminal in [
        EventBody::KernelCancelled(reason("x")),
        EventBody::KernelTerminated(KernelTerminated {
            reason: "x".into(),
            exit_code: None,
            last_stat: None,
        }),
    ] {
        let mut slot = session();
        apply(&mut slot, &mut ev(1, Some(S), terminal)).unwrap();
        let before = slot.clone();
        for mut later in [
            started(2, S),
            ev(3, Some(S), EventBody::KernelError(reason("late"))),
            ev(
                4,
                Some(S),
                EventBody::KernelStatSync(KernelStatSync {
                    stat: JsonObject::new(),
                }),
            ),
        ] {
            assert_eq!(apply(&mut slot, &mut later), Ok(Effect::IgnoredTerminal));
        }
        assert_eq!(slot, before);
    }
}

#[test]
fn error_is_not_terminal() {
    let mut slot = session();
    apply(
        &mut slot,
        &mut ev(1, Some(S), EventBody::KernelError(reason("x"))),
    )
    .unwrap();
    apply(&mut slot, &mut started(2, S)).unwrap();
    assert_eq!(slot.unwrap().session.status, Status::Running);
}

#[test]
fn session_events_are_not_blocked_by_a_terminal_master() {
    let mut slot = session();
    apply(
        &mut slot,
        &mut ev(1, Some(S), EventBody::KernelCancelled(reason("x"))),
    )
    .unwrap();
    let outcome = SessionOutcome {
        exit_code: 0,
        reason: None,
    };
    apply(
        &mut slot,
        &mut ev(2, None, EventBody::SessionSuccess(outcome.clone())),
    )
    .unwrap();
    apply(&mut slot, &mut ev(3, None, EventBody::ExecutionStarted)).unwrap();
    apply(&mut slot, &mut ev(4, None, EventBody::ExecutionStarted)).unwrap();
    let s = slot.as_ref().unwrap();
    assert_eq!(s.session.result, "SUCCESS");
    assert_eq!(s.session.num_queries, 2);
    apply(
        &mut slot,
        &mut ev(5, None, EventBody::SessionFailure(outcome)),
    )
    .unwrap();
    assert_eq!(slot.unwrap().session.result, "FAILURE");
}

#[test]
fn unknown_kernel_is_rejected() {
    let mut slot = session();
    let other = Uuid::from_u128(5);
    assert_eq!(
        apply(&mut slot, &mut started(1, other)),
        Err(Reject::UnknownKernel {
            session: S,
            kernel: other
        })
    );
}

#[test]
fn stat_sync_leaves_status_alone() {
    let mut slot = session();
    apply(&mut slot, &mut started(1, S)).unwrap();
    let mut e = ev(
        9,
        Some(S),
        EventBody::KernelStatSync(KernelStatSync {
            stat: JsonObject::from_iter([("mem".into(), json!("5"))]),
        }),
    );
    apply(&mut slot, &mut e).unwrap();
    let s = slot.unwrap();
    assert_eq!(s.session.status_changed, t(1));
    assert_eq!(s.kernels[0].last_stat.as_ref().unwrap()["mem"], "5");
}

#[test]
fn applied_statistics_move_from_the_event_into_the_row() {
    let mut slot = session();
    let stat: JsonObject =
        serde_json::from_value(json!({"cpu_util": {"current": "12.5"}})).unwrap();
    let mut e = ev(
        5,
        Some(S),
        EventBody::KernelStatSync(KernelStatSync { stat: stat.clone() }),
    );
    assert_eq!(apply(&mut slot, &mut e), Ok(Effect::Applied));
    let state = slot.unwrap();
    let master = state.kernels.iter().find(|k| k.id == S).unwrap();
    assert_eq!(master.last_stat.as_ref(), Some(&stat));
    assert!(
        matches!(&e.body, EventBody::KernelStatSync(p) if p.stat.is_empty()),
        "moved, not copied"
    );
}
