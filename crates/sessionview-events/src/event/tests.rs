//! Decoding tests: every refusal names its field and event type.

use super::*;
use proptest::prelude::*;
use serde_json::json;

const SID: &str = "12c45b55-ce3c-418d-9c58-223bbba307f1";
const K2: &str = "12c45b55-ce3c-418d-9c58-223bbba307f2";

fn envelope(event_type: &str, kernel_id: Option<&str>, payload: Value) -> Value {
    let mut v = json!({
        "event_id": "0b6f1c2e-5b7a-4c1d-9f10-3c2d1e0f9a01",
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": "2020-02-16T15:47:28.997335123+09:00",
        "session_id": SID,
        "payload": payload,
    });
    if let Some(k) = kernel_id {
        v["kernel_id"] = json!(k);
    }
    v
}

fn enqueued_payload() -> Value {
    json!({
        "name": "mysession", "type": "interactive", "image": "python:3.8", "registry": "cr.backend.ai",
        "domain_name": "default", "group_name": "default", "user_email": "user@lablup.com",
        "access_key": "AKIAIOSFODNN7EXAMPLE",
        "group_id": "2de2b969-1d04-48a6-af16-0bc8adb3c831", "user_id": "f38dea23-50fa-42a0-b5ae-338f5f4693f4",
        "kernels": [
            {"kernel_id": SID, "role": "master", "occupied_slots": {"cpu": "1", "cuda.shares": "0.5"}},
            {"kernel_id": K2, "role": "worker", "hostname": "worker1", "occupied_slots": {"cpu": "1"}},
        ],
    })
}

fn decode_value(v: &Value) -> Result<Event, DecodeError> {
    Event::decode(v.to_string().as_bytes())
}

fn err_of(v: &Value) -> String {
    decode_value(v).unwrap_err().to_string()
}

#[test]
fn decodes_session_enqueued_with_defaults() {
    let e = decode_value(&envelope("session_enqueued", None, enqueued_payload())).unwrap();
    assert_eq!(e.event_type(), EventType::SessionEnqueued);
    let EventBody::SessionEnqueued(p) = &e.body else {
        panic!("wrong body")
    };
    assert_eq!(p.kernels.len(), 2);
    assert_eq!(p.mounts, None);
    assert_eq!(p.session_type, SessionType::Interactive);
    // Converted to UTC and truncated to microseconds.
    assert_eq!(
        format_timestamp(e.occurred_at),
        "2020-02-16T06:47:28.997335+00:00"
    );
}

#[test]
fn round_trips_through_to_json() {
    let e = decode_value(&envelope("session_enqueued", None, enqueued_payload())).unwrap();
    let again = Event::decode(&e.to_bytes().unwrap()).unwrap();
    assert_eq!(e, again);
}

#[test]
fn ignores_unknown_fields_in_envelope_and_payload() {
    let mut v = envelope(
        "kernel_pulling",
        Some(SID),
        json!({"image": "x", "extra": 1}),
    );
    v["future_field"] = json!({"a": 1});
    assert!(decode_value(&v).is_ok());
}

#[test]
fn malformed_json_is_named() {
    let err = Event::decode(b"{\"event_id\": ").unwrap_err();
    assert_eq!(err.label(), "malformed");
    assert!(err.to_string().starts_with("malformed JSON"), "{err}");
    assert_eq!(
        Event::decode(b"[1, 2]").unwrap_err().kind,
        DecodeErrorKind::NotAnObject
    );
    assert_eq!(Event::decode(b"\xff\xfe").unwrap_err().label(), "malformed");
}

#[test]
fn unknown_event_type_is_named() {
    let err = decode_value(&envelope("kernel_exploded", Some(SID), json!({}))).unwrap_err();
    assert_eq!(
        err.kind,
        DecodeErrorKind::UnknownEventType("kernel_exploded".into())
    );
}

#[test]
fn newer_schema_version_is_refused_not_guessed() {
    let mut v = envelope("kernel_preparing", Some(SID), json!({}));
    v["schema_version"] = json!(2);
    assert_eq!(
        decode_value(&v).unwrap_err().kind,
        DecodeErrorKind::UnsupportedSchemaVersion(2)
    );
    v["schema_version"] = json!(1.0);
    assert!(err_of(&v).contains("schema_version"));
    v["schema_version"] = json!("1");
    assert!(err_of(&v).contains("schema_version"));
}

#[test]
fn missing_required_envelope_fields_are_named() {
    for f in [
        "event_id",
        "event_type",
        "schema_version",
        "occurred_at",
        "session_id",
        "payload",
    ] {
        let mut v = envelope("kernel_preparing", Some(SID), json!({}));
        v.as_object_mut().unwrap().remove(f);
        let err = err_of(&v);
        assert!(err.contains(&format!("`{f}`")), "{f}: {err}");
    }
}

