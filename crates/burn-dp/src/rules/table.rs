//! The table of built-in rules: the one list from which the backend hooks are generated
//! (`tools/gen_backend.py` reads every `op:` below), the dispatch ([`builtin_rules`]) and the
//! documentation ([`RULES`]) are made. A new built-in rule is one file in `rules/` and one row here
//! (then `python3 tools/gen_backend.py` when its op had no hook yet).

use burn_backend::Backend;

use super::term::PerSampleRule;
use super::{batched, conv, conv3d, embedding, linear};

/// One row of the rule table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The burn layers or parameters it serves.
    pub layer: &'static str,
    /// The inner-backend op it intercepts.
    pub op: &'static str,
    /// What it caches.
    pub term: &'static str,
    /// Its source file under `crates/burn-dp/src/rules/`.
    pub file: &'static str,
}

macro_rules! rule_table {
    ($( { layer: $layer:literal, op: $op:literal, term: $term:literal, file: $file:literal,
          rule: $rule:expr $(,)? } ),* $(,)?) => {
        /// Every built-in per-sample rule. A trainable parameter whose gradient is not built by one
        /// of these or by a registered rule ([`crate::rules::register_rule`]) is an error
        /// ([`crate::DpError::NoPerSampleRule`]).
        ///
        /// | layer / parameter | intercepted op | term | file |
        /// |---|---|---|---|
        $( #[doc = concat!("| ", $layer, " | `", $op, "` | ", $term, " | `", $file, "` |")] )*
        pub const RULES: &[Rule] = &[ $( Rule { layer: $layer, op: $op, term: $term, file: $file } ),* ];

        /// The built-in rules for backend `B`, in table order.
        pub(crate) fn builtin_rules<B: Backend>() -> Vec<&'static dyn PerSampleRule<B>> {
            vec![ $( &$rule ),* ]
        }
    };
}

rule_table! {
    { layer: "`Linear` weight (`[B, d]` and `[B, ..., d]` inputs)", op: "linear_weight_backward",
      term: "`OuterTerm(x, g)`", file: "linear.rs", rule: linear::LinearWeight },
    { layer: "`Linear` bias", op: "linear_bias_backward", term: "`BatchedTerm`",
      file: "linear.rs", rule: linear::LinearBias },
    { layer: "`Conv1d` weight (stride, padding, dilation, groups)", op: "conv1d_weight_backward",
      term: "`ConvTerm`", file: "conv.rs", rule: conv::Conv1dWeight },
    { layer: "`Conv1d` bias", op: "conv1d_bias_backward", term: "`BatchedTerm`", file: "conv.rs",
      rule: conv::ConvBias("conv1d_bias_backward") },
    { layer: "`Conv2d` weight (stride, padding, dilation, groups)", op: "conv2d_weight_backward",
      term: "`ConvTerm`", file: "conv.rs", rule: conv::Conv2dWeight },
    { layer: "`Conv2d` bias", op: "conv2d_bias_backward", term: "`BatchedTerm`", file: "conv.rs",
      rule: conv::ConvBias("conv2d_bias_backward") },
    { layer: "`Conv3d` weight (stride, padding, dilation, groups)", op: "conv3d_weight_backward",
      term: "`Conv3dTerm`", file: "conv3d.rs", rule: conv3d::Conv3dWeight },
    { layer: "`Conv3d` bias", op: "conv3d_bias_backward", term: "`BatchedTerm`", file: "conv.rs",
      rule: conv::ConvBias("conv3d_bias_backward") },
    { layer: "`Embedding` weight", op: "embedding_backward", term: "`OuterTerm(one-hot ids, g)`",
      file: "embedding.rs", rule: embedding::EmbeddingWeight },
    { layer: "`LayerNorm`, `GroupNorm`, `RmsNorm` gamma / beta; raw `Param`s broadcast over the batch",
      op: "float_sum_dim", term: "`BatchedTerm` (`[B, ...]` form)", file: "batched.rs",
      rule: batched::SumOverBatch },
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn_ndarray::NdArray<f32>;

    /// The table's op of each row is the op its rule intercepts, and every op has a hook.
    #[test]
    fn table_ops_match_rules_and_hooks() {
        let rules = builtin_rules::<B>();
        assert_eq!(rules.len(), RULES.len());
        for (row, rule) in RULES.iter().zip(rules) {
            assert_eq!(row.op, rule.op(), "{}", row.layer);
            assert!(super::super::hooked_ops().contains(&row.op), "{}", row.op);
        }
    }
}
