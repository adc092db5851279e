//! An optimizer's state as Keras 3 saves it with a compiled model (`model.save` after
//! `compile`): the optimizer's config in `config.json`'s `compile_config`, its variables in
//! `model.weights.h5` under `optimizer/vars/0..N` (`optimizer.save_own_variables`):
//! `iterations` (int64), `learning_rate`, then the slots `build` adds for the trainable
//! weights in their order —
//!
//! ```text
//! SGD (momentum ≠ 0):  m_0 .. m_n
//! Adam, AdamW:         m_0 v_0 m_1 v_1 .. m_n v_n   (add_optimizer_variables interleaves)
//! RMSprop:             v_0 .. v_n, then m_0 .. m_n (momentum > 0), then ḡ_0 .. ḡ_n (centered)
//! ```
//!
//! A file of a compiled model that never trained holds `iterations` and `learning_rate`
//! alone (an optimizer not built yet).

use super::h5write::Node;
use super::optim::{Optimizer, Rule};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::hdf5::H5File;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

/// Where each of Keras's slot variables lives in ours: the slot index (`Optimizer::slots`'s
/// per-weight triple) of each kind, and whether Keras interleaves them per weight.
fn layout(rule: &Rule) -> (Vec<usize>, bool) {
    match *rule {
        Rule::Sgd { momentum, .. } if momentum != 0.0 => (vec![0], false),
        Rule::Sgd { .. } => (Vec::new(), false),
        Rule::Adam { .. } => (vec![0, 1], true),
        Rule::RmsProp {
            momentum, centered, ..
        } => {
            let mut kinds = vec![0];
            if momentum > 0.0 {
                kinds.push(2);
            }
            if centered {
                kinds.push(1);
            }
            (kinds, false)
        }
    }
}

/// The slot kinds of `rule` in Keras's order of kinds.
pub(super) fn slot_kinds(rule: &Rule) -> Vec<usize> {
    layout(rule).0
}

/// The (slot kind, weight) of each slot variable in Keras's order.
pub(super) fn order(rule: &Rule, weights: usize) -> Vec<(usize, usize)> {
    let (kinds, interleaved) = layout(rule);
    if interleaved {
        (0..weights)
            .flat_map(|w| kinds.iter().map(move |&k| (k, w)))
            .collect()
    } else {
        kinds
            .iter()
            .flat_map(|&k| (0..weights).map(move |w| (k, w)))
            .collect()
    }
}

impl Optimizer {
    /// The optimizer's variables in Keras's order (`optimizer.variables`: `iterations`,
    /// `learning_rate`, the slots) for trainable weights of the shapes `shapes` (a slot not
    /// made yet is zeros, as Keras's `build` makes them).
    ///
    /// ```
    /// use lstm_wgpu::train::Optimizer;
    /// let mut opt = Optimizer::adam(0.01);
    /// let mut w = vec![ndarray::arr1(&[1.0f64, 2.0]).into_dyn()];
    /// opt.apply(&mut w, &[ndarray::arr1(&[0.5, -0.5]).into_dyn()]).unwrap();
    /// let vars = opt.keras_variables(&[vec![2]]).unwrap();
    /// // iterations, learning_rate, the momentum and the velocity of the one weight
    /// assert_eq!(vars.len(), 4);
    /// assert_eq!(vars[0].first(), Some(&1.0));
    /// // (v = (g² - 0)·(1 - β2))
    /// assert!(vars[3].iter().all(|&v| (v - 0.25 * 0.001).abs() < 1e-15));
    /// ```
    pub fn keras_variables(&self, shapes: &[Vec<usize>]) -> Result<Vec<ArrayD<f64>>> {
        let slots = self.slots();
        if !slots.is_empty() && slots.len() != shapes.len() {
            return Err(LstmError::invalid(
                "shapes",
                format!(
                    "{} weights; the optimizer has stepped {}",
                    shapes.len(),
                    slots.len()
                ),
            ));
        }
        let mut out = vec![
            ArrayD::from_elem(IxDyn(&[]), self.iterations() as f64),
            ArrayD::from_elem(IxDyn(&[]), self.learning_rate),
        ];
        for (kind, w) in order(&self.rule, shapes.len()) {
            let slot = slots.get(w).and_then(|s| s[kind].as_ref());
            out.push(match slot {
                Some(s) if s.shape() == shapes[w].as_slice() => s.clone(),
                Some(s) => {
                    return Err(LstmError::shape(
                        format!("shapes[{w}]"),
                        s.shape(),
                        &shapes[w],
                    ))
                }
                None => ArrayD::zeros(IxDyn(&shapes[w])),
            });
        }
        Ok(out)
    }

