//! What a GraphQL operation costs, and charging it before anything runs.
//!
//! One `POST /graphql` can do the work of hundreds of REST calls, so the gate leaves its
//! charge to the GraphQL handler ([`crate::gate::Deferred`]), which knows what the operation
//! does:
//!
//! * a **mutation** costs one `write` unit per top-level field of the selected operation —
//!   aliases and fields reached through fragments included — because each is one write;
//! * a **query** costs its complexity (as the schema computes it for the complexity limit:
//!   a list costs its page size times its children) in `read` units, one unit per
//!   `complexity_per_read` points, rounded up;
//! * a document that does not parse or validate costs one `read` unit.
//!
//! The charge is taken in the schema's validation step ([`Charging`]), after the document is
//! validated and its complexity known, and before any resolver runs: an operation that does
//! not fit what is left of the budget is refused whole, and the handler answers 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, FragmentDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Name, Positioned, ServerError, ValidationResult};
use axum::response::Response;

use crate::gate::{Admitted, Deferred, Gate};

/// What the selected operation of a document does, as far as charging goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// A mutation with this many top-level fields.
    Mutation(u32),
    Query,
    /// No operation could be selected (the executor will say why).
    Unknown,
}

impl Work {
    /// The work of the operation `operation_name` selects in `doc`, as the executor would
    /// select it.
    pub(crate) fn of(doc: &ExecutableDocument, operation_name: Option<&str>) -> Self {
        let operation = match (&doc.operations, operation_name) {
            (DocumentOperations::Single(operation), _) => operation,
            (DocumentOperations::Multiple(operations), Some(name)) => match operations.get(name) {
                Some(operation) => operation,
                None => return Self::Unknown,
            },
            (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
                operations.values().next().expect("one operation")
            }
            _ => return Self::Unknown,
        };
        match operation.node.ty {
            OperationType::Mutation => {
                let mut counted = HashMap::new();
                Self::Mutation(fields(
                    &operation.node.selection_set.node,
                    &doc.fragments,
                    &mut counted,
                    0,
                ))
            }
            OperationType::Query | OperationType::Subscription => Self::Query,
        }
    }
}

/// Deeper fragment nesting than this is not counted further; validation refuses documents
/// far shallower (and any cycle), so this only bounds the work of counting a hostile one.
const MAX_FRAGMENT_NESTING: usize = 64;

/// The fields of `set`, fragments expanded. Each fragment is counted once and remembered, so
/// a document that spreads fragments into fragments cannot make counting exponential.
fn fields(
    set: &SelectionSet,
    fragments: &HashMap<Name, Positioned<FragmentDefinition>>,
    counted: &mut HashMap<Name, u32>,
    nesting: usize,
) -> u32 {
    let mut total: u32 = 0;
    for selection in &set.items {
        let n = match &selection.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(inline) => fields(
                &inline.node.selection_set.node,
                fragments,
                counted,
                nesting + 1,
            ),
            Selection::FragmentSpread(spread) => {
                let name = &spread.node.fragment_name.node;
                if let Some(&n) = counted.get(name) {
                    n
                } else if nesting >= MAX_FRAGMENT_NESTING {
                    0
                } else if let Some(fragment) = fragments.get(name) {
                    // Marked before descending, so a cycle counts as zero, not forever.
                    counted.insert(name.clone(), 0);
                    let n = fields(
                        &fragment.node.selection_set.node,
                        fragments,
                        counted,
                        nesting + 1,
                    );
                    counted.insert(name.clone(), n);
                    n
                } else {
                    0
                }
            }
        };
        total = total.saturating_add(n);
    }
    total
}

/// One request's charge: put in the request's data, settled by [`Charging`].
pub(crate) struct Admission {
    gate: Arc<Gate>,
    deferred: Option<Deferred>,
    work: Work,
    /// What admitting granted (for the response headers) or the refusal to answer with. A
    /// `std` mutex: set once, never held across an await.
    outcome: Mutex<Option<Result<Admitted, Response>>>,
}

impl Admission {
    pub(crate) fn new(gate: Arc<Gate>, deferred: Option<Deferred>, work: Work) -> Self {
        Self {
            gate,
            deferred,
            work,
            outcome: Mutex::new(None),
        }
    }

