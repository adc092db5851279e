//! Keras 3's `compile_config` (in a compiled model's `config.json`): the losses, their
//! weights and the optimizer, read so training goes on as compiled, and written so Keras's
//! `load_model` compiles the model again (and loads the optimizer's state beside it).
//! Settings that change the numbers and are not built (a loss's `label_smoothing`, another
//! `reduction`, an optimizer's EMA) are refused by name, never ignored.

use super::graph::Losses;
use super::loss::Loss;
use super::optim::{Optimizer, Rule};
use crate::error::{LstmError, Result};
use serde_json::{json, Map, Value};

impl Loss {
    /// The loss a serialized Keras loss names: a name (`"mse"`) or an object
    /// (`{"class_name": "BinaryCrossentropy", "config": {"from_logits": true, ...}}`).
    ///
    /// ```
    /// use lstm_wgpu::train::Loss;
    /// let v = serde_json::json!({"class_name": "CategoricalCrossentropy",
    ///                            "config": {"from_logits": true, "label_smoothing": 0.0}});
    /// assert_eq!(Loss::from_keras_object(&v).unwrap(),
    ///            Loss::CategoricalCrossentropy { from_logits: true });
    /// ```
    pub fn from_keras_object(v: &Value) -> Result<Self> {
        let Some(obj) = v.as_object() else {
            return match v.as_str() {
                Some(name) => Loss::from_keras(name),
                None => Err(LstmError::bad_config("loss", "a name or a serialized loss")),
            };
        };
        let class = obj
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| LstmError::bad_config("loss", "a class_name"))?;
        let null = Value::Null;
        let cfg = obj.get("config").unwrap_or(&null);
        let get = |k: &str| cfg.get(k).filter(|v| !v.is_null());
        if let Some(r) = get("reduction") {
            // (Keras 2's "auto" is the batch mean in fit)
            if !matches!(r.as_str(), Some("sum_over_batch_size" | "auto")) {
                return Err(LstmError::unsupported(
                    format!("{class} reduction"),
                    r.to_string(),
                ));
            }
        }
        if let Some(s) = get("label_smoothing") {
            if s.as_f64() != Some(0.0) {
                return Err(LstmError::unsupported(
                    format!("{class} label_smoothing"),
                    s.to_string(),
                ));
            }
        }
        if let Some(a) = get("axis") {
            if a.as_i64() != Some(-1) {
                return Err(LstmError::unsupported(
                    format!("{class} axis"),
                    a.to_string(),
                ));
            }
        }
        if let Some(i) = get("ignore_class") {
            return Err(LstmError::unsupported(
                format!("{class} ignore_class"),
                i.to_string(),
            ));
        }
        let from_logits = get("from_logits").and_then(Value::as_bool) == Some(true);
        Ok(match Loss::from_keras(class)? {
            Loss::BinaryCrossentropy { .. } => Loss::BinaryCrossentropy { from_logits },
            Loss::CategoricalCrossentropy { .. } => Loss::CategoricalCrossentropy { from_logits },
            Loss::SparseCategoricalCrossentropy { .. } => {
                Loss::SparseCategoricalCrossentropy { from_logits }
            }
            plain => plain,
        })
    }

    /// The loss serialized as Keras 3 saves a `keras.losses` object.
    pub fn to_keras_object(&self) -> Value {
        let (class, name, from_logits) = match *self {
            Loss::MeanSquaredError => ("MeanSquaredError", "mean_squared_error", None),
            Loss::MeanAbsoluteError => ("MeanAbsoluteError", "mean_absolute_error", None),
            Loss::BinaryCrossentropy { from_logits } => (
                "BinaryCrossentropy",
                "binary_crossentropy",
                Some(from_logits),
            ),
            Loss::CategoricalCrossentropy { from_logits } => (
                "CategoricalCrossentropy",
                "categorical_crossentropy",
                Some(from_logits),
            ),
            Loss::SparseCategoricalCrossentropy { from_logits } => (
                "SparseCategoricalCrossentropy",
                "sparse_categorical_crossentropy",
                Some(from_logits),
            ),
            Loss::Ctc => ("CTC", "ctc", None),
        };
        let mut cfg = Map::new();
        cfg.insert("name".into(), json!(name));
        cfg.insert("reduction".into(), json!("sum_over_batch_size"));
        if let Some(f) = from_logits {
            cfg.insert("from_logits".into(), json!(f));
        }
        json!({"module": "keras.losses", "class_name": class, "config": cfg,
               "registered_name": null})
    }
}