    /// Sets the state from Keras's variables (the order of
    /// [`Optimizer::keras_variables`]; `iterations` and `learning_rate` alone for an
    /// optimizer Keras had not built) for trainable weights of the shapes `shapes`. The
    /// saved learning rate replaces this one, as Keras's `load_own_variables` assigns it.
    pub fn set_keras_variables(
        &mut self,
        vars: &[ArrayD<f64>],
        shapes: &[Vec<usize>],
    ) -> Result<()> {
        let order = order(&self.rule, shapes.len());
        if vars.len() != 2 && vars.len() != 2 + order.len() {
            return Err(LstmError::invalid(
                "optimizer variables",
                format!(
                    "{} saved; this optimizer ({:?}) has 2 + {} for {} trainable weights \
                     (another optimizer's state, or another model's)",
                    vars.len(),
                    self.rule,
                    order.len(),
                    shapes.len()
                ),
            ));
        }
        let scalar = |k: usize, what: &str| -> Result<f64> {
            match vars[k].iter().next() {
                Some(&v) if vars[k].len() == 1 && v.is_finite() => Ok(v),
                _ => Err(LstmError::invalid(
                    format!("optimizer variable {k} ({what})"),
                    format!("not one finite number: shape {:?}", vars[k].shape()),
                )),
            }
        };
        let iterations = scalar(0, "iterations")?;
        if iterations < 0.0 || iterations.fract() != 0.0 {
            return Err(LstmError::invalid(
                "optimizer variable 0 (iterations)",
                format!("{iterations} is not a step count"),
            ));
        }
        let learning_rate = scalar(1, "learning_rate")?;
        let mut slots: Vec<[Option<ArrayD<f64>>; 3]> = Vec::new();
        if vars.len() > 2 {
            slots = shapes.iter().map(|_| [None, None, None]).collect();
            for (v, &(kind, w)) in vars[2..].iter().zip(&order) {
                if v.shape() != shapes[w].as_slice() {
                    return Err(LstmError::shape(
                        format!("optimizer slot of weight {w}"),
                        &shapes[w],
                        v.shape(),
                    ));
                }
                slots[w][kind] = Some(v.clone());
            }
        }
        self.learning_rate = learning_rate;
        self.set_slots(iterations as u64, slots);
        Ok(())
    }

    /// The optimizer a compiled Keras 3 model was saved with, its state included:
    /// `keras_bytes` a `.keras` file (`model.save` after `compile` and `fit`), `weights`
    /// the model's trainable weights in Keras's order (`Functional::weights`,
    /// `Sequential::weights`). `fit` with it goes on where Keras's left off.
    /// A file without a `compile_config` (a model saved uncompiled) is an error saying so.
    pub fn from_keras_file<T: Element>(keras_bytes: &[u8], weights: &[ArrayD<T>]) -> Result<Self> {
        let (config, h5) = archive_parts(keras_bytes)?;
        let optimizer = config
            .get("compile_config")
            .filter(|c| !c.is_null())
            .and_then(|c| c.get("optimizer"))
            .filter(|o| !o.is_null())
            .ok_or_else(|| {
                LstmError::invalid(
                    "config.json",
                    "no compile_config.optimizer: the model was saved without compile()",
                )
            })?;
        let mut opt = match optimizer {
            Value::String(name) => Optimizer::from_keras(name, &Value::Null)?,
            o => {
                let class = o.get("class_name").and_then(Value::as_str).ok_or_else(|| {
                    LstmError::bad_config("compile_config.optimizer", "a class_name")
                })?;
                Optimizer::from_keras(class, o.get("config").unwrap_or(&Value::Null))?
            }
        };
        let file = H5File::new(h5)?;
        let shapes: Vec<Vec<usize>> = weights.iter().map(|w| w.shape().to_vec()).collect();
        if !file.exists("optimizer/vars")? {
            log::info!("the file holds no optimizer state: the optimizer starts afresh");
            return Ok(opt);
        }
        let mut vars = Vec::new();
        for k in 0.. {
            let path = format!("optimizer/vars/{k}");
            if !file.exists(&path)? {
                break;
            }
            vars.push(if k == 0 {
                let shape = file.dataset(&path)?.shape;
                ArrayD::from_elem(IxDyn(&shape), file.integer(&path)? as f64)
            } else {
                variable(&file, &path)?
            });
        }
        opt.set_keras_variables(&vars, &shapes)?;
        Ok(opt)
    }
}

/// The optimizer variable at `path` of `file`, in f64.
pub(super) fn variable(file: &H5File<'_>, path: &str) -> Result<ArrayD<f64>> {
    let d = file.dataset(path)?;
    ArrayD::from_shape_vec(
        IxDyn(&d.shape),
        d.values.iter().map(|&v| f64::from(v)).collect(),
    )
    .map_err(|_| LstmError::invalid(path, "the values do not fill the shape"))
}

/// A `.keras` archive's `config.json` (parsed) and `model.weights.h5` bytes.
pub(super) fn archive_parts(bytes: &[u8]) -> Result<(Value, &[u8])> {
    let members = crate::archive::members(bytes)?;
    let member = |n: &str| crate::archive::member(&members, n);
    let config = serde_json::from_slice(member("config.json")?).map_err(|e| LstmError::File {
        path: "config.json".into(),
        reason: e.to_string(),
    })?;
    Ok((config, member("model.weights.h5")?))
}

/// Writes `vars` ([`Optimizer::keras_variables`]) under `optimizer/vars` of `root`, the
/// slots in the weights' type (`elem` 4 or 8), `iterations` as int64.
pub(super) fn put_variables(root: &mut Node, vars: &[ArrayD<f64>], elem: usize) {
    let group = root.path("optimizer/vars");
    for (k, v) in vars.iter().enumerate() {
        let values: Vec<f64> = v.iter().copied().collect();
        if k == 0 {
            group.dataset_i64(&k.to_string(), &values);
        } else if k == 1 {
            // (Keras's learning_rate variable is float32 whatever the weights' type)
            group.dataset(&k.to_string(), v.shape(), &values, 4);
        } else {
            group.dataset(&k.to_string(), v.shape(), &values, elem);
        }
    }
}