#[test]
fn kernel_events_need_kernel_id() {
    let err = decode_value(&envelope(
        "kernel_started",
        None,
        json!({"container_id": "c"}),
    ))
    .unwrap_err();
    assert_eq!(err.kind, DecodeErrorKind::MissingField("kernel_id"));
    assert_eq!(
        err.to_string(),
        "kernel_started: missing required field `kernel_id`"
    );
}

#[test]
fn timestamp_without_offset_is_refused() {
    let mut v = envelope("kernel_preparing", Some(SID), json!({}));
    v["occurred_at"] = json!("2020-02-16T15:47:28.997335");
    assert!(err_of(&v).contains("occurred_at"));
}

#[test]
fn payload_errors_name_the_path() {
    let mut p = enqueued_payload();
    p["kernels"][1]["occupied_slots"]["cpu"] = json!("1e3");
    let err = err_of(&envelope("session_enqueued", None, p));
    assert!(
        err.starts_with("session_enqueued: field `payload.kernels[1].occupied_slots"),
        "{err}"
    );
    assert!(err.contains("\"1e3\""), "{err}");

    let mut p = enqueued_payload();
    p["kernels"][0]["occupied_slots"]["cpu"] = json!(2);
    let err = err_of(&envelope("session_enqueued", None, p));
    assert!(err.contains("payload.kernels[0].occupied_slots"), "{err}");

    let mut p = enqueued_payload();
    p.as_object_mut().unwrap().remove("user_id");
    assert!(err_of(&envelope("session_enqueued", None, p)).contains("user_id"));

    let mut p = enqueued_payload();
    p["type"] = json!("service");
    assert!(err_of(&envelope("session_enqueued", None, p)).contains("payload.type"));

    let err = err_of(&envelope(
        "kernel_stat_sync",
        Some(SID),
        json!({"stat": [1]}),
    ));
    assert!(err.contains("payload.stat"), "{err}");
}

#[test]
fn enqueued_invariants() {
    let mut p = enqueued_payload();
    p["kernels"] = json!([]);
    assert!(err_of(&envelope("session_enqueued", None, p)).contains("at least one kernel"));

    let mut p = enqueued_payload();
    p["kernels"][1]["role"] = json!("master");
    assert!(err_of(&envelope("session_enqueued", None, p)).contains("2 kernels have role"));

    let mut p = enqueued_payload();
    p["kernels"][0]["role"] = json!("main");
    assert!(err_of(&envelope("session_enqueued", None, p)).contains("no kernel has role"));

    let mut p = enqueued_payload();
    p["kernels"][0]["kernel_id"] = json!(K2);
    p["kernels"][1]["role"] = json!("master");
    p["kernels"][0]["role"] = json!("worker");
    assert!(err_of(&envelope("session_enqueued", None, p)).contains("must equal the session_id"));

    let mut p = enqueued_payload();
    p["kernels"][1]["kernel_id"] = json!(SID);
    assert!(err_of(&envelope("session_enqueued", None, p)).contains("appears more than once"));
}

#[test]
fn every_catalogue_entry_decodes() {
    let cases = [
        (
            "session_scheduled",
            None,
            json!({"scaling_group": "default", "agents": {SID: "i-agent01"}}),
        ),
        (
            "session_success",
            None,
            json!({"exit_code": 0, "reason": null}),
        ),
        ("session_failure", None, json!({"exit_code": 1})),
        ("execution_started", None, json!({})),
        ("kernel_preparing", Some(SID), json!({})),
        ("kernel_pulling", Some(SID), json!({"image": "python:3.8"})),
        ("kernel_creating", Some(SID), json!({})),
        (
            "kernel_started",
            Some(SID),
            json!({"container_id": "abc", "service_ports": [{"name": "jupyter"}], "occupied_slots": {"cpu": "2"}}),
        ),
        ("kernel_restarting", Some(SID), json!({})),
        (
            "kernel_terminating",
            Some(SID),
            json!({"reason": "user-requested"}),
        ),
        (
            "kernel_terminated",
            Some(SID),
            json!({"reason": "user-requested", "exit_code": null, "last_stat": null}),
        ),
        (
            "kernel_cancelled",
            Some(SID),
            json!({"reason": "no-available-instances"}),
        ),
        ("kernel_error", Some(SID), json!({"reason": "agent-lost"})),
        (
            "kernel_stat_sync",
            Some(SID),
            json!({"stat": {"cpu_util": {"current": "12.5"}}}),
        ),
    ];
    assert_eq!(cases.len() + 1, EventType::ALL.len());
    for (t, k, p) in cases {
        let e = decode_value(&envelope(t, k, p)).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(e.event_type().as_str(), t);
        assert_eq!(
            Event::decode(&e.to_bytes().unwrap()).unwrap(),
            e,
            "{t} round trip"
        );
    }
}

