//! Reading golden case files recorded from real Keras (format: `shared/golden/FORMAT.md`) and
//! comparing a backend's outputs with them.

use crate::config::LayerConfig;
use crate::element::Element;
use crate::error::{LstmError, Result};
use ndarray::{Array2, Array3, ArrayD, IxDyn};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A tensor as the case files store it: a shape and row-major data.
#[derive(Debug, Clone, Deserialize)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values (exact binary64; exact `f32` for float32 cases).
    pub data: Vec<f64>,
}

impl Tensor {
    /// Converts to an ndarray of element type `T`, checking that data and shape agree.
    ///
    /// ```
    /// let t = lstm_wgpu::golden::Tensor { shape: vec![2, 1], data: vec![1.0, 2.0] };
    /// assert_eq!(t.to_array::<f32>("t").unwrap()[[1, 0]], 2.0);
    /// ```
    pub fn to_array<T: Element>(&self, what: &str) -> Result<ArrayD<T>> {
        ArrayD::from_shape_vec(
            IxDyn(&self.shape),
            self.data.iter().map(|v| T::from_f64(*v)).collect(),
        )
        .map_err(|_| {
            LstmError::invalid(
                what,
                format!(
                    "{} values do not fill shape {:?}",
                    self.data.len(),
                    self.shape
                ),
            )
        })
    }
}

/// A named weight array.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedTensor {
    /// Variable path (informative).
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f64>,
}

/// The inputs of one call.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseInputs {
    /// `[B, T, I]`.
    pub x: Tensor,
    /// `[h0, c0]` or the four Bidirectional states.
    #[serde(default)]
    pub initial_state: Option<Vec<Tensor>>,
    /// `[B, T]` of 0/1.
    #[serde(default)]
    pub mask: Option<Tensor>,
}

/// One call of a stateful case.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseCall {
    /// Reset the state before this call.
    #[serde(default)]
    pub reset_states_before: bool,
    /// The call's inputs.
    pub inputs: CaseInputs,
    /// The returned tensors.
    pub outputs: Vec<Tensor>,
}

/// The `layer` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseLayer {
    /// `LSTM`, `Bidirectional` or `Sequential`.
    pub class_name: String,
    /// Keras `get_config()`.
    pub config: serde_json::Value,
}

/// One golden case.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// Case id.
    pub name: String,
    /// `float32` or `float64`.
    pub dtype: String,
    /// The layer or model.
    pub layer: CaseLayer,
    /// Weights in `get_weights()` order.
    pub weights: Vec<NamedTensor>,
    /// The (first) call's inputs.
    pub inputs: CaseInputs,
    /// Successive calls of a stateful case.
    #[serde(default)]
    pub calls: Option<Vec<CaseCall>>,
    /// The (first) call's outputs.
    pub outputs: Vec<Tensor>,
}

impl Case {
    /// Reads and parses one case file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LstmError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| LstmError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The layer configuration.
    pub fn layer_config(&self) -> Result<LayerConfig> {
        let v =
            serde_json::json!({"class_name": self.layer.class_name, "config": self.layer.config});
        LayerConfig::from_keras(&v)
    }

    /// The weights as arrays of `T`.
    pub fn weight_arrays<T: Element>(&self) -> Result<Vec<ArrayD<T>>> {
        self.weights
            .iter()
            .map(|w| {
                Tensor {
                    shape: w.shape.clone(),
                    data: w.data.clone(),
                }
                .to_array(&w.name)
            })
            .collect()
    }

    /// The calls to make in order: `calls` for stateful cases, else the one top-level call.
    pub fn call_list(&self) -> Vec<CaseCall> {
        match &self.calls {
            Some(c) if !c.is_empty() => c.clone(),
            _ => vec![CaseCall {
                reset_states_before: false,
                inputs: self.inputs.clone(),
                outputs: self.outputs.clone(),
            }],
        }
    }
}

/// A call's inputs as arrays.
#[derive(Debug, Clone)]
pub struct CallArrays<T> {
    /// `[B, T, I]`.
    pub x: Array3<T>,
    /// Initial states, `[B, H]` each.
    pub initial_state: Option<Vec<Array2<T>>>,
    /// `[B, T]`, true = present.
    pub mask: Option<Array2<bool>>,
}

impl<T> CallArrays<T> {
    /// Calls `f` with the inputs as views: x, the initial states, the mask.
    pub fn apply<R>(
        &self,
        f: impl FnOnce(
            ndarray::ArrayView3<T>,
            Option<&[ndarray::ArrayView2<T>]>,
            Option<ndarray::ArrayView2<bool>>,
        ) -> R,
    ) -> R {
        let states: Option<Vec<_>> = self
            .initial_state
            .as_ref()
            .map(|s| s.iter().map(|a| a.view()).collect());
        f(
            self.x.view(),
            states.as_deref(),
            self.mask.as_ref().map(|m| m.view()),
        )
    }
}

