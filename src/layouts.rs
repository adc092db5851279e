//! Weights in PyTorch's and ONNX's layouts, to and from Keras's, for every cell: PyTorch
//! `nn.LSTM`, `nn.GRU` (Keras's GRU with `reset_after=True`) and `nn.RNN`; the ONNX `LSTM`,
//! `GRU` (`linear_before_reset=1` is Keras's `reset_after=True`, `0` its `False`) and `RNN`
//! operators. Whole ONNX nodes, attributes included, are in [`crate::onnx`].

use crate::config::{Cell, LstmConfig};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use crate::Activation;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

/// A recurrent layer's weights in PyTorch's layout (`nn.LSTM`, `nn.GRU` or `nn.RNN`; one
/// layer, one direction): `weight_ih [G·H, I]`, `weight_hh [G·H, H]` and two bias vectors.
/// Gate blocks: LSTM i, f, g, o (g is Keras's cell candidate c); GRU r, z, n.
#[derive(Debug, Clone, PartialEq)]
pub struct PytorchLstmWeights<T> {
    /// `weight_ih_l0`: `[G·H, I]`.
    pub weight_ih: Array2<T>,
    /// `weight_hh_l0`: `[G·H, H]`.
    pub weight_hh: Array2<T>,
    /// `bias_ih_l0`: `[G·H]` (absent for `bias=False`).
    pub bias_ih: Option<Array1<T>>,
    /// `bias_hh_l0`: `[G·H]` (absent for `bias=False`).
    pub bias_hh: Option<Array1<T>>,
}

/// A recurrent layer's weights in the ONNX `LSTM`, `GRU` or `RNN` operator's layout, one
/// direction: `W [G·H, I]`, `R [G·H, H]`, `B [2·G·H]` (the input biases, then the recurrent
/// ones). Gate blocks: LSTM i, o, f, c; GRU z, r, h (Keras's order).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxLstmWeights<T> {
    /// `W[d]`: `[G·H, I]`.
    pub w: Array2<T>,
    /// `R[d]`: `[G·H, H]`.
    pub r: Array2<T>,
    /// `B[d]`: `[2·G·H]` (absent when the node has no `B` input).
    pub b: Option<Array1<T>>,
}

/// Where each of a foreign layout's gate blocks goes in Keras's order (block k → `to[k]`).
fn onnx_order(cell: Cell) -> &'static [usize] {
    match cell {
        // ONNX i, o, f, c; Keras i, f, c, o
        Cell::Lstm => &[0, 3, 1, 2],
        Cell::Gru { .. } => &[0, 1, 2],
        Cell::SimpleRnn => &[0],
    }
}

fn pytorch_order(cell: Cell) -> &'static [usize] {
    match cell {
        Cell::Lstm => &[0, 1, 2, 3],
        // PyTorch r, z, n; Keras z, r, h
        Cell::Gru { .. } => &[1, 0, 2],
        Cell::SimpleRnn => &[0],
    }
}

/// Moves the H-wide blocks of axis 0 of `m` (`[G·H, n]`): output block `to[k]` = input
/// block k.
fn permute_blocks<T: Element>(m: ArrayView2<T>, h: usize, to: &[usize]) -> Array2<T> {
    let mut out = Array2::zeros(m.dim());
    for (k, &dst) in to.iter().enumerate() {
        out.slice_mut(s![dst * h..(dst + 1) * h, ..])
            .assign(&m.slice(s![k * h..(k + 1) * h, ..]));
    }
    out
}

fn permute_vector<T: Element>(v: ArrayView1<T>, h: usize, to: &[usize]) -> Array1<T> {
    permute_blocks(v.insert_axis(Axis(1)), h, to).index_axis_move(Axis(1), 0)
}

fn inverse(to: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; to.len()];
    for (k, &dst) in to.iter().enumerate() {
        inv[dst] = k;
    }
    inv
}

/// `config`'s activations are the ones `layout` fixes for its cell.
fn check_activations(config: &LstmConfig, layout: &str) -> Result<()> {
    let (act, rec) = (config.activation, config.recurrent_activation);
    let ok = match config.cell {
        Cell::Lstm | Cell::Gru { .. } => act == Activation::Tanh && rec == Activation::Sigmoid,
        // nn.RNN: tanh or relu; the ONNX operator's default: tanh
        Cell::SimpleRnn => {
            act == Activation::Tanh || (layout == "PyTorch" && act == Activation::Relu)
        }
    };
    if ok {
        return Ok(());
    }
    Err(LstmError::unsupported(
        "activation",
        format!(
            "{act}/{rec} ({layout} {} weights assume {})",
            config.cell.class_name(),
            match (config.cell, layout) {
                (Cell::SimpleRnn, "PyTorch") => "tanh or relu",
                (Cell::SimpleRnn, _) => "tanh (use crate::onnx for other activations)",
                _ => "tanh and sigmoid",
            }
        ),
    ))
}

