//! Schema tests: the GraphQL schema executed directly (no HTTP) against a real PostgreSQL read
//! model, one caller per role.

use std::collections::HashSet;

use crate::common::Fixture;
use async_graphql::{Request, Variables};
use serde_json::{Value, json};
use sessionview_query::{Caller, Limits, build_schema, execute, prepare};
use sessionview_store::{KeyPair, ReadModel};

async fn run(fx: &Fixture, kp: &KeyPair, query: &str, vars: Value) -> async_graphql::Response {
    run_with(Limits::default(), fx, kp, query, vars).await
}

async fn run_with(
    limits: Limits,
    fx: &Fixture,
    kp: &KeyPair,
    query: &str,
    vars: Value,
) -> async_graphql::Response {
    let schema = build_schema(limits);
    let req = Request::new(query).variables(Variables::from_json(vars));
    execute(
        &schema,
        prepare(
            req,
            std::sync::Arc::new(fx.store.clone()),
            Caller {
                keypair: kp.clone(),
            },
        ),
    )
    .await
}

async fn data(fx: &Fixture, kp: &KeyPair, query: &str, vars: Value) -> Value {
    let resp = run(fx, kp, query, vars).await;
    assert!(resp.errors.is_empty(), "{:?}", resp.errors);
    resp.data.into_json().unwrap()
}

async fn error(fx: &Fixture, kp: &KeyPair, query: &str, vars: Value) -> String {
    let resp = run(fx, kp, query, vars).await;
    assert!(
        !resp.errors.is_empty(),
        "expected an error, got {:?}",
        resp.data
    );
    resp.errors[0].message.clone()
}

const LIST: &str = "query($limit: Int!, $offset: Int!, $dn: String, $ak: String, $g: String, $status: String) {
  compute_session_list(limit: $limit, offset: $offset, domain_name: $dn, access_key: $ak, group_id: $g, status: $status) {
    total_count items { id domain_name access_key containers { id agent } dependencies { id domain_name access_key } }
  }
}";

