//! Keras models saved as `.keras` files (or a config plus `.weights.h5`), made of
//! `InputLayer`, `Masking`, `LSTM`, `GRU`, `SimpleRNN`, `Bidirectional` around them and
//! `Dense`, as `Sequential` models or functional models that are a chain; run on the CPU path.

use crate::activation::Activation;
use crate::archive;
use crate::custom::CustomObjects;
use crate::error::{LstmError, Result};
pub use crate::graph::InputSpec;
use crate::graph::{Graph, Value as GraphValue};
use crate::hdf5::H5File;
use crate::legacy_config::prepare;
use crate::network::Network;
pub use crate::weight_match::WeightMatch;
use crate::weight_source::{shard_names, WeightSource};
use chain::Chain;

mod chain;
mod input;
pub use input::ModelInput;
use ndarray::{Array1, Array2, ArrayD, ArrayView3};
use serde_json::Value;
use std::path::Path;

/// A Dense layer's activation: any [`Activation`], or softmax over the last axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DenseActivation {
    /// An element-wise activation.
    Elementwise(Activation),
    /// `exp(x - max) / sum` over the last axis.
    Softmax,
}

/// One layer of a loaded model.
// A model holds a handful of layers for its lifetime; the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ModelLayer {
    /// `Masking(mask_value)`: masks the timesteps whose features all equal `mask_value`.
    Masking {
        /// The value that marks padding.
        mask_value: f32,
    },
    /// `Embedding`: token ids to the rows of `table` (`[vocab, dim]`); with `mask_zero`
    /// id 0 is masked.
    Embedding {
        /// `[vocab, dim]`.
        table: Array2<f32>,
        /// Whether id 0 is padding.
        mask_zero: bool,
    },
    /// An `LSTM` or `Bidirectional(LSTM)`.
    Recurrent(Network<f32>),
    /// `Dense`: `activation(x · kernel + bias)` on the last axis (per timestep on 3-D input).
    Dense {
        /// `[in, units]`.
        kernel: Array2<f32>,
        /// `[units]`.
        bias: Option<Array1<f32>>,
        /// The activation.
        activation: DenseActivation,
    },
    /// Another single-input layer of the chain that this view does not interpret (one of
    /// [`crate::train::layers::CLASSES`]: pooling, `RepeatVector`, `Flatten`, `Reshape`,
    /// `Permute`, `Activation`,
    /// `LayerNormalization`, `BatchNormalization`, `Conv1D`): its class, its config and its
    /// weights in
    /// `get_weights()` order.
    Other {
        /// The Keras class.
        class: String,
        /// The layer's `config` object.
        config: serde_json::Value,
        /// Its weights.
        weights: Vec<ndarray::ArrayD<f32>>,
    },
}

/// One layer of [`KerasModel::summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSummary {
    /// The layer's name.
    pub name: String,
    /// Its Keras class.
    pub class: String,
    /// The shape of each output of each call (`None`: the batch axis and axes that follow
    /// the model's free input axes).
    pub output_shapes: Vec<Vec<Option<usize>>>,
    /// Its parameters (weight values).
    pub params: usize,
    /// Whether the GPU path runs it (`GpuNetwork::from_model`).
    pub gpu: bool,
}

/// A Keras model loaded from a `.keras` file.
///
/// ```no_run
/// use lstm_wgpu::model::KerasModel;
/// let mut model = KerasModel::load("model.keras".as_ref())?;
/// let x = ndarray::Array3::<f32>::zeros((2, 10, 3));
/// let outputs = model.predict(x.view())?; // in the model's output order
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
#[derive(Debug, Clone)]
pub struct KerasModel {
    name: String,
    /// The model as a chain of layers, when it is one (the `layers()` view), or why not.
    chain: std::result::Result<Chain, String>,
    /// Every layer with its weights when the model is not a chain (what training builds a
    /// functional graph on), or why they could not be read.
    every: std::result::Result<Vec<(String, ModelLayer)>, String>,
    /// The model as a graph (what `predict` runs).
    graph: Graph,
    /// The model's config (`config.json`'s object, as prepared for loading).
    config: Value,
}

fn bad_model(reason: impl Into<String>) -> LstmError {
    LstmError::File {
        path: "Keras model".into(),
        reason: reason.into(),
    }
}