    /// The class and cost of this operation, given the validation's result.
    fn cost(
        &self,
        validation: Option<&ValidationResult>,
    ) -> (&'_ bazaar_gateway::ratelimit::LimitClass, u32) {
        let limits = &self.gate.limits;
        match (self.work, validation) {
            (Work::Mutation(fields), Some(_)) => (&limits.write, fields.max(1)),
            (Work::Query, Some(valid)) => {
                let per_read = limits.graphql_complexity_per_read.max(1);
                let units = valid.complexity.div_ceil(per_read).max(1);
                (&limits.read, u32::try_from(units).unwrap_or(u32::MAX))
            }
            _ => (&limits.read, 1),
        }
    }

    async fn settle(&self, validation: Option<&ValidationResult>) -> bool {
        let Some(deferred) = &self.deferred else {
            return true;
        };
        let (class, cost) = self.cost(validation);
        let outcome = self
            .gate
            .admit(class, &deferred.bucket, cost, deferred.api_key.as_ref())
            .await;
        let admitted = outcome.is_ok();
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        admitted
    }

    /// `response`, with the charge's headers — or the refusal instead of it. A request that
    /// never reached validation (unparsable JSON or GraphQL) is charged one `read` unit here,
    /// after the fact: nothing ran, but it must not be free.
    pub(crate) async fn settled(&self, mut response: Response) -> Response {
        let taken = || {
            self.outcome
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        };
        let mut outcome = taken();
        if outcome.is_none() {
            self.settle(None).await;
            outcome = taken();
        }
        match outcome {
            Some(Err(refused)) => refused,
            Some(Ok(admitted)) => {
                admitted.stamp(response.headers_mut());
                response
            }
            None => response,
        }
    }
}

/// The schema extension that charges each operation between validation and execution.
pub(crate) struct Charging;

impl ExtensionFactory for Charging {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Charging)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for Charging {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await;
        let Some(admission) = ctx.data_opt::<Arc<Admission>>() else {
            return result;
        };
        if admission.settle(result.as_ref().ok()).await {
            result
        } else {
            // Nothing runs; the handler answers with the stored 429 instead of this.
            Err(vec![ServerError::new("the request was refused", None)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(query: &str, operation: Option<&str>) -> Work {
        Work::of(
            &async_graphql::parser::parse_query(query).unwrap(),
            operation,
        )
    }

    #[test]
    fn a_mutation_costs_each_top_level_field_aliases_and_fragments_included() {
        assert_eq!(work("mutation { a: x b: x c: x }", None), Work::Mutation(3));
        assert_eq!(
            work(
                "mutation { a: x ...F ... on Mutation { d: x e: x } } fragment F on Mutation { b: x c: x }",
                None
            ),
            Work::Mutation(5)
        );
        // Nested selections are one write's result, not more writes.
        assert_eq!(
            work("mutation { a: x { id name variants { id } } }", None),
            Work::Mutation(1)
        );
    }

    #[test]
    fn the_selected_operation_is_the_one_charged() {
        let doc = "query Q { a } mutation M { a: x b: x }";
        assert_eq!(work(doc, Some("M")), Work::Mutation(2));
        assert_eq!(work(doc, Some("Q")), Work::Query);
        assert_eq!(work(doc, None), Work::Unknown);
        assert_eq!(work(doc, Some("missing")), Work::Unknown);
        assert_eq!(work("{ a }", None), Work::Query);
    }

    #[test]
    fn fragments_spread_into_fragments_are_counted_once_each_and_cycles_end() {
        let mut doc = String::from("mutation { ...F0 } ");
        for i in 0..40 {
            doc.push_str(&format!(
                "fragment F{i} on Mutation {{ ...F{} ...F{} }} ",
                i + 1,
                i + 1
            ));
        }
        doc.push_str("fragment F40 on Mutation { x }");
        // 2^40 spreads in all; counted by memo, and saturating.
        assert!(matches!(work(&doc, None), Work::Mutation(n) if n > 1_000_000));
        assert_eq!(
            work(
                "mutation { ...A } fragment A on Mutation { x ...B } fragment B on Mutation { y ...A }",
                None
            ),
            Work::Mutation(2)
        );
    }
}
