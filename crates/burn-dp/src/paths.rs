//! Module paths: the one visitor that knows where a parameter sits in a module.
//!
//! burn's [`ModuleVisitor`] and [`ModuleMapper`] announce every field they enter and leave;
//! [`visit_params`] and [`map_params`] keep that stack once, and hand each float parameter to a
//! [`ParamVisitor`] or [`ParamMapper`] together with its [`ModulePath`]. Freezing, clipping
//! groups, the fail-closed checks, the test oracle, the examples' weight files and the models'
//! torch names all read paths through here.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Where a parameter sits: the fields entered on the way to it, each with the type of the
/// module that holds it (burn's container type: `"Struct:Linear"`, `"Vec"`, `"Enum:Norm"`, …).
///
/// For the weight of `layers[0]`'s linear layer the fields are `layers`, `0`, `linear`,
/// `weight`, and [`ModulePath::dotted`] is `layers.0.linear.weight`, the path that
/// [`ParamSelector`](crate::ParamSelector)s match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulePath {
    fields: Vec<(String, String)>,
}

impl ModulePath {
    /// The fields, outermost first, as `(name, container type)`.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// The field names joined with `.` (`layers.0.linear.weight`).
    pub fn dotted(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
        names.join(".")
    }

    /// The innermost field's name (`weight`), if any.
    pub fn name(&self) -> Option<&str> {
        self.fields.last().map(|(n, _)| n.as_str())
    }

    /// The type of the module holding the innermost field (`Struct:Linear`), if any.
    pub fn container(&self) -> Option<&str> {
        self.fields.last().map(|(_, c)| c.as_str())
    }

    fn enter(&mut self, name: &str, container_type: &str) {
        self.fields
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit(&mut self) {
        self.fields.pop();
    }
}

/// Reads every float parameter of a module with its path (see [`visit_params`]).
pub trait ParamVisitor<B: Backend> {
    /// Called once per float parameter, in the module's visiting order.
    ///
    /// # Shapes
    /// `param`: any rank `D`.
    fn visit<const D: usize>(&mut self, path: &ModulePath, param: &Param<Tensor<B, D>>);
}

/// Rewrites every float parameter of a module, knowing its path (see [`map_params`]).
pub trait ParamMapper<B: Backend> {
    /// Called once per float parameter, in the module's visiting order; returns its replacement.
    ///
    /// # Shapes
    /// `param` and the result: any rank `D` (the same).
    fn map<const D: usize>(
        &mut self,
        path: &ModulePath,
        param: Param<Tensor<B, D>>,
    ) -> Param<Tensor<B, D>>;
}

struct Visit<'a, V> {
    path: ModulePath,
    inner: &'a mut V,
}

impl<B: Backend, V: ParamVisitor<B>> ModuleVisitor<B> for Visit<'_, V> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.inner.visit(&self.path, param);
    }
}

struct Map<'a, V> {
    path: ModulePath,
    inner: &'a mut V,
}

impl<B: Backend, V: ParamMapper<B>> ModuleMapper<B> for Map<'_, V> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        self.inner.map(&self.path, param)
    }
}

/// Hands every float parameter of `module`, with its [`ModulePath`], to `visitor`.
pub fn visit_params<B: Backend, M: Module<B>, V: ParamVisitor<B>>(module: &M, visitor: &mut V) {
    module.visit(&mut Visit {
        path: ModulePath::default(),
        inner: visitor,
    });
}

/// Replaces every float parameter of `module` by what `mapper` makes of it and its
/// [`ModulePath`].
pub fn map_params<B: Backend, M: Module<B>, V: ParamMapper<B>>(module: M, mapper: &mut V) -> M {
    module.map(&mut Map {
        path: ModulePath::default(),
        inner: mapper,
    })
}
