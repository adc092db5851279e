//! A model that is a chain of `Masking`, recurrent, `Dense` and other single-input layers (the `KerasModel::layers`
//! view of a plain stack; both paths run the graph): the layers with their weights, and which
//! outputs of the last one the model returns.

use super::{bad_model, ModelLayer};
use crate::config::LayerConfig;
use crate::error::{LstmError, Result};
use crate::graph::{snake_case, Dense};
use crate::network::Network;
use crate::weight_source::WeightSource;
use serde_json::Value;

/// A model that is a chain: its layers and which outputs of the last one it returns.
#[derive(Debug, Clone)]
pub(super) struct Chain {
    pub(super) layers: Vec<(String, ModelLayer)>,
    pub(super) outputs: Vec<usize>,
}

/// The model as a chain of Masking, recurrent and Dense layers (`KerasModel::layers`).
pub(super) fn build(config: &Value, h5: &WeightSource) -> Result<Chain> {
    let class = config
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_model("config.json has no class_name"))?;
    let cfg = config
        .get("config")
        .ok_or_else(|| bad_model("config.json has no config"))?;
    let name = cfg
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("model")
        .to_string();
    let entries = cfg
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_model("the model config has no layers list"))?;
    let functional = match class {
        "Sequential" => false,
        "Functional" | "Model" => true,
        other => return Err(LstmError::unsupported("model class_name", other)),
    };
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut layers = Vec::new();
    let mut previous: Option<String> = None;
    for entry in entries {
        let class = entry
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_model("a layer without class_name"))?;
        let lcfg = entry
            .get("config")
            .ok_or_else(|| bad_model(format!("{class} layer without config")))?;
        let lname = lcfg
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(class)
            .to_string();
        if class == "InputLayer" && !functional {
            continue;
        }
        // The weight group key: snake-case class name, _1, _2, ... by order of class.
        let base = snake_case(class);
        let n = counts.entry(base.clone()).or_insert(0);
        let key = if *n == 0 {
            base.clone()
        } else {
            format!("{base}_{n}")
        };
        *n += 1;
        if functional {
            check_chain(entry, class, &lname, previous.as_deref())?;
            previous = Some(lname.clone());
        }
        // the identity at inference (no weights)
        if crate::graph::IDENTITY_AT_INFERENCE.contains(&class) {
            continue;
        }
        let layer = model_layer(h5, (&key, &lname), entry)?;
        layers.push((lname, layer));
    }
    if layers.is_empty() {
        return Err(bad_model("the model has no layers after its input"));
    }
    let last_count = match &layers.last().expect("not empty").1 {
        ModelLayer::Recurrent(n) => n.output_count(),
        _ => 1,
    };
    let outputs = if functional {
        output_indices(cfg, &layers.last().expect("not empty").0, last_count)?
    } else {
        (0..last_count).collect()
    };
    let _ = name;
    Ok(Chain { layers, outputs })
}

/// The layer of config entry `entry` (class `LSTM`, `Dense`, ...) with its weights from
/// `src` under weight group `key`: the chain view's layers, and every other class training
/// builds on as [`ModelLayer::Other`].
fn model_layer(h5: &WeightSource, (key, lname): (&str, &str), entry: &Value) -> Result<ModelLayer> {
    let class = entry
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_model("a layer without class_name"))?;
    let lcfg = entry
        .get("config")
        .ok_or_else(|| bad_model(format!("{class} layer without config")))?;
    Ok(match class {
        "Masking" => ModelLayer::Masking {
            mask_value: lcfg
                .get("mask_value")
                .and_then(Value::as_f64)
                .unwrap_or(0.0) as f32,
        },
        "LSTM" | "GRU" | "SimpleRNN" | "Bidirectional" => {
            let layer_config = LayerConfig::from_keras(entry)?;
            ModelLayer::Recurrent(recurrent(h5, (key, lname), &layer_config)?)
        }
        "Dense" => dense(h5, key, lcfg, lname)?,
        "Embedding" => {
            let table = h5.layer(key, lname)?.into_iter().next().ok_or_else(|| {
                LstmError::MissingWeight {
                    name: format!("{lname}/embeddings"),
                }
            })?;
            let shape = table.shape().to_vec();
            ModelLayer::Embedding {
                table: table.into_dimensionality::<ndarray::Ix2>().map_err(|_| {
                    LstmError::shape(format!("{lname}/embeddings"), &[0, 0], &shape)
                })?,
                mask_zero: lcfg
                    .get("mask_zero")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        }
        // a Dense per timestep is the Dense on the last axis
        "TimeDistributed"
            if lcfg
                .get("layer")
                .and_then(|l| l.get("class_name"))
                .and_then(Value::as_str)
                == Some("Dense") =>
        {
            let inner = lcfg
                .get("layer")
                .and_then(|l| l.get("config"))
                .unwrap_or(&Value::Null);
            dense(h5, key, inner, lname)?
        }
        "MultiHeadAttention" => {
            let use_bias = lcfg
                .get("use_bias")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            ModelLayer::Other {
                class: "MultiHeadAttention".to_string(),
                config: lcfg.clone(),
                weights: crate::graph::mha::projection_weights(h5, key, lname, use_bias)?
                    .into_iter()
                    .flatten()
                    .collect(),
            }
        }
        other
            if crate::train::layers::CLASSES.contains(&other)
                || crate::train::layers::MERGE_CLASSES.contains(&other) =>
        {
            ModelLayer::Other {
                class: other.to_string(),
                config: lcfg.clone(),
                weights: h5.layer(key, lname)?,
            }
        }
        other => {
            return Err(LstmError::unsupported(
                "layer class_name",
                format!("{other} (layer {lname:?})"),
            ))
        }
    })
}

