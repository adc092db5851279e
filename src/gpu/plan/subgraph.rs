//! The plan builder of a model used as a layer (a nested `Sequential` or functional model):
//! its own graph of stages, planned in the enclosing plan on the call's inputs (no kernel of
//! its own). CPU twin: `SubModel` in src/graph/nested.rs.

use super::{plan_graph, Args, GpuStage, PlanContext, Tensor};
use crate::config::LstmConfig;
use crate::error::{LstmError, Result};
use crate::gpu::GpuGraph;

/// A nested model on the GPU.
pub(crate) struct SubGraphStage {
    pub name: String,
    pub graph: GpuGraph,
}

impl std::fmt::Debug for SubGraphStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubGraphStage")
            .field("name", &self.name)
            .field("stages", &self.graph.stages)
            .finish()
    }
}

impl GpuStage for SubGraphStage {
    fn directions(&self) -> Vec<&LstmConfig> {
        self.graph
            .stages
            .iter()
            .flat_map(|s| s.directions())
            .collect()
    }

    fn state_slots(&self) -> Vec<(usize, usize)> {
        self.graph
            .stages
            .iter()
            .flat_map(|s| s.state_slots())
            .collect()
    }

    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        if !args.states.is_empty() {
            return Err(LstmError::invalid(
                format!("layer {}", self.name),
                "a nested model takes no initial_state",
            ));
        }
        let mut inputs = args.inputs.to_vec();
        if let (Some(m), Some(first)) = (args.mask, inputs.first_mut()) {
            first.mask = Some(cx.as_mask(&format!("mask of layer {}", self.name), m)?);
        }
        let g = &self.graph;
        let repeated = cx.repeated;
        let out = plan_graph(cx, (&g.stages, &g.nodes, &g.outputs), inputs);
        cx.repeated = repeated;
        out
    }
}
