//! Checks that bound what a request can cost before async-graphql spends anything on it: nesting
//! of the text and of the variables, fragment expansion, root fields and aliases — each linear in
//! the request's size, each refusal naming its limit.
//!
//! async-graphql's parser recurses on list and object values without a limit, and its depth and
//! complexity checks expand every fragment spread afresh (a chain of fragments that each spread
//! the previous one twice costs 2^n). So: the text's nesting is counted by a scan before it is
//! parsed, and the parsed document is measured with each fragment measured once.

use std::collections::HashMap;

use async_graphql::Positioned;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use serde_json::Value;

/// What a document may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentLimits {
    /// Longest query text, in bytes (refused before it is scanned or parsed).
    pub max_query_bytes: usize,
    /// Deepest nesting of `{`, `[` and `(` in the text, and of the variables' JSON.
    pub max_nesting: usize,
    /// Most root fields of an operation (fragments expanded), aliases included.
    pub max_root_fields: u64,
    /// Most aliased fields in an operation (fragments expanded).
    pub max_aliases: u64,
    /// Most fields of an operation once every fragment is expanded.
    pub max_fields: u64,
    /// Most fragment definitions in a document.
    pub max_fragments: usize,
}

impl Default for DocumentLimits {
    fn default() -> Self {
        Self {
            max_query_bytes: 64 * 1024,
            max_nesting: 64,
            max_root_fields: 64,
            max_aliases: 64,
            max_fields: 10_000,
            max_fragments: 128,
        }
    }
}

/// Refuses query text longer than `max` bytes.
pub fn text_length(query: &str, max: usize) -> Result<(), String> {
    if query.len() > max {
        return Err(format!(
            "the query is {} bytes long (limit: max query bytes {max})",
            query.len()
        ));
    }
    Ok(())
}

