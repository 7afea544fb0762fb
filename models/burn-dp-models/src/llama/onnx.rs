//! Locating the weights of a Llama-family model in an ONNX graph (`torch.onnx.export(...,
//! dynamo=True)` of `LlamaForCausalLM` / `Qwen2ForCausalLM`).
//!
//! The exporter keeps the torch names of the RMSNorm scales, the token embedding and the biases,
//! but stores every projection transposed (`[in, out]`) under a generated name (`val_155`), and
//! a tied head appears once, under the name `lm_head.weight`, read by both the embedding
//! `Gather` and the head's `MatMul` (through a `Transpose`; a separate constant equal to the
//! table also counts as tied). The weights are therefore found by structure: one embedding
//! `Gather`, `2L + 1` RMSNorm scales, `7L + 1` linear nodes (q, k, v, o, gate, up, down per
//! layer, then the head), and every projection is checked to read the norm it should (q, k and
//! v the layer's input norm, gate and up the post-attention norm, the head the final norm). Gate
//! and up are told apart by the down projection, which reads `act(gate) · up`; q, k and v keep
//! the exporter's execution order (that of the torch forward).

use super::config::LlamaConfig;
use crate::error::ImportError;
use crate::onnx::{count_err, Assign, ConstRef, OnnxFile, OnnxWeights, Slots};
use crate::pretrained::ModelConfig;

/// A linear node of the graph: node name, weight as `[in, out]`, bias.
type Linear = (String, ConstRef, Option<ConstRef>);

fn layout(node: &str, message: String) -> ImportError {
    ImportError::OnnxLayout {
        node: node.to_string(),
        message,
    }
}

/// Locate the weights of `config` in an ONNX graph, under their HF names.
pub(crate) fn onnx_weights(
    config: &LlamaConfig,
    file: OnnxFile,
) -> Result<OnnxWeights, ImportError> {
    config.validate()?;
    let s = Slots::of(&file)?;
    let l = config.num_hidden_layers;
    let mut a = Assign::of_model(&config.init::<burn::backend::NdArray>(&Default::default()));
    if s.emb.len() != 1 {
        return Err(count_err(
            &file,
            "embedding Gather node (model.embed_tokens)",
            1,
            s.emb.len(),
        ));
    }
    if s.rms.len() != 2 * l + 1 {
        return Err(count_err(
            &file,
            "RMSNorm scales (2 per layer and model.norm)",
            2 * l + 1,
            s.rms.len(),
        ));
    }
    if s.linear.len() != 7 * l + 1 {
        return Err(count_err(
            &file,
            "linear (MatMul/Gemm) nodes (q, k, v, o, gate, up, down per layer and the head)",
            7 * l + 1,
            s.linear.len(),
        ));
    }
    let embedding = &s.emb[0].1;
    let head = &s.linear[7 * l];
    // The exporter stores a tied head once; a separate copy of the table counts as tied too.
    let head_is_embedding = head.1.name == embedding.name
        || (config.tie_word_embeddings && holds_table(&file, &head.1, embedding)?);
    match (config.tie_word_embeddings, head_is_embedding) {
        (true, true) => {}
        (false, false) => a.set("lm_head.weight", &head.1, true)?,
        (true, false) => {
            return Err(layout(
                &head.0,
                format!(
                    "the output head reads `{}`, not the token embedding `{}`: the export has \
                     an untied head (load it with `with_tied_head(false)`)",
                    head.1.name, embedding.name
                ),
            ))
        }
        (false, true) => {
            return Err(layout(
                &head.0,
                format!(
                    "the output head reads the token embedding `{}`: the export has a tied head \
                     (load it with `with_tied_head(true)`)",
                    embedding.name
                ),
            ))
        }
    }
    if head.2.is_some() {
        return Err(layout(
            &head.0,
            "the output head `lm_head` has a bias, which Llama models have not".into(),
        ));
    }
    a.set("model.embed_tokens.weight", embedding, false)?;
    let (qkv, o, mlp) = (config.bias.qkv(), config.bias.output(), config.mlp_bias);
    for i in 0..l {
        let p = format!("model.layers.{i}");
        let (input_norm, post_norm) = (&s.rms[2 * i], &s.rms[2 * i + 1]);
        a.set(&format!("{p}.input_layernorm.weight"), &input_norm.1, false)?;
        a.set(
            &format!("{p}.post_attention_layernorm.weight"),
            &post_norm.1,
            false,
        )?;
        let lin = &s.linear[7 * i..7 * i + 7];
        let projections = [
            ("self_attn.q_proj", &lin[0], qkv, Some(input_norm)),
            ("self_attn.k_proj", &lin[1], qkv, Some(input_norm)),
            ("self_attn.v_proj", &lin[2], qkv, Some(input_norm)),
            ("self_attn.o_proj", &lin[3], o, None),
        ];
        let (gate, up) = gate_and_up(&file, [&lin[4], &lin[5]], &lin[6], mlp)?;
        let mlp_projections = [
            ("mlp.gate_proj", gate, mlp, Some(post_norm)),
            ("mlp.up_proj", up, mlp, Some(post_norm)),
            ("mlp.down_proj", &lin[6], mlp, None),
        ];
        for (name, linear, bias, norm) in projections.into_iter().chain(mlp_projections) {
            let name = format!("{p}.{name}");
            if let Some((norm_node, _)) = norm {
                check_reads(&file, linear, &name, norm_node)?;
            }
            set_linear(&mut a, &name, linear, bias)?;
        }
    }
    let final_norm = &s.rms[2 * l];
    a.set("model.norm.weight", &final_norm.1, false)?;
    check_reads(&file, head, "lm_head", &final_norm.0)?;
    Ok(a.finish(file))
}

