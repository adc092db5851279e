//! Running a graph on the CPU: each call in run order on the tensors it reads (the values
//! kept by `(layer, call)`), the model's outputs picked from them.

use super::{bad, ops, Graph, TensorRef, Value};
use crate::error::{LstmError, Result};
use ndarray::ArrayD;
use std::collections::HashMap;

impl Graph {
    /// An error listing the model's inputs unless `n` inputs are given.
    pub(crate) fn check_input_count(&self, n: usize) -> Result<()> {
        if n == self.inputs.len() {
            return Ok(());
        }
        let names: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        Err(LstmError::invalid(
            "inputs",
            format!("the model takes {} inputs {names:?}, got {n}", names.len()),
        ))
    }

    /// The one recurrent layer call that can take initial states from the caller, or an
    /// error saying why there is none.
    pub(crate) fn initial_state_node(&self) -> Result<usize> {
        let recurrent: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| self.ops[self.nodes[k].op].1.is_recurrent())
            .collect();
        match recurrent[..] {
            [k] if self.nodes[k].states.is_empty() && self.nodes[k].inputs.len() == 1 => Ok(k),
            [k] => Err(LstmError::invalid(
                "initial_state",
                format!(
                    "layer {} already takes its initial state from the model's graph",
                    self.nodes[k].layer
                ),
            )),
            _ => Err(LstmError::invalid(
                "initial_state",
                format!(
                    "a model takes initial states when it has exactly one recurrent layer \
                     call; this one has {}",
                    recurrent.len()
                ),
            )),
        }
    }

    /// Runs the graph on `inputs` (in the model's input order, with their masks), with
    /// initial states for its one recurrent layer call when given.
    pub(crate) fn run_with(
        &mut self,
        inputs: Vec<Value>,
        initial_state: Option<Vec<Value>>,
    ) -> Result<Vec<ArrayD<f32>>> {
        let values = self.eval(inputs, initial_state)?;
        self.pick_outputs(values)
    }

    /// The shapes of every layer call's outputs on `inputs`, in config order of the layers:
    /// `(layer name, [output shapes of each call])`.
    pub(crate) fn output_shapes(
        &mut self,
        inputs: Vec<Value>,
    ) -> Result<Vec<(String, Vec<Vec<usize>>)>> {
        let values = self.eval(inputs, None)?;
        Ok(self
            .layers
            .iter()
            .map(|(name, _)| {
                let shapes = (0..)
                    .map_while(|call| values.get(&(name.clone(), call)))
                    .flat_map(|outs| outs.iter().map(|v| v.data.shape().to_vec()))
                    .collect();
                (name.clone(), shapes)
            })
            .collect())
    }

    /// The parameters (weight values) of layer `name`.
    /// Whether the GPU path has a kernel for layer `name`.
    pub(crate) fn on_gpu(&self, name: &str) -> bool {
        self.ops
            .iter()
            .find(|(n, _)| n == name)
            .is_none_or(|(_, op)| op.on_gpu())
    }

    pub(crate) fn params(&self, name: &str) -> usize {
        self.ops
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, op)| op.params())
    }

    /// Every call's outputs on `inputs`.
    pub(super) fn eval(
        &mut self,
        inputs: Vec<Value>,
        initial_state: Option<Vec<Value>>,
    ) -> Result<HashMap<(String, usize), Vec<Value>>> {
        self.check_input_count(inputs.len())?;
        let init_node = match &initial_state {
            Some(_) => Some(self.initial_state_node()?),
            None => None,
        };
        let mut values: HashMap<(String, usize), Vec<Value>> = HashMap::new();
        for (spec, v) in self.inputs.iter().zip(inputs) {
            values.insert((spec.name.clone(), 0), vec![v]);
        }
        // (the run order guarantees every tensor a call reads exists; read them in place)
        fn get<'v>(
            values: &'v HashMap<(String, usize), Vec<Value>>,
            t: &TensorRef,
        ) -> Result<&'v Value> {
            values
                .get(&(t.0.clone(), t.1))
                .and_then(|outs| outs.get(t.2))
                .ok_or_else(|| bad(format!("no tensor {}[{}][{}]", t.0, t.1, t.2)))
        }
        for &k in &self.order {
            let node = &self.nodes[k];
            let outs = {
                let ins: Vec<&Value> = node
                    .inputs
                    .iter()
                    .map(|t| get(&values, t))
                    .collect::<Result<_>>()?;
                // Initial states from the caller come with the input's mask, as the layer API's
                // forward(x, initial_state, mask) takes both (a graph's own initial_state
                // calls follow Keras: see `core::Recurrent`).
                let caller_mask = match (&initial_state, init_node == Some(k), ins.first()) {
                    (Some(_), true, Some(x)) if node.mask.is_none() => {
                        x.mask.as_ref().map(|m| Value {
                            data: m.mapv(|b| if b { 1.0 } else { 0.0 }).into_dyn(),
                            mask: None,
                        })
                    }
                    _ => None,
                };
                let extra = ops::Extra {
                    states: match (&initial_state, init_node == Some(k)) {
                        (Some(init), true) => init.iter().collect(),
                        _ => node
                            .states
                            .iter()
                            .map(|t| get(&values, t))
                            .collect::<Result<_>>()?,
                    },
                    mask: match &caller_mask {
                        Some(m) => Some(m),
                        None => node.mask.as_ref().map(|t| get(&values, t)).transpose()?,
                    },
                    scalars: &node.scalars,
                    kwargs: &node.kwargs,
                };
                self.ops[node.op].1.call(&ins, &extra)?
            };
            values.insert((node.layer.clone(), node.call), outs);
        }
        Ok(values)
    }

    /// The model's outputs among the calls' `values`.
    fn pick_outputs(
        &self,
        values: HashMap<(String, usize), Vec<Value>>,
    ) -> Result<Vec<ArrayD<f32>>> {
        Ok(self
            .pick_values(values)?
            .into_iter()
            .map(|v| v.data)
            .collect())
    }

    /// The model's outputs among the calls' `values`, with their masks (moved out; copied
    /// only for a tensor that is more than one output).
    pub(super) fn pick_values(
        &self,
        mut values: HashMap<(String, usize), Vec<Value>>,
    ) -> Result<Vec<Value>> {
        // how many outputs each call's tensors still have to give
        let mut uses: HashMap<(String, usize), usize> = HashMap::new();
        for (_, t) in &self.outputs {
            *uses.entry((t.0.clone(), t.1)).or_insert(0) += 1;
        }
        let mut out = Vec::new();
        for (name, t) in &self.outputs {
            let key = (t.0.clone(), t.1);
            let left = uses.get_mut(&key).expect("counted above");
            *left -= 1;
            let last = *left == 0;
            let outs = values
                .get_mut(&key)
                .ok_or_else(|| bad(format!("output {name} is no layer's output")))?;
            let taken = |v: &mut Value| {
                if last {
                    Value {
                        data: std::mem::replace(&mut v.data, ArrayD::zeros(ndarray::IxDyn(&[0]))),
                        mask: v.mask.take(),
                    }
                } else {
                    v.clone()
                }
            };
            if t.2 == usize::MAX {
                out.extend(outs.iter_mut().map(taken));
            } else {
                let v = outs
                    .get_mut(t.2)
                    .ok_or_else(|| bad(format!("output {name}[{}] does not exist", t.2)))?;
                out.push(taken(v));
            }
        }
        Ok(out)
    }
}
