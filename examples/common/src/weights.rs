//! Weights as safetensors: the cache of pre-trained weights.

use std::path::Path;

use crate::*;

struct CollectParams {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: burn::tensor::backend::Backend> burn_dp::ParamVisitor<B> for CollectParams {
    fn visit<const D: usize>(
        &mut self,
        path: &burn_dp::ModulePath,
        param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        self.tensors.push((path.dotted(), shape, data));
    }
}

/// Every float parameter of `module` under its module path (`conv1.weight`, `fc.bias`, …),
/// in visiting order, as `(name, shape, values)`.
pub fn named_params<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: &M,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut c = CollectParams {
        tensors: Vec::new(),
    };
    burn_dp::visit_params(module, &mut c);
    c.tensors
}

/// Save every float parameter of `module` to a safetensors file (f32, names = module paths;
/// written to a temporary file then renamed, so a cache is never half-written).
pub fn save_safetensors<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: &M,
    path: &Path,
) -> Result<(), Error> {
    let params = named_params::<B, M>(module);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("safetensors: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("{}.part", std::process::id()));
    safetensors::serialize_to_file(views, &None, &tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

struct LoadParams<'a, B: burn::tensor::backend::Backend> {
    file: &'a safetensors::SafeTensors<'a>,
    device: B::Device,
    errors: Vec<String>,
}

impl<B: burn::tensor::backend::Backend> burn_dp::ParamMapper<B> for LoadParams<'_, B> {
    fn map<const D: usize>(
        &mut self,
        path: &burn_dp::ModulePath,
        param: burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
        let name = path.dotted();
        let shape = param.val().dims().to_vec();
        let view = match self.file.tensor(&name) {
            Ok(v) => v,
            Err(_) => {
                self.errors.push(format!("missing weight `{name}`"));
                return param;
            }
        };
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape.as_slice() {
            self.errors.push(format!(
                "weight `{name}`: {:?} {:?} in the file, f32 {shape:?} in the model",
                view.dtype(),
                view.shape()
            ));
            return param;
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let device = self.device.clone();
        param.map(|old| {
            let require_grad = old.is_require_grad();
            let t = burn::tensor::Tensor::<B, D>::from_data(
                burn::tensor::TensorData::new(values, shape),
                &device,
            );
            if require_grad {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

/// Load the float parameters of `module` from a safetensors file written by
/// [`save_safetensors`] for the same architecture: a missing weight or another shape is an
/// error naming it.
pub fn load_safetensors<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut loader = LoadParams::<B> {
        file: &file,
        device: device.clone(),
        errors: Vec::new(),
    };
    let module = burn_dp::map_params(module, &mut loader);
    if !loader.errors.is_empty() {
        return Err(format!("{}: {}", path.display(), loader.errors.join("; ")).into());
    }
    Ok(module)
}
