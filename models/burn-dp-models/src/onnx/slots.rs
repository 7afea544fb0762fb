//! The weight-carrying operations of an ONNX graph ("slots"), found by operator and structure.

use std::collections::HashSet;

use super::{layout_err, ConstRef, Node, OnnxFile};
use crate::error::ImportError;

/// A weight-carrying operation of the graph, in execution order.
#[derive(Debug, Clone)]
pub enum Slot {
    /// `Conv`: weight [O, I, kh, kw] and optional bias.
    Conv {
        /// Node name.
        node: String,
        /// Weight.
        weight: ConstRef,
        /// Bias.
        bias: Option<ConstRef>,
    },
    /// `Gemm` / `MatMul` (+ `Add`) with a constant weight; `weight` is seen as [in, out].
    Linear {
        /// Node name.
        node: String,
        /// Weight as [in, out].
        weight: ConstRef,
        /// Bias.
        bias: Option<ConstRef>,
    },
    /// `LayerNormalization`.
    LayerNorm {
        /// Node name.
        node: String,
        /// Scale.
        scale: ConstRef,
        /// Bias.
        bias: Option<ConstRef>,
    },
    /// An RMSNorm: `Mul(scale, x · Reciprocal(Sqrt(…)))` or `Mul(scale, x / Sqrt(…))` (looking
    /// through `Cast`), the way exporters decompose `weight · x / sqrt(mean(x²) + eps)`, or an
    /// `RMSNormalization` (opset 23) / `SimplifiedLayerNormalization` node.
    RmsNorm {
        /// Node name (the scale `Mul`).
        node: String,
        /// Scale `[d]`.
        scale: ConstRef,
    },
    /// `Gather` from a constant 2-D float table (an embedding).
    Embedding {
        /// Node name.
        node: String,
        /// Table [n, d].
        weight: ConstRef,
    },
    /// `BatchNormalization` (not folded).
    BatchNorm {
        /// Node name.
        node: String,
        /// scale, bias, mean, var.
        params: [ConstRef; 4],
    },
    /// A raw rank-3 constant used by `Expand` (class token) or `Add` (position embeddings).
    Raw {
        /// Node name.
        node: String,
        /// `Expand` or `Add`.
        op: String,
        /// The constant.
        value: ConstRef,
    },
}

