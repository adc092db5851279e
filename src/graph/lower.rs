//! The graph lowered for the GPU path (`Graph::to_gpu`): each op's GPU stage, the calls in run
//! order as `GpuNode`s reading model inputs or earlier outputs, the inputs with the
//! vocabulary of the Embedding layers reading them, the outputs.

use super::{bad, Graph, TensorRef};
use crate::error::{LstmError, Result};
use std::collections::HashMap;

impl Graph {
    /// The graph for the GPU path: each op's stage (weights uploaded by `up`), the calls in
    /// run order reading model inputs or earlier calls' outputs, the inputs (with the
    /// vocabulary of the Embedding layers reading them), the outputs. An op without a GPU
    /// kernel gives `UnsupportedOnPath` naming its layer and class.
    pub(crate) fn to_gpu(&self, up: &mut crate::gpu::Uploader<'_>) -> Result<crate::gpu::GpuGraph> {
        use crate::gpu::{GpuInput, GpuNode, Src};
        let mut stages = Vec::new();
        for (name, op) in &self.ops {
            let class = self
                .layers
                .iter()
                .find(|(n, _)| n == name)
                .map_or("?", |(_, c)| c.as_str());
            let stage = op.gpu(up).map_err(|e| match e {
                LstmError::UnsupportedOnPath { what, path, hint } => LstmError::UnsupportedOnPath {
                    what: format!("layer {name} ({class}): {what}"),
                    path,
                    hint,
                },
                other => other,
            })?;
            stages.push(stage);
        }
        let mut index: HashMap<(String, usize), usize> = HashMap::new();
        let src = |index: &HashMap<(String, usize), usize>, t: &TensorRef| -> Result<Src> {
            if let Some(k) = self.inputs.iter().position(|i| i.name == t.0) {
                return Ok(Src::Input(k));
            }
            index
                .get(&(t.0.clone(), t.1))
                .map(|&n| Src::Node(n, t.2))
                .ok_or_else(|| bad(format!("no tensor {}[{}][{}]", t.0, t.1, t.2)))
        };
        let mut nodes = Vec::new();
        for &k in &self.order {
            let n = &self.nodes[k];
            let list = |ts: &[TensorRef]| -> Result<Vec<Src>> {
                ts.iter().map(|t| src(&index, t)).collect()
            };
            nodes.push(GpuNode {
                name: n.layer.clone(),
                stage: n.op,
                inputs: list(&n.inputs)?,
                states: list(&n.states)?,
                mask: n.mask.as_ref().map(|t| src(&index, t)).transpose()?,
                scalars: n.scalars.clone(),
                kwargs: n.kwargs.clone(),
            });
            index.insert((n.layer.clone(), n.call), nodes.len() - 1);
        }
        let mut inputs: Vec<GpuInput> = self
            .inputs
            .iter()
            .map(|i| GpuInput {
                name: i.name.clone(),
                dims: i.shape.clone(),
                vocabulary: None,
                integer: i.dtype.starts_with("int") || i.dtype.starts_with("uint"),
            })
            .collect();
        for n in &nodes {
            if let (Some(v), Some(Src::Input(k))) = (stages[n.stage].vocabulary(), n.inputs.first())
            {
                let slot = &mut inputs[*k].vocabulary;
                *slot = Some(slot.map_or(v, |s: usize| s.min(v)));
            }
        }
        let mut outputs = Vec::new();
        for (name, t) in &self.outputs {
            match src(&index, &(t.0.clone(), t.1, 0))? {
                Src::Node(n, _) => outputs.push((n, (t.2 != usize::MAX).then_some(t.2))),
                Src::Input(_) => {
                    return Err(LstmError::UnsupportedOnPath {
                        what: format!("output {name}, a model input returned as it is"),
                        path: "gpu".into(),
                        hint: "run this model on the CPU path".into(),
                    })
                }
            }
        }
        Ok(crate::gpu::GpuGraph {
            stages,
            nodes,
            inputs,
            outputs,
            output_names: self.outputs.iter().map(|(n, _)| n.clone()).collect(),
        })
    }
}
