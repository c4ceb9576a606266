//! The specification's "All Variable Usages Are Allowed" rule: a variable may only be used where
//! its declared type fits the argument's (`$id: ID!` for `compute_session(id: UUID!)` is a
//! validation error, not a null).
//!
//! async-graphql 7.2 has the rule (`VariableInAllowedPosition`), but its visitor chain does not
//! pass input values on to the rules after the first, so the rule never sees a usage and never
//! fails. This module checks the same thing itself, from the argument types of this schema's own
//! SDL (read once), before the document is executed.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use async_graphql::parser::types::{
    BaseType, Directive, ExecutableDocument, OperationDefinition, Selection, SelectionSet, Type,
    TypeKind, TypeSystemDefinition, VariableDefinition,
};
use async_graphql::{Name, Pos, Positioned, ServerError};
use async_graphql_value::Value;

/// What a field of a type takes and returns.
#[derive(Debug, Default)]
struct FieldSig {
    /// Argument name → (type, has a default value).
    args: HashMap<String, (Type, bool)>,
    /// The named type its selection set selects from.
    returns: String,
}

/// Every object type's fields, from the schema's SDL.
#[derive(Debug, Default)]
pub(crate) struct Signatures {
    fields: HashMap<String, HashMap<String, FieldSig>>,
    root: String,
}

/// The served schema's signatures.
pub(crate) static SIGNATURES: LazyLock<Signatures> =
    LazyLock::new(|| Signatures::from_sdl(&crate::sdl(), "Queries"));

fn named(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(n) => n.as_str(),
        BaseType::List(inner) => named(inner),
    }
}

impl Signatures {
    fn from_sdl(sdl: &str, root: &str) -> Self {
        let mut fields: HashMap<String, HashMap<String, FieldSig>> = HashMap::new();
        // The SDL is this crate's own output: it parses (a test proves it); if it ever did not,
        // nothing would be checked here and async-graphql's own validation would still run.
        if let Ok(doc) = async_graphql::parser::parse_schema(sdl) {
            for def in doc.definitions {
                let TypeSystemDefinition::Type(t) = def else {
                    continue;
                };
                let TypeKind::Object(object) = t.node.kind else {
                    continue;
                };
                let of_type = fields.entry(t.node.name.node.to_string()).or_default();
                for f in object.fields {
                    let f = f.node;
                    let args = f
                        .arguments
                        .into_iter()
                        .map(|a| {
                            let a = a.node;
                            (
                                a.name.node.to_string(),
                                (a.ty.node, a.default_value.is_some()),
                            )
                        })
                        .collect();
                    let returns = named(&f.ty.node).to_owned();
                    of_type.insert(f.name.node.to_string(), FieldSig { args, returns });
                }
            }
        }
        Self {
            fields,
            root: root.to_owned(),
        }
    }

    /// The usages of variables in `operation` (of `doc`) that their declarations do not allow.
    pub(crate) fn check(
        &self,
        doc: &ExecutableDocument,
        operation: Option<&str>,
    ) -> Vec<ServerError> {
        let Some(op) = super::order::selected(doc, operation) else {
            return Vec::new();
        };
        let mut walk = Walk {
            sigs: self,
            doc,
            op: op_variables(op),
            fragments: HashSet::new(),
            errors: Vec::new(),
        };
        walk.set(&self.root, &op.node.selection_set);
        walk.errors
    }
}

fn op_variables(
    op: &Positioned<OperationDefinition>,
) -> HashMap<&str, &Positioned<VariableDefinition>> {
    op.node
        .variable_definitions
        .iter()
        .map(|d| (d.node.name.node.as_str(), d))
        .collect()
}

struct Walk<'a> {
    sigs: &'a Signatures,
    doc: &'a ExecutableDocument,
    op: HashMap<&'a str, &'a Positioned<VariableDefinition>>,
    fragments: HashSet<&'a str>,
    errors: Vec<ServerError>,
}

/// `@skip(if:)` and `@include(if:)`, the only directives a query may carry here.
static DIRECTIVE_IF: LazyLock<Type> = LazyLock::new(|| Type {
    base: BaseType::Named(Name::new("Boolean")),
    nullable: false,
});

impl<'a> Walk<'a> {
    fn set(&mut self, on: &str, set: &'a Positioned<SelectionSet>) {
        for item in &set.node.items {
            match &item.node {
                Selection::Field(field) => {
                    let f = &field.node;
                    self.directives(&f.directives);
                    let Some(sig) = self
                        .sigs
                        .fields
                        .get(on)
                        .and_then(|fields| fields.get(f.name.node.as_str()))
                    else {
                        // An unknown field: async-graphql's validation names it.
                        continue;
                    };
                    for (name, value) in &f.arguments {
                        if let Some((ty, has_default)) = sig.args.get(name.node.as_str()) {
                            self.value(&value.node, ty, *has_default, value.pos);
                        }
                    }
                    self.set(&sig.returns, &f.selection_set);
                }
                Selection::InlineFragment(inline) => {
                    self.directives(&inline.node.directives);
                    let on = inline
                        .node
                        .type_condition
                        .as_ref()
                        .map_or(on, |c| c.node.on.node.as_str());
                    self.set(on, &inline.node.selection_set);
                }
                Selection::FragmentSpread(spread) => {
                    self.directives(&spread.node.directives);
                    let name = spread.node.fragment_name.node.as_str();
                    // Each fragment once: its type is its own condition wherever it is spread.
                    if self.fragments.insert(name)
                        && let Some(fragment) =
                            self.doc.fragments.get(&spread.node.fragment_name.node)
                    {
                        let on = fragment.node.type_condition.node.on.node.as_str();
                        self.set(on, &fragment.node.selection_set);
                    }
                }
            }
        }
    }