fn ids(list: &Value) -> HashSet<String> {
    list["compute_session_list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

fn total(list: &Value) -> usize {
    list["compute_session_list"]["total_count"]
        .as_u64()
        .unwrap() as usize
}

#[tokio::test]
async fn each_role_lists_exactly_its_scope() {
    let fx = Fixture::new().await;
    let all = fx.sessions.len();
    let in_default = fx
        .sessions
        .iter()
        .filter(|s| s.session.domain_name == "default")
        .count();
    let own = fx
        .sessions
        .iter()
        .filter(|s| s.session.access_key == fx.user.access_key)
        .count();
    assert!(all > in_default && in_default > own && own > 0);

    let vars = json!({"limit": 1000, "offset": 0});
    let d = data(&fx, &fx.superadmin, LIST, vars.clone()).await;
    assert_eq!((total(&d), ids(&d).len()), (all, all));

    let d = data(&fx, &fx.admin, LIST, vars.clone()).await;
    assert_eq!((total(&d), ids(&d).len()), (in_default, in_default));
    for item in d["compute_session_list"]["items"].as_array().unwrap() {
        assert_eq!(item["domain_name"], "default");
        for c in item["containers"].as_array().unwrap() {
            assert_eq!(c["agent"], Value::Null, "agent is super-admin only");
        }
        for dep in item["dependencies"].as_array().unwrap() {
            assert_eq!(dep["domain_name"], "default", "dependencies are scoped too");
        }
    }

    let d = data(&fx, &fx.user, LIST, vars.clone()).await;
    assert_eq!((total(&d), ids(&d).len()), (own, own));
    for item in d["compute_session_list"]["items"].as_array().unwrap() {
        assert_eq!(item["access_key"], fx.user.access_key.as_str());
        for dep in item["dependencies"].as_array().unwrap() {
            assert_eq!(dep["access_key"], fx.user.access_key.as_str());
        }
    }
    // The super-admin sees agents of scheduled containers.
    let d = data(&fx, &fx.superadmin, LIST, vars).await;
    let agents = d["compute_session_list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["containers"].as_array().unwrap().iter())
        .filter(|c| !c["agent"].is_null())
        .count();
    assert!(agents > 0);
    fx.drop().await;
}

#[tokio::test]
async fn forbidden_arguments_are_errors_and_filters_stay_in_scope() {
    let fx = Fixture::new().await;
    let research_ak = fx
        .sessions
        .iter()
        .find(|s| s.session.domain_name == "research")
        .unwrap()
        .session
        .access_key
        .clone();
    let other_default_ak = fx
        .sessions
        .iter()
        .find(|s| s.session.domain_name == "default" && s.session.access_key != fx.user.access_key)
        .unwrap()
        .session
        .access_key
        .clone();

    for kp in [&fx.admin, &fx.user] {
        let e = error(
            &fx,
            kp,
            LIST,
            json!({"limit": 10, "offset": 0, "dn": "research"}),
        )
        .await;
        assert!(
            e.contains("\"research\"") && e.contains("outside your domain"),
            "{e}"
        );
        // Their own domain, named explicitly, is fine.
        data(
            &fx,
            kp,
            LIST,
            json!({"limit": 10, "offset": 0, "dn": "default"}),
        )
        .await;
    }
    let e = error(
        &fx,
        &fx.user,
        LIST,
        json!({"limit": 10, "offset": 0, "ak": other_default_ak}),
    )
    .await;
    assert!(e.contains("not yours"), "{e}");

    // An admin filtering by an access key outside its domain gets an empty list.
    let d = data(
        &fx,
        &fx.admin,
        LIST,
        json!({"limit": 10, "offset": 0, "ak": research_ak}),
    )
    .await;
    assert_eq!(total(&d), 0);
    // ... and inside its domain, exactly that key's sessions.
    let d = data(
        &fx,
        &fx.admin,
        LIST,
        json!({"limit": 1000, "offset": 0, "ak": other_default_ak}),
    )
    .await;
    let expected = fx
        .sessions
        .iter()
        .filter(|s| s.session.access_key == other_default_ak)
        .count();
    assert_eq!(total(&d), expected);
    // The super-admin may name any domain.
    let d = data(
        &fx,
        &fx.superadmin,
        LIST,
        json!({"limit": 1000, "offset": 0, "dn": "research"}),
    )
    .await;
    let expected = fx
        .sessions
        .iter()
        .filter(|s| s.session.domain_name == "research")
        .count();
    assert_eq!(total(&d), expected);
    // group_id must be a UUID.
    let e = error(
        &fx,
        &fx.superadmin,
        LIST,
        json!({"limit": 10, "offset": 0, "g": "grp"}),
    )
    .await;
    assert!(e.contains("group_id \"grp\" is not a UUID"), "{e}");
    fx.drop().await;
}

#[tokio::test]
async fn single_items_are_null_outside_the_scope() {
    let fx = Fixture::new().await;
    let q = "query($id: UUID!) { compute_session(id: $id) { id containers { id } } compute_container(id: $id) { id agent } }";
    let research = fx
        .sessions
        .iter()
        .find(|s| s.session.domain_name == "research")
        .unwrap();
    let other_user = fx
        .sessions
        .iter()
        .find(|s| s.session.domain_name == "default" && s.session.access_key != fx.user.access_key)
        .unwrap();
    let own = fx
        .sessions
        .iter()
        .find(|s| s.session.access_key == fx.user.access_key)
        .unwrap();

    let visible = |d: &Value| !d["compute_session"].is_null() && !d["compute_container"].is_null();
    let check = async |kp: &KeyPair, id: uuid::Uuid| data(&fx, kp, q, json!({"id": id})).await;
    assert!(visible(&check(&fx.superadmin, research.session.id).await));
    assert!(!visible(&check(&fx.admin, research.session.id).await));
    assert!(visible(&check(&fx.admin, other_user.session.id).await));
    assert!(!visible(&check(&fx.user, other_user.session.id).await));
    assert!(visible(&check(&fx.user, own.session.id).await));
    assert!(!visible(&check(&fx.superadmin, uuid::Uuid::new_v4()).await));

    // Container lists of an invisible session are empty, not an error.
    let cl = "query($s: UUID!) { compute_container_list(limit: 10, offset: 0, session_id: $s) { total_count items { id } } }";
    let d = data(&fx, &fx.user, cl, json!({"s": other_user.session.id})).await;
    assert_eq!(
        d["compute_container_list"],
        json!({"total_count": 0, "items": []})
    );
    let d = data(&fx, &fx.admin, cl, json!({"s": other_user.session.id})).await;
    assert_eq!(
        d["compute_container_list"]["total_count"].as_u64().unwrap() as usize,
        other_user.kernels.len()
    );
    fx.drop().await;
}

#[tokio::test]
async fn a_page_of_sessions_with_children_costs_a_constant_number_of_statements() {
    let fx = Fixture::new().await;
    let q = "query($limit: Int!) { compute_session_list(limit: $limit, offset: 0) {
        total_count items { id containers { id role } dependencies { id containers { id } } } } }";
    let mut costs = Vec::new();
    for limit in [10, 100] {
        let before = fx.store.statements_executed();
        let d = data(&fx, &fx.superadmin, q, json!({"limit": limit})).await;
        assert_eq!(
            d["compute_session_list"]["items"].as_array().unwrap().len(),
            limit
        );
        costs.push(fx.store.statements_executed() - before);
    }
    // The total, the page and its containers in one statement; then one batch each for the
    // dependencies and the dependencies' containers: 3 (2 when no listed session has a visible
    // dependency). On a busy machine a batch can split: list items register with the loader in
    // chunks of 32 (futures' cooperative yield), and the loader's 1 ms window may close between
    // chunks (or within one, when the machine is busy: seen once with 15 statements for 100
    // sessions), so at most 1 + 2 * ceil(n / 16) statements: 15 for 100 sessions, still far from
    // the 200 of one batch per session.
    let bound = |n: u64| 1 + 2 * n.div_ceil(16);
    assert!(
        (2..=bound(10)).contains(&costs[0]),
        "10 sessions: {costs:?}"
    );
    assert!(
        (2..=bound(100)).contains(&costs[1]),
        "100 sessions: {costs:?}"
    );
    fx.drop().await;
}

#[tokio::test]
async fn ordering_pagination_and_filters() {
    let fx = Fixture::new().await;
    let q = "query($o: Int!, $k: String, $asc: Boolean, $status: String) {
        compute_session_list(limit: 7, offset: $o, order_key: $k, order_asc: $asc, status: $status) { total_count items { id name status } } }";
    // Default order: pages never overlap or skip.
    let mut seen = Vec::new();
    for page in 0..5 {
        let d = data(&fx, &fx.superadmin, q, json!({"o": page * 7})).await;
        seen.extend(ids(&d));
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    // Explicit order by name ascending.
    let d = data(
        &fx,
        &fx.superadmin,
        q,
        json!({"o": 0, "k": "name", "asc": true}),
    )
    .await;
    let names: Vec<String> = d["compute_session_list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // A status list with spaces.
    let d = data(
        &fx,
        &fx.superadmin,
        q,
        json!({"o": 0, "status": "RUNNING, CANCELLED"}),
    )
    .await;
    let expected = fx
        .sessions
        .iter()
        .filter(|s| matches!(s.session.status.as_str(), "RUNNING" | "CANCELLED"))
        .count();
    assert_eq!(total(&d), expected);
    for i in d["compute_session_list"]["items"].as_array().unwrap() {
        assert!(matches!(
            i["status"].as_str().unwrap(),
            "RUNNING" | "CANCELLED"
        ));
    }
    fx.drop().await;
}

#[tokio::test]
async fn refusals_are_clear_graphql_errors() {
    let fx = Fixture::new().await;
    let su = &fx.superadmin;
    let list = |args: &str| format!("{{ compute_session_list({args}) {{ total_count }} }}");
    let e = error(&fx, su, &list("limit: 1001, offset: 0"), json!({})).await;
    assert!(e.contains("between 1 and 1000, got 1001"), "{e}");
    let e = error(&fx, su, &list("limit: 10, offset: -1"), json!({})).await;
    assert!(e.contains("offset must be between 0 and 100000"), "{e}");
    assert!(e.contains("got -1"), "{e}");
    let e = error(&fx, su, &list("limit: 10, offset: 100001"), json!({})).await;
    assert!(
        e.contains("--max-offset") && e.contains("got 100001"),
        "{e}"
    );
    let e = error(
        &fx,
        su,
        &list("limit: 10, offset: 0, status: \"RUNNING,SLEEPING\""),
        json!({}),
    )
    .await;
    assert!(
        e.contains("\"SLEEPING\"") && e.contains("TERMINATED"),
        "{e}"
    );
    let e = error(
        &fx,
        su,
        &list("limit: 10, offset: 0, order_key: \"agent\""),
        json!({}),
    )
    .await;
    assert!(
        e.contains("unknown order_key \"agent\"") && e.contains("created_at"),
        "{e}"
    );
    // Depth: dependencies nested beyond the limit.
    let mut deep = String::from("id");
    for _ in 0..12 {
        deep = format!("dependencies {{ {deep} }}");
    }
    // (Complexity is lifted here so that depth alone decides.)
    let lifted = Limits {
        max_complexity: usize::MAX,
        ..Limits::default()
    };
    let q = format!("{{ compute_session_list(limit: 1, offset: 0) {{ items {{ {deep} }} }} }}");
    let resp = run_with(lifted, &fx, su, &q, json!({})).await;
    let e = &resp.errors[0].message;
    assert!(e.to_lowercase().contains("nested too deep"), "{e}");
    // Complexity: the largest page with every nested field.
    let heavy = "{ compute_session_list(limit: 1000, offset: 0) { items { id name status containers { id role agent status live_stat last_stat occupied_slots } dependencies { id containers { id status } } } } }";
    let e = error(&fx, su, heavy, json!({})).await;
    assert!(e.to_lowercase().contains("too complex"), "{e}");
    fx.drop().await;
}

#[tokio::test]
async fn keypair_returns_the_callers_own_with_secret() {
    let fx = Fixture::new().await;
    let d = data(
        &fx,
        &fx.admin,
        "{ keypair { access_key secret_key is_admin is_active role domain_name user_email } }",
        json!({}),
    )
    .await;
    assert_eq!(
        d["keypair"],
        json!({
            "access_key": fx.admin.access_key, "secret_key": fx.admin.secret_key, "is_admin": true,
            "is_active": true, "role": "admin", "domain_name": "default", "user_email": "admin@example.com"
        })
    );
    fx.drop().await;
}

#[tokio::test]
async fn scalars_are_serialized_as_the_seed_shows() {
    let fx = Fixture::new().await;
    let q = "query($id: UUID!) { compute_session(id: $id) { id status_changed created_at terminated_at occupied_slots resource_opts service_ports mounts num_queries created_user_uuid created_user_id } }";
    let d = data(
        &fx,
        &fx.superadmin,
        q,
        json!({"id": crate::common::SEED_SESSION}),
    )
    .await;
    let s = &d["compute_session"];
    assert_eq!(s["status_changed"], "2020-02-16T15:47:28.997335+00:00");
    assert_eq!(s["terminated_at"], Value::Null);
    // JSONString: a JSON text inside a string, canonical slots summed over 3 containers.
    let slots: Value = serde_json::from_str(s["occupied_slots"].as_str().unwrap()).unwrap();
    assert_eq!(slots, json!({"cpu": "3", "mem": "3221225472"}));
    assert_eq!(s["resource_opts"], "{}");
    assert_eq!(s["service_ports"], "[]");
    assert_eq!(s["mounts"], json!([]));
    assert_eq!(s["num_queries"], 0);
    assert_eq!(s["created_user_uuid"], Value::Null);
    fx.drop().await;
}

/// Lists and single sessions read their containers' JSON columns only when a selection needs
/// them (directly, through a fragment or an inline fragment); every path answers what a
/// container read alone answers.
#[tokio::test]
async fn container_fields_are_whole_on_every_path() {
    let fx = Fixture::new().await;
    let su = &fx.superadmin;
    let json_fields = ["occupied_slots", "last_stat", "live_stat", "resource_opts"];
    let scalar_fields = ["role", "status", "agent", "container_id"];
    let one = "query($id: UUID!) { compute_container(id: $id) { role status agent container_id occupied_slots last_stat live_stat resource_opts } }";
    let lists = [
        "{ compute_session_list(limit: 40, offset: 0) { items { containers { id occupied_slots last_stat live_stat resource_opts } } } }",
        "{ compute_session_list(limit: 40, offset: 0) { items { containers { id ...J } } } } fragment J on ComputeContainer { occupied_slots last_stat live_stat resource_opts }",
        "{ compute_session_list(limit: 40, offset: 0) { items { containers { id ... on ComputeContainer { occupied_slots last_stat live_stat resource_opts } } } } }",
        "{ compute_session_list(limit: 40, offset: 0) { items { containers { id role status agent container_id } } } }",
    ];
    let (mut compared, mut with_stats) = (0, 0);
    for (i, q) in lists.iter().enumerate() {
        let fields: &[&str] = if i < 3 { &json_fields } else { &scalar_fields };
        let d = data(&fx, su, q, json!({})).await;
        for s in d["compute_session_list"]["items"].as_array().unwrap() {
            for c in s["containers"].as_array().unwrap() {
                let alone = data(&fx, su, one, json!({"id": c["id"]})).await;
                for f in fields {
                    assert_eq!(
                        c[f], alone["compute_container"][f],
                        "{q}: {f} of {}",
                        c["id"]
                    );
                }
                compared += 1;
                with_stats += usize::from(!c["last_stat"].is_null());
            }
        }
    }
    assert!(compared > 40, "{compared} containers compared");
    assert!(
        with_stats > 0,
        "no container with stats: the comparison would be vacuous"
    );
    // A single session, through a fragment.
    let q = "query($id: UUID!) { compute_session(id: $id) { containers { id ...J } } } fragment J on ComputeContainer { occupied_slots last_stat }";
    let d = data(&fx, su, q, json!({"id": crate::common::SEED_SESSION})).await;
    for c in d["compute_session"]["containers"].as_array().unwrap() {
        let alone = data(&fx, su, one, json!({"id": c["id"]})).await;
        assert_eq!(
            c["occupied_slots"],
            alone["compute_container"]["occupied_slots"]
        );
        assert_ne!(c["occupied_slots"], Value::Null);
    }
    fx.drop().await;
}

/// The 2020 web UI's session list: its JS SDK's query (backend.ai-webui v20.08.0,
/// `src/lib/backend.ai-client-node.ts`), with every field the web UI asks for and the rest of the
/// contract's.
const WEB_UI_LIST: &str = "query($limit: Int!, $offset: Int!, $ak: String, $group_id: String, $status: String) {
  legacy_compute_session_list(limit: $limit, offset: $offset, access_key: $ak, group_id: $group_id, status: $status) {
    items { sess_id session_name lang tag created_at terminated_at status status_info service_ports mounts
      occupied_slots access_key group_name domain_name scaling_group agent container_id id role
      mem_slot cpu_slot gpu_slot cpu_used cpu_using mem_max_bytes mem_cur_bytes net_rx_bytes
      net_tx_bytes io_read_bytes io_write_bytes io_max_scratch_size io_cur_scratch_size
      live_stat last_stat resource_opts num_queries result user_email }
    total_count
  }
}";

#[tokio::test]
async fn the_web_uis_legacy_list_per_tab() {
    let fx = Fixture::new().await;
    // backend.ai-webui v20.08.0, src/components/backend-ai-session-list.ts.
    let tabs = [
        (
            "running",
            "RUNNING,RESTARTING,TERMINATING,PENDING,PREPARING,PULLING",
        ),
        ("finished", "TERMINATED,CANCELLED"),
        ("others", "TERMINATING,ERROR"),
    ];
    let mut seen_stat = false;
    for kp in [&fx.superadmin, &fx.user] {
        for (tab, status) in tabs {
            let vars = json!({"limit": 1000, "offset": 0, "status": status});
            let legacy = data(&fx, kp, WEB_UI_LIST, vars.clone()).await;
            let page = &legacy["legacy_compute_session_list"];
            // The same set as compute_session_list gives for the same arguments.
            let plain = data(&fx, kp, LIST, vars.clone()).await;
            let want = ids(&plain);
            let got: HashSet<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(got, want, "{tab} for {}", kp.role.as_str());
            assert_eq!(
                page["total_count"].as_u64().unwrap() as usize,
                total(&plain)
            );
            // The simulated cluster has running and finished sessions, none left terminating
            // or in error (the "others" tab is then empty, and must equal the plain list too).
            if kp.role == sessionview_store::Role::SuperAdmin && tab != "others" {
                assert!(!want.is_empty(), "{tab} is not empty in the fixture");
            }
            for item in page["items"].as_array().unwrap() {
                let id: uuid::Uuid = item["id"].as_str().unwrap().parse().unwrap();
                let s = fx.sessions.iter().find(|s| s.session.id == id).unwrap();
                let master = s.kernels.iter().find(|k| k.ordinal == 0).unwrap();
                assert!(status.split(',').any(|st| st == item["status"]), "{tab}");
                assert_eq!(item["sess_id"], s.session.name.as_str());
                assert_eq!(item["session_name"], s.session.name.as_str());
                assert_eq!(item["lang"], s.session.image.as_str());
                assert_eq!(item["role"], master.role.as_str());
                // JSON strings, parsed by the web UI.
                let slots: Value =
                    serde_json::from_str(item["occupied_slots"].as_str().unwrap()).unwrap();
                assert_eq!(slots, master.occupied_slots.to_json());
                let mem: f64 = master
                    .occupied_slots
                    .get("mem")
                    .map_or(0.0, |d| d.to_string().parse().unwrap());
                assert_eq!(item["mem_slot"], ((mem / 1048576.0).floor() as i64));
                let cpu: f64 = master
                    .occupied_slots
                    .get("cpu")
                    .map_or(0.0, |d| d.to_string().parse().unwrap());
                assert_eq!(item["cpu_slot"].as_f64().unwrap(), cpu);
                let _: Value =
                    serde_json::from_str(item["resource_opts"].as_str().unwrap()).unwrap();
                let mounts: Vec<Value> = s.session.mounts.iter().map(|m| json!([m])).collect();
                assert_eq!(item["mounts"], Value::Array(mounts));
                match &master.last_stat {
                    Some(stat) => {
                        let expect = |metric: &str, key: &str| -> i64 {
                            match stat.get(metric).and_then(|m| m.get(key)) {
                                Some(Value::Number(n)) => n.as_f64().unwrap().floor() as i64,
                                Some(Value::String(t)) => {
                                    t.parse::<f64>().map_or(0, |f| f.floor() as i64)
                                }
                                _ => 0,
                            }
                        };
                        seen_stat |= expect("mem", "current") != 0;
                        assert_eq!(item["cpu_used"], expect("cpu_used", "current"));
                        assert_eq!(item["mem_cur_bytes"], expect("mem", "current"));
                        assert_eq!(item["mem_max_bytes"], expect("mem", "stats.max"));
                        let live: Value =
                            serde_json::from_str(item["live_stat"].as_str().unwrap()).unwrap();
                        assert_eq!(live, Value::Object(stat.clone()));
                    }
                    None => {
                        assert_eq!(item["cpu_used"], 0);
                        assert_eq!(item["live_stat"], Value::Null);
                    }
                }
                if kp.role == sessionview_store::Role::SuperAdmin {
                    assert_eq!(item["agent"].as_str(), master.agent.as_deref());
                } else {
                    assert_eq!(item["access_key"], kp.access_key.as_str());
                    assert_eq!(item["agent"], Value::Null, "agent is super-admin only");
                    assert_eq!(item["container_id"], Value::Null);
                }
            }
        }
    }
    assert!(seen_stat, "the fixture has sessions with stats");
    // A user naming another key gets the same error as compute_session_list.
    let err = error(
        &fx,
        &fx.user,
        WEB_UI_LIST,
        json!({"limit": 10, "offset": 0, "ak": fx.superadmin.access_key}),
    )
    .await;
    assert!(err.contains("is not yours"), "{err}");
    let err = error(
        &fx,
        &fx.user,
        WEB_UI_LIST,
        json!({"limit": 10, "offset": 0, "status": "RUNNING,SLEEPING"}),
    )
    .await;
    assert!(err.contains("SLEEPING"), "{err}");
    fx.drop().await;
}
