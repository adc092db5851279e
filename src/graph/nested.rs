//! A model used as a layer of another (a nested `Sequential` or functional model) on the CPU;
//! its GPU twin is `SubGraphStage` (src/gpu/plan/subgraph.rs).

use super::{ops, Graph, Value};
use crate::error::{LstmError, Result};

/// A model used as a layer (a nested `Sequential` or functional model): its graph, run on the
/// call's inputs (with their masks); its outputs keep the masks the inner layers give them.
#[derive(Debug, Clone)]
pub(super) struct SubModel {
    pub(super) name: String,
    pub(super) graph: Graph,
}

impl ops::Op for SubModel {
    fn call(&mut self, inputs: &[&Value], extra: &ops::Extra<'_>) -> Result<Vec<Value>> {
        if !extra.states.is_empty() {
            return Err(LstmError::invalid(
                format!("layer {}", self.name),
                "a nested model takes no initial_state",
            ));
        }
        let mut values: Vec<Value> = inputs.iter().map(|v| (*v).clone()).collect();
        if let (Some(m), Some(first)) = (extra.mask, values.first_mut()) {
            first.mask = Some(ops::bool_mask(m, &self.name)?);
        }
        let all = self.graph.eval(values, None)?;
        self.graph.pick_values(all)
    }

    fn params(&self) -> usize {
        self.graph.ops.iter().map(|(_, op)| op.params()).sum()
    }

    fn on_gpu(&self) -> bool {
        self.graph.ops.iter().all(|(_, op)| op.on_gpu())
    }

    fn is_recurrent(&self) -> bool {
        false
    }

    fn gpu(&self, up: &mut crate::gpu::Uploader<'_>) -> Result<Box<dyn crate::gpu::GpuStage>> {
        let parts = self.graph.to_gpu(up)?;
        Ok(Box::new(crate::gpu::plan::SubGraphStage {
            name: self.name.clone(),
            graph: parts,
        }))
    }
}
