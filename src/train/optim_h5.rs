//! The optimizer and losses an `.h5` model file was compiled with, its optimizer's state
//! included: the root attribute `training_config` (JSON: `loss`, `loss_weights`,
//! `optimizer_config`) and the group `optimizer_weights`, whose attribute `weight_names`
//! lists one dataset per optimizer variable. Three namings are read, each telling a slot's
//! kind by name:
//!
//! ```text
//! Keras 2, TF 2.11 and later:  iteration:0    Adam/m/<weight>:0    Adam/v/<weight>:0
//! Keras 2, legacy optimizers:  Adam/iter:0    Adam/<weight>/m:0    Adam/<weight>/v:0
//! Keras 3 (.h5 saving):        adam/iteration adam/learning_rate   adam/<weight>_momentum
//! ```
//!
//! Keras loads these variables by position (`optimizer.set_weights`): the k-th slot of a
//! kind belongs to the k-th trainable weight. Here each name's kind is read, and the k-th of
//! each kind goes to the k-th weight, whatever the version's order of kinds (interleaved
//! per weight, or by kind); the shapes are checked against the weights'. Keras 2 files hold
//! no learning-rate variable; the rate is `optimizer_config`'s.

use super::graph::Losses;
use super::optim::{Optimizer, Rule};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::hdf5::H5File;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

/// How a file names its optimizer variables (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// Keras 2's optimizers from TF 2.11: the kind second (`Adam/m/...`).
    Keras2,
    /// Keras 2's legacy optimizers: the kind last (`Adam/.../m`).
    Keras2Legacy,
    /// Keras 3: the kind a suffix of the last part (`adam/..._momentum`).
    Keras3,
}

/// The names each version gives the slot kind `kind` (the `Optimizer::slots` index) of
/// `rule`.
fn kind_names(rule: &Rule, kind: usize) -> &'static [&'static str] {
    match (rule, kind) {
        (Rule::Sgd { .. }, _) => &["m", "momentum"],
        (Rule::Adam { .. }, 0) => &["m", "momentum"],
        (Rule::Adam { .. }, _) => &["v", "velocity"],
        (Rule::RmsProp { .. }, 0) => &["rms", "velocity"],
        (Rule::RmsProp { .. }, 2) => &["momentum"],
        (Rule::RmsProp { .. }, _) => &["mg", "average_gradient"],
    }
}

/// The `training_config` attribute of an `.h5` model file, parsed.
fn training_config(file: &H5File<'_>) -> Result<Value> {
    let text = file
        .string_attribute("", "training_config")
        .ok()
        .and_then(|v| v.into_iter().next())
        .ok_or_else(|| {
            LstmError::invalid(
                "training_config",
                "the file has none: the model was saved without compile()",
            )
        })?;
    serde_json::from_str(&text).map_err(|e| LstmError::File {
        path: "training_config".into(),
        reason: e.to_string(),
    })
}

/// Keras 2's optimizer config in Keras 3's terms: `lr` (Keras 2.2 and earlier) read as
/// `learning_rate`; the legacy optimizers' learning-rate `decay` refused unless 0.
fn keras2_optimizer_config(cfg: &Value) -> Result<Value> {
    let mut cfg = cfg.clone();
    if let Some(map) = cfg.as_object_mut() {
        if !map.contains_key("learning_rate") {
            if let Some(lr) = map.remove("lr") {
                map.insert("learning_rate".into(), lr);
            }
        }
        if let Some(d) = map.get("decay").filter(|d| !d.is_null()) {
            if d.as_f64() != Some(0.0) {
                return Err(LstmError::unsupported(
                    "optimizer decay",
                    format!("{d} (the legacy optimizers' decay of the learning rate per step)"),
                ));
            }
        }
    }
    Ok(cfg)
}

impl Optimizer {
    /// The optimizer an `.h5` model file was saved with after `compile` and `fit`, its
    /// state included (Keras 2's `model.save("m.h5")` with either optimizer family, or
    /// Keras 3's `.h5` saving): `h5_bytes` the file, `weights` the model's trainable
    /// weights in Keras's order (`Functional::weights`, `Sequential::weights`). `fit` with
    /// it goes on where Keras's left off. A file without `training_config` (saved
    /// uncompiled) is an error saying so; one without `optimizer_weights` gives the
    /// compiled optimizer afresh.
    ///
    /// ```
    /// use lstm_wgpu::model::KerasModel;
    /// use lstm_wgpu::train::{Functional, Losses, Optimizer};
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/training/resume_k2_adam.h5");
    /// let bytes = std::fs::read(path).unwrap();
    /// let model = KerasModel::from_h5_bytes(&bytes).unwrap();
    /// let net = Functional::<f32>::from_model(&model).unwrap();
    /// let opt = Optimizer::from_h5_file(&bytes, &net.weights()).unwrap();
    /// assert_eq!(opt.iterations(), 9); // tf-keras fitted 9 steps before saving
    /// assert_eq!(opt.clipnorm, Some(1.0));
    /// let losses = Losses::from_h5_file(&bytes, &model.output_names()).unwrap();
    /// assert_eq!(losses.per_output.len(), 1);
    /// ```
    pub fn from_h5_file<T: Element>(h5_bytes: &[u8], weights: &[ArrayD<T>]) -> Result<Self> {
        let file = H5File::new(h5_bytes)?;
        let tc = training_config(&file)?;
        let oc = tc
            .get("optimizer_config")
            .filter(|o| !o.is_null())
            .ok_or_else(|| LstmError::invalid("training_config", "no optimizer_config"))?;
        let class = oc
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                LstmError::bad_config("training_config.optimizer_config", "a class_name")
            })?;
        // (Keras 2.11+ names its built-in optimizers "Custom>Adam" in this config)
        let class = class.strip_prefix("Custom>").unwrap_or(class);
        let cfg = keras2_optimizer_config(oc.get("config").unwrap_or(&Value::Null))?;
        let mut opt = Optimizer::from_keras(class, &cfg)?;
        if !file.exists("optimizer_weights")? {
            log::info!("the file holds no optimizer state: the optimizer starts afresh");
            return Ok(opt);
        }
        let names = file.string_attribute("optimizer_weights", "weight_names")?;
        let vars = keras3_order(&file, &opt, &names, weights.len())?;
        let shapes: Vec<Vec<usize>> = weights.iter().map(|w| w.shape().to_vec()).collect();
        opt.set_keras_variables(&vars, &shapes)?;
        Ok(opt)
    }
}

