//! Building a trainable [`Functional`] from a Keras model: its layers, calls, frozen flags,
//! constraints and regularizers, read from the saved config.

use super::*;

/// The number of outputs a call of `layer` gives.
fn output_count<T>(layer: &GraphLayer<T>, kwargs: &serde_json::Map<String, Value>) -> usize {
    match layer {
        GraphLayer::One(TrainLayer::Recurrent { config, .. }) if config.return_state => {
            1 + if matches!(config.cell, crate::config::Cell::Lstm) {
                2
            } else {
                1
            }
        }
        GraphLayer::Many(op)
            if op.class().ends_with("Attention")
                && kwargs.get("return_attention_scores") == Some(&Value::Bool(true)) =>
        {
            2
        }
        _ => 1,
    }
}

impl<T: Element> Functional<T> {
    /// The trainable graph of `model` with its weights in `T`; a layer or argument that is
    /// not trained (a nested model, a stateful layer, a regularizer, ...) is an error naming
    /// it.
    pub fn from_model(model: &KerasModel) -> Result<Self> {
        let config = model.config();
        crate::train::load::refuse_untrained_wrappers(config)?;
        refuse_training_randomness(config)?;
        let built = model
            .layers_with_weights()
            .map_err(|why| LstmError::invalid("model", format!("not trainable: {why}")))?;
        let graph = model.graph();
        let entries = config
            .pointer("/config/layers")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let entry_of = |name: &str| {
            entries
                .iter()
                .find(|e| e.pointer("/config/name").and_then(Value::as_str) == Some(name))
        };
        let specs: Vec<CallSpec> = graph.calls();
        let inputs: Vec<String> = graph.inputs.iter().map(|i| i.name.clone()).collect();
        let mut layers: Vec<(String, GraphLayer<T>)> = Vec::new();
        for (name, class) in &graph.layers {
            if class == "InputLayer" {
                continue;
            }
            let cfg = entry_of(name)
                .and_then(|e| e.get("config"))
                .unwrap_or(&Value::Null);
            let layer = if let Some(l) = crate::train::load::identity_layer::<T>(class, cfg, name)?
            {
                GraphLayer::One(l)
            } else {
                let Some((_, ml)) = built.iter().find(|(n, _)| n == name) else {
                    return Err(LstmError::unsupported(
                        "layer",
                        format!("{name} ({class}) in training"),
                    ));
                };
                match ml {
                    crate::model::ModelLayer::Other {
                        class,
                        config: lcfg,
                        weights,
                    } if MERGE_CLASSES.contains(&class.as_str()) => {
                        let kwargs = specs
                            .iter()
                            .find(|c| &c.layer == name)
                            .map(|c| c.kwargs.clone())
                            .unwrap_or_default();
                        let op = crate::train::layers::merge_from_keras::<T>(
                            class,
                            lcfg,
                            name,
                            &kwargs,
                            weights.clone(),
                        )?
                        .ok_or_else(|| {
                            LstmError::unsupported("layer", format!("{name} ({class}) in training"))
                        })?;
                        GraphLayer::Many(op)
                    }
                    ml => {
                        let l = train_layer(config, name, ml)?;
                        if matches!(&l, TrainLayer::Recurrent { config, .. } if config.stateful) {
                            return Err(LstmError::unsupported(
                                "stateful",
                                format!(
                                    "true on layer {name} in a Functional (the chain trainer, \
                                     Sequential, carries the states)"
                                ),
                            ));
                        }
                        GraphLayer::One(l)
                    }
                }
            };
            layers.push((name.clone(), layer));
        }
        // (layer name, call) -> index into `calls`
        let mut calls: Vec<Call> = Vec::new();
        let mut keys: Vec<(String, usize)> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        let resolve = |t: &TensorRef, keys: &[(String, usize)], counts: &[usize]| -> Result<Src> {
            if let Some(k) = inputs.iter().position(|n| *n == t.0) {
                return Ok(Src::Input(k));
            }
            let c = keys
                .iter()
                .position(|(n, c)| *n == t.0 && *c == t.1)
                .ok_or_else(|| LstmError::invalid("model", format!("no call {}:{}", t.0, t.1)))?;
            if t.2 >= counts[c] {
                return Err(LstmError::invalid(
                    "model",
                    format!("layer {} has {} outputs, not {}", t.0, counts[c], t.2 + 1),
                ));
            }
            Ok(Src::Out(c, t.2))
        };
        for spec in &specs {
            let layer = layers
                .iter()
                .position(|(n, _)| *n == spec.layer)
                .ok_or_else(|| LstmError::invalid("model", format!("no layer {}", spec.layer)))?;
            let many = |ts: &[TensorRef]| -> Result<Vec<Src>> {
                ts.iter().map(|t| resolve(t, &keys, &counts)).collect()
            };
            let call = Call {
                layer,
                inputs: many(&spec.inputs)?,
                states: many(&spec.states)?,
                mask: spec
                    .mask
                    .as_ref()
                    .map(|t| resolve(t, &keys, &counts))
                    .transpose()?,
                scalars: spec.scalars.clone(),
            };
            counts.push(output_count(&layers[layer].1, &spec.kwargs));
            keys.push((spec.layer.clone(), spec.call));
            calls.push(call);
        }
        let mut outputs = Vec::new();
        for (_, t) in &graph.outputs {
            if t.2 == usize::MAX {
                // (a Sequential model: every output of its last layer)
                let c = keys
                    .iter()
                    .position(|(n, c)| *n == t.0 && *c == t.1)
                    .ok_or_else(|| LstmError::invalid("model", format!("no output {}", t.0)))?;
                outputs.extend((0..counts[c]).map(|k| Src::Out(c, k)));
            } else {
                outputs.push(resolve(t, &keys, &counts)?);
            }
        }
        // per layer, from its config entry: the regularizers and constraints of its
        // weights, whether it is frozen, its activity regularizer
        let (mut regularizers, mut constraints, mut frozen, mut activity) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut inner_activity = Vec::new();
        for (name, l) in &layers {
            let entry = entry_of(name);
            let class = entry
                .and_then(|e| e.get("class_name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let cfg = entry.and_then(|e| e.get("config")).unwrap_or(&Value::Null);
            let shapes: Vec<Vec<usize>> = l.weights().iter().map(|w| w.shape().to_vec()).collect();
            regularizers.push(layer_regularizers(class, cfg, name, &shapes)?);
            constraints.push(layer_constraints(class, cfg, name, &shapes)?);
            frozen.push(frozen_layer(entry, name)?);
            activity.push(activity_regularizer(class, cfg, name)?);
            inner_activity.push(inner_activity_regularizers(class, cfg, name)?);
        }
        Ok(Functional {
            layers,
            regularizers,
            constraints,
            frozen,
            activity,
            inner_activity,
            calls,
            inputs,
            outputs,
        })
    }
}

/// Whether the layer of config entry `entry` is frozen (`trainable: false`; a wrapper's
/// inner layers must agree with it: Keras's setter freezes them together).
fn frozen_layer(entry: Option<&Value>, name: &str) -> Result<bool> {
    let cfg = entry.and_then(|e| e.get("config"));
    let trainable = |c: Option<&Value>| {
        c.and_then(|c| c.get("trainable"))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    };
    let frozen = !trainable(cfg);
    for key in ["layer", "backward_layer"] {
        let inner = cfg.and_then(|c| c.get(key)).and_then(|l| l.get("config"));
        if inner.is_some() && trainable(inner) == frozen {
            return Err(LstmError::unsupported(
                format!("trainable of layer {name}"),
                format!(
                    "{} on the wrapper and {} on its {key} (a wrapper frozen apart from its \
                     inner layer is not trained here)",
                    !frozen,
                    trainable(inner)
                ),
            ));
        }
    }
    Ok(frozen)
}
