//! ONNX's recurrent operators (`LSTM`, `GRU`, `RNN`) as the crate's layers: a node's full
//! attribute set and weights become a [`Network`] that computes what the operator computes,
//! or an error that names every attribute (or input) the crate cannot run. Nothing is
//! dropped silently: a node with peepholes, `clip` or `input_forget`, or an activation with
//! no Keras twin, is refused.
//!
//! The crate runs batch-major `[B, T, I]` tensors as Keras does; [`OnnxNode::input`] and
//! [`OnnxNode::outputs`] convert the operator's tensors (either `layout`) to and from them.
//!
//! ```
//! use lstm_wgpu::onnx::{OnnxAttributes, OnnxNode, OnnxOp};
//! use ndarray::{Array2, Array3};
//! // An ONNX GRU node, hidden_size 2, input size 3, no bias.
//! let attrs = OnnxAttributes { hidden_size: 2, ..Default::default() };
//! let w = Array3::<f32>::from_elem((1, 6, 3), 0.1);
//! let r = Array3::<f32>::from_elem((1, 6, 2), 0.1);
//! let node = OnnxNode { op: OnnxOp::Gru, attributes: attrs, w, r, b: None, p: None };
//! let mut net = node.network()?;
//! let x = Array3::<f32>::ones((4, 1, 3)); // ONNX X: [T, B, I] (layout 0)
//! let outputs = net.forward(node.input(x.view()).view(), None, None)?;
//! let (y, y_h, y_c) = node.outputs(outputs)?;
//! assert_eq!(y.shape(), &[4, 1, 1, 2]); // [T, directions, B, H]
//! assert_eq!(y_h.shape(), &[1, 1, 2]);
//! assert!(y_c.is_none());
//!
//! // Peepholes are not Keras's LSTM: the error names them.
//! let lstm = OnnxNode {
//!     op: OnnxOp::Lstm,
//!     attributes: OnnxAttributes { hidden_size: 2, clip: Some(3.0), ..Default::default() },
//!     w: Array3::<f32>::zeros((1, 8, 3)),
//!     r: Array3::<f32>::zeros((1, 8, 2)),
//!     b: None,
//!     p: Some(Array2::from_elem((1, 6), 0.5)),
//! };
//! let e = lstm.network().unwrap_err().to_string();
//! assert!(e.contains("P (peepholes") && e.contains("clip"));
//! # Ok::<(), lstm_wgpu::LstmError>(())
//! ```

use crate::config::{BidirectionalConfig, Cell, LstmConfig, MergeMode};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::network::{Bidirectional, Network};
use crate::weights::LstmWeights;
use crate::Activation;
use ndarray::{Array2, Array3, ArrayD, ArrayView1, ArrayView3, Axis, Ix2, Ix3};

/// Which ONNX operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnnxOp {
    /// `LSTM` (Keras `LSTM`).
    Lstm,
    /// `GRU` (Keras `GRU`; `linear_before_reset` = `reset_after`).
    Gru,
    /// `RNN` (Keras `SimpleRNN`).
    Rnn,
}

impl OnnxOp {
    /// The operator for an ONNX `op_type` (`"LSTM"`, `"GRU"`, `"RNN"`).
    pub fn from_op_type(op_type: &str) -> Result<Self> {
        match op_type {
            "LSTM" => Ok(OnnxOp::Lstm),
            "GRU" => Ok(OnnxOp::Gru),
            "RNN" => Ok(OnnxOp::Rnn),
            other => Err(LstmError::unsupported("op_type", other)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            OnnxOp::Lstm => "LSTM",
            OnnxOp::Gru => "GRU",
            OnnxOp::Rnn => "RNN",
        }
    }

    /// The operator's default activations (`activations` when the attribute is absent).
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            OnnxOp::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            OnnxOp::Gru => &["Sigmoid", "Tanh"],
            OnnxOp::Rnn => &["Tanh"],
        }
    }
}