/// `e` naming the file its bytes came from: a [`LstmError::File`] about bytes given in memory
/// (whose `path` says what they are) gets `file(that description)`; other errors unchanged.
fn in_file<'p>(e: LstmError, file: impl Fn(&str) -> &'p Path) -> LstmError {
    match e {
        LstmError::File { path, reason } => LstmError::File {
            path: file(&path).display().to_string(),
            reason,
        },
        other => other,
    }
}

/// A Keras 3 weights file matches its layers by class and position only: by name is an
/// error saying so (Keras 3's `load_weights` refuses `by_name` for these files too).
fn by_structure(matching: WeightMatch, what: &str) -> Result<()> {
    match matching {
        WeightMatch::Order => Ok(()),
        WeightMatch::ByName { .. } => Err(LstmError::WeightMismatch {
            layer: String::new(),
            reason: format!(
                "{what} stores no layer names (its groups are named by class and position,                  layers/lstm, layers/lstm_1, ...): Keras loads it by position,                  WeightMatch::Order; matching by name needs a legacy HDF5 file"
            ),
        }),
    }
}

/// How a model is read ([`KerasModel::load_with`],
/// [`KerasModel::load_weights_with_options`]): how a weights file's layers are matched to
/// the model's, and the application's own layer classes (Keras's `custom_objects`).
///
/// ```
/// use lstm_wgpu::custom::CustomObjects;
/// use lstm_wgpu::model::{LoadOptions, WeightMatch};
/// let options = LoadOptions::new()
///     .weight_match(WeightMatch::ByName { skip_mismatch: false })
///     .custom(CustomObjects::new());
/// assert_eq!(options.weight_match, WeightMatch::ByName { skip_mismatch: false });
/// ```
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// How a weights file's layers are matched to the model's (default: Keras's, by order).
    pub weight_match: WeightMatch,
    /// The application's layer classes by Keras class name.
    pub custom: CustomObjects,
}

impl LoadOptions {
    /// Keras's defaults, no custom classes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`LoadOptions::weight_match`].
    pub fn weight_match(mut self, m: WeightMatch) -> Self {
        self.weight_match = m;
        self
    }

    /// Sets [`LoadOptions::custom`].
    pub fn custom(mut self, custom: CustomObjects) -> Self {
        self.custom = custom;
        self
    }
}

