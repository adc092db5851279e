//! A Keras model as a graph of layer calls, evaluated on the CPU: Keras 3 functional models
//! (several inputs and outputs, layers called on other layers' outputs, keyword arguments
//! such as `initial_state` and `mask`), Keras 2 functional models (the older `inbound_nodes`
//! form) and `Sequential` models. Every tensor carries its Keras mask (`[B, T]`) as Keras
//! computes it; each layer's rule is in `ops.rs`.

mod activations;
mod attention;
mod combine;
mod conv;
pub(crate) mod conv_lstm;
mod custom;
pub(crate) use self::attention::{check_scale, query_value_key};
pub(crate) use self::combine::{last_axis, merge_mask};
pub(crate) use self::conv::{channels_last, Placement, Window2};
pub(crate) use self::mha::{Mha as MhaOp, Projection as MhaProjection};
pub(crate) use self::ops::{act_of, norm_axis, IDENTITY_AT_INFERENCE, SUPPORTED};
mod core;
pub(crate) use self::core::{reshape_target, Dense};
#[cfg(test)]
mod gpu_twins;
mod lower;
pub(crate) mod mha;
mod nested;
mod ops;
mod order;
mod padding;
pub(crate) use self::padding::Pad2;
mod eval;
mod preprocessing;
mod rnn;

use crate::custom::CustomObjects;
use crate::error::{LstmError, Result};
use crate::weight_source::WeightSource;
use ndarray::{Array2, ArrayD};
use serde_json::Value as Json;
use std::collections::HashMap;

/// A tensor of the graph and its mask.
#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub data: ArrayD<f32>,
    /// The Keras mask `[B, T]` (true = step present), if any.
    pub mask: Option<Array2<bool>>,
}

/// A model input: its name, shape without the batch axis (`None` for a free axis) and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// The input layer's name.
    pub name: String,
    /// The shape after the batch axis.
    pub shape: Vec<Option<usize>>,
    /// Keras's dtype name (`float32`, `int32`, ...).
    pub dtype: String,
}

/// `(layer name, call index, output index)`, as Keras's `keras_history`.
pub(crate) type TensorRef = (String, usize, usize);

/// One layer call of a graph without its op (what training builds its own graph on): the
/// layer, which call of it, the tensors it reads (its inputs, its `initial_state`, an
/// explicit `mask`), its scalar arguments and its other keyword arguments.
#[derive(Debug, Clone)]
pub(crate) struct CallSpec {
    pub(crate) layer: String,
    pub(crate) call: usize,
    pub(crate) inputs: Vec<TensorRef>,
    pub(crate) states: Vec<TensorRef>,
    pub(crate) mask: Option<TensorRef>,
    pub(crate) scalars: Vec<f64>,
    pub(crate) kwargs: serde_json::Map<String, Json>,
}

#[derive(Clone)]
struct Node {
    layer: String,
    /// Index of the layer's op in `Graph::ops`.
    op: usize,
    call: usize,
    inputs: Vec<TensorRef>,
    states: Vec<TensorRef>,
    mask: Option<TensorRef>,
    scalars: Vec<f64>,
    /// Keyword arguments that are not tensors (`use_causal_mask`, ...).
    kwargs: serde_json::Map<String, Json>,
}

