//! Response keys in the query's order at the root.
//!
//! Below the root every object of this schema resolves its fields in selection order (`serial`
//! on each type: the cost is nil, their fields are reads of a row already in memory or one
//! DataLoader call, and list items still resolve concurrently, so loaders batch across items).
//! The root is different: async-graphql resolves a query's root fields concurrently and inserts
//! each into the response as it *completes*, so `{ a: compute_session(..) b: keypair }` can come
//! back as `b, a`. Root fields are independent reads that should overlap, so they keep running
//! concurrently, and [`super::execute`] puts the root's keys back in the document's order afterwards,
//! the order the specification's CollectFields gives (fragments expanded where they are spread).

use std::collections::HashSet;

use async_graphql::parser::types::{
    ExecutableDocument, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Value};

/// The operation a request runs: the one named, or the first (async-graphql refuses a document
/// of several without a name).
pub(crate) fn selected<'d>(
    doc: &'d ExecutableDocument,
    operation: Option<&str>,
) -> Option<&'d Positioned<OperationDefinition>> {
    match operation {
        Some(name) => doc
            .operations
            .iter()
            .find_map(|(n, op)| n.filter(|n| n.as_str() == name).map(|_| op)),
        None => doc.operations.iter().next().map(|(_, op)| op),
    }
}

/// The response keys of the operation's root selection, in document order, each once.
pub(crate) fn root_keys(doc: &ExecutableDocument, operation: Option<&str>) -> Vec<Name> {
    let Some(op) = selected(doc, operation) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    let mut spread = HashSet::new();
    collect(
        doc,
        &op.node.selection_set,
        &mut keys,
        &mut seen,
        &mut spread,
    );
    keys
}

fn collect<'d>(
    doc: &'d ExecutableDocument,
    set: &'d Positioned<SelectionSet>,
    keys: &mut Vec<Name>,
    seen: &mut HashSet<&'d str>,
    spread: &mut HashSet<&'d str>,
) {
    for item in &set.node.items {
        match &item.node {
            Selection::Field(field) => {
                let key = field.node.response_key();
                if seen.insert(key.node.as_str()) {
                    keys.push(key.node.clone());
                }
            }
            Selection::InlineFragment(inline) => {
                collect(doc, &inline.node.selection_set, keys, seen, spread);
            }
            Selection::FragmentSpread(s) => {
                let name = s.node.fragment_name.node.as_str();
                // A fragment is expanded once (a cycle is a validation error reported anyway).
                if spread.insert(name)
                    && let Some(fragment) = doc.fragments.get(&s.node.fragment_name.node)
                {
                    collect(doc, &fragment.node.selection_set, keys, seen, spread);
                }
            }
        }
    }
}

/// Moves the keys of `data` (an object) into `order`; keys not in it (none, in practice) keep
/// their place after those.
pub(crate) fn reorder(data: &mut Value, order: &[Name]) {
    let Value::Object(map) = data else {
        return;
    };
    let mut next = 0;
    for key in order {
        if let Some(from) = map.get_index_of(key) {
            if from != next {
                map.move_index(from, next);
            }
            next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    fn keys(query: &str, op: Option<&str>) -> Vec<String> {
        let doc = parse_query(query).unwrap();
        root_keys(&doc, op)
            .into_iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn aliases_fragments_and_repeats_in_document_order() {
        let q = "query A { z: keypair { access_key } ...F ... on Queries { m: keypair { role } } z: keypair { role } }
                 fragment F on Queries { b: keypair { role } ...F }
                 query B { y: keypair { role } }";
        assert_eq!(
            keys("{ b: keypair { role } a: keypair { role } }", None),
            ["b", "a"]
        );
        assert_eq!(keys(q, Some("A")), ["z", "b", "m"]);
        assert_eq!(keys(q, Some("B")), ["y"]);
        assert!(keys(q, Some("C")).is_empty());
    }

    #[test]
    fn reorder_moves_present_keys_and_leaves_absent_ones() {
        let mut map = async_graphql::indexmap::IndexMap::new();
        for k in ["c", "a", "b"] {
            map.insert(Name::new(k), Value::from(k));
        }
        let mut data = Value::Object(map);
        // "x" was skipped by @skip: it is not in the answer.
        let order: Vec<Name> = ["a", "x", "b", "c"].into_iter().map(Name::new).collect();
        reorder(&mut data, &order);
        let Value::Object(map) = data else {
            unreachable!()
        };
        let got: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(got, ["a", "b", "c"]);
    }
}
