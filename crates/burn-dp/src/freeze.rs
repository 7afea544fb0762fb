//! Parameter-freezing policies: which parameters train. A frozen parameter is untracked by
//! autodiff, so no rule runs for it and nothing is cached (this is what makes DP-BiTFiT cheap).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::clip::ParamSelector;
use crate::error::DpError;
use crate::paths::{map_params, ModulePath, ParamMapper};

/// Which parameters train.
#[derive(Debug, Clone, PartialEq)]
pub enum FreezePolicy {
    /// Every parameter trains.
    None,
    /// DP-BiTFiT (Bu et al. 2022, "Differentially private bias-term only fine-tuning of
    /// foundation models"): only bias terms train — every parameter whose name is `bias`, and
    /// burn's norm-layer bias `beta`.
    BiasOnly,
    /// Only parameters under these module path prefixes train, wherever they are in the model
    /// (e.g. `["head", "blocks.11"]` for the head and the last block; a prefix matches a whole
    /// path component).
    Prefixes(Vec<String>),
    /// Exactly the selected parameters train.
    Select(ParamSelector),
}

impl FreezePolicy {
    /// The selector of trainable parameters.
    pub fn selector(&self) -> ParamSelector {
        match self {
            FreezePolicy::None => ParamSelector::All,
            FreezePolicy::BiasOnly => ParamSelector::AnyOf(vec![
                ParamSelector::PathSuffix(".bias".into()),
                ParamSelector::PathSuffix(".beta".into()),
                ParamSelector::PathExact("bias".into()),
                ParamSelector::PathExact("beta".into()),
            ]),
            FreezePolicy::Prefixes(prefixes) => ParamSelector::AnyOf(
                prefixes
                    .iter()
                    .flat_map(|p| {
                        [
                            ParamSelector::PathExact(p.clone()),
                            ParamSelector::PathPrefix(format!("{p}.")),
                        ]
                    })
                    .collect(),
            ),
            FreezePolicy::Select(s) => s.clone(),
        }
    }
}

/// Parameter counts after freezing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeReport {
    /// Scalars that train.
    pub trainable: usize,
    /// All scalars.
    pub total: usize,
    /// Parameter tensors that train.
    pub trainable_tensors: usize,
}

struct Freezer {
    selector: ParamSelector,
    report: FreezeReport,
}

impl<B: Backend> ParamMapper<B> for Freezer {
    fn map<const D: usize>(
        &mut self,
        path: &ModulePath,
        param: Param<Tensor<B, D>>,
    ) -> Param<Tensor<B, D>> {
        let train = self.selector.matches(&param.id, &path.dotted());
        let n = param.lazy_shape().num_elements();
        self.report.total += n;
        if train {
            self.report.trainable += n;
            self.report.trainable_tensors += 1;
        }
        param.set_require_grad(train)
    }
}

/// Applies `policy` to `model`. A policy that leaves nothing trainable is an error.
pub fn freeze<B: Backend, M: Module<B>>(
    model: M,
    policy: &FreezePolicy,
) -> Result<(M, FreezeReport), DpError> {
    let mut freezer = Freezer {
        selector: policy.selector(),
        report: FreezeReport {
            trainable: 0,
            total: 0,
            trainable_tensors: 0,
        },
    };
    let model = map_params(model, &mut freezer);
    if freezer.report.trainable_tensors == 0 {
        return Err(DpError::Selection(format!(
            "freezing policy {policy:?} leaves no trainable parameter"
        )));
    }
    Ok((model, freezer.report))
}
