//! Response keys in the query's order everywhere (root fields and aliases, list wrappers, nested
//! objects), and variables whose declared type differs from the argument's: the schema executed
//! directly against a real PostgreSQL read model.

use async_graphql::{Request, Value, Variables};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sessionview_query::{Caller, Limits, build_schema, execute, prepare};

use crate::common::Fixture;

async fn run(fx: &Fixture, query: &str, vars: serde_json::Value) -> async_graphql::Response {
    let request = Request::new(query).variables(Variables::from_json(vars));
    let caller = Caller {
        keypair: fx.superadmin.clone(),
    };
    execute(
        &build_schema(Limits::default()),
        prepare(request, std::sync::Arc::new(fx.store.clone()), caller),
    )
    .await
}

fn keys(v: &Value) -> Vec<&str> {
    match v {
        Value::Object(m) => m.keys().map(|k| k.as_str()).collect(),
        other => panic!("not an object: {other:?}"),
    }
}

fn field<'v>(v: &'v Value, key: &str) -> &'v Value {
    match v {
        Value::Object(m) => &m[key],
        other => panic!("not an object: {other:?}"),
    }
}

fn list(v: &Value) -> &[Value] {
    match v {
        Value::List(l) => l,
        other => panic!("not a list: {other:?}"),
    }
}

#[tokio::test]
async fn items_before_total_count_with_dependencies_and_the_other_way_round() {
    let fx = Fixture::new().await;
    for (selection, wrapper, item) in [
        (
            "items { id dependencies { name id } containers { id role } name } total_count",
            ["items", "total_count"],
            ["id", "dependencies", "containers", "name"],
        ),
        (
            "total_count items { name containers { id role } dependencies { name id } id }",
            ["total_count", "items"],
            ["name", "containers", "dependencies", "id"],
        ),
    ] {
        let q = format!("{{ compute_session_list(limit: 1000, offset: 0) {{ {selection} }} }}");
        let resp = run(&fx, &q, serde_json::json!({})).await;
        assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        let page = field(&resp.data, "compute_session_list");
        assert_eq!(keys(page), wrapper);
        let items = list(field(page, "items"));
        assert!(!items.is_empty());
        let mut with_dependencies = 0;
        for i in items {
            assert_eq!(keys(i), item);
            for d in list(field(i, "dependencies")) {
                with_dependencies += 1;
                assert_eq!(keys(d), ["name", "id"]);
            }
            for c in list(field(i, "containers")) {
                assert_eq!(keys(c), ["id", "role"]);
            }
        }
        assert!(
            with_dependencies > 0,
            "the fixture has sessions with dependencies"
        );
    }
    fx.drop().await;
}

#[tokio::test]
async fn sixty_four_root_aliases_come_back_in_order() {
    let fx = Fixture::new().await;
    let id = fx.sessions[0].session.id;
    // Reads of different cost interleaved, so they complete out of order.
    let fields: String = (0..64)
        .map(|i| match i % 3 {
            0 => format!("a{i}: compute_session(id: \"{id}\") {{ id containers {{ id }} }} "),
            1 => format!("a{i}: keypair {{ access_key }} "),
            _ => format!("a{i}: compute_session_list(limit: 20, offset: {i}) {{ total_count }} "),
        })
        .collect();
    let resp = run(&fx, &format!("{{ {fields} }}"), serde_json::json!({})).await;
    assert!(resp.errors.is_empty(), "{:?}", resp.errors);
    let want: Vec<String> = (0..64).map(|i| format!("a{i}")).collect();
    assert_eq!(keys(&resp.data), want);
    fx.drop().await;
}

#[tokio::test]
async fn a_variable_of_another_type_is_a_validation_error() {
    let fx = Fixture::new().await;
    let id = fx.sessions[0].session.id.to_string();
    for (declared, vars) in [
        ("$id: ID!", serde_json::json!({ "id": id })),
        ("$id: String!", serde_json::json!({ "id": id })),
        ("$id: UUID", serde_json::json!({ "id": id })),
    ] {
        let q = format!("query({declared}) {{ compute_session(id: $id) {{ id }} }}");
        let resp = run(&fx, &q, vars).await;
        assert_eq!(resp.data, Value::Null, "{declared}: no data");
        let msg = &resp.errors.first().expect("an error").message;
        assert!(
            msg.contains("Variable \"id\"") && msg.contains("UUID!"),
            "{declared}: {msg}"
        );
    }
    let ok = run(
        &fx,
        "query($id: UUID!) { compute_session(id: $id) { id } }",
        serde_json::json!({ "id": id }),
    )
    .await;
    assert!(ok.errors.is_empty(), "{:?}", ok.errors);
    fx.drop().await;
}