/// The variables `names` of the group `optimizer_weights` in Keras 3's order
/// (`Optimizer::set_keras_variables`'s): iterations, the learning rate (the optimizer's
/// own where the file has none), then the slots of `n` weights.
fn keras3_order(
    file: &H5File<'_>,
    opt: &Optimizer,
    names: &[String],
    n: usize,
) -> Result<Vec<ArrayD<f64>>> {
    let base = |name: &str| name.strip_suffix(":0").unwrap_or(name).to_string();
    let naming = if names.iter().any(|n| base(n) == "iteration") {
        Naming::Keras2
    } else if names.iter().any(|n| base(n).ends_with("/iter")) {
        Naming::Keras2Legacy
    } else if names.iter().any(|n| base(n).ends_with("/iteration")) {
        Naming::Keras3
    } else {
        return Err(LstmError::unsupported(
            "optimizer_weights naming",
            format!(
                "{:?} (no iteration variable of Keras 2 or 3's optimizers)",
                &names[..names.len().min(3)]
            ),
        ));
    };
    let kinds = super::optim_state::slot_kinds(&opt.rule);
    let mut iterations = None;
    let mut learning_rate = None;
    let mut slots: Vec<Vec<ArrayD<f64>>> = kinds.iter().map(|_| Vec::new()).collect();
    for name in names {
        let path = format!("optimizer_weights/{name}");
        let b = base(name);
        let parts: Vec<&str> = b.split('/').collect();
        let last = parts.last().copied().unwrap_or("");
        if b == "iteration" || (naming != Naming::Keras2 && (last == "iter" || last == "iteration"))
        {
            iterations = Some(file.integer(&path)? as f64);
            continue;
        }
        if naming == Naming::Keras3 && last == "learning_rate" {
            learning_rate = file.dataset(&path)?.values.first().map(|&v| f64::from(v));
            continue;
        }
        let kind = kinds.iter().position(|&k| {
            kind_names(&opt.rule, k).iter().any(|t| match naming {
                Naming::Keras2 => parts.len() >= 3 && parts[1] == *t,
                Naming::Keras2Legacy => parts.len() >= 3 && last == *t,
                Naming::Keras3 => last.ends_with(&format!("_{t}")),
            })
        });
        let Some(kind) = kind else {
            return Err(LstmError::unsupported(
                format!("optimizer variable {name}"),
                format!("not a slot of {:?}", opt.rule),
            ));
        };
        slots[kind].push(super::optim_state::variable(file, &path)?);
    }
    let iterations = iterations
        .ok_or_else(|| LstmError::invalid("optimizer_weights", "no iteration variable"))?;
    let mut vars = vec![
        ArrayD::from_elem(IxDyn(&[]), iterations),
        ArrayD::from_elem(IxDyn(&[]), learning_rate.unwrap_or(opt.learning_rate)),
    ];
    if slots.iter().all(Vec::is_empty) {
        // (compiled, saved before the optimizer was built)
        return Ok(vars);
    }
    for (s, &k) in slots.iter().zip(&kinds) {
        if s.len() != n {
            return Err(LstmError::invalid(
                "optimizer_weights",
                format!(
                    "{} slots named {:?} for {n} trainable weights (another model's state)",
                    s.len(),
                    kind_names(&opt.rule, k)
                ),
            ));
        }
    }
    for (kind, w) in super::optim_state::order(&opt.rule, n) {
        let at = kinds
            .iter()
            .position(|&k| k == kind)
            .expect("a kind of the rule");
        vars.push(slots[at][w].clone());
    }
    Ok(vars)
}

impl Losses {
    /// The losses and loss weights an `.h5` model file was compiled with
    /// ([`Losses::from_compile_config`] on its `training_config`; Keras 2's loss objects'
    /// `reduction: "auto"` is the batch mean `fit` uses).
    pub fn from_h5_file(h5_bytes: &[u8], outputs: &[&str]) -> Result<Self> {
        let file = H5File::new(h5_bytes)?;
        Self::from_compile_config(&training_config(&file)?, outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras2_configs_read_lr_and_refuse_decay() {
        let cfg = keras2_optimizer_config(&serde_json::json!({"lr": 0.05, "decay": 0.0})).unwrap();
        let o = Optimizer::from_keras("SGD", &cfg).unwrap();
        assert_eq!(o.learning_rate, 0.05);
        let err =
            keras2_optimizer_config(&serde_json::json!({"learning_rate": 0.1, "decay": 1e-3}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("decay"), "{err}");
    }
}