/// Refuses query text nested deeper than `max` (`{`, `[`, `(` outside strings and comments).
pub fn text_nesting(query: &str, max: usize) -> Result<(), String> {
    let b = query.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(b"\"\"\"") {
                    i += if b[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Err(format!(
                        "the query is nested deeper than {max} levels (brackets, braces and \
                         parentheses; limit: max nesting {max})"
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Refuses variables nested deeper than `max` (iteratively: no recursion on client input).
pub fn json_nesting(value: &Value, max: usize) -> Result<(), String> {
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let deeper = depth + 1;
        let fits = || {
            if deeper > max {
                Err(format!(
                    "the variables are nested deeper than {max} levels (limit: max nesting {max})"
                ))
            } else {
                Ok(())
            }
        };
        match v {
            Value::Array(a) => {
                fits()?;
                stack.extend(a.iter().map(|c| (c, deeper)));
            }
            Value::Object(o) => {
                fits()?;
                stack.extend(o.values().map(|c| (c, deeper)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a selection set costs once its fragments are expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    fields: u64,
    /// Fields at this level (a root set's are the operation's root fields).
    top: u64,
    aliases: u64,
}

impl Cost {
    fn add(&mut self, other: Cost) {
        self.fields = self.fields.saturating_add(other.fields);
        self.top = self.top.saturating_add(other.top);
        self.aliases = self.aliases.saturating_add(other.aliases);
    }
}

/// The cost of each fragment, measured once.
enum Memo {
    Measuring,
    Done(Cost),
}

struct Measure<'a> {
    doc: &'a ExecutableDocument,
    limits: DocumentLimits,
    memo: HashMap<&'a str, Memo>,
}

impl<'a> Measure<'a> {
    fn set(&mut self, set: &'a Positioned<SelectionSet>) -> Result<Cost, String> {
        let mut cost = Cost::default();
        for item in &set.node.items {
            match &item.node {
                Selection::Field(f) => {
                    let inner = self.set(&f.node.selection_set)?;
                    cost.fields = cost.fields.saturating_add(1).saturating_add(inner.fields);
                    cost.top = cost.top.saturating_add(1);
                    cost.aliases = cost
                        .aliases
                        .saturating_add(u64::from(f.node.alias.is_some()))
                        .saturating_add(inner.aliases);
                }
                Selection::InlineFragment(i) => cost.add(self.set(&i.node.selection_set)?),
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    cost.add(self.fragment(name)?);
                }
            }
            if cost.fields > self.limits.max_fields {
                return Err(format!(
                    "the query selects more than {} fields once its fragments are expanded \
                     (limit: max fields {})",
                    self.limits.max_fields, self.limits.max_fields
                ));
            }
        }
        Ok(cost)
    }

    fn fragment(&mut self, name: &'a str) -> Result<Cost, String> {
        match self.memo.get(name) {
            Some(Memo::Done(c)) => return Ok(*c),
            Some(Memo::Measuring) => {
                return Err(format!("fragment {name} spreads itself (a cycle)"));
            }
            None => {}
        }
        // An unknown fragment is left to validation, which names it.
        let Some((key, def)) = self.doc.fragments.get_key_value(name) else {
            return Ok(Cost::default());
        };
        let key = key.as_str();
        self.memo.insert(key, Memo::Measuring);
        let cost = self.set(&def.node.selection_set)?;
        self.memo.insert(key, Memo::Done(cost));
        Ok(cost)
    }
}

/// Refuses documents whose fragments, root fields or aliases exceed `limits`. Linear in the
/// document: each fragment is measured once. (Recursion follows selection sets, whose nesting
/// [`text_nesting`] bounded, and fragment spreads, which `max_fragments` bounds.)
pub fn document(doc: &ExecutableDocument, limits: DocumentLimits) -> Result<(), String> {
    if doc.fragments.len() > limits.max_fragments {
        return Err(format!(
            "the document defines {} fragments (limit: max fragments {})",
            doc.fragments.len(),
            limits.max_fragments
        ));
    }
    let mut measure = Measure {
        doc,
        limits,
        memo: HashMap::new(),
    };
    for (name, op) in doc.operations.iter() {
        let cost = measure.set(&op.node.selection_set)?;
        let which = name.map_or_else(|| "the operation".to_owned(), |n| format!("operation {n}"));
        if cost.top > limits.max_root_fields {
            return Err(format!(
                "{which} has {} root fields (limit: max root fields {})",
                cost.top, limits.max_root_fields
            ));
        }
        if cost.aliases > limits.max_aliases {
            return Err(format!(
                "{which} has {} aliased fields (limit: max aliases {})",
                cost.aliases, limits.max_aliases
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    fn check(query: &str) -> Result<(), String> {
        let limits = DocumentLimits::default();
        text_nesting(query, limits.max_nesting)?;
        document(&parse_query(query).map_err(|e| e.to_string())?, limits)
    }

    #[test]
    fn ordinary_queries_pass() {
        check(
            r#"query Q($id: UUID!) { compute_session(id: $id) { id containers { id } }
               # a comment with [[[[ and {{{{
               a: compute_session_list(limit: 10, offset: 0, status: "RUNNING,{[(") { total_count }
               ...F } fragment F on Queries { b: compute_session_list(limit: 1, offset: 0) { total_count } }"#,
        )
        .unwrap();
        check(r#"{ x(s: """ block { [ ( \""" still in """) }"#).unwrap();
    }

    #[test]
    fn nesting_is_refused_before_parsing() {
        let deep = format!(
            "{{ compute_session(id: {}1{}) {{ id }} }}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let err = check(&deep).unwrap_err();
        assert!(err.contains("max nesting 64"), "{err}");
        let mut v = serde_json::json!(1);
        for _ in 0..65 {
            v = serde_json::json!({ "a": v });
        }
        assert!(json_nesting(&v, 64).unwrap_err().contains("max nesting 64"));
        json_nesting(&serde_json::json!({"a": [1, {"b": [2]}]}), 64).unwrap();
    }

    #[test]
    fn fragment_chains_are_measured_once() {
        // F0 spreads nothing; Fi spreads F(i-1) twice: 2^40 fields if expanded.
        let mut q = String::from(
            "{ ...F40 } fragment F0 on Queries { a: compute_session_list(limit: 1, offset: 0) { total_count } }",
        );
        for i in 1..=40 {
            q.push_str(&format!(
                " fragment F{i} on Queries {{ ...F{p} ...F{p} }}",
                p = i - 1
            ));
        }
        // Expanded, this would not finish; measured once per fragment, it is refused at once.
        let err = check(&q).unwrap_err();
        assert!(err.contains("max fields 10000"), "{err}");
        let cyclic = "{ ...A } fragment A on Queries { ...B } fragment B on Queries { ...A }";
        assert!(check(cyclic).unwrap_err().contains("cycle"));
    }

    #[test]
    fn root_fields_and_aliases_are_capped() {
        let fields: String = (0..65)
            .map(|i| format!("a{i}: compute_session_list(limit: 1, offset: 0) {{ total_count }} "))
            .collect();
        let err = check(&format!("{{ {fields} }}")).unwrap_err();
        assert!(
            err.contains("65 root fields (limit: max root fields 64)"),
            "{err}"
        );
        let nested: String = (0..65).map(|i| format!("a{i}: id ")).collect();
        let err = check(&format!("{{ compute_session(id: \"x\") {{ {nested} }} }}")).unwrap_err();
        assert!(err.contains("max aliases 64"), "{err}");
    }
}
