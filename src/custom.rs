//! Layers the application implements for Keras classes this crate does not know (a learned
//! attention pooling, a CTC layer, any `keras.layers.Layer` subclass), registered by class
//! name as Keras's `custom_objects` registers Python classes.
//!
//! A registered class gets its config (`get_config()` as saved) and its weights (in Keras's
//! `get_weights()` order) and returns a [`CustomLayer`], which runs on the CPU path. It may
//! also give a WGSL kernel ([`CustomLayer::gpu_kernel`], a [`GpuKernel`]), which the GPU
//! path then runs in the model's one submission; without one,
//! [`crate::gpu::GpuNetwork::from_model`] is an [`LstmError::UnsupportedOnPath`] naming the
//! layer, and `predict --backend auto` runs the model on the CPU path, saying why.
//!
//! ```
//! use lstm_wgpu::custom::{CustomLayer, CustomObjects, LayerInput, LayerOutput, LayerSpec};
//! use ndarray::{ArrayD, Axis};
//!
//! /// `AttentionWeightedAverage` (DeepMoji, textgenrnn): softmax over time of `x · W`, the
//! /// masked steps left out, then the weighted sum of the steps.
//! #[derive(Debug)]
//! struct AttentionWeightedAverage {
//!     w: ArrayD<f32>, // [C, 1]
//! }
//!
//! impl CustomLayer for AttentionWeightedAverage {
//!     fn call(&mut self, inputs: &[LayerInput<'_>]) -> lstm_wgpu::Result<Vec<LayerOutput>> {
//!         let x = &inputs[0].data; // [B, T, C]
//!         let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
//!         let mut out = ArrayD::zeros(ndarray::IxDyn(&[b, c]));
//!         for i in 0..b {
//!             let logits: Vec<f32> = (0..t)
//!                 .map(|s| (0..c).map(|k| x[[i, s, k]] * self.w[[k, 0]]).sum())
//!                 .collect();
//!             let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
//!             let mut a: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
//!             if let Some(m) = &inputs[0].mask {
//!                 (0..t).for_each(|s| a[s] *= f32::from(u8::from(m[[i, s]])));
//!             }
//!             let sum: f32 = a.iter().sum::<f32>() + 1e-7; // Keras's epsilon
//!             for s in 0..t {
//!                 for k in 0..c {
//!                     out[[i, k]] += x[[i, s, k]] * a[s] / sum;
//!                 }
//!             }
//!         }
//!         Ok(vec![LayerOutput::new(out)])
//!     }
//!
//!     fn params(&self) -> usize {
//!         self.w.len()
//!     }
//! }
//!
//! let custom = CustomObjects::new().register("AttentionWeightedAverage", |spec: LayerSpec| {
//!     let w = spec.weight(0)?; // its one weight, W [C, 1]
//!     Ok(Box::new(AttentionWeightedAverage { w }))
//! });
//! assert!(custom.contains("AttentionWeightedAverage"));
//! // then: KerasModel::load_with("model.keras".as_ref(), &LoadOptions::new().custom(custom))
//! ```

use crate::error::{LstmError, Result};
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewD};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::Arc;

/// One input of a custom layer's call: its values and its Keras mask `[B, T]` (true = step
/// present), if any.
#[derive(Debug, Clone)]
pub struct LayerInput<'a> {
    /// The values (batch first).
    pub data: ArrayViewD<'a, f32>,
    /// The input's mask, as Keras hands it to `call(inputs, mask=...)`.
    pub mask: Option<ArrayView2<'a, bool>>,
}

/// One output of a custom layer's call: its values and the mask it carries on (Keras's
/// `compute_mask`; None: no mask).
#[derive(Debug, Clone)]
pub struct LayerOutput {
    /// The values (batch first).
    pub data: ArrayD<f32>,
    /// The output's mask `[B, T]`.
    pub mask: Option<Array2<bool>>,
}

impl LayerOutput {
    /// An output without a mask.
    pub fn new(data: ArrayD<f32>) -> Self {
        LayerOutput { data, mask: None }
    }

    /// An output carrying `mask` on.
    pub fn with_mask(data: ArrayD<f32>, mask: Option<Array2<bool>>) -> Self {
        LayerOutput { data, mask }
    }
}