/// The bias of the two foreign vectors `input`, `recurrent` (Keras layout, permuted): a
/// `reset_after` GRU keeps both (`[6H]`), every other cell adds them.
fn join_biases<T: Element>(
    config: &LstmConfig,
    input: Option<Array1<T>>,
    recurrent: Option<Array1<T>>,
    names: (&str, &str),
) -> Result<Option<Array1<T>>> {
    match (input, recurrent) {
        (Some(a), Some(b)) => {
            if a.len() != b.len() {
                return Err(LstmError::shape(names.1, &[a.len()], &[b.len()]));
            }
            Ok(Some(match config.cell {
                Cell::Gru { reset_after: true } => {
                    ndarray::concatenate(Axis(0), &[a.view(), b.view()]).expect("1-D")
                }
                _ => &a + &b,
            }))
        }
        (None, None) => Ok(None),
        _ => Err(LstmError::MissingWeight {
            name: format!("{} / {} (both or neither)", names.0, names.1),
        }),
    }
}

/// Splits a Keras bias into the foreign (input, recurrent) vectors, Keras order.
fn split_bias<T: Element>(config: &LstmConfig, bias: &Array1<T>) -> (Array1<T>, Array1<T>) {
    let gh = config.cell.gates() * config.units;
    match config.cell {
        Cell::Gru { reset_after: true } => (
            bias.slice(s![..gh]).to_owned(),
            bias.slice(s![gh..]).to_owned(),
        ),
        _ => (bias.clone(), Array1::zeros(gh)),
    }
}

/// `m` must be `[rows, cols]`.
fn check_dim<T>(name: &str, m: ArrayView2<T>, rows: usize, cols: usize) -> Result<()> {
    if m.dim() != (rows, cols) {
        return Err(LstmError::shape(name, &[rows, cols], m.shape()));
    }
    Ok(())
}

impl<T: Element> LstmWeights<T> {
    /// Converts PyTorch weights to Keras layout for `config`'s cell: `nn.LSTM` (gates i, f,
    /// g, o; `bias_ih + bias_hh`), `nn.GRU` (gates r, z, n; the two biases kept as a
    /// `reset_after` GRU's input and recurrent bias) or `nn.RNN` (`bias_ih + bias_hh`). The
    /// activations must be PyTorch's (tanh and sigmoid; tanh or relu for an RNN), a GRU must
    /// have `reset_after` (PyTorch has no other form), and `use_bias` must match the biases.
    ///
    /// ```
    /// use lstm_wgpu::{LstmConfig, LstmWeights};
    /// let c = LstmConfig::gru(2);
    /// let w = LstmWeights::<f32>::random(&c, 3, 0).unwrap();
    /// let pt = w.to_pytorch(&c).unwrap();
    /// assert_eq!(pt.weight_ih.dim(), (6, 3));
    /// let back = LstmWeights::from_pytorch(&c, pt.weight_ih.view(), pt.weight_hh.view(),
    ///     pt.bias_ih.as_ref().map(|b| b.view()), pt.bias_hh.as_ref().map(|b| b.view())).unwrap();
    /// assert_eq!(back, w);
    /// ```
    pub fn from_pytorch(
        config: &LstmConfig,
        weight_ih: ArrayView2<T>,
        weight_hh: ArrayView2<T>,
        bias_ih: Option<ArrayView1<T>>,
        bias_hh: Option<ArrayView1<T>>,
    ) -> Result<Self> {
        check_activations(config, "PyTorch")?;
        if config.cell == (Cell::Gru { reset_after: false }) {
            return Err(LstmError::unsupported(
                "reset_after",
                "false (PyTorch's nn.GRU is Keras's reset_after=True form)",
            ));
        }
        let (h, gh) = (config.units, config.cell.gates() * config.units);
        check_dim("weight_ih", weight_ih, gh, weight_ih.ncols())?;
        check_dim("weight_hh", weight_hh, gh, h)?;
        let to = pytorch_order(config.cell);
        let bias = join_biases(
            config,
            bias_ih.map(|b| permute_vector(b, h, to)),
            bias_hh.map(|b| permute_vector(b, h, to)),
            ("bias_ih", "bias_hh"),
        )?;
        let kernel = permute_blocks(weight_ih, h, to).reversed_axes();
        let recurrent = permute_blocks(weight_hh, h, to).reversed_axes();
        LstmWeights::new(config, kernel.nrows(), kernel, recurrent, bias)
    }

