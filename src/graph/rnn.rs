//! `RNN(cell)` layers on the CPU. One Keras cell (`LSTMCell`, `GRUCell`, `SimpleRNNCell`)
//! in an `RNN` is the `LSTM`/`GRU`/`SimpleRNN` layer with the RNN's options (Keras's layers
//! are exactly that RNN around that cell); `StackedRNNCells` is the cells one after the
//! other at every timestep, which is the cells as recurrent layers each reading the previous
//! one's whole sequence: the masked steps are skipped by every cell alike, and the outputs
//! are the last cell's with every cell's final states (`[output, h1, c1, h2, ...]`). GPU
//! twin: `gpu::plan::StackedStage` over the cells' recurrent stages.

use super::core::Recurrent;
use super::ops::{Extra, GpuStage, Op, Uploader};
use super::{snake_case, Value};
use crate::config::{cell_as_layer, LayerConfig, RNN_CELLS};
use crate::error::{LstmError, Result};
use crate::gpu::plan::StackedStage;
use crate::network::Network;
use crate::weight_match::weight_count;
use crate::weight_source::WeightSource;
use ndarray::ArrayD;
use serde_json::Value as Json;
use std::collections::HashMap;

/// Builds an `RNN` layer (`entry`, weight group `key`).
pub(super) fn build(
    entry: &Json,
    name: &str,
    key: &str,
    src: &WeightSource,
    keras2_call_mask: bool,
) -> Result<Box<dyn Op>> {
    let null = Json::Null;
    let cfg = entry.get("config").unwrap_or(&null);
    let cell = cfg
        .get("cell")
        .ok_or_else(|| LstmError::bad_config("cell", format!("RNN layer {name} without a cell")))?;
    let class = cell.get("class_name").and_then(Json::as_str).unwrap_or("?");
    let recurrent = |layer: &Json, name: &str, weights: &[ArrayD<f32>]| -> Result<Recurrent> {
        let config = LayerConfig::from_keras(layer)?;
        Ok(Recurrent {
            name: name.to_string(),
            net: Network::from_keras_weights(&config, weights)?,
            keras2_call_mask,
            cudnn_class: None,
        })
    };
    if RNN_CELLS.iter().any(|(c, _)| *c == class) {
        let layer = cell_as_layer(cell, cfg, name)?;
        return Ok(Box::new(recurrent(&layer, name, &src.layer(key, name)?)?));
    }
    if class != "StackedRNNCells" {
        return Err(LstmError::unsupported(
            format!("cell of RNN layer {name}"),
            format!(
                "{class} (supported: {}, StackedRNNCells)",
                RNN_CELLS
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let cells = cell
        .get("config")
        .and_then(|c| c.get("cells"))
        .and_then(Json::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| LstmError::bad_config("cells", "StackedRNNCells without cells"))?;
    if cfg.get("go_backwards").and_then(Json::as_bool) == Some(true) {
        // (each cell would need the reversed order's mask; Keras runs them on one reversed
        // sequence)
        return Err(LstmError::unsupported(
            "go_backwards",
            format!("true for RNN layer {name} of StackedRNNCells"),
        ));
    }
    // Keras 3 keeps each cell's variables under `cell/cells/<class key>`, numbered by class;
    // the legacy layout lists them all in the layer's weight_names, cell after cell.
    let legacy = src
        .is_legacy_source()
        .then(|| src.layer(key, name))
        .transpose()?;
    let mut used = 0;
    let mut keys = HashMap::<String, usize>::new();
    let last = cells.len() - 1;
    let mut stack = Vec::new();
    for (k, c) in cells.iter().enumerate() {
        let cname = format!("{name}/cell {k}");
        let mut flags = cfg.clone();
        if let Json::Object(f) = &mut flags {
            if k < last {
                f.insert("return_sequences".into(), true.into());
                f.insert("zero_output_for_mask".into(), false.into());
            }
        }
        let layer = cell_as_layer(c, &flags, &cname)?;
        let weights = match &legacy {
            Some(all) => {
                let n = weight_count(&layer, &Default::default()).unwrap_or(0);
                let part = all
                    .get(used..used + n)
                    .ok_or_else(|| LstmError::MissingWeight {
                        name: format!("{cname}: {n} weights after the {used} of the cells before"),
                    })?;
                used += n;
                part.to_vec()
            }
            None => {
                let class = c.get("class_name").and_then(Json::as_str).unwrap_or("?");
                let base = snake_case(class);
                let n = keys.entry(base.clone()).or_insert(0);
                let ckey = if *n == 0 { base } else { format!("{base}_{n}") };
                *n += 1;
                src.group(&format!("layers/{key}/cell/cells/{ckey}"))?
            }
        };
        stack.push(recurrent(&layer, &cname, &weights)?);
    }
    if let Some(all) = &legacy {
        if used != all.len() {
            return Err(LstmError::invalid(
                format!("weights of layer {name}"),
                format!(
                    "its cells use {used} weight arrays, the file has {}",
                    all.len()
                ),
            ));
        }
    }
    Ok(Box::new(Stacked {
        name: name.to_string(),
        cells: stack,
    }))
}

/// `RNN(StackedRNNCells(cells))`: each cell a recurrent layer reading the previous one's
/// sequence.
#[derive(Debug, Clone)]
pub(super) struct Stacked {
    name: String,
    cells: Vec<Recurrent>,
}

impl Stacked {
    fn state_counts(&self) -> Vec<usize> {
        self.cells
            .iter()
            .map(|c| match &c.net {
                Network::Lstm(l) => l.config().cell.states(),
                _ => 0,
            })
            .collect()
    }
}

impl Op for Stacked {
    fn call(&mut self, inputs: &[&Value], extra: &Extra<'_>) -> Result<Vec<Value>> {
        let (x, positional) = inputs
            .split_first()
            .ok_or_else(|| LstmError::invalid(format!("layer {}", self.name), "no input"))?;
        let states: Vec<&Value> = if extra.states.is_empty() {
            positional.to_vec()
        } else {
            extra.states.clone()
        };
        let counts = self.state_counts();
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
        let mut x = (*x).clone();
        let mut state_outputs = Vec::new();
        let mut used = 0;
        let last = self.cells.len() - 1;
        for (k, (cell, n)) in self.cells.iter_mut().zip(counts).enumerate() {
            let own = if states.is_empty() {
                Vec::new()
            } else {
                states[used..used + n].to_vec()
            };
            used += n;
            let mut outs = cell.call(
                &[&x],
                &Extra {
                    states: own,
                    mask: extra.mask,
                    scalars: extra.scalars,
                    kwargs: extra.kwargs,
                },
            )?;
            let first = outs.remove(0);
            state_outputs.extend(outs);
            if k == last {
                let mut all = vec![first];
                all.extend(state_outputs);
                return Ok(all);
            }
            x = first;
        }
        Err(LstmError::invalid(
            format!("layer {}", self.name),
            "a stack of no cells",
        ))
    }

    fn params(&self) -> usize {
        self.cells.iter().map(|c| c.params()).sum()
    }

    fn is_recurrent(&self) -> bool {
        true
    }

    fn gpu(&self, up: &mut Uploader<'_>) -> Result<Box<dyn GpuStage>> {
        let stages = self
            .cells
            .iter()
            .map(|c| c.gpu(up))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(StackedStage {
            name: self.name.clone(),
            stages,
        }))
    }
}