/// A layer implemented by the application (see the [module docs](self)).
pub trait CustomLayer: Send + std::fmt::Debug {
    /// Runs the layer on its inputs (the tensors of the Keras call, in order) at inference;
    /// returns its outputs in Keras's order.
    fn call(&mut self, inputs: &[LayerInput<'_>]) -> Result<Vec<LayerOutput>>;

    /// Its parameters (weight values), as Keras's `count_params` (for `summary`).
    fn params(&self) -> usize {
        0
    }

    /// Its GPU kernel, computing what [`CustomLayer::call`] computes (None: the model runs
    /// on the CPU path only).
    fn gpu_kernel(&self) -> Option<GpuKernel> {
        None
    }
}

/// The declarations every [`GpuKernel`]'s WGSL starts with (put them before the kernel's
/// own code): the input `x` (row-major, batch first), the output `y` (zeroed before the
/// dispatch), the kernel's weights `w`, the input's mask `mask` (`[B, T]`, 1.0 = present;
/// one 1.0 when the input has none, `shape.has_mask` 0) and `shape` (the input's shape in
/// `dims`, 1 past its rank). The kernel's entry point is `main`.
pub const GPU_KERNEL_PRELUDE: &str = "\
struct CustomShape { dims: vec4<u32>, rank: u32, has_mask: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<uniform> shape: CustomShape;
";

/// The input shape a [`GpuKernel`] gets its output shape and dispatch size from.
pub type ShapeFn = dyn Fn(&[usize]) -> Result<Vec<usize>> + Send + Sync;
/// Workgroups `(x, y)` of a [`GpuKernel`]'s dispatch for an input shape.
pub type GroupsFn = dyn Fn(&[usize]) -> (u32, u32) + Send + Sync;

/// A custom layer's GPU kernel: one WGSL compute shader dispatched once per call, reading
/// one input tensor (its declarations: [`GPU_KERNEL_PRELUDE`]).
///
/// ```
/// use lstm_wgpu::custom::{GpuKernel, GPU_KERNEL_PRELUDE};
/// // y = 2x, 64 values a workgroup
/// let body = "
/// @compute @workgroup_size(64)
/// fn main(@builtin(global_invocation_id) id: vec3<u32>) {
///     if (id.x < arrayLength(&y)) { y[id.x] = 2.0 * x[id.x]; }
/// }";
/// let k = GpuKernel::new(
///     format!("{GPU_KERNEL_PRELUDE}{body}"),
///     |shape| Ok(shape.to_vec()),
///     |shape| ((shape.iter().product::<usize>() as u32).div_ceil(64), 1),
/// );
/// assert!(k.weights.is_empty());
/// ```
pub struct GpuKernel {
    /// The WGSL source: [`GPU_KERNEL_PRELUDE`], then the kernel (entry point `main`).
    pub wgsl: String,
    /// Values bound at binding 2 (uploaded once).
    pub weights: Vec<f32>,
    /// Which of the call's inputs the kernel reads (0: the first).
    pub input: usize,
    /// Whether the output carries the input's mask on (else no mask).
    pub keeps_mask: bool,
    /// The output's shape for an input shape.
    pub output_shape: Box<ShapeFn>,
    /// The dispatch's workgroups for an input shape.
    pub groups: Box<GroupsFn>,
}

impl std::fmt::Debug for GpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuKernel")
            .field("weights", &self.weights.len())
            .field("input", &self.input)
            .field("keeps_mask", &self.keeps_mask)
            .finish()
    }
}

impl GpuKernel {
    /// A kernel reading the first input, without weights, its output without a mask.
    pub fn new(
        wgsl: impl Into<String>,
        output_shape: impl Fn(&[usize]) -> Result<Vec<usize>> + Send + Sync + 'static,
        groups: impl Fn(&[usize]) -> (u32, u32) + Send + Sync + 'static,
    ) -> Self {
        GpuKernel {
            wgsl: wgsl.into(),
            weights: Vec::new(),
            input: 0,
            keeps_mask: false,
            output_shape: Box::new(output_shape),
            groups: Box::new(groups),
        }
    }

    /// Sets [`GpuKernel::weights`].
    pub fn weights(mut self, w: Vec<f32>) -> Self {
        self.weights = w;
        self
    }

    /// Sets [`GpuKernel::input`].
    pub fn input(mut self, k: usize) -> Self {
        self.input = k;
        self
    }

    /// Sets [`GpuKernel::keeps_mask`].
    pub fn keeps_mask(mut self, keep: bool) -> Self {
        self.keeps_mask = keep;
        self
    }
}