    /// These weights (of a layer configured by `config`) in PyTorch's layout; `bias_hh` is
    /// zero except for a GRU (whose recurrent bias it is). A GRU without `reset_after` has no
    /// PyTorch form: an error.
    pub fn to_pytorch(&self, config: &LstmConfig) -> Result<PytorchLstmWeights<T>> {
        self.validate(config, self.input_dim())?;
        if config.cell == (Cell::Gru { reset_after: false }) {
            return Err(LstmError::unsupported(
                "reset_after",
                "false (PyTorch's nn.GRU is Keras's reset_after=True form)",
            ));
        }
        let h = config.units;
        let back = inverse(pytorch_order(config.cell));
        let (bias_ih, bias_hh) = match &self.bias {
            Some(b) => {
                let (i, r) = split_bias(config, b);
                (
                    Some(permute_vector(i.view(), h, &back)),
                    Some(permute_vector(r.view(), h, &back)),
                )
            }
            None => (None, None),
        };
        Ok(PytorchLstmWeights {
            weight_ih: permute_blocks(self.kernel.t(), h, &back),
            weight_hh: permute_blocks(self.recurrent_kernel.t(), h, &back),
            bias_ih,
            bias_hh,
        })
    }

    /// Converts one direction of an ONNX `LSTM`, `GRU` or `RNN` operator's weights (`W[d]`,
    /// `R[d]`, `B[d]`) to Keras layout for `config`'s cell, whose activations must be the
    /// operator's defaults (sigmoid and tanh; tanh for an RNN). A GRU's `reset_after` must
    /// match the node's `linear_before_reset` (1: true). A node with other attributes
    /// (activations, `clip`, peepholes, ...) is converted whole by [`crate::onnx`], which
    /// refuses what the crate cannot run.
    ///
    /// ```
    /// use lstm_wgpu::{LstmConfig, LstmWeights};
    /// let c = LstmConfig::new(2);
    /// let w = LstmWeights::<f64>::random(&c, 3, 0).unwrap();
    /// let o = w.to_onnx(&c).unwrap();
    /// let back = LstmWeights::from_onnx(&c, o.w.view(), o.r.view(), o.b.as_ref().map(|b| b.view())).unwrap();
    /// assert_eq!(back, w);
    /// ```
    pub fn from_onnx(
        config: &LstmConfig,
        w: ArrayView2<T>,
        r: ArrayView2<T>,
        b: Option<ArrayView1<T>>,
    ) -> Result<Self> {
        check_activations(config, "ONNX")?;
        Self::from_onnx_any_activation(config, w, r, b)
    }

    /// [`LstmWeights::from_onnx`] without the activation check (the caller mapped the node's
    /// activations into `config`).
    pub(crate) fn from_onnx_any_activation(
        config: &LstmConfig,
        w: ArrayView2<T>,
        r: ArrayView2<T>,
        b: Option<ArrayView1<T>>,
    ) -> Result<Self> {
        let (h, gh) = (config.units, config.cell.gates() * config.units);
        check_dim("W", w, gh, w.ncols())?;
        check_dim("R", r, gh, h)?;
        let to = onnx_order(config.cell);
        let bias = match b {
            None => None,
            Some(b) if b.len() == 2 * gh => join_biases(
                config,
                Some(permute_vector(b.slice(s![..gh]), h, to)),
                Some(permute_vector(b.slice(s![gh..]), h, to)),
                ("B (input half)", "B (recurrent half)"),
            )?,
            Some(b) => return Err(LstmError::shape("B", &[2 * gh], b.shape())),
        };
        let kernel = permute_blocks(w, h, to).reversed_axes();
        let recurrent = permute_blocks(r, h, to).reversed_axes();
        LstmWeights::new(config, kernel.nrows(), kernel, recurrent, bias)
    }

    /// These weights (of a layer configured by `config`) in the ONNX operator's layout; the
    /// recurrent half of `B` is zero except for a `reset_after` GRU.
    pub fn to_onnx(&self, config: &LstmConfig) -> Result<OnnxLstmWeights<T>> {
        self.validate(config, self.input_dim())?;
        let h = config.units;
        let back = inverse(onnx_order(config.cell));
        Ok(OnnxLstmWeights {
            w: permute_blocks(self.kernel.t(), h, &back),
            r: permute_blocks(self.recurrent_kernel.t(), h, &back),
            b: self.bias.as_ref().map(|b| {
                let (i, r) = split_bias(config, b);
                let (i, r) = (
                    permute_vector(i.view(), h, &back),
                    permute_vector(r.view(), h, &back),
                );
                ndarray::concatenate(Axis(0), &[i.view(), r.view()]).expect("two 1-D vectors")
            }),
        })
    }
}