/// Whether the head's weight (seen by the graph as `[d, V]`) holds the embedding table `[V, d]`.
fn holds_table(
    file: &OnnxFile,
    head: &ConstRef,
    embedding: &ConstRef,
) -> Result<bool, ImportError> {
    let as_table = ConstRef {
        name: head.name.clone(),
        transposed: !head.transposed,
    };
    if file.shape(&as_table)? != file.shape(embedding)? {
        return Ok(false);
    }
    Ok(file.read(&as_table)?.data == file.read(embedding)?.data)
}

/// Assign a projection's weight (torch stores `[out, in]`, the graph uses `[in, out]`) and bias.
fn set_linear(
    a: &mut Assign,
    name: &str,
    (node, weight, bias): &Linear,
    has_bias: bool,
) -> Result<(), ImportError> {
    a.set(&format!("{name}.weight"), weight, true)?;
    match (has_bias, bias) {
        (true, _) => a.set_opt(&format!("{name}.bias"), bias, node),
        (false, None) => Ok(()),
        (false, Some(b)) => Err(layout(
            node,
            format!(
                "`{name}` has a bias (`{}`) in the graph but not in the configuration (see \
                 `LlamaConfig::bias` and `mlp_bias`)",
                b.name
            ),
        )),
    }
}

/// Check that the linear node reads the output of the RMSNorm node `norm`.
fn check_reads(
    file: &OnnxFile,
    (node, _, _): &Linear,
    name: &str,
    norm: &str,
) -> Result<(), ImportError> {
    let input = file.node_input(node, 0).map(|v| file.source(v));
    let norm_out = file.node_output(norm);
    if input.is_none() || input != norm_out {
        return Err(layout(
            node,
            format!(
                "the linear node taken for `{name}` reads `{}`, not the output `{}` of the \
                 RMSNorm node {norm}",
                input.unwrap_or("nothing"),
                norm_out.unwrap_or("?")
            ),
        ));
    }
    Ok(())
}

/// Gate and up projections of a SwiGLU MLP: the down projection reads `act(gate) · up`, so `up`
/// is the one whose output the product reads directly.
fn gate_and_up<'a>(
    file: &OnnxFile,
    pair: [&'a Linear; 2],
    down: &Linear,
    has_bias: bool,
) -> Result<(&'a Linear, &'a Linear), ImportError> {
    let product = file
        .node_input(&down.0, 0)
        .and_then(|v| file.producer(v))
        .filter(|(op, _)| *op == "Mul")
        .map(|(_, inputs)| inputs);
    let feeds_product = |l: &Linear| {
        let out = file.linear_output(&l.0, has_bias);
        product.is_some_and(|inputs| inputs.iter().any(|i| Some(file.source(i)) == out))
    };
    match (feeds_product(pair[0]), feeds_product(pair[1])) {
        (false, true) => Ok((pair[0], pair[1])),
        (true, false) => Ok((pair[1], pair[0])),
        _ => Err(layout(
            &down.0,
            format!(
                "the down projection should read `act(gate) · up` of the linear nodes {} and \
                 {} (a SwiGLU MLP)",
                pair[0].0, pair[1].0
            ),
        )),
    }
}
