//! Where a model's weights come from, as one interface for the model loader: a Keras 3
//! `.weights.h5` (one file, or shards named by a `.weights.json` index) whose layers keep
//! their variables under `layers/<key>/.../vars/<k>`, or the legacy HDF5 layout (Keras 2's
//! and Keras 3's `model.save("m.h5")`, Keras 2's `save_weights("w.h5")`), where each layer's
//! group lists its datasets in a `weight_names` attribute. Each layer's weights come back in
//! Keras's `get_weights()` order.

use crate::error::{LstmError, Result};
use crate::hdf5::H5File;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

/// The weights of a model: one or several (sharded) Keras 3 weight files.
pub(crate) struct WeightSource<'a> {
    /// (file name, file) in the index's order.
    files: Vec<(String, H5File<'a>)>,
    /// The legacy layout's group of layer groups (`model_weights` or the root), or None for
    /// Keras 3's.
    legacy_root: Option<String>,
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
        }
    }

    /// A file in the legacy layout: layer groups under `model_weights` (a whole-model file)
    /// or at the root (Keras 2's `save_weights`).
    pub(crate) fn legacy(file: H5File<'a>) -> Result<Self> {
        let root = if file.exists("model_weights")? {
            "model_weights".to_string()
        } else {
            String::new()
        };
        Ok(WeightSource {
            files: vec![(crate::hdf5::SOURCE.to_string(), file)],
            legacy_root: Some(root),
        })
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
                let group = if root.is_empty() {
                    name.to_string()
                } else {
                    format!("{root}/{name}")
                };
                let (file_name, file) = &self.files[0];
                if !file.exists(&group).map_err(|e| relabel(e, file_name))? {
                    return Ok(out);
                }
                let mut names = file.string_attribute(&group, "weight_names");
                if names.is_err() {
                    let mut parts = Vec::new();
                    while let Ok(p) =
                        file.string_attribute(&group, &format!("weight_names{}", parts.len()))
                    {
                        parts.push(p);
                    }
                    if !parts.is_empty() {
                        names = Ok(parts.concat());
                    }
                }
                for w in names.map_err(|e| relabel(e, file_name))? {
                    let path = format!("{group}/{w}");
                    let a = self
                        .dataset(&path)?
                        .ok_or_else(|| LstmError::MissingWeight {
                            name: format!("{path} (listed in {group}'s weight_names)"),
                        })?;
                    out.push(a);
                }
            }
        }
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