impl Losses {
    /// The losses and loss weights of a Keras `compile_config` for a model whose outputs
    /// are named `outputs` (in order): one loss for every output, a list (null: no loss),
    /// or a dict by output name; `loss_weights` a list, a dict or absent.
    pub fn from_compile_config(config: &Value, outputs: &[&str]) -> Result<Self> {
        let by_output = |v: &Value, what: &str| -> Result<Vec<Value>> {
            Ok(match v {
                Value::Array(items) if items.len() == outputs.len() => items.clone(),
                Value::Array(items) => {
                    return Err(LstmError::invalid(
                        format!("compile_config.{what}"),
                        format!("{} entries for {} outputs", items.len(), outputs.len()),
                    ))
                }
                Value::Object(m) if !m.contains_key("class_name") => {
                    if let Some(k) = m.keys().find(|k| !outputs.contains(&k.as_str())) {
                        return Err(LstmError::invalid(
                            format!("compile_config.{what}"),
                            format!("names {k}, not an output ({})", outputs.join(", ")),
                        ));
                    }
                    outputs
                        .iter()
                        .map(|o| m.get(*o).cloned().unwrap_or(Value::Null))
                        .collect()
                }
                one => vec![one.clone(); outputs.len()],
            })
        };
        let loss = config
            .get("loss")
            .filter(|l| !l.is_null())
            .ok_or_else(|| LstmError::invalid("compile_config", "no loss"))?;
        let losses = by_output(loss, "loss")?
            .iter()
            .map(|l| match l {
                Value::Null => Ok(None),
                l => Loss::from_keras_object(l).map(Some),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Losses::new(losses);
        if let Some(w) = config.get("loss_weights").filter(|w| !w.is_null()) {
            let ws = by_output(w, "loss_weights")?
                .iter()
                .map(|v| match v {
                    Value::Null => Ok(1.0),
                    v => v.as_f64().ok_or_else(|| {
                        LstmError::invalid("compile_config.loss_weights", format!("{v}"))
                    }),
                })
                .collect::<Result<Vec<f64>>>()?;
            out = out.weights(&ws);
        }
        Ok(out)
    }

    /// The losses and loss weights a compiled `.keras` file (`keras_bytes`) was saved with
    /// ([`Losses::from_compile_config`] on its `config.json`'s `compile_config`).
    pub fn from_keras_file(keras_bytes: &[u8], outputs: &[&str]) -> Result<Self> {
        let (config, _) = super::optim_state::archive_parts(keras_bytes)?;
        let cc = config
            .get("compile_config")
            .filter(|c| !c.is_null())
            .ok_or_else(|| {
                LstmError::invalid(
                    "config.json",
                    "no compile_config: the model was saved without compile()",
                )
            })?;
        Self::from_compile_config(cc, outputs)
    }

    /// The `loss` and `loss_weights` entries of a `compile_config` (a list per output).
    fn to_compile_entries(&self) -> (Value, Value) {
        let loss = self
            .per_output
            .iter()
            .map(|l| l.map_or(Value::Null, |(l, _)| l.to_keras_object()))
            .collect();
        let weights = self
            .per_output
            .iter()
            .map(|l| json!(l.map_or(1.0, |(_, w)| w)))
            .collect();
        (Value::Array(loss), Value::Array(weights))
    }
}

impl Optimizer {
    /// The optimizer serialized as Keras 3 saves a `keras.optimizers` object (with a
    /// weight decay: `AdamW`, which is Keras's Adam with it).
    pub fn to_keras_object(&self) -> Value {
        let mut cfg = Map::new();
        let (class, name) = match self.rule {
            Rule::Sgd { momentum, nesterov } => {
                cfg.insert("momentum".into(), json!(momentum));
                cfg.insert("nesterov".into(), json!(nesterov));
                ("SGD", "SGD")
            }
            Rule::Adam {
                beta_1,
                beta_2,
                epsilon,
            } => {
                cfg.insert("beta_1".into(), json!(beta_1));
                cfg.insert("beta_2".into(), json!(beta_2));
                cfg.insert("epsilon".into(), json!(epsilon));
                cfg.insert("amsgrad".into(), json!(false));
                if self.weight_decay.is_some() {
                    ("AdamW", "adamw")
                } else {
                    ("Adam", "adam")
                }
            }
            Rule::RmsProp {
                rho,
                momentum,
                epsilon,
                centered,
            } => {
                cfg.insert("rho".into(), json!(rho));
                cfg.insert("momentum".into(), json!(momentum));
                cfg.insert("epsilon".into(), json!(epsilon));
                cfg.insert("centered".into(), json!(centered));
                ("RMSprop", "rmsprop")
            }
        };
        cfg.insert("name".into(), json!(name));
        cfg.insert("learning_rate".into(), json!(self.learning_rate));
        // (AdamW's own default decay is 0.004: written out, so none stays none)
        cfg.insert(
            "weight_decay".into(),
            match (class, self.weight_decay) {
                (_, Some(w)) => json!(w),
                _ => Value::Null,
            },
        );
        cfg.insert("clipnorm".into(), json!(self.clipnorm));
        cfg.insert("global_clipnorm".into(), json!(self.global_clipnorm));
        cfg.insert("clipvalue".into(), json!(self.clipvalue));
        cfg.insert("use_ema".into(), json!(false));
        json!({"module": "keras.optimizers", "class_name": class, "config": cfg,
               "registered_name": null})
    }
}

/// The `compile_config` for a model trained with `optimizer` on `losses`: `original`'s
/// (its metrics and other settings kept) with the optimizer and losses replaced, or a new
/// one.
pub(super) fn compile_config(
    original: Option<&Value>,
    optimizer: &Optimizer,
    losses: &Losses,
) -> Value {
    let mut cc = match original {
        // (an uncompiled model's file holds an empty one)
        Some(Value::Object(m)) if !m.is_empty() => m.clone(),
        _ => {
            let mut m = Map::new();
            for (k, v) in [
                ("metrics", Value::Null),
                ("weighted_metrics", Value::Null),
                ("run_eagerly", json!(false)),
                ("steps_per_execution", json!(1)),
                ("jit_compile", json!(false)),
            ] {
                m.insert(k.into(), v);
            }
            m
        }
    };
    let (loss, weights) = losses.to_compile_entries();
    cc.insert("optimizer".into(), optimizer.to_keras_object());
    cc.insert("loss".into(), loss);
    cc.insert("loss_weights".into(), weights);
    Value::Object(cc)
}