/// Every attribute of the ONNX `LSTM`, `GRU` and `RNN` operators (opset 22), with the
/// operator's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxAttributes {
    /// `hidden_size` (H).
    pub hidden_size: usize,
    /// `direction`: `"forward"`, `"reverse"` or `"bidirectional"`.
    pub direction: String,
    /// `activations` (empty: the operator's defaults), per direction.
    pub activations: Vec<String>,
    /// `activation_alpha`, one per entry of `activations` that takes one.
    pub activation_alpha: Vec<f32>,
    /// `activation_beta`.
    pub activation_beta: Vec<f32>,
    /// `clip` (cell clipping threshold), absent by default.
    pub clip: Option<f32>,
    /// `input_forget` (LSTM: couple the input and forget gates), 0 by default.
    pub input_forget: i64,
    /// `linear_before_reset` (GRU), 0 by default: 1 is Keras's `reset_after=True`.
    pub linear_before_reset: i64,
    /// `layout`: 0 for `[T, B, ...]` tensors, 1 for `[B, T, ...]`.
    pub layout: i64,
}

impl Default for OnnxAttributes {
    fn default() -> Self {
        OnnxAttributes {
            hidden_size: 0,
            direction: "forward".into(),
            activations: Vec::new(),
            activation_alpha: Vec::new(),
            activation_beta: Vec::new(),
            clip: None,
            input_forget: 0,
            linear_before_reset: 0,
            layout: 0,
        }
    }
}

impl OnnxAttributes {
    /// Reads the attributes from a JSON object (`{"hidden_size": 3, "direction": ...}`, as
    /// `onnx.helper.get_attribute_value` gives them); an attribute the operators do not have
    /// is an error naming it.
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let map = value
            .as_object()
            .ok_or_else(|| LstmError::bad_config("attributes", "expected a JSON object"))?;
        let mut a = OnnxAttributes::default();
        let int = |k: &str, v: &serde_json::Value| {
            v.as_i64()
                .ok_or_else(|| LstmError::bad_config(k, "expected an integer"))
        };
        let floats = |k: &str, v: &serde_json::Value| -> Result<Vec<f32>> {
            v.as_array()
                .ok_or_else(|| LstmError::bad_config(k, "expected a list of numbers"))?
                .iter()
                .map(|x| {
                    x.as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| LstmError::bad_config(k, "expected numbers"))
                })
                .collect()
        };
        for (k, v) in map {
            match k.as_str() {
                "hidden_size" => a.hidden_size = int(k, v)?.max(0) as usize,
                "direction" => {
                    a.direction = v
                        .as_str()
                        .ok_or_else(|| LstmError::bad_config(k, "expected a string"))?
                        .to_string()
                }
                "activations" => {
                    a.activations = v
                        .as_array()
                        .ok_or_else(|| LstmError::bad_config(k, "expected a list of names"))?
                        .iter()
                        .map(|x| x.as_str().unwrap_or("?").to_string())
                        .collect()
                }
                "activation_alpha" => a.activation_alpha = floats(k, v)?,
                "activation_beta" => a.activation_beta = floats(k, v)?,
                "clip" => {
                    a.clip = Some(
                        v.as_f64()
                            .ok_or_else(|| LstmError::bad_config(k, "expected a number"))?
                            as f32,
                    )
                }
                "input_forget" => a.input_forget = int(k, v)?,
                "linear_before_reset" => a.linear_before_reset = int(k, v)?,
                "layout" => a.layout = int(k, v)?,
                other => return Err(LstmError::unsupported("ONNX attribute", other)),
            }
        }
        Ok(a)
    }
}

/// One ONNX recurrent node: its operator, attributes and weight inputs (`W [D, G·H, I]`,
/// `R [D, G·H, H]`, `B [D, 2·G·H]`, LSTM peepholes `P [D, 3H]`; D = 2 when bidirectional).
/// The runtime inputs (`X`, `sequence_lens`, `initial_h`, `initial_c`) are converted by
/// [`OnnxNode::input`], [`OnnxNode::mask`] and [`OnnxNode::initial_state`].
#[derive(Debug, Clone)]
pub struct OnnxNode<T> {
    /// The operator.
    pub op: OnnxOp,
    /// Its attributes.
    pub attributes: OnnxAttributes,
    /// `W`.
    pub w: Array3<T>,
    /// `R`.
    pub r: Array3<T>,
    /// `B`, if the node has it.
    pub b: Option<Array2<T>>,
    /// `P` (LSTM peepholes), if the node has it.
    pub p: Option<Array2<T>>,
}