    fn directives(&mut self, directives: &'a [Positioned<Directive>]) {
        for d in directives {
            for (_, value) in &d.node.arguments {
                self.value(&value.node, &DIRECTIVE_IF, false, value.pos);
            }
        }
    }

    /// A value in a position of type `expected` (lists are walked item by item).
    fn value(&mut self, value: &Value, expected: &Type, location_default: bool, pos: Pos) {
        match value {
            Value::Variable(name) => {
                let Some(def) = self.op.get(name.as_str()) else {
                    // Undefined: async-graphql's NoUndefinedVariables reports it.
                    return;
                };
                let declared = &def.node.var_type.node;
                if !usage_allowed(
                    declared,
                    def.node.default_value.is_some(),
                    expected,
                    location_default,
                ) {
                    self.errors.push(ServerError::new(
                        format!(
                            "Variable \"{name}\" of type \"{declared}\" used in position expecting type \"{expected}\""
                        ),
                        Some(pos),
                    ));
                }
            }
            Value::List(items) => {
                if let BaseType::List(inner) = &expected.base {
                    for item in items {
                        self.value(item, inner, false, pos);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The specification's IsVariableUsageAllowed (§5.8.5).
fn usage_allowed(
    variable: &Type,
    variable_default: bool,
    location: &Type,
    location_default: bool,
) -> bool {
    if !location.nullable && variable.nullable {
        if !variable_default && !location_default {
            return false;
        }
        let nullable_location = Type {
            base: location.base.clone(),
            nullable: true,
        };
        return compatible(variable, &nullable_location);
    }
    compatible(variable, location)
}

/// The specification's AreTypesCompatible.
fn compatible(variable: &Type, location: &Type) -> bool {
    if !location.nullable {
        if variable.nullable {
            return false;
        }
    } else if !variable.nullable {
        let nullable = Type {
            base: variable.base.clone(),
            nullable: true,
        };
        return compatible(&nullable, location);
    }
    match (&variable.base, &location.base) {
        (BaseType::List(v), BaseType::List(l)) => compatible(v, l),
        (BaseType::Named(v), BaseType::Named(l)) => v == l,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> Type {
        Type::new(s).unwrap()
    }

    fn errors(query: &str) -> Vec<String> {
        let doc = async_graphql::parser::parse_query(query).unwrap();
        SIGNATURES
            .check(&doc, None)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn the_served_schema_is_read() {
        let root = &SIGNATURES.fields["Queries"];
        assert_eq!(root["compute_session"].args["id"].0, ty("UUID!"));
        assert_eq!(root["compute_session_list"].returns, "ComputeSessionList");
        assert!(SIGNATURES.fields["ComputeSession"].contains_key("dependencies"));
    }

    #[test]
    fn the_specifications_compatibility_table() {
        for (var, default, loc, ok) in [
            ("UUID!", false, "UUID!", true),
            ("UUID!", false, "UUID", true),
            ("UUID", false, "UUID!", false),
            ("UUID", true, "UUID!", true),
            ("ID!", false, "UUID!", false),
            ("String", false, "UUID", false),
            ("[String!]!", false, "[String]", true),
            ("[String]", false, "[String!]", false),
            ("String", false, "[String]", false),
        ] {
            assert_eq!(
                usage_allowed(&ty(var), default, &ty(loc), false),
                ok,
                "{var} (default: {default}) in {loc}"
            );
        }
    }

    #[test]
    fn usages_in_arguments_fragments_and_directives_are_checked() {
        assert_eq!(
            errors("query($id: ID!) { compute_session(id: $id) { id } }"),
            [r#"Variable "id" of type "ID!" used in position expecting type "UUID!""#]
        );
        assert!(errors("query($id: UUID!) { compute_session(id: $id) { id } }").is_empty());
        assert_eq!(
            errors(
                "query($l: String!, $s: Int, $x: String) { ...F }
                 fragment F on Queries { compute_session_list(limit: $l, offset: 0, status: $s) {
                   items { id @include(if: $x) } } }"
            ),
            [
                r#"Variable "l" of type "String!" used in position expecting type "Int!""#,
                r#"Variable "s" of type "Int" used in position expecting type "String""#,
                r#"Variable "x" of type "String" used in position expecting type "Boolean!""#,
            ]
        );
        // The web UI's declarations.
        assert!(
            errors(
                "query($ak: String, $group_id: String, $status: String) {
                   compute_session_list(limit: 10, offset: 0, access_key: $ak, group_id: $group_id, status: $status) { total_count } }"
            )
            .is_empty()
        );
    }
}