impl OnnxFile {
    /// The weight-carrying operations, in node (execution) order.
    pub fn slots(&self) -> Result<Vec<Slot>, ImportError> {
        let mut slots = Vec::new();
        let mut bias_adds: HashSet<usize> = HashSet::new();
        let input = |n: &Node, i: usize| n.inputs.get(i).and_then(|v| self.resolve(v));
        for (idx, n) in self.nodes.iter().enumerate() {
            match n.op.as_str() {
                "Conv" => {
                    let weight = input(n, 1).ok_or_else(|| {
                        layout_err(&n.name, "Conv weight is not a constant of the graph")
                    })?;
                    slots.push(Slot::Conv {
                        node: n.name.clone(),
                        weight,
                        bias: input(n, 2),
                    });
                }
                "Gemm" => {
                    let Some(b) = input(n, 1) else { continue };
                    if n.ints.get("transA").copied().unwrap_or(0) != 0 {
                        return Err(layout_err(
                            &n.name,
                            "Gemm with transA=1 is not a linear layer",
                        ));
                    }
                    for k in ["alpha", "beta"] {
                        if let Some(&f) = n.floats.get(k) {
                            if f != 1.0 && !(k == "beta" && n.inputs.len() < 3) {
                                return Err(layout_err(&n.name, format!("Gemm with {k}={f}")));
                            }
                        }
                    }
                    let weight = if n.ints.get("transB").copied().unwrap_or(0) != 0 {
                        b.t()
                    } else {
                        b
                    };
                    slots.push(Slot::Linear {
                        node: n.name.clone(),
                        weight,
                        bias: input(n, 2),
                    });
                }
                "MatMul" => {
                    let Some(weight) = input(n, 1) else { continue };
                    if !self.is_float(&weight) || self.shape(&weight)?.len() != 2 {
                        continue;
                    }
                    let mut bias = None;
                    if let Some(out) = n.outputs.first() {
                        let cons = self.consumers.get(out).cloned().unwrap_or_default();
                        if let [c] = cons.as_slice() {
                            let add = &self.nodes[*c];
                            if add.op == "Add" {
                                let other = add.inputs.iter().find(|i| *i != out);
                                if let Some(b) = other.and_then(|o| self.resolve(o)) {
                                    if self.shape(&b)?.len() == 1 {
                                        bias = Some(b);
                                        bias_adds.insert(*c);
                                    }
                                }
                            }
                        }
                    }
                    slots.push(Slot::Linear {
                        node: n.name.clone(),
                        weight,
                        bias,
                    });
                }
                "LayerNormalization" => {
                    let scale = input(n, 1).ok_or_else(|| {
                        layout_err(&n.name, "LayerNormalization scale is not a constant")
                    })?;
                    slots.push(Slot::LayerNorm {
                        node: n.name.clone(),
                        scale,
                        bias: input(n, 2),
                    });
                }
                "RMSNormalization" | "SimplifiedLayerNormalization" => {
                    let scale = input(n, 1).ok_or_else(|| {
                        layout_err(&n.name, "RMSNormalization scale is not a constant")
                    })?;
                    slots.push(Slot::RmsNorm {
                        node: n.name.clone(),
                        scale,
                    });
                }
                "Mul" => {
                    if let Some(scale) = self.rms_scale(n)? {
                        slots.push(Slot::RmsNorm {
                            node: n.name.clone(),
                            scale,
                        });
                    }
                }
                "Gather" => {
                    let Some(w) = input(n, 0) else { continue };
                    let indices_const = input(n, 1).is_some();
                    if self.is_float(&w) && self.shape(&w)?.len() == 2 && !indices_const {
                        slots.push(Slot::Embedding {
                            node: n.name.clone(),
                            weight: w,
                        });
                    }
                }
                "BatchNormalization" => {
                    let get = |i: usize| {
                        input(n, i).ok_or_else(|| {
                            layout_err(&n.name, "BatchNormalization parameter is not a constant")
                        })
                    };
                    slots.push(Slot::BatchNorm {
                        node: n.name.clone(),
                        params: [get(1)?, get(2)?, get(3)?, get(4)?],
                    });
                }
                "Expand" | "Add" if !bias_adds.contains(&idx) => {
                    for i in &n.inputs {
                        if let Some(c) = self.resolve(i) {
                            if self.is_float(&c) && self.shape(&c)?.len() == 3 {
                                slots.push(Slot::Raw {
                                    node: n.name.clone(),
                                    op: n.op.clone(),
                                    value: c,
                                });
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(slots)
    }

    /// The scale of a `Mul` node that multiplies an RMS-normalised value by a 1-D constant.
    fn rms_scale(&self, n: &Node) -> Result<Option<ConstRef>, ImportError> {
        let [a, b] = n.inputs.as_slice() else {
            return Ok(None);
        };
        for (c, x) in [(a, b), (b, a)] {
            let Some(c) = self.resolve(c) else { continue };
            if self.is_float(&c) && self.shape(&c)?.len() == 1 && self.is_rms_normalized(x) {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Whether `value` is `x · Reciprocal(Sqrt(…))` or `x / Sqrt(…)` (through `Cast`).
    fn is_rms_normalized(&self, value: &str) -> bool {
        let op_of = |v: &str| self.producer(v).map(|(op, _)| op);
        match self.producer(value) {
            Some(("Mul", inputs)) => inputs.iter().any(|i| match self.producer(i) {
                Some(("Reciprocal", r)) => {
                    r.first().and_then(|s| op_of(s.as_str())) == Some("Sqrt")
                }
                _ => false,
            }),
            Some(("Div", inputs)) => inputs.get(1).and_then(|d| op_of(d.as_str())) == Some("Sqrt"),
            _ => false,
        }
    }
}

/// Split slots by kind.
#[derive(Default)]
pub(crate) struct Slots {
    pub conv: Vec<(String, ConstRef, Option<ConstRef>)>,
    pub linear: Vec<(String, ConstRef, Option<ConstRef>)>,
    pub ln: Vec<(String, ConstRef, Option<ConstRef>)>,
    pub rms: Vec<(String, ConstRef)>,
    pub emb: Vec<(String, ConstRef)>,
    pub bn: Vec<(String, [ConstRef; 4])>,
    pub raw: Vec<(String, String, ConstRef)>,
}

impl Slots {
    pub(crate) fn of(file: &OnnxFile) -> Result<Self, ImportError> {
        let mut s = Self::default();
        for slot in file.slots()? {
            match slot {
                Slot::Conv { node, weight, bias } => s.conv.push((node, weight, bias)),
                Slot::Linear { node, weight, bias } => s.linear.push((node, weight, bias)),
                Slot::LayerNorm { node, scale, bias } => s.ln.push((node, scale, bias)),
                Slot::RmsNorm { node, scale } => s.rms.push((node, scale)),
                Slot::Embedding { node, weight } => s.emb.push((node, weight)),
                Slot::BatchNorm { node, params } => s.bn.push((node, params)),
                Slot::Raw { node, op, value } => s.raw.push((node, op, value)),
            }
        }
        Ok(s)
    }
}

/// Error for a count mismatch of some kind of operation.
pub(crate) fn count_err(file: &OnnxFile, what: &str, expected: usize, found: usize) -> ImportError {
    layout_err(
        file.path().display().to_string(),
        format!("expected {expected} {what}, found {found}"),
    )
}