/// An ONNX activation (with its alpha and beta) as the crate's, where one computes it exactly.
fn activation(name: &str, alpha: Option<f32>, beta: Option<f32>) -> Option<Activation> {
    let is = |v: Option<f32>, default: f32, want: f32| (v.unwrap_or(default) - want).abs() < 1e-7;
    match name {
        "Sigmoid" => Some(Activation::Sigmoid),
        "Tanh" => Some(Activation::Tanh),
        "Relu" => Some(Activation::Relu),
        "Softsign" => Some(Activation::Softsign),
        "Softplus" => Some(Activation::Softplus),
        "Elu" if is(alpha, 1.0, 1.0) => Some(Activation::Elu),
        "Affine" if is(alpha, 1.0, 1.0) && is(beta, 0.0, 0.0) => Some(Activation::Linear),
        "HardSigmoid" if is(alpha, 0.2, 0.2) && is(beta, 0.5, 0.5) => {
            Some(Activation::HardSigmoidKeras2)
        }
        "HardSigmoid" if is(alpha, 0.2, 1.0 / 6.0) && is(beta, 0.5, 0.5) => {
            Some(Activation::HardSigmoid)
        }
        _ => None,
    }
}

impl<T: Element> OnnxNode<T> {
    /// Directions of the node (1 or 2).
    fn directions(&self) -> usize {
        if self.attributes.direction == "bidirectional" {
            2
        } else {
            1
        }
    }

    /// The Keras configuration of one direction, or the list of what the crate cannot run.
    fn config(&self, problems: &mut Vec<String>) -> LstmConfig {
        let a = &self.attributes;
        let op = self.op;
        let d = self.directions();
        if !matches!(
            a.direction.as_str(),
            "forward" | "reverse" | "bidirectional"
        ) {
            problems.push(format!("direction={:?}", a.direction));
        }
        if let Some(c) = a.clip {
            problems.push(format!("clip={c} (Keras cells do not clip)"));
        }
        if a.input_forget != 0 {
            problems.push(format!("input_forget={}", a.input_forget));
        }
        if op != OnnxOp::Gru && a.linear_before_reset != 0 {
            problems.push(format!("linear_before_reset on {}", op.name()));
        }
        if !matches!(a.layout, 0 | 1) {
            problems.push(format!("layout={}", a.layout));
        }
        if let Some(p) = &self.p {
            if p.iter().any(|v| v.to_f64() != 0.0) {
                problems.push("P (peepholes; a Keras LSTM has none)".into());
            }
        }
        // Activations: one list for all directions; alpha/beta consumed in order.
        let defaults = op.default_activations();
        let per = defaults.len();
        let names: Vec<String> = if a.activations.is_empty() {
            (0..d)
                .flat_map(|_| defaults.iter().map(|s| s.to_string()))
                .collect()
        } else {
            a.activations.clone()
        };
        if names.len() != per * d {
            problems.push(format!(
                "activations: {} names for {d} direction(s) of {} ({per} each)",
                names.len(),
                op.name()
            ));
            return LstmConfig::new(a.hidden_size.max(1));
        }
        let (mut ai, mut bi) = (0, 0);
        let mut mapped = Vec::new();
        for n in &names {
            let takes_alpha = matches!(
                n.as_str(),
                "Affine" | "LeakyRelu" | "ThresholdedRelu" | "ScaledTanh" | "HardSigmoid" | "Elu"
            );
            let takes_beta = matches!(n.as_str(), "Affine" | "ScaledTanh" | "HardSigmoid");
            let alpha = takes_alpha
                .then(|| a.activation_alpha.get(ai).copied())
                .flatten();
            let beta = takes_beta
                .then(|| a.activation_beta.get(bi).copied())
                .flatten();
            ai += usize::from(takes_alpha && alpha.is_some());
            bi += usize::from(takes_beta && beta.is_some());
            match activation(n, alpha, beta) {
                Some(act) => mapped.push(act),
                None => {
                    problems.push(format!("activations: {n} (alpha {alpha:?}, beta {beta:?})"));
                    mapped.push(Activation::Linear);
                }
            }
        }
        // Keras has one recurrent_activation (the gates) and one activation per layer.
        for dir in mapped.chunks(per) {
            if dir != &mapped[..per] {
                problems.push("activations differ between the directions".into());
            }
        }
        let (rec, act) = match op {
            OnnxOp::Lstm => {
                if mapped[1] != mapped[2] {
                    problems.push(format!(
                        "activations: g = {} and h = {} differ (Keras uses one activation)",
                        names[1], names[2]
                    ));
                }
                (mapped[0], mapped[1])
            }
            OnnxOp::Gru => (mapped[0], mapped[1]),
            OnnxOp::Rnn => (Activation::Sigmoid, mapped[0]),
        };
        let cell = match op {
            OnnxOp::Lstm => Cell::Lstm,
            OnnxOp::Gru => Cell::Gru {
                reset_after: a.linear_before_reset != 0,
            },
            OnnxOp::Rnn => Cell::SimpleRnn,
        };
        LstmConfig::new(a.hidden_size.max(1))
            .cell(cell)
            .activation(act)
            .recurrent_activation(rec)
            .unit_forget_bias(false)
            .use_bias(self.b.is_some())
            .return_sequences(true)
            .return_state(true)
            // ONNX pads Y with zeros past sequence_lens.
            .zero_output_for_mask(true)
            .go_backwards(a.direction == "reverse")
    }