/// A model's graph: its layers (each an op, shared by every call of it), the calls in order,
/// its inputs and outputs.
#[derive(Clone)]
pub(crate) struct Graph {
    ops: Vec<(String, Box<dyn ops::Op>)>,
    /// (layer name, class) in config order.
    pub(crate) layers: Vec<(String, String)>,
    nodes: Vec<Node>,
    pub(crate) inputs: Vec<InputSpec>,
    pub(crate) outputs: Vec<(String, TensorRef)>,
    /// The calls in an order where every tensor exists before it is read.
    order: Vec<usize>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("inputs", &self.inputs)
            .field(
                "layers",
                &self.ops.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn bad(reason: impl Into<String>) -> LstmError {
    LstmError::File {
        path: "Keras model".into(),
        reason: reason.into(),
    }
}

/// Keras's weight-group key of a class, as `keras.src.utils.naming.to_snake_case` makes it
/// (`InputLayer` -> `input_layer`, `PReLU` -> `p_re_lu`): drop non-word characters, put `_`
/// before every capitalized word that follows a character, then between a lowercase letter
/// and an uppercase one, and lowercase.
pub(crate) fn snake_case(class: &str) -> String {
    let c: Vec<char> = class
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    // `(.)([A-Z][a-z]+)` -> `\1_\2`, scanning left to right without overlaps
    let mut a: Vec<char> = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let word =
            i + 2 < c.len() && c[i + 1].is_ascii_uppercase() && c[i + 2].is_ascii_lowercase();
        if word {
            let mut end = i + 2;
            while end < c.len() && c[end].is_ascii_lowercase() {
                end += 1;
            }
            a.push(c[i]);
            a.push('_');
            a.extend(&c[i + 1..end]);
            i = end;
        } else {
            a.push(c[i]);
            i += 1;
        }
    }
    // `([a-z])([A-Z])` -> `\1_\2`
    let mut out = String::new();
    let mut i = 0;
    while i < a.len() {
        if i + 1 < a.len() && a[i].is_ascii_lowercase() && a[i + 1].is_ascii_uppercase() {
            out.push(a[i]);
            out.push('_');
            out.push(a[i + 1]);
            i += 2;
        } else {
            out.push(a[i]);
            i += 1;
        }
    }
    out.to_lowercase()
}

/// A Keras 3 tensor reference (`{"class_name": "__keras_tensor__", ...}`).
fn keras3_tensor(v: &Json) -> Option<TensorRef> {
    if v.get("class_name").and_then(Json::as_str) != Some("__keras_tensor__") {
        return None;
    }
    let h = v.get("config")?.get("keras_history")?.as_array()?;
    Some((
        h.first()?.as_str()?.to_string(),
        h.get(1)?.as_u64()? as usize,
        h.get(2)?.as_u64()? as usize,
    ))
}

/// A `[name, node, tensor]` (or Keras 2's `[name, node, tensor, kwargs]`) list.
fn history(v: &Json) -> Option<TensorRef> {
    let a = v.as_array()?;
    Some((
        a.first()?.as_str()?.to_string(),
        a.get(1)?.as_u64()? as usize,
        a.get(2)?.as_u64()? as usize,
    ))
}

/// The tensors (in order) and scalars of Keras 3 call arguments.
fn walk_args(v: &Json, tensors: &mut Vec<TensorRef>, scalars: &mut Vec<f64>) {
    if let Some(t) = keras3_tensor(v) {
        tensors.push(t);
    } else if let Some(items) = v.as_array() {
        items.iter().for_each(|i| walk_args(i, tensors, scalars));
    } else if let Some(x) = v.as_f64() {
        scalars.push(x);
    }
}

/// `input_layers` / `output_layers`: one `[name, 0, 0]` or a list of them.
fn endpoints(v: Option<&Json>, what: &str) -> Result<Vec<TensorRef>> {
    let v = v.ok_or_else(|| bad(format!("a functional model without {what}")))?;
    if let Some(one) = history(v) {
        return Ok(vec![one]);
    }
    // (entries may nest: Keras 3 saves an output that is a list of tensors, the states of
    // a stacked cell, as a list; its tensors are outputs in order)
    fn flatten(v: &Json, what: &str, out: &mut Vec<TensorRef>, depth: usize) -> Result<()> {
        if let Some(one) = history(v) {
            out.push(one);
            return Ok(());
        }
        match v.as_array() {
            Some(items) if depth < 8 => {
                for e in items {
                    flatten(e, what, out, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(bad(format!("{what} has an entry {v}"))),
        }
    }
    let items = v
        .as_array()
        .ok_or_else(|| bad(format!("{what} is not a list")))?;
    let mut out = Vec::new();
    for e in items {
        flatten(e, what, &mut out, 0)?;
    }
    Ok(out)
}

fn input_spec(name: &str, cfg: &Json) -> InputSpec {
    let shape = cfg
        .get("batch_shape")
        .or_else(|| cfg.get("batch_input_shape"))
        .and_then(Json::as_array)
        .map(|dims| {
            dims.iter()
                .skip(1)
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect()
        })
        .unwrap_or_default();
    let dtype = match cfg.get("dtype") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Object(o)) => o
            .get("config")
            .and_then(|c| c.get("name"))
            .and_then(Json::as_str)
            .unwrap_or("float32")
            .to_string(),
        _ => "float32".into(),
    };
    InputSpec {
        name: name.to_string(),
        shape,
        dtype,
    }
}

impl Graph {
    /// The calls in the order Keras runs them ([`Graph::keras_order`]; where that order is
    /// not one, one where every tensor exists before it is read).
    pub(crate) fn calls(&self) -> Vec<CallSpec> {
        let order = self.keras_order().unwrap_or_else(|| {
            log::debug!("the graph's calls run in config order (Keras's order is not one)");
            self.order.clone()
        });
        order
            .iter()
            .map(|&k| {
                let n = &self.nodes[k];
                CallSpec {
                    layer: n.layer.clone(),
                    call: n.call,
                    inputs: n.inputs.clone(),
                    states: n.states.clone(),
                    mask: n.mask.clone(),
                    scalars: n.scalars.clone(),
                    kwargs: n.kwargs.clone(),
                }
            })
            .collect()
    }

    /// Reads the graph of a model config (`{"class_name": "Functional" | "Sequential", ...}`),
    /// building each layer with its weights from `src`.
    pub(crate) fn from_config(
        config: &Json,
        src: &WeightSource,
        custom: &CustomObjects,
    ) -> Result<Self> {
        Self::from_config_in(config, src, custom, "", 0)
    }

    /// [`Graph::from_config`] of a model nested `depth` deep, whose layers' weights lie under
    /// `prefix` (`"sequential/layers/"` for a `Sequential` used as a layer: Keras 3 keeps a
    /// nested model's weights under its own key, then its layers' keys).
    fn from_config_in(
        config: &Json,
        src: &WeightSource,
        custom: &CustomObjects,
        prefix: &str,
        depth: usize,
    ) -> Result<Self> {
        if depth > 16 {
            return Err(bad("models nested more than 16 deep"));
        }
        let class = config
            .get("class_name")
            .and_then(Json::as_str)
            .ok_or_else(|| bad("the config has no class_name"))?;
        let cfg = config
            .get("config")
            .ok_or_else(|| bad("the config has no config"))?;
        let entries = cfg
            .get("layers")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("the model config has no layers list"))?;
        let functional = match class {
            "Sequential" => false,
            "Functional" | "Model" => true,
            other => return Err(LstmError::unsupported("model class_name", other)),
        };
        let mut graph = Graph {
            ops: Vec::new(),
            layers: Vec::new(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            order: Vec::new(),
        };
        let mut counts = HashMap::<String, usize>::new();
        let mut previous: Option<TensorRef> = None;
        for entry in entries {
            let lclass = entry
                .get("class_name")
                .and_then(Json::as_str)
                .ok_or_else(|| bad("a layer without class_name"))?;
            let lcfg = entry
                .get("config")
                .ok_or_else(|| bad(format!("{lclass} layer without config")))?;
            let name = entry
                .get("name")
                .and_then(Json::as_str)
                .or_else(|| lcfg.get("name").and_then(Json::as_str))
                .unwrap_or(lclass)
                .to_string();
            if graph.ops.iter().any(|(n, _)| *n == name) {
                return Err(bad(format!("two layers named {name:?}")));
            }
            // (a layer rewritten from an older class keeps that name: CuDNNLSTM)
            let shown = lcfg
                .get("cudnn_class")
                .and_then(Json::as_str)
                .unwrap_or(lclass);
            graph.layers.push((name.clone(), shown.to_string()));
            if lclass == "InputLayer" {
                graph.inputs.push(input_spec(&name, lcfg));
                if !functional {
                    previous = Some((name, 0, 0));
                }
                continue;
            }
            // The weight group key: snake-case class name, _1, _2, ... by order of class.
            let base = snake_case(lclass);
            let n = counts.entry(base.clone()).or_insert(0);
            let key = if *n == 0 {
                base.clone()
            } else {
                format!("{base}_{n}")
            };
            *n += 1;
            let op: Box<dyn ops::Op> = if matches!(lclass, "Sequential" | "Functional" | "Model") {
                if src.is_legacy_source() {
                    return Err(LstmError::unsupported(
                        "nested model",
                        format!(
                            "{name} ({lclass}) in a Keras 2 HDF5 file (nested models are read \
                             from .keras and .weights.h5 files)"
                        ),
                    ));
                }
                let inner = Graph::from_config_in(
                    entry,
                    src,
                    custom,
                    &format!("{prefix}{key}/layers/"),
                    depth + 1,
                )?;
                Box::new(nested::SubModel {
                    name: name.clone(),
                    graph: inner,
                })
            } else {
                let key = format!("{prefix}{key}");
                ops::build(lclass, lcfg, entry, &name, &key, src, custom)
                    .map_err(|e| src.in_context(&name, e))?
            };
            let op_index = graph.ops.len();
            graph.ops.push((name.clone(), op));
            if !functional {
                let input = match previous.take() {
                    Some(p) => p,
                    None => {
                        // Keras 2 Sequential: the first layer declares the input shape.
                        graph.inputs.push(input_spec("input", lcfg));
                        ("input".to_string(), 0, 0)
                    }
                };
                graph.nodes.push(Node {
                    layer: name.clone(),
                    op: op_index,
                    call: 0,
                    inputs: vec![input],
                    states: Vec::new(),
                    mask: None,
                    scalars: Vec::new(),
                    kwargs: Default::default(),
                });
                previous = Some((name, 0, 0));
                continue;
            }
            let calls = entry
                .get("inbound_nodes")
                .and_then(Json::as_array)
                .map_or(&[][..], Vec::as_slice);
            if calls.is_empty() {
                return Err(bad(format!("layer {name} ({lclass}) is never called")));
            }
            for (call, node) in calls.iter().enumerate() {
                let mut n = Node {
                    layer: name.clone(),
                    op: op_index,
                    call,
                    inputs: Vec::new(),
                    states: Vec::new(),
                    mask: None,
                    scalars: Vec::new(),
                    kwargs: Default::default(),
                };
                if let Some(list) = node.as_array() {
                    // Keras 2: a list of [name, node, tensor, kwargs]
                    for t in list {
                        n.inputs.push(
                            history(t).ok_or_else(|| {
                                bad(format!("layer {name}: an inbound tensor {t}"))
                            })?,
                        );
                    }
                } else {
                    let args = node.get("args").unwrap_or(&Json::Null);
                    walk_args(args, &mut n.inputs, &mut n.scalars);
                    if let Some(kwargs) = node.get("kwargs").and_then(Json::as_object) {
                        for (k, v) in kwargs {
                            let mut ts = Vec::new();
                            walk_args(v, &mut ts, &mut Vec::new());
                            match k.as_str() {
                                "initial_state" => n.states = ts,
                                "mask" if ts.len() == 1 && v.as_array().is_none() => {
                                    n.mask = ts.pop()
                                }
                                // no explicit mask: the inputs' own masks apply
                                "mask" if ts.is_empty() => {}
                                "mask" => {
                                    return Err(LstmError::unsupported(
                                        format!("keyword argument mask of layer {name}"),
                                        "a list of mask tensors (the inputs' own masks are \
                                         supported)",
                                    ))
                                }
                                "training" => {}
                                "use_causal_mask" | "return_attention_scores" if ts.is_empty() => {
                                    n.kwargs.insert(k.clone(), v.clone());
                                }
                                other => {
                                    return Err(LstmError::unsupported(
                                        format!("keyword argument of layer {name}"),
                                        other,
                                    ))
                                }
                            }
                        }
                    }
                }
                if n.inputs.is_empty() {
                    return Err(bad(format!("layer {name}: a call with no input tensor")));
                }
                graph.nodes.push(n);
            }
        }
        if functional {
            let names: Vec<String> = graph.inputs.iter().map(|i| i.name.clone()).collect();
            let order = endpoints(cfg.get("input_layers"), "input_layers")?;
            let mut inputs = Vec::new();
            for (n, _, _) in order {
                let spec = graph.inputs.iter().find(|i| i.name == n).ok_or_else(|| {
                    bad(format!(
                        "input_layers names {n:?}, not an InputLayer ({names:?})"
                    ))
                })?;
                inputs.push(spec.clone());
            }
            graph.inputs = inputs;
            for t in endpoints(cfg.get("output_layers"), "output_layers")? {
                graph.outputs.push((t.0.clone(), t));
            }
        } else {
            let last = previous.ok_or_else(|| bad("a Sequential model without layers"))?;
            // every output of the last layer (a recurrent layer may return its states)
            graph
                .outputs
                .push((last.0.clone(), (last.0, 0, usize::MAX)));
        }
        if graph.inputs.is_empty() {
            return Err(bad("the model has no input"));
        }
        graph.order = graph.run_order()?;
        Ok(graph)
    }

    /// An order of the calls in which each runs after the calls it reads (configs list layers
    /// in order; any other order works too), or an error naming the calls that can never run
    /// (a cycle, a dangling inbound name) or an output that is no call's.
    fn run_order(&self) -> Result<Vec<usize>> {
        let mut order = Vec::new();
        let mut have: std::collections::HashSet<(String, usize)> =
            self.inputs.iter().map(|i| (i.name.clone(), 0)).collect();
        let mut done = vec![false; self.nodes.len()];
        loop {
            let mut progress = false;
            for (k, n) in self.nodes.iter().enumerate() {
                let ready = n
                    .inputs
                    .iter()
                    .chain(&n.states)
                    .chain(n.mask.iter())
                    .all(|t| have.contains(&(t.0.clone(), t.1)));
                if !done[k] && ready {
                    have.insert((n.layer.clone(), n.call));
                    done[k] = true;
                    order.push(k);
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        let stuck: Vec<String> = self
            .nodes
            .iter()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(n, _)| {
                let missing: Vec<String> = n
                    .inputs
                    .iter()
                    .chain(&n.states)
                    .chain(n.mask.iter())
                    .filter(|t| !have.contains(&(t.0.clone(), t.1)))
                    .map(|t| t.0.clone())
                    .collect();
                format!("{} (waits for {})", n.layer, missing.join(", "))
            })
            .collect();
        if !stuck.is_empty() {
            return Err(bad(format!(
                "layers that can never run (a cycle or a dangling inbound name): {}",
                stuck.join("; ")
            )));
        }
        for (name, t) in &self.outputs {
            if !have.contains(&(t.0.clone(), t.1)) {
                return Err(bad(format!("output {name} is no layer's output")));
            }
        }
        Ok(order)
    }
}