proptest! {
    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Event::decode(&bytes);
    }

    /// Mutating any one character of a valid envelope either still decodes or fails with an error,
    /// never panics; and a decoded event always round-trips.
    #[test]
    fn mutated_envelopes_decode_or_fail_cleanly(pos in 0usize..600, c in any::<char>()) {
        let text = envelope("session_enqueued", None, enqueued_payload()).to_string();
        let mut chars: Vec<char> = text.chars().collect();
        let i = pos % chars.len();
        chars[i] = c;
        let mutated: String = chars.into_iter().collect();
        if let Ok(e) = Event::decode(mutated.as_bytes()) {
            prop_assert_eq!(Event::decode(&e.to_bytes().unwrap()).unwrap(), e);
        }
    }

    /// A slot amount written by a producer decodes to the same canonical string whatever its zeros.
    #[test]
    fn slot_amounts_decode_canonically(int in 0u32..100_000, frac in 0u32..1000, zeros in 0usize..4) {
        let text = format!("{}{int}.{frac:03}", "0".repeat(zeros));
        let payload = json!({"container_id": "c", "occupied_slots": {"cpu": text}});
        let e = decode_value(&envelope("kernel_started", Some(SID), payload)).unwrap();
        let EventBody::KernelStarted(p) = e.body else { panic!() };
        let canonical = p.occupied_slots.unwrap().to_json()["cpu"].as_str().unwrap().to_owned();
        let expected = crate::slots::format_amount(crate::slots::parse_amount("cpu", &format!("{int}.{frac:03}")).unwrap());
        prop_assert_eq!(canonical, expected);
    }
}

#[test]
fn hostile_text_is_refused_with_its_own_label() {
    let mut v = envelope(
        "kernel_stat_sync",
        Some(SID),
        json!({"stat": {"a": [{"b": "x\u{0}"}]}}),
    );
    let err = decode_value(&v).unwrap_err();
    assert_eq!(err.label(), "nul_character");
    // The type is named: it comes from the catalogue, not from the event's text.
    assert_eq!(err.event_type.as_deref(), Some("kernel_stat_sync"));
    assert!(err.to_string().contains("U+0000"), "{err}");

    v["event_type"] = json!("kernel_stat_sync\u{0}");
    let err = decode_value(&v).unwrap_err();
    assert_eq!((err.label(), err.event_type), ("nul_character", None));

    let surrogate = br#"{"event_type":"kernel_error","payload":{"reason":"\ud800"}}"#;
    let err = Event::decode(surrogate).unwrap_err();
    assert_eq!(err.label(), "malformed");
    assert!(err.to_string().contains("lone surrogate"), "{err}");

    let mut deep = json!("leaf");
    for _ in 0..MAX_DEPTH_FOR_TESTS {
        deep = json!([deep]);
    }
    let v = envelope(
        "kernel_stat_sync",
        Some(SID),
        json!({"stat": {"deep": deep}}),
    );
    let err = decode_value(&v).unwrap_err();
    assert_eq!(err.label(), "malformed");
    assert!(err.to_string().contains("nested deeper than 64"), "{err}");
}

const MAX_DEPTH_FOR_TESTS: usize = crate::screen::MAX_DEPTH;

#[test]
fn oversized_events_are_refused_before_parsing() {
    let v = envelope(
        "kernel_error",
        Some(SID),
        json!({"reason": "x".repeat(2000)}),
    );
    let bytes = v.to_string().into_bytes();
    let err = Event::decode_limited(&bytes, 1000).unwrap_err();
    assert_eq!(err.label(), "oversized");
    let DecodeErrorKind::TooLarge {
        len,
        limit,
        sha256,
        kept,
    } = &err.kind
    else {
        panic!("{err}")
    };
    assert_eq!((*len, *limit, *kept), (bytes.len(), 1000, bytes.len()));
    assert_eq!(sha256.len(), 64);
    assert!(Event::decode_limited(&bytes, bytes.len()).is_ok());
}

#[test]
fn indexed_fields_are_bounded() {
    let mut p = enqueued_payload();
    p["access_key"] = json!("A".repeat(MAX_KEY_FIELD_BYTES + 1));
    let err = err_of(&envelope("session_enqueued", None, p));
    assert!(
        err.contains("payload.access_key") && err.contains("1024"),
        "{err}"
    );
}
