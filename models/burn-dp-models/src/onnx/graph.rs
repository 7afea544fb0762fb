//! The structure around a node (which values a node reads and yields, which node computed a
//! value), for locators that check where a weight sits, not only in which order it comes.

use super::{Node, OnnxFile};

impl OnnxFile {
    fn node(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    fn producer_node(&self, value: &str) -> Option<&Node> {
        self.producers.get(value).map(|&i| &self.nodes[i])
    }

    /// Input `i` of the node named `name`.
    pub(crate) fn node_input(&self, name: &str, i: usize) -> Option<&str> {
        self.node(name)?.inputs.get(i).map(String::as_str)
    }

    /// The first output of the node named `name`.
    pub(crate) fn node_output(&self, name: &str) -> Option<&str> {
        self.node(name)?.outputs.first().map(String::as_str)
    }

    /// `value` seen through `Cast` and `Identity` nodes: the value it was converted from.
    pub(crate) fn source<'a>(&'a self, value: &'a str) -> &'a str {
        let mut v = value;
        for _ in 0..16 {
            match self.producer_node(v) {
                Some(n) if matches!(n.op.as_str(), "Cast" | "Identity") => match n.inputs.first() {
                    Some(i) => v = i.as_str(),
                    None => break,
                },
                _ => break,
            }
        }
        v
    }

    /// Operator and inputs of the node that computed `value` (seen through `Cast` and
    /// `Identity`); `None` for a graph input or constant.
    pub(crate) fn producer(&self, value: &str) -> Option<(&str, &[String])> {
        let n = self.producer_node(self.source(value))?;
        Some((n.op.as_str(), n.inputs.as_slice()))
    }

    /// The value a linear slot (node `name`) yields: its output, or for a `MatMul` with a bias
    /// that of the bias `Add`.
    pub(crate) fn linear_output(&self, name: &str, has_bias: bool) -> Option<&str> {
        let n = self.node(name)?;
        let out = n.outputs.first()?;
        if n.op != "MatMul" || !has_bias {
            return Some(out);
        }
        match self.consumers.get(out).map(Vec::as_slice) {
            Some([c]) => self.nodes[*c].outputs.first().map(String::as_str),
            _ => None,
        }
    }
}