const SESSION_FIELDS: &[&str] = &[
    "id",
    "name",
    "type",
    "image",
    "domain_name",
    "group_id",
    "access_key",
    "status",
    "status_changed",
    "created_at",
    "terminated_at",
    "occupied_slots",
    "service_ports",
    "mounts",
    "num_queries",
    "result",
];
const CONTAINER_FIELDS: &[&str] = &[
    "id",
    "role",
    "status",
    "agent",
    "occupied_slots",
    "live_stat",
    "last_stat",
    "created_at",
];

/// A field of a random selection: its response key (an alias or the name), and what it selects.
#[derive(Debug, Clone)]
struct Sel {
    key: String,
    text: String,
    children: Vec<Sel>,
}

fn leaf(names: &'static [&'static str]) -> impl Strategy<Value = Vec<Sel>> {
    proptest::sample::subsequence(names, 1..names.len())
        .prop_shuffle()
        .prop_flat_map(|fields| {
            let n = fields.len();
            (Just(fields), proptest::collection::vec(any::<bool>(), n))
        })
        .prop_map(|(fields, aliased)| {
            fields
                .into_iter()
                .zip(aliased)
                .enumerate()
                .map(|(i, (f, alias))| {
                    let key = if alias { format!("x{i}_{f}") } else { f.into() };
                    let text = if alias {
                        format!("{key}: {f}")
                    } else {
                        f.into()
                    };
                    Sel {
                        key,
                        text,
                        children: Vec::new(),
                    }
                })
                .collect()
        })
}

/// A session's selection: scalars, and maybe containers and dependencies, anywhere among them.
fn session_selection() -> impl Strategy<Value = Vec<Sel>> {
    (
        leaf(SESSION_FIELDS),
        proptest::option::of(leaf(CONTAINER_FIELDS)),
        proptest::option::of(leaf(SESSION_FIELDS)),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut fields, containers, dependencies, at1, at2)| {
            for (name, children, at) in [
                ("containers", containers, at1),
                ("dependencies", dependencies, at2),
            ] {
                if let Some(children) = children {
                    let at = at.index(fields.len() + 1);
                    fields.insert(
                        at,
                        Sel {
                            key: name.into(),
                            text: name.into(),
                            children,
                        },
                    );
                }
            }
            fields
        })
}

fn render(sel: &[Sel]) -> String {
    sel.iter()
        .map(|s| {
            if s.children.is_empty() {
                s.text.clone()
            } else {
                format!("{} {{ {} }}", s.text, render(&s.children))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(value: &Value, sel: &[Sel], path: &str) -> Result<(), TestCaseError> {
    let want: Vec<&str> = sel.iter().map(|s| s.key.as_str()).collect();
    prop_assert_eq!(keys(value), want, "at {}", path);
    for s in sel.iter().filter(|s| !s.children.is_empty()) {
        match field(value, &s.key) {
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, &s.children, &format!("{path}.{}[{i}]", s.key))?;
                }
            }
            Value::Null => {}
            other => check(other, &s.children, &format!("{path}.{}", s.key))?,
        }
    }
    Ok(())
}

#[test]
fn random_selections_come_back_in_the_order_asked() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fx = rt.block_on(Fixture::new());
    let id = fx.sessions[0].session.id;
    let strategy = (session_selection(), any::<bool>(), any::<bool>());
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let result = runner.run(&strategy, |(items, count_first, single_first)| {
        let list = if count_first {
            format!("total_count items {{ {} }}", render(&items))
        } else {
            format!("items {{ {} }} total_count", render(&items))
        };
        let roots = [
            format!(
                "one: compute_session(id: \"{id}\") {{ {} }}",
                render(&items)
            ),
            format!("page: compute_session_list(limit: 25, offset: 0) {{ {list} }}"),
        ];
        let (first, second) = if single_first { (0, 1) } else { (1, 0) };
        let query = format!("{{ {} {} }}", roots[first], roots[second]);
        let resp = rt.block_on(run(&fx, &query, serde_json::json!({})));
        prop_assert!(resp.errors.is_empty(), "{:?} for {}", resp.errors, query);
        let root_keys = if single_first {
            ["one", "page"]
        } else {
            ["page", "one"]
        };
        prop_assert_eq!(keys(&resp.data), root_keys);
        check(field(&resp.data, "one"), &items, "one")?;
        let page = field(&resp.data, "page");
        let wrapper = if count_first {
            ["total_count", "items"]
        } else {
            ["items", "total_count"]
        };
        prop_assert_eq!(keys(page), wrapper);
        for (i, item) in list_items(page).iter().enumerate() {
            check(item, &items, &format!("page.items[{i}]"))?;
        }
        Ok(())
    });
    rt.block_on(fx.drop());
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn list_items(page: &Value) -> &[Value] {
    list(field(page, "items"))
}