/// Every layer of a model's config but its inputs, in config order, with its weights (the
/// view training builds a functional graph on: the merge, attention and mask-op layers as
/// [`ModelLayer::Other`]; the identity-at-inference layers, which have no weights, left out
/// as in the chain view).
pub(super) fn every_layer(config: &Value, h5: &WeightSource) -> Result<Vec<(String, ModelLayer)>> {
    let entries = config
        .pointer("/config/layers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_model("the model config has no layers list"))?;
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut layers = Vec::new();
    for entry in entries {
        let class = entry
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_model("a layer without class_name"))?;
        let lname = entry
            .pointer("/config/name")
            .and_then(Value::as_str)
            .unwrap_or(class)
            .to_string();
        if crate::graph::IDENTITY_AT_INFERENCE.contains(&class) {
            continue;
        }
        let base = snake_case(class);
        let n = counts.entry(base.clone()).or_insert(0);
        let key = if *n == 0 {
            base.clone()
        } else {
            format!("{base}_{n}")
        };
        *n += 1;
        let layer = model_layer(h5, (&key, &lname), entry)?;
        layers.push((lname, layer));
    }
    Ok(layers)
}

/// Checks that a functional layer is called once, on exactly one tensor, and that tensor is
/// the previous layer's first output (`keras_history` `[previous, 0, 0]`), with no tensor in
/// its keyword arguments (`initial_state`, `mask`, ...). Anything else is a graph this reader
/// does not follow, and an error: running it as a chain would be a different model.
fn check_chain(entry: &Value, class: &str, name: &str, previous: Option<&str>) -> Result<()> {
    let nodes = entry
        .get("inbound_nodes")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let Some(previous) = previous else {
        return if class == "InputLayer" {
            Ok(())
        } else {
            Err(bad_model(
                "a functional model must start with an InputLayer",
            ))
        };
    };
    let unsupported = |what: String| {
        Err(bad_model(format!(
            "layer {name} {what}: only chains of layers, each reading the previous layer's \
             first output, are supported"
        )))
    };
    let [node] = nodes else {
        return unsupported(format!("is called {} times", nodes.len()));
    };
    let args = node
        .get("args")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let tensors: Vec<&Value> = args.iter().flat_map(keras_tensors).collect();
    let [tensor] = tensors.as_slice() else {
        return unsupported(format!("reads {} tensors", tensors.len()));
    };
    let history = tensor.pointer("/config/keras_history");
    let expected = serde_json::json!([previous, 0, 0]);
    if history != Some(&expected) {
        return unsupported(format!(
            "reads {}, not the previous layer's first output {expected}",
            history.map_or("an unnamed tensor".to_string(), Value::to_string)
        ));
    }
    if let Some(kwargs) = node.get("kwargs").and_then(Value::as_object) {
        for (key, value) in kwargs {
            if !keras_tensors(value).is_empty() {
                return unsupported(format!("takes a tensor as its `{key}` argument"));
            }
        }
    }
    Ok(())
}

/// The serialized Keras tensors in a node argument (a tensor, or lists and dicts of them).
fn keras_tensors(v: &Value) -> Vec<&Value> {
    match v {
        Value::Object(o)
            if o.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") =>
        {
            vec![v]
        }
        Value::Object(o) => o.values().flat_map(keras_tensors).collect(),
        Value::Array(a) => a.iter().flat_map(keras_tensors).collect(),
        _ => Vec::new(),
    }
}

/// The indices into the last layer's outputs that a functional model returns.
fn output_indices(cfg: &Value, last: &str, count: usize) -> Result<Vec<usize>> {
    let outs = cfg
        .get("output_layers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_model("functional model without output_layers"))?;
    // Either one [name, node, index] triple or a list of them.
    let triples: Vec<&Value> = if outs.first().is_some_and(Value::is_string) {
        vec![cfg.get("output_layers").expect("checked above")]
    } else {
        outs.iter().collect()
    };
    triples
        .into_iter()
        .map(|t| {
            let name = t.get(0).and_then(Value::as_str);
            let index = t.get(2).and_then(Value::as_u64).unwrap_or(0) as usize;
            if name != Some(last) || index >= count {
                return Err(bad_model(format!(
                    "output {t} is not an output of the last layer {last:?}"
                )));
            }
            Ok(index)
        })
        .collect()
}

/// A recurrent layer (or Bidirectional) from its weights in `get_weights()` order.
fn recurrent(
    src: &WeightSource,
    (key, name): (&str, &str),
    config: &LayerConfig,
) -> Result<Network<f32>> {
    if let LayerConfig::Sequential(_) = config {
        return Err(LstmError::unsupported(
            "layer class_name",
            "Sequential nested in a model",
        ));
    }
    Network::from_keras_weights(config, &src.layer(key, name)?)
}

fn dense(src: &WeightSource, key: &str, cfg: &Value, name: &str) -> Result<ModelLayer> {
    let d = Dense::new(cfg, name, src.layer(key, name)?)?;
    Ok(ModelLayer::Dense {
        kernel: d.kernel,
        bias: d.bias,
        activation: d.act,
    })
}
