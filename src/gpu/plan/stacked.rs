//! The plan builder of `RNN(StackedRNNCells([...]))`: the cells' recurrent stages one after
//! the other in the one plan, each reading the previous one's sequence, each starting from
//! its own part of the initial states. No kernel of its own (the cells' are
//! projection/step/sequence.wgsl); CPU twin: `graph::rnn::Stacked`.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::config::LstmConfig;
use crate::error::{LstmError, Result};

/// The stages of a stack of cells, in order (each one direction: LSTM, GRU or SimpleRNN).
#[derive(Debug)]
pub(crate) struct StackedStage {
    pub(crate) name: String,
    pub(crate) stages: Vec<Box<dyn GpuStage>>,
}

impl GpuStage for StackedStage {
    fn directions(&self) -> Vec<&LstmConfig> {
        self.stages.iter().flat_map(|s| s.directions()).collect()
    }

    fn state_slots(&self) -> Vec<(usize, usize)> {
        self.stages.iter().flat_map(|s| s.state_slots()).collect()
    }

    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let (x, positional) = args
            .inputs
            .split_first()
            .ok_or_else(|| LstmError::invalid(format!("layer {}", self.name), "no input"))?;
        let states = if args.states.is_empty() {
            positional
        } else {
            args.states
        };
        let counts: Vec<usize> = self
            .stages
            .iter()
            .map(|s| s.directions().iter().map(|c| c.cell.states()).sum())
            .collect();
        let total: usize = counts.iter().sum();
        if !states.is_empty() && states.len() != total {
            return Err(LstmError::invalid(
                format!("initial_state of layer {}", self.name),
                format!(
                    "the stacked cells take {total} states, got {}",
                    states.len()
                ),
            ));
        }
        let mut x = x.clone();
        let mut state_outputs = Vec::new();
        let mut used = 0;
        let last = self.stages.len().saturating_sub(1);
        let mut output = None;
        for (k, (stage, n)) in self.stages.iter().zip(&counts).enumerate() {
            let own: &[Tensor] = if states.is_empty() {
                &[]
            } else {
                &states[used..used + n]
            };
            used += n;
            let inputs = [x.clone()];
            let mut outs = stage.plan(
                cx,
                &Args {
                    inputs: &inputs,
                    states: own,
                    mask: args.mask,
                    scalars: args.scalars,
                    kwargs: args.kwargs,
                },
            )?;
            let first = outs.remove(0);
            state_outputs.extend(outs);
            if k == last {
                output = Some(first);
            } else {
                x = first;
            }
        }
        let mut all = vec![output.ok_or_else(|| {
            LstmError::invalid(format!("layer {}", self.name), "a stack of no cells")
        })?];
        all.extend(state_outputs);
        Ok(all)
    }
}
