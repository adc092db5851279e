//! The plan builder of `TimeDistributed(layer)` around a layer other than Dense (which is the
//! Dense stage on the last axis): the inner layer planned on `[B·T, ...]` (the same buffer
//! viewed with the batch and time axes merged), its outputs viewed back as `[B, T, ...]`
//! with the input's mask. A recurrent inner layer runs on state buffers of its own for the
//! `B·T` rows. No kernel of its own. CPU twin: `TimeDistributed` in src/graph/core.rs.

use super::{Args, GpuStage, PlanContext, Tensor};
use crate::config::LstmConfig;
use crate::error::{LstmError, Result};

/// `TimeDistributed` around `inner`.
#[derive(Debug)]
pub(crate) struct TimeDistributedStage {
    pub name: String,
    pub inner: Box<dyn GpuStage>,
}

impl GpuStage for TimeDistributedStage {
    fn directions(&self) -> Vec<&LstmConfig> {
        self.inner.directions()
    }

    fn state_slots(&self) -> Vec<(usize, usize)> {
        self.inner.state_slots()
    }

    fn plan(&self, cx: &mut PlanContext<'_, '_>, args: &Args<'_>) -> Result<Vec<Tensor>> {
        let x = args.one(&self.name)?;
        let what = format!("layer {}", self.name);
        if x.shape.len() < 3 {
            return Err(LstmError::shape(
                format!("input of {what}"),
                &[0, 0, 0],
                &x.shape,
            ));
        }
        let (b, t) = (x.shape[0], x.shape[1]);
        let rows = b * t;
        if self.inner.directions().iter().any(|d| d.stateful) {
            return Err(LstmError::UnsupportedOnPath {
                what: format!("{what}: a stateful layer inside TimeDistributed"),
                path: "gpu".into(),
                hint: "run this model on the CPU path".into(),
            });
        }
        let mut merged = x.clone();
        merged.shape = std::iter::once(rows)
            .chain(x.shape[2..].iter().copied())
            .collect();
        merged.mask = None;
        // State buffers for B·T rows in the inner layer's slots, zeroed before each forward.
        let mut states = cx.states.clone();
        for (slot, units) in self.inner.state_slots() {
            let size = (2 * rows * units * 4) as u64;
            let pair = [0, 1].map(|k| {
                cx.storage(
                    &format!("{what} state {k}"),
                    size,
                    wgpu::BufferUsages::COPY_DST,
                )
            });
            let [a, b2] = pair;
            let pair = [a?, b2?];
            cx.clear(&pair[0]);
            if let Some(d) = states.dirs.get_mut(slot) {
                *d = pair;
            }
        }
        states.batch = rows;
        let saved_states = std::mem::replace(&mut cx.states, states);
        let saved = (cx.batch, cx.choice_batch);
        cx.batch = rows;
        cx.choice_batch = saved.1 * t;
        let inner_args = Args {
            inputs: std::slice::from_ref(&merged),
            states: &[],
            mask: None,
            scalars: args.scalars,
            kwargs: args.kwargs,
        };
        let outs = self.inner.plan(cx, &inner_args);
        cx.states = saved_states;
        (cx.batch, cx.choice_batch) = saved;
        Ok(outs?
            .into_iter()
            .map(|mut o| {
                o.shape = [b, t]
                    .into_iter()
                    .chain(o.shape[1..].iter().copied())
                    .collect();
                o.mask = x.mask.clone();
                o
            })
            .collect())
    }
}
