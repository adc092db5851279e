//! Where a model's weights come from, as one interface for the model loader: a Keras 3
//! `.weights.h5` (one file, or shards named by a `.weights.json` index) whose layers keep
//! their variables under `layers/<key>/.../vars/<k>`, or the legacy HDF5 layout (Keras 2's
//! and Keras 3's `model.save("m.h5")`, Keras 2's `save_weights("w.h5")`), where each layer's
//! group lists its datasets in a `weight_names` attribute. Each layer's weights come back in
//! Keras's `get_weights()` order.

use crate::error::{LstmError, Result};
use crate::hdf5::H5File;
use crate::weight_match::{FileLayer, Plan, WeightMatch};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

/// The weights of a model: one or several (sharded) Keras 3 weight files.
pub(crate) struct WeightSource<'a> {
    /// (file name, file) in the index's order.
    files: Vec<(String, H5File<'a>)>,
    /// The legacy layout's group of layer groups (`model_weights` or the root), or None for
    /// Keras 3's.
    legacy_root: Option<String>,
    /// Legacy layout: which file group gives each model layer its weights (Keras's
    /// `load_weights` rules), and how they are converted.
    plan: Option<Plan>,
}

/// The shard files a `.weights.json` index names, in first-mention order.
pub(crate) fn shard_names(index: &[u8]) -> Result<Vec<String>> {
    let bad = |reason: String| LstmError::File {
        path: "sharded weights index".into(),
        reason,
    };
    let v: Value = serde_json::from_slice(index).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for (var, files) in map {
        let files = files
            .as_array()
            .ok_or_else(|| bad(format!("weight_map[{var:?}] is not a list of files")))?;
        for f in files {
            let f = f
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[{var:?}] has a non-string entry")))?;
            if f.contains('/') || f.contains('\\') || f == ".." {
                return Err(bad(format!(
                    "shard {f:?} is not a file name beside the index"
                )));
            }
            if !names.iter().any(|n| n == f) {
                names.push(f.to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(bad("the weight_map names no shard".into()));
    }
    Ok(names)
}

impl<'a> WeightSource<'a> {
    /// One Keras 3 weight file.
    pub(crate) fn single(file: H5File<'a>) -> Self {
        WeightSource {
            files: vec![(crate::hdf5::SOURCE.to_string(), file)],
            legacy_root: None,
            plan: None,
        }
    }

    /// A file in the legacy layout: layer groups under `model_weights` (a whole-model file)
    /// or at the root (Keras 2's `save_weights`), matched to the layers of the model
    /// `config` by `mode`.
    pub(crate) fn legacy(
        file: H5File<'a>,
        config: &Value,
        mode: WeightMatch,
        custom: &crate::custom::CustomObjects,
    ) -> Result<Self> {
        let root = if file.exists("model_weights")? {
            "model_weights".to_string()
        } else {
            String::new()
        };
        let version = file
            .string_attribute(&root, "keras_version")
            .ok()
            .or_else(|| file.string_attribute("", "keras_version").ok())
            .and_then(|v| v.into_iter().next())
            // (Keras reads a file without the attribute as Keras 1's)
            .unwrap_or_else(|| "1".into());
        let mut layers = Vec::new();
        for name in chunked_attribute(&file, &root, "layer_names")? {
            let group = join(&root, &name);
            let weights = if file.exists(&group)? {
                chunked_attribute(&file, &group, "weight_names")?.len()
            } else {
                0
            };
            layers.push(FileLayer { name, weights });
        }
        let plan = Plan::new(config, &layers, mode, &version, custom)?;
        Ok(WeightSource {
            files: vec![(crate::hdf5::SOURCE.to_string(), file)],
            legacy_root: Some(root),
            plan: Some(plan),
        })
    }

    /// How errors about the weights of model layer `name` name it: the file's layer it was
    /// matched to, when that has another name.
    pub(crate) fn in_context(&self, name: &str, e: LstmError) -> LstmError {
        match &self.plan {
            Some(p) => p.shape_error(name, e),
            None => e,
        }
    }

    /// Whether a Keras weight file is in the legacy layout (a `layer_names` attribute at its
    /// root or on `model_weights`), as Keras 2 and `model.save("m.h5")` write it.
    /// Whether this source reads a Keras 2 (legacy HDF5) layout.
    pub(crate) fn is_legacy_source(&self) -> bool {
        self.legacy_root.is_some()
    }

    pub(crate) fn is_legacy(file: &H5File<'a>) -> bool {
        file.string_attribute("", "layer_names").is_ok()
            || file
                .string_attribute("model_weights", "layer_names")
                .is_ok()
    }

    /// Shards `(name, bytes)`; a layer's variables may be in any of them.
    pub(crate) fn shards(shards: &'a [(String, Vec<u8>)]) -> Result<Self> {
        let files = shards
            .iter()
            .map(|(name, bytes)| {
                H5File::new(bytes)
                    .map(|f| (name.clone(), f))
                    .map_err(|e| relabel(e, name))
            })
            .collect::<Result<_>>()?;
        Ok(WeightSource {
            files,
            legacy_root: None,
            plan: None,
        })
    }

    /// The names in group `path` across the files.
    fn list(&self, path: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = Vec::new();
        for (name, f) in &self.files {
            if f.exists(path).map_err(|e| relabel(e, name))? {
                for n in f.list(path).map_err(|e| relabel(e, name))? {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        Ok(names)
    }

    /// The dataset at `path` from the first file holding it, or None.
    fn dataset(&self, path: &str) -> Result<Option<ArrayD<f32>>> {
        for (name, f) in &self.files {
            if f.exists(path).map_err(|e| relabel(e, name))? {
                let d = f.dataset(path).map_err(|e| relabel(e, name))?;
                let shape = d.shape.clone();
                return ArrayD::from_shape_vec(IxDyn(&d.shape), d.values)
                    .map(Some)
                    .map_err(|_| LstmError::shape(path, &shape, &[]));
            }
        }
        Ok(None)
    }

    /// The weights of the layer named `name` whose Keras 3 group key is `key` (`lstm`,
    /// `dense_1`, ...), in `get_weights()` order. Keras 3: its own `vars/0, 1, ...`, then those
    /// of its sublayers (`cell`, a Bidirectional layer's `forward_layer` then
    /// `backward_layer`, then any other in name order). Legacy: the datasets its
    /// `weight_names` attribute lists (split into `weight_names0`, `1`, ... when long).
    pub(crate) fn layer(&self, key: &str, name: &str) -> Result<Vec<ArrayD<f32>>> {
        let mut out = Vec::new();
        match &self.legacy_root {
            None => self.collect(&format!("layers/{key}"), &mut out)?,
            Some(root) => {
                let group = match &self.plan {
                    Some(plan) => match plan.group(name)? {
                        Some(g) => g.to_string(),
                        None => return Ok(out),
                    },
                    None => name.to_string(),
                };
                let group = join(root, &group);
                let (file_name, file) = &self.files[0];
                if !file.exists(&group).map_err(|e| relabel(e, file_name))? {
                    return Ok(out);
                }
                let names = chunked_attribute(file, &group, "weight_names")
                    .map_err(|e| relabel(e, file_name))?;
                for w in names {
                    let path = format!("{group}/{w}");
                    let a = self
                        .dataset(&path)?
                        .ok_or_else(|| LstmError::MissingWeight {
                            name: format!("{path} (listed in {group}'s weight_names)"),
                        })?;
                    out.push(a);
                }
                if let Some(plan) = &self.plan {
                    return plan.finish(name, out);
                }
            }
        }
        Ok(out)
    }

    /// The variables under the Keras 3 group `path` (its `vars/0, 1, ...`, then its
    /// sublayers'), for a layer whose parts are read one by one (`StackedRNNCells`).
    pub(crate) fn group(&self, path: &str) -> Result<Vec<ArrayD<f32>>> {
        let mut out = Vec::new();
        self.collect(path, &mut out)?;
        Ok(out)
    }

    fn collect(&self, path: &str, out: &mut Vec<ArrayD<f32>>) -> Result<()> {
        let children = self.list(path)?;
        if children.iter().any(|c| c == "vars") {
            for k in 0.. {
                match self.dataset(&format!("{path}/vars/{k}"))? {
                    Some(a) => out.push(a),
                    None => break,
                }
            }
        }
        let order = |c: &String| match c.as_str() {
            "cell" => 0,
            "forward_layer" => 1,
            "backward_layer" => 2,
            _ => 3,
        };
        let mut subs: Vec<&String> = children.iter().filter(|c| *c != "vars").collect();
        subs.sort_by_key(|c| (order(c), (*c).clone()));
        for sub in subs {
            self.collect(&format!("{path}/{sub}"), out)?;
        }
        Ok(())
    }
}

/// `root/name`, or `name` at the root.
fn join(root: &str, name: &str) -> String {
    if root.is_empty() {
        name.to_string()
    } else {
        format!("{root}/{name}")
    }
}

/// A list attribute of the legacy layout, which Keras splits into `NAME0`, `NAME1`, ... when
/// it is too long for one object header (`load_attributes_from_hdf5_group`); empty when
/// absent.
fn chunked_attribute(file: &H5File<'_>, group: &str, name: &str) -> Result<Vec<String>> {
    if let Ok(v) = file.string_attribute(group, name) {
        return Ok(v);
    }
    let mut parts = Vec::new();
    while let Ok(p) = file.string_attribute(group, &format!("{name}{}", parts.len())) {
        parts.push(p);
    }
    Ok(parts.concat())
}

/// A format error about the in-memory weights, naming the shard it came from.
fn relabel(e: LstmError, name: &str) -> LstmError {
    match e {
        LstmError::File { path, reason } if path == crate::hdf5::SOURCE => LstmError::File {
            path: name.to_string(),
            reason,
        },
        other => other,
    }
}