    /// The layer that computes this node: a recurrent layer (`direction` forward or reverse)
    /// or a `Bidirectional` one with merge mode None, returning Keras's outputs (the sequence
    /// or sequences, then the states); [`OnnxNode::outputs`] turns those into `Y`, `Y_h`,
    /// `Y_c`. An error lists every attribute or input the crate cannot run.
    pub fn network(&self) -> Result<Network<T>> {
        let mut problems = Vec::new();
        let config = self.config(&mut problems);
        if !problems.is_empty() {
            return Err(LstmError::unsupported(
                format!("ONNX {} node", self.op.name()),
                problems.join("; "),
            ));
        }
        let d = self.directions();
        let h = config.units;
        let g = config.cell.gates();
        let (dw, dr) = (self.w.dim(), self.r.dim());
        if dw.0 != d || dw.1 != g * h {
            return Err(LstmError::shape("W", &[d, g * h, dw.2], self.w.shape()));
        }
        if dr != (d, g * h, h) {
            return Err(LstmError::shape("R", &[d, g * h, h], self.r.shape()));
        }
        if let Some(b) = &self.b {
            if b.dim() != (d, 2 * g * h) {
                return Err(LstmError::shape("B", &[d, 2 * g * h], b.shape()));
            }
        }
        let weights = |k: usize, c: &LstmConfig| {
            LstmWeights::from_onnx_any_activation(
                c,
                self.w.index_axis(Axis(0), k),
                self.r.index_axis(Axis(0), k),
                self.b.as_ref().map(|b| b.row(k)),
            )
        };
        if d == 1 {
            let w = weights(0, &config)?;
            return Ok(Network::Lstm(crate::cpu::Lstm::new(config, w)?));
        }
        let bidi = BidirectionalConfig::new(config, MergeMode::None);
        let fw = weights(0, &bidi.forward)?;
        let bw = weights(1, &bidi.backward)?;
        Ok(Network::Bidirectional(Box::new(Bidirectional::new(
            bidi, fw, bw,
        )?)))
    }

    /// `X` (`[T, B, I]`, or `[B, T, I]` with `layout` 1) as the `[B, T, I]` the layer takes.
    pub fn input(&self, x: ArrayView3<T>) -> Array3<T> {
        match self.attributes.layout {
            1 => x.to_owned(),
            _ => x.permuted_axes([1, 0, 2]).as_standard_layout().into_owned(),
        }
    }

    /// `sequence_lens [B]` as the mask `[B, T]` (true for the first `len` steps of a row), or
    /// an error naming a length past T.
    pub fn mask(&self, sequence_lens: ArrayView1<i64>, steps: usize) -> Result<Array2<bool>> {
        if let Some(l) = sequence_lens.iter().find(|&&l| l < 0 || l as usize > steps) {
            return Err(LstmError::invalid(
                "sequence_lens",
                format!("{l} is not a length within the {steps} timesteps"),
            ));
        }
        Ok(Array2::from_shape_fn(
            (sequence_lens.len(), steps),
            |(b, t)| (t as i64) < sequence_lens[b],
        ))
    }