/// What a registered class is built from: the layer's name, class, config and weights.
#[derive(Debug)]
pub struct LayerSpec<'a> {
    /// The layer's name in the model.
    pub name: &'a str,
    /// Its Keras class name.
    pub class: &'a str,
    /// Its config (`get_config()` as the file saved it).
    pub config: &'a Json,
    /// Its weights in Keras's `get_weights()` order.
    pub weights: Vec<ArrayD<f32>>,
}

impl LayerSpec<'_> {
    /// Weight `k` (a copy), or an error naming the layer and how many it has.
    pub fn weight(&self, k: usize) -> Result<ArrayD<f32>> {
        self.weights
            .get(k)
            .cloned()
            .ok_or_else(|| LstmError::MissingWeight {
                name: format!(
                    "{}/{} (weight {k} of the {} layer {}, which has {})",
                    self.name,
                    k,
                    self.class,
                    self.name,
                    self.weights.len()
                ),
            })
    }
}

type Build = dyn Fn(LayerSpec<'_>) -> Result<Box<dyn CustomLayer>> + Send + Sync;
type Count = dyn Fn(&Json) -> usize + Send + Sync;

#[derive(Clone)]
struct Entry {
    build: Arc<Build>,
    weights: Option<Arc<Count>>,
}

/// The application's layer classes by Keras class name (Keras's `custom_objects`).
#[derive(Clone, Default)]
pub struct CustomObjects {
    classes: HashMap<String, Entry>,
}

impl std::fmt::Debug for CustomObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.classes.keys().collect();
        names.sort();
        f.debug_struct("CustomObjects")
            .field("classes", &names)
            .finish()
    }
}

impl CustomObjects {
    /// No classes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `build` for the Keras class `class` (as saved in the config's `class_name`;
    /// a class registered in Keras under a package, `"MyPkg>MyLayer"`, is matched by its
    /// `registered_name` too). A class this crate implements itself is still the crate's.
    pub fn register(
        mut self,
        class: &str,
        build: impl Fn(LayerSpec<'_>) -> Result<Box<dyn CustomLayer>> + Send + Sync + 'static,
    ) -> Self {
        let weights = self.classes.get(class).and_then(|e| e.weights.clone());
        self.classes.insert(
            class.to_string(),
            Entry {
                build: Arc::new(build),
                weights,
            },
        );
        self
    }

    /// Tells how many weights a layer of `class` has for its config (`len(layer.weights)`):
    /// needed to match a legacy HDF5 file's layers by order, where a layer without weights
    /// is passed over. Without it a registered layer counts as having as many weights as
    /// the file's layer of the same name (as in a whole-model file); matching by order a
    /// file without such a layer is then an error asking for this count.
    pub fn weight_count(
        mut self,
        class: &str,
        count: impl Fn(&Json) -> usize + Send + Sync + 'static,
    ) -> Self {
        if let Some(e) = self.classes.get_mut(class) {
            e.weights = Some(Arc::new(count));
        }
        self
    }

    /// Whether `class` is registered.
    pub fn contains(&self, class: &str) -> bool {
        self.classes.contains_key(class)
    }

    /// The registered class of a layer entry: its `class_name`, else its `registered_name`.
    fn find(&self, entry: &Json) -> Option<(&str, &Entry)> {
        ["class_name", "registered_name"].iter().find_map(|k| {
            let c = entry.get(*k)?.as_str()?;
            self.classes.get_key_value(c).map(|(k, e)| (k.as_str(), e))
        })
    }

    /// Whether the layer `entry` is one of the application's classes.
    pub(crate) fn is_custom(&self, entry: &Json) -> bool {
        self.find(entry).is_some()
    }

    /// The weight count the application gave for `entry`'s class, if any.
    pub(crate) fn count(&self, entry: &Json) -> Option<usize> {
        let (_, e) = self.find(entry)?;
        let cfg = entry.get("config").unwrap_or(&Json::Null);
        e.weights.as_ref().map(|f| f(cfg))
    }

    /// Builds the application's layer for `entry`, or None when its class is not registered.
    pub(crate) fn build(
        &self,
        entry: &Json,
        name: &str,
        weights: Vec<ArrayD<f32>>,
    ) -> Option<Result<(String, Box<dyn CustomLayer>)>> {
        let (class, e) = self.find(entry)?;
        let null = Json::Null;
        let spec = LayerSpec {
            name,
            class,
            config: entry.get("config").unwrap_or(&null),
            weights,
        };
        Some((e.build)(spec).map(|l| (class.to_string(), l)))
    }
}