impl KerasModel {
    /// Loads a `.keras` file, or a whole-model HDF5 file (`model.save("m.h5")` of Keras 2 or
    /// Keras 3's legacy writer: the `model_config` attribute and the `model_weights` groups).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// [`KerasModel::load`] with `options`: the application's layer classes (a model using a
    /// class neither this crate nor `options.custom` knows is an error naming it), and the
    /// weight matching of a whole-model HDF5 file (Keras's `load_model` matches by order).
    ///
    /// ```no_run
    /// use lstm_wgpu::custom::{CustomLayer, CustomObjects, LayerInput, LayerOutput};
    /// use lstm_wgpu::model::{KerasModel, LoadOptions};
    ///
    /// #[derive(Debug)]
    /// struct Identity;
    /// impl CustomLayer for Identity {
    ///     fn call(&mut self, inputs: &[LayerInput<'_>]) -> lstm_wgpu::Result<Vec<LayerOutput>> {
    ///         let x = &inputs[0];
    ///         Ok(vec![LayerOutput::with_mask(x.data.to_owned(), x.mask.map(|m| m.to_owned()))])
    ///     }
    /// }
    /// let custom = CustomObjects::new().register("CTCLayer", |_| Ok(Box::new(Identity)));
    /// let model = KerasModel::load_with("ocr.keras".as_ref(), &LoadOptions::new().custom(custom))?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| LstmError::io(path, e))?;
        if bytes.starts_with(b"\x89HDF\r\n\x1a\n") {
            return Self::h5_bytes(&bytes, options).map_err(|e| in_file(e, |_| path));
        }
        Self::keras_bytes(&bytes, options).map_err(|e| in_file(e, |_| path))
    }

    /// Loads a whole-model HDF5 file held in memory (see [`KerasModel::load`]). A model saved
    /// by Keras 2 (`keras_version` 2.x) gets Keras 2's semantics where they differ: its
    /// `"hard_sigmoid"` is `clip(0.2x + 0.5, 0, 1)` (`hard_sigmoid_keras2`).
    pub fn from_h5_bytes(bytes: &[u8]) -> Result<Self> {
        Self::h5_bytes(bytes, &LoadOptions::default())
    }

    fn h5_bytes(bytes: &[u8], options: &LoadOptions) -> Result<Self> {
        let h5 = H5File::new(bytes)?;
        let first = |name: &str| -> Result<String> {
            h5.string_attribute("", name)?
                .into_iter()
                .next()
                .ok_or_else(|| bad_model(format!("the {name} attribute is empty")))
        };
        let text = first("model_config").map_err(|e| match e {
            LstmError::File { reason, .. } => bad_model(format!(
                "no model_config attribute ({reason}): a weights-only file needs \
                 KerasModel::load_weights with the configuration"
            )),
            other => other,
        })?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| bad_model(format!("model_config: {e}")))?;
        let config = prepare(&config, Some(&h5));
        // (load_model reads the weights by order, as load_weights does)
        let src = WeightSource::legacy(h5, &config, options.weight_match, &options.custom)?;
        Self::build(&config, &src, options)
    }

    /// Loads weights saved with `model.save_weights("NAME.weights.h5")` (or Keras 2's
    /// `save_weights("NAME.h5")`), or sharded with
    /// `save_weights("NAME.weights.json", max_shard_size=...)` (the index: every shard it names
    /// is read from beside it), with the model's configuration taken from `config`: a `.keras`
    /// file (its `config.json`) or a JSON file holding the serialized model (`model.to_json()`
    /// of Keras 3 or of tf-keras/Keras 2, or a `config.json`). The file's layers are matched
    /// to the model's as Keras's `model.load_weights` does by default
    /// ([`WeightMatch::Order`]); [`KerasModel::load_weights_with`] chooses.
    pub fn load_weights(config: &Path, weights: &Path) -> Result<Self> {
        Self::load_weights_with(config, weights, WeightMatch::default())
    }

    /// [`KerasModel::load_weights`] with the rule that matches the file's layers to the
    /// model's: by order (Keras's default) or by name (`load_weights(by_name=True,
    /// skip_mismatch=...)`, for a legacy HDF5 file: Keras 2's `save_weights`, or a
    /// whole-model `.h5`). A file holding more layers than the model loads by name; the
    /// errors name the layer and the expected and found weight counts or shapes.
    ///
    /// ```no_run
    /// use lstm_wgpu::model::{KerasModel, WeightMatch};
    /// // a model rebuilt in Python (layers lstm_3, lstm_4) and the weights a package ships
    /// // (Keras 2.2 save_weights, layers lstm_1, lstm_2): Keras's default matches by order
    /// let model = KerasModel::load_weights("model.json".as_ref(), "weights.h5".as_ref())?;
    /// // a file with more layers than the model: by name, as load_weights(by_name=True)
    /// let by_name = WeightMatch::ByName { skip_mismatch: false };
    /// let model =
    ///     KerasModel::load_weights_with("model.json".as_ref(), "full.h5".as_ref(), by_name)?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn load_weights_with(config: &Path, weights: &Path, matching: WeightMatch) -> Result<Self> {
        Self::load_weights_with_options(config, weights, &LoadOptions::new().weight_match(matching))
    }

    /// [`KerasModel::load_weights`] with `options` (weight matching, the application's layer
    /// classes).
    pub fn load_weights_with_options(
        config: &Path,
        weights: &Path,
        options: &LoadOptions,
    ) -> Result<Self> {
        let matching = options.weight_match;
        let read = |p: &Path| std::fs::read(p).map_err(|e| LstmError::io(p, e));
        let config_bytes = read(config)?;
        let json: Value = if config.extension().is_some_and(|e| e == "keras") {
            let members = archive::members(&config_bytes).map_err(|e| in_file(e, |_| config))?;
            let member = members
                .iter()
                .find(|(n, _)| n == "config.json")
                .ok_or_else(|| bad_model(format!("no config.json in {}", config.display())))?;
            serde_json::from_slice(member.1)
        } else {
            serde_json::from_slice(&config_bytes)
        }
        .map_err(|e| LstmError::File {
            path: config.display().to_string(),
            reason: e.to_string(),
        })?;
        if weights.extension().is_some_and(|e| e == "json") {
            by_structure(matching, "a sharded .weights.json index")?;
            let index = read(weights)?;
            let names = shard_names(&index).map_err(|e| in_file(e, |_| weights))?;
            let dir = weights.parent().unwrap_or(Path::new("."));
            let shards = names
                .into_iter()
                .map(|n| Ok((dir.join(&n).display().to_string(), read(&dir.join(&n))?)))
                .collect::<Result<Vec<_>>>()?;
            // (shard errors name their shard already; the model's name the config)
            return Self::config_and_shards(&json, &shards, options).map_err(|e| match e {
                LstmError::File { path, reason } if path == "Keras model" => LstmError::File {
                    path: config.display().to_string(),
                    reason,
                },
                other => other,
            });
        }
        // Errors of the bytes say what they came from; name the file instead.
        Self::config_and_weights(&json, &read(weights)?, options).map_err(|e| {
            in_file(e, |what| {
                if what == crate::hdf5::SOURCE {
                    weights
                } else {
                    config
                }
            })
        })
    }

    /// Loads a `.keras` archive held in memory.
    pub fn from_keras_bytes(bytes: &[u8]) -> Result<Self> {
        Self::keras_bytes(bytes, &LoadOptions::default())
    }

    fn keras_bytes(bytes: &[u8], options: &LoadOptions) -> Result<Self> {
        let members = archive::members(bytes)?;
        let member = |name: &str| {
            members
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| *b)
                .ok_or_else(|| bad_model(format!("no {name} in the archive")))
        };
        let config: Value = serde_json::from_slice(member("config.json")?)
            .map_err(|e| bad_model(format!("config.json: {e}")))?;
        // (a .keras archive's weights are Keras 3's, matched by structure)
        Self::config_and_weights(&config, member("model.weights.h5")?, options)
    }

    /// Builds a model from its `config.json` (the serialized model) and the bytes of its
    /// weights file (`model.weights.h5` or a `.weights.h5` saved with `save_weights`, or a
    /// legacy HDF5 weights file), the layers matched as Keras's default does.
    pub fn from_config_and_weights(config: &Value, weights_h5: &[u8]) -> Result<Self> {
        Self::from_config_and_weights_with(config, weights_h5, WeightMatch::default())
    }

    /// [`KerasModel::from_config_and_weights`] with the layers matched by `matching` (see
    /// [`KerasModel::load_weights_with`]).
    pub fn from_config_and_weights_with(
        config: &Value,
        weights_h5: &[u8],
        matching: WeightMatch,
    ) -> Result<Self> {
        Self::config_and_weights(
            config,
            weights_h5,
            &LoadOptions::new().weight_match(matching),
        )
    }

    fn config_and_weights(
        config: &Value,
        weights_h5: &[u8],
        options: &LoadOptions,
    ) -> Result<Self> {
        let matching = options.weight_match;
        let file = H5File::new(weights_h5)?;
        if WeightSource::is_legacy(&file) {
            // Keras 2's save_weights("w.h5"): its semantics where they differ.
            let config = prepare(config, Some(&file));
            let src = WeightSource::legacy(file, &config, matching, &options.custom)?;
            return Self::build(&config, &src, options);
        }
        by_structure(matching, "a Keras 3 .weights.h5 file")?;
        let config = prepare(config, None);
        Self::build(&config, &WeightSource::single(file), options)
    }

    /// Builds a model from its `config.json` and the shards of sharded weights (`(file name,
    /// bytes)` of each file a `.weights.json` index names; see [`KerasModel::load_weights`]).
    pub fn from_config_and_shards(config: &Value, shards: &[(String, Vec<u8>)]) -> Result<Self> {
        Self::config_and_shards(config, shards, &LoadOptions::default())
    }

    fn config_and_shards(
        config: &Value,
        shards: &[(String, Vec<u8>)],
        options: &LoadOptions,
    ) -> Result<Self> {
        let config = prepare(config, None);
        Self::build(&config, &WeightSource::shards(shards)?, options)
    }

    fn build(config: &Value, h5: &WeightSource, options: &LoadOptions) -> Result<Self> {
        let graph = Graph::from_config(config, h5, &options.custom)?;
        let name = config
            .get("config")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("model")
            .to_string();
        let chain = chain::build(config, h5).map_err(|e| e.to_string());
        let every = match chain {
            Ok(_) => Ok(Vec::new()),
            Err(_) => chain::every_layer(config, h5).map_err(|e| e.to_string()),
        };
        Ok(KerasModel {
            name,
            chain,
            every,
            graph,
            config: config.clone(),
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's graph (what the GPU path compiles).
    pub(crate) fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Which outputs of the last layer the model returns, in order (a chain model; empty
    /// for other graphs).
    pub fn output_indices(&self) -> &[usize] {
        self.chain.as_ref().map_or(&[], |c| &c.outputs)
    }

    /// The layers, with their names, when the model is a chain of `Masking`, `Embedding`,
    /// recurrent, `Dense` and other single-input layers ([`ModelLayer::Other`]) (a view for
    /// code that walks a plain stack, and what training builds on; both paths run any graph);
    /// empty for other graphs (see
    /// [`KerasModel::chain_error`]).
    pub fn layers(&self) -> &[(String, ModelLayer)] {
        self.chain.as_ref().map_or(&[], |c| &c.layers)
    }

    /// Every layer but the inputs and the identity-at-inference ones, with its weights, by
    /// name (the chain view's layers for a chain), or why they could not be read.
    pub(crate) fn layers_with_weights(&self) -> std::result::Result<&[(String, ModelLayer)], &str> {
        match (&self.chain, &self.every) {
            (Ok(c), _) => Ok(&c.layers),
            (Err(_), Ok(all)) => Ok(all),
            (Err(_), Err(why)) => Err(why),
        }
    }

    /// The model's config (`config.json`'s object, as the loader prepared it: a legacy
    /// config in Keras 3's form).
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Every layer of the model as `(name, Keras class)`, in the config's order.
    pub fn layer_classes(&self) -> &[(String, String)] {
        &self.graph.layers
    }

    /// Why the model is not a plain chain of single-input layers (the
    /// [`KerasModel::layers`] view), or None when it is. Both paths run any graph.
    pub fn chain_error(&self) -> Option<&str> {
        self.chain.as_ref().err().map(String::as_str)
    }

    /// The model's inputs, in order: name, shape after the batch axis (`None` for a free
    /// axis) and Keras dtype.
    pub fn inputs(&self) -> &[InputSpec] {
        &self.graph.inputs
    }

    /// The names of the model's outputs (the layers producing them), in order.
    pub fn output_names(&self) -> Vec<&str> {
        self.graph.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Runs the model on several inputs in the model's input order (float features, or
    /// integer token ids for `Embedding` inputs) on the CPU; returns the outputs in the
    /// model's order. A wrong count, rank or dtype is an error naming the input.
    ///
    /// ```no_run
    /// use lstm_wgpu::model::{KerasModel, ModelInput};
    /// let mut model = KerasModel::load("encoder_decoder.keras".as_ref())?;
    /// let enc = ndarray::Array3::<f32>::zeros((2, 8, 4)).into_dyn();
    /// let dec = ndarray::Array3::<f32>::zeros((2, 6, 3)).into_dyn();
    /// let outputs = model.predict_inputs(&[enc.into(), dec.into()])?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn predict_inputs(&mut self, inputs: &[ModelInput]) -> Result<Vec<ArrayD<f32>>> {
        self.predict_with(inputs, None, None)
    }

    /// [`KerasModel::predict_inputs`] with an explicit mask `[B, T]` for the first input (as
    /// Keras's `model(x, mask=mask)`: the input's mask, which the layers then propagate) and
    /// initial states for the model's recurrent layer (`[h, c]` of an LSTM, `[h]` of a GRU or
    /// SimpleRNN, forward then backward for a Bidirectional one), as the layer API's
    /// `forward(x, initial_state, mask)`. Initial states need a model with exactly one
    /// recurrent layer call that takes no `initial_state` from the graph; an error says so
    /// otherwise.
    ///
    /// ```no_run
    /// # use lstm_wgpu::model::KerasModel;
    /// let mut model = KerasModel::load("tagger.keras".as_ref())?;
    /// let x = ndarray::Array3::<f32>::zeros((2, 10, 3)).into_dyn();
    /// let mask = ndarray::Array2::from_shape_fn((2, 10), |(b, t)| t < 6 + b);
    /// let h0 = ndarray::Array2::<f32>::zeros((2, 16));
    /// let c0 = ndarray::Array2::<f32>::zeros((2, 16));
    /// let outputs = model.predict_with(&[x.into()], Some(mask.view()), Some(&[h0.view(), c0.view()]))?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn predict_with(
        &mut self,
        inputs: &[ModelInput],
        mask: Option<ndarray::ArrayView2<bool>>,
        initial_state: Option<&[ndarray::ArrayView2<f32>]>,
    ) -> Result<Vec<ArrayD<f32>>> {
        self.graph.check_input_count(inputs.len())?;
        let mut values = Vec::new();
        for (spec, input) in self.graph.inputs.iter().zip(inputs) {
            let data = input.to_f32(&spec.name)?;
            let integer_spec = spec.dtype.starts_with("int") || spec.dtype.starts_with("uint");
            // (integers for a float input are cast exactly, as Keras casts them: Keras 2
            // Sequential models declare their Embedding's token input float32)
            if integer_spec && !input.is_integer() {
                return Err(LstmError::invalid(
                    format!("input {}", spec.name),
                    format!("the model takes {} values here, got floats", spec.dtype),
                ));
            }
            if !spec.shape.is_empty() && data.ndim() != spec.shape.len() + 1 {
                return Err(LstmError::invalid(
                    format!("input {}", spec.name),
                    format!(
                        "expected rank {} (batch + {:?}), got shape {:?}",
                        spec.shape.len() + 1,
                        spec.shape,
                        data.shape()
                    ),
                ));
            }
            for (k, want) in spec.shape.iter().enumerate() {
                if let Some(w) = want {
                    if data.shape()[k + 1] != *w {
                        return Err(LstmError::shape(
                            format!("input {}", spec.name),
                            &spec
                                .shape
                                .iter()
                                .map(|d| d.unwrap_or(0))
                                .collect::<Vec<_>>(),
                            &data.shape()[1..],
                        ));
                    }
                }
            }
            values.push(GraphValue { data, mask: None });
        }
        if let Some(m) = mask {
            let x = &values[0].data;
            if x.ndim() < 2 || m.dim() != (x.shape()[0], x.shape()[1]) {
                return Err(LstmError::shape(
                    "mask",
                    &x.shape()[..x.ndim().min(2)],
                    m.shape(),
                ));
            }
            values[0].mask = Some(m.to_owned());
        }
        let init = initial_state.map(|states| {
            states
                .iter()
                .map(|s| GraphValue {
                    data: s.to_owned().into_dyn(),
                    mask: None,
                })
                .collect()
        });
        self.graph.run_with(values, init)
    }

    /// A summary of the model's layers, as Keras's `model.summary()`: each layer's name,
    /// class, output shapes (`None` on axes that follow the input's free axes: found by
    /// running the CPU path on zeros with two lengths for them, batch 1), parameters, and
    /// whether the GPU path runs it.
    ///
    /// ```no_run
    /// # use lstm_wgpu::model::KerasModel;
    /// let mut model = KerasModel::load("model.keras".as_ref())?;
    /// for l in model.summary()? {
    ///     println!("{} ({}) {:?} {} params", l.name, l.class, l.output_shapes, l.params);
    /// }
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn summary(&mut self) -> Result<Vec<LayerSummary>> {
        let mut runs = Vec::new();
        for free in [2usize, 3] {
            let values = self
                .graph
                .inputs
                .iter()
                .map(|spec| {
                    let mut shape = vec![1];
                    shape.extend(spec.shape.iter().map(|d| d.unwrap_or(free)));
                    GraphValue {
                        data: ArrayD::zeros(ndarray::IxDyn(&shape)),
                        mask: None,
                    }
                })
                .collect();
            runs.push(self.graph.output_shapes(values)?);
        }
        let classes = self.graph.layers.clone();
        Ok(classes
            .into_iter()
            .zip(runs[0].iter().zip(&runs[1]))
            .map(|((name, class), ((_, a), (_, b)))| {
                let output_shapes = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| {
                        let mut dims: Vec<Option<usize>> = x
                            .iter()
                            .zip(y)
                            .map(|(p, q)| (p == q).then_some(*p))
                            .collect();
                        if !dims.is_empty() {
                            dims[0] = None; // the batch axis
                        }
                        dims
                    })
                    .collect();
                LayerSummary {
                    params: self.graph.params(&name),
                    gpu: self.graph.on_gpu(&name),
                    name,
                    class,
                    output_shapes,
                }
            })
            .collect())
    }

    /// [`KerasModel::predict_inputs`] with each output paired with its name, as Keras's
    /// `model.output_names` names them (the producing layer's name: several outputs of one
    /// layer share it, as in Keras).
    ///
    /// ```no_run
    /// # use lstm_wgpu::model::KerasModel;
    /// # let mut model = KerasModel::load("m.keras".as_ref())?;
    /// # let x = ndarray::Array3::<f32>::zeros((1, 4, 3)).into_dyn();
    /// let outputs = model.predict_named(&[x.into()])?;
    /// let dense = &outputs.iter().find(|(name, _)| name == "dense").unwrap().1;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn predict_named(&mut self, inputs: &[ModelInput]) -> Result<Vec<(String, ArrayD<f32>)>> {
        let names: Vec<String> = self.output_names().iter().map(|n| n.to_string()).collect();
        let outputs = self.predict_inputs(inputs)?;
        if names.len() != outputs.len() {
            // (a Sequential model's last layer may return several tensors under one name)
            let name = names.first().cloned().unwrap_or_default();
            return Ok(outputs.into_iter().map(|o| (name.clone(), o)).collect());
        }
        Ok(names.into_iter().zip(outputs).collect())
    }

    /// Generates `steps` tokens on the CPU path: the model (one input of token ids, its
    /// first output the next token's distribution `[1, V]`, or `[1, T, V]` whose last step
    /// is taken) reads the last window of tokens (its input's length; the whole history for
    /// a free length), and `sampler` draws each token (see [`crate::generate`]).
    ///
    /// ```no_run
    /// use lstm_wgpu::generate::Sampler;
    /// use lstm_wgpu::model::KerasModel;
    /// let mut model = KerasModel::load("char_lstm.keras".as_ref())?;
    /// let seed = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3];
    /// let tokens = model.generate(&seed, 100, &mut Sampler::new(0.7, Some(10), 42)?)?;
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn generate(
        &mut self,
        seed: &[i64],
        steps: usize,
        sampler: &mut crate::generate::Sampler,
    ) -> Result<Vec<i64>> {
        let inputs: Vec<(&str, &[Option<usize>])> = self
            .graph
            .inputs
            .iter()
            .map(|i| (i.name.as_str(), i.shape.as_slice()))
            .collect();
        let window = crate::generate::token_window(&inputs, seed)?;
        let next = |w: &[i64]| -> Result<Vec<f32>> {
            let out = self.predict_inputs(&[crate::generate::window_input(w)?])?;
            crate::generate::last_distribution(&out[0])
        };
        crate::generate::generate(next, seed, window, steps, sampler)
    }

    /// Runs the model on `x [B, T, I]` on the CPU and returns its outputs in the model's order
    /// (a model with one float input; [`KerasModel::predict_inputs`] takes several, or token
    /// ids).
    pub fn predict(&mut self, x: ArrayView3<f32>) -> Result<Vec<ArrayD<f32>>> {
        self.predict_inputs(&[ModelInput::F32(x.to_owned().into_dyn())])
    }
}

#[cfg(test)]
mod tests {
    use crate::graph::snake_case;

    #[test]
    fn weight_group_keys() {
        assert_eq!(snake_case("LSTM"), "lstm");
        assert_eq!(snake_case("InputLayer"), "input_layer");
        assert_eq!(snake_case("Bidirectional"), "bidirectional");
        // as Keras's naming.to_snake_case
        for (class, key) in [
            ("PReLU", "p_re_lu"),
            ("GlobalAveragePooling1D", "global_average_pooling1d"),
            ("Conv1D", "conv1d"),
            ("SimpleRNN", "simple_rnn"),
            ("GRU", "gru"),
            ("LayerNormalization", "layer_normalization"),
            ("TimeDistributed", "time_distributed"),
            ("ReLU", "re_lu"),
        ] {
            assert_eq!(snake_case(class), key, "{class}");
        }
    }
}