    /// `initial_h` and `initial_c` (`[D, B, H]`, or `[B, D, H]` with `layout` 1) as the
    /// initial-state list the layer takes (per direction h, then c for an LSTM).
    pub fn initial_state(
        &self,
        initial_h: Option<ArrayView3<T>>,
        initial_c: Option<ArrayView3<T>>,
    ) -> Result<Option<Vec<Array2<T>>>> {
        let Some(h) = initial_h else {
            if initial_c.is_some() {
                return Err(LstmError::MissingWeight {
                    name: "initial_h (initial_c is given)".into(),
                });
            }
            return Ok(None);
        };
        let batch_major = self.attributes.layout == 1;
        let (h, c) = if batch_major {
            (
                h.permuted_axes([1, 0, 2]),
                initial_c.map(|c| c.permuted_axes([1, 0, 2])),
            )
        } else {
            (h, initial_c)
        };
        let mut out = Vec::new();
        for d in 0..self.directions() {
            out.push(h.index_axis(Axis(0), d).to_owned());
            if self.op == OnnxOp::Lstm {
                let c = match c {
                    Some(c) => c.index_axis(Axis(0), d).to_owned(),
                    None => Array2::zeros(h.index_axis(Axis(0), d).dim()),
                };
                out.push(c);
            }
        }
        Ok(Some(out))
    }

    /// The layer's Keras outputs as the operator's `(Y, Y_h, Y_c)`: `Y [T, D, B, H]`
    /// (`[B, T, D, H]` with `layout` 1), `Y_h` and `Y_c` `[D, B, H]` (`[B, D, H]`); `Y_c` only
    /// for an LSTM. A reverse direction's sequence is returned in input order, as ONNX does.
    #[allow(clippy::type_complexity)]
    pub fn outputs(
        &self,
        outputs: Vec<ArrayD<T>>,
    ) -> Result<(ArrayD<T>, ArrayD<T>, Option<ArrayD<T>>)> {
        let d = self.directions();
        let states = if self.op == OnnxOp::Lstm { 2 } else { 1 };
        if outputs.len() != d + d * states {
            return Err(LstmError::invalid(
                "outputs",
                format!("expected {} tensors, got {}", d + d * states, outputs.len()),
            ));
        }
        let as3 = |a: &ArrayD<T>| -> Result<Array3<T>> {
            a.clone()
                .into_dimensionality::<Ix3>()
                .map_err(|_| LstmError::shape("output sequence", &[0, 0, 0], a.shape()))
        };
        let as2 = |a: &ArrayD<T>| -> Result<Array2<T>> {
            a.clone()
                .into_dimensionality::<Ix2>()
                .map_err(|_| LstmError::shape("state", &[0, 0], a.shape()))
        };
        // [B, T, H] per direction, input order.
        let mut seqs = Vec::new();
        for (k, o) in outputs[..d].iter().enumerate() {
            let mut s = as3(o)?;
            if d == 1 && k == 0 && self.attributes.direction == "reverse" {
                s.invert_axis(Axis(1));
            }
            seqs.push(s);
        }
        let views: Vec<_> = seqs.iter().map(|s| s.view().insert_axis(Axis(2))).collect();
        // [B, T, D, H]
        let y = ndarray::concatenate(Axis(2), &views)
            .map_err(|e| LstmError::invalid("outputs", e.to_string()))?;
        let state = |which: usize| -> Result<ArrayD<T>> {
            let per_dir: Vec<Array2<T>> = (0..d)
                .map(|k| as2(&outputs[d + k * states + which]))
                .collect::<Result<_>>()?;
            let views: Vec<_> = per_dir
                .iter()
                .map(|s| s.view().insert_axis(Axis(0)))
                .collect();
            // [D, B, H]
            let s = ndarray::concatenate(Axis(0), &views)
                .map_err(|e| LstmError::invalid("outputs", e.to_string()))?;
            Ok(match self.attributes.layout {
                1 => s.permuted_axes([1, 0, 2]).as_standard_layout().into_owned(),
                _ => s,
            }
            .into_dyn())
        };
        let y = match self.attributes.layout {
            1 => y,
            _ => y
                .permuted_axes([1, 2, 0, 3])
                .as_standard_layout()
                .into_owned(),
        }
        .into_dyn();
        let y_c = if states == 2 { Some(state(1)?) } else { None };
        Ok((y, state(0)?, y_c))
    }
}