impl CaseInputs {
    /// Converts to arrays of `T`.
    pub fn to_arrays<T: Element>(&self) -> Result<CallArrays<T>> {
        let x = self
            .x
            .to_array::<T>("x")?
            .into_dimensionality()
            .map_err(|_| LstmError::shape("x", &[0, 0, 0], &self.x.shape))?;
        let initial_state = match &self.initial_state {
            None => None,
            Some(states) => Some(
                states
                    .iter()
                    .map(|s| {
                        s.to_array::<T>("initial_state")?
                            .into_dimensionality()
                            .map_err(|_| LstmError::shape("initial_state", &[0, 0], &s.shape))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let mask = match &self.mask {
            None => None,
            Some(m) => Some(
                m.to_array::<f64>("mask")?
                    .mapv(|v| v != 0.0)
                    .into_dimensionality()
                    .map_err(|_| LstmError::shape("mask", &[0, 0], &m.shape))?,
            ),
        };
        Ok(CallArrays {
            x,
            initial_state,
            mask,
        })
    }
}

/// The largest absolute difference between `got` and the expected tensors; an error if the
/// number of tensors or a shape differs. NaN anywhere counts as infinitely wrong.
pub fn max_abs_error<T: Element>(got: &[ArrayD<T>], expected: &[Tensor]) -> Result<f64> {
    if got.len() != expected.len() {
        return Err(LstmError::invalid(
            "outputs",
            format!("got {} tensors, expected {}", got.len(), expected.len()),
        ));
    }
    let mut worst = 0.0f64;
    for (k, (g, e)) in got.iter().zip(expected).enumerate() {
        if g.shape() != e.shape.as_slice() {
            return Err(LstmError::shape(format!("output {k}"), &e.shape, g.shape()));
        }
        for (a, b) in g.iter().zip(&e.data) {
            let d = (a.to_f64() - b).abs();
            worst = if d.is_nan() {
                f64::INFINITY
            } else {
                worst.max(d)
            };
        }
    }
    Ok(worst)
}

/// Every `*.json` file under `path` (a file or a folder, not recursive), sorted.
pub fn case_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| LstmError::io(path, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Something that can replay a case's calls: a CPU [`Network`](crate::Network) or a GPU one.
pub trait CaseRunner<T> {
    /// Zeroes carried state (stateful cases).
    fn reset_states(&mut self);
    /// Makes one call and returns Keras's outputs in order.
    fn call(&mut self, inputs: &CallArrays<T>) -> Result<Vec<ArrayD<T>>>;
}

impl<T: Element> CaseRunner<T> for crate::Network<T> {
    fn reset_states(&mut self) {
        crate::Network::reset_states(self)
    }

    fn call(&mut self, inputs: &CallArrays<T>) -> Result<Vec<ArrayD<T>>> {
        inputs.apply(|x, states, mask| self.forward(x, states, mask))
    }
}

/// Replays every call of `case` on `runner` and returns the worst absolute error over all
/// outputs of all calls.
///
/// ```no_run
/// use lstm_wgpu::golden::{check_case, Case};
/// use lstm_wgpu::Network;
/// let case = Case::load("case.json".as_ref()).unwrap();
/// let mut net = Network::<f32>::from_keras_weights(
///     &case.layer_config().unwrap(), &case.weight_arrays().unwrap()).unwrap();
/// let err = check_case(&case, &mut net).unwrap();
/// assert!(err <= 1e-5);
/// ```
pub fn check_case<T: Element, R: CaseRunner<T>>(case: &Case, runner: &mut R) -> Result<f64> {
    let mut worst = 0.0f64;
    for call in case.call_list() {
        if call.reset_states_before {
            runner.reset_states();
        }
        let got = runner.call(&call.inputs.to_arrays()?)?;
        worst = worst.max(max_abs_error(&got, &call.outputs)?);
    }
    Ok(worst)
}

/// Runs `case` on the CPU path in its own dtype; returns the worst absolute error.
pub fn check_case_cpu(case: &Case) -> Result<f64> {
    fn run<T: Element>(case: &Case) -> Result<f64> {
        let mut net = crate::Network::<T>::from_keras_weights(
            &case.layer_config()?,
            &case.weight_arrays::<T>()?,
        )?;
        check_case(case, &mut net)
    }
    match case.dtype.as_str() {
        "float32" => run::<f32>(case),
        "float64" => run::<f64>(case),
        other => Err(LstmError::unsupported("dtype", other)),
    }
}

/// The tolerance a dtype's CPU results must meet against Keras (1e-5 for float32,
/// 1e-12 for float64).
pub fn cpu_tolerance(dtype: &str) -> f64 {
    if dtype == "float64" {
        1e-12
    } else {
        1e-5
    }
}

impl CaseRunner<f32> for crate::gpu::GpuNetwork {
    fn reset_states(&mut self) {
        crate::gpu::GpuNetwork::reset_states(self)
    }

    fn call(&mut self, inputs: &CallArrays<f32>) -> Result<Vec<ArrayD<f32>>> {
        inputs.apply(|x, states, mask| self.forward(x, states, mask))
    }
}

/// The tolerance GPU results must meet against Keras (1e-4).
pub const GPU_TOLERANCE: f64 = 1e-4;

/// Runs `case` on the GPU path; returns the worst absolute error against Keras.
///
/// The GPU computes in float32: a float64 case runs with its weights and inputs rounded to
/// float32 (the GPU API itself refuses `f64` networks) and is held to the same 1e-4.
pub fn check_case_gpu(case: &Case, ctx: &std::sync::Arc<crate::gpu::GpuContext>) -> Result<f64> {
    check_case_gpu_with(case, ctx, crate::gpu::RecurrentKernel::Auto)
}

/// [`check_case_gpu`] with a chosen recurrent kernel.
pub fn check_case_gpu_with(
    case: &Case,
    ctx: &std::sync::Arc<crate::gpu::GpuContext>,
    kernel: crate::gpu::RecurrentKernel,
) -> Result<f64> {
    let net = crate::Network::<f32>::from_keras_weights(
        &case.layer_config()?,
        &case.weight_arrays::<f32>()?,
    )?;
    let mut gpu = crate::gpu::GpuNetwork::new(ctx.clone(), &net)?;
    gpu.set_recurrent_kernel(kernel);
    check_case(case, &mut gpu)
}
