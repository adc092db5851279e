//! `Bidirectional(LSTM)` and stacks of layers on the CPU path, and [`Network`], one type for
//! whatever a Keras layer config describes.

use crate::config::{BidirectionalConfig, LayerConfig, MergeMode};
use crate::cpu::Lstm;
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::weights::LstmWeights;
use ndarray::{ArrayD, ArrayView2, ArrayView3, Axis, Ix3};

/// A Keras `Bidirectional(LSTM)` layer on the CPU.
///
/// ```
/// use lstm_wgpu::{Bidirectional, BidirectionalConfig, LstmConfig, LstmWeights, MergeMode};
/// let cfg = BidirectionalConfig::new(LstmConfig::new(3).return_sequences(true), MergeMode::Concat);
/// let fw = LstmWeights::<f32>::random(&cfg.forward, 2, 1).unwrap();
/// let bw = LstmWeights::<f32>::random(&cfg.backward, 2, 2).unwrap();
/// let mut layer = Bidirectional::new(cfg, fw, bw).unwrap();
/// let x = ndarray::Array3::<f32>::ones((1, 4, 2));
/// let out = layer.forward(x.view(), None, None).unwrap();
/// assert_eq!(out.len(), 1);
/// assert_eq!(out[0].shape(), &[1, 4, 6]);
/// ```
#[derive(Debug, Clone)]
pub struct Bidirectional<T> {
    merge_mode: MergeMode,
    forward: Lstm<T>,
    backward: Lstm<T>,
}

impl<T: Element> Bidirectional<T> {
    /// Builds the layer from its configuration and the two directions' weights.
    pub fn new(
        config: BidirectionalConfig,
        forward: LstmWeights<T>,
        backward: LstmWeights<T>,
    ) -> Result<Self> {
        if forward.input_dim() != backward.input_dim() {
            return Err(LstmError::shape(
                format!("{}/kernel", config.backward.name),
                &[
                    forward.input_dim(),
                    config.backward.cell.gates() * config.backward.units,
                ],
                backward.kernel.shape(),
            ));
        }
        Ok(Bidirectional {
            merge_mode: config.merge_mode,
            forward: Lstm::new(config.forward, forward)?,
            backward: Lstm::new(config.backward, backward)?,
        })
    }

    /// The forward-direction layer.
    pub fn forward_layer(&self) -> &Lstm<T> {
        &self.forward
    }

    /// The backward-direction layer.
    pub fn backward_layer(&self) -> &Lstm<T> {
        &self.backward
    }

    /// The merge mode.
    pub fn merge_mode(&self) -> MergeMode {
        self.merge_mode
    }

    /// Zeroes the carried state of stateful directions.
    pub fn reset_states(&mut self) {
        self.forward.reset_states();
        self.backward.reset_states();
    }

    /// Runs both directions. `initial_state` is `[h0_fwd, c0_fwd, h0_bwd, c0_bwd]`.
    /// Returns Keras's outputs: `[merged]` or `[fwd, bwd]` (merge mode None), followed by
    /// `h_fwd, c_fwd, h_bwd, c_bwd` when `return_state`.
    pub fn forward(
        &mut self,
        x: ArrayView3<T>,
        initial_state: Option<&[ArrayView2<T>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<Vec<ArrayD<T>>> {
        let n = self.forward.config().cell.states();
        let (fwd_init, bwd_init) = match initial_state {
            None => (None, None),
            Some(init) if init.len() == 2 * n => (Some(&init[..n]), Some(&init[n..])),
            Some(other) => {
                let names = if n == 2 {
                    "[h_fwd, c_fwd, h_bwd, c_bwd]"
                } else {
                    "[h_fwd, h_bwd]"
                };
                return Err(LstmError::invalid(
                    "initial_state",
                    format!(
                        "Bidirectional({}) takes {} tensors {names}, got {}",
                        self.forward.config().cell.class_name(),
                        2 * n,
                        other.len()
                    ),
                ));
            }
        };
        let f = self.forward.forward_states(x, fwd_init, mask)?;
        let b = self.backward.forward_states(x, bwd_init, mask)?;
        let return_sequences = self.forward.config().return_sequences;
        Ok(merge_directions(
            self.merge_mode,
            return_sequences,
            f.into_keras(),
            b.into_keras(),
        ))
    }
}

/// Combines the two directions' Keras outputs (`[y, h?, c?]` each) as `Bidirectional` does:
/// the backward sequence is flipped back to input order, then merged.
pub(crate) fn merge_directions<T: Element>(
    mode: MergeMode,
    return_sequences: bool,
    fwd: Vec<ArrayD<T>>,
    bwd: Vec<ArrayD<T>>,
) -> Vec<ArrayD<T>> {
    let mut fwd = fwd.into_iter();
    let mut bwd = bwd.into_iter();
    let y = fwd.next().expect("an LSTM returns at least its output");
    let mut y_rev = bwd.next().expect("an LSTM returns at least its output");
    if return_sequences {
        y_rev.invert_axis(Axis(1));
        y_rev = y_rev.as_standard_layout().into_owned();
    }
    let half = T::from_f64(0.5);
    let mut out = match mode {
        MergeMode::Concat => {
            vec![
                ndarray::concatenate(Axis(y.ndim() - 1), &[y.view(), y_rev.view()])
                    .expect("both directions have the same leading shape"),
            ]
        }
        MergeMode::Sum => vec![&y + &y_rev],
        MergeMode::Mul => vec![&y * &y_rev],
        MergeMode::Ave => vec![(&y + &y_rev).mapv(|v| v * half)],
        MergeMode::None => vec![y, y_rev],
    };
    out.extend(fwd);
    out.extend(bwd);
    out
}

/// Whatever a Keras layer config describes: one `LSTM`, one `Bidirectional(LSTM)`, or a
/// `Sequential` stack of them.
///
/// ```
/// use lstm_wgpu::{LayerConfig, LstmConfig, Network};
/// let config = LayerConfig::Sequential(vec![
///     LayerConfig::Lstm(LstmConfig::new(4).return_sequences(true)),
///     LayerConfig::Lstm(LstmConfig::new(2)),
/// ]);
/// let mut net = Network::<f32>::random(&config, 3, 0).unwrap();
/// let x = ndarray::Array3::<f32>::zeros((5, 7, 3));
/// let out = net.forward(x.view(), None, None).unwrap();
/// assert_eq!(out[0].shape(), &[5, 2]);
/// ```
// A network is built once and lives long; the size difference of its variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Network<T> {
    /// One LSTM.
    Lstm(Lstm<T>),
    /// One Bidirectional LSTM.
    Bidirectional(Box<Bidirectional<T>>),
    /// Layers applied in order.
    Sequential(Vec<Network<T>>),
}

impl<T: Element> Network<T> {
    /// Builds the network from its configuration and the weights in Keras `get_weights()`
    /// order. Every weight must be used; shapes are checked layer by layer.
    pub fn from_keras_weights(config: &LayerConfig, weights: &[ArrayD<T>]) -> Result<Self> {
        let (net, used) = Self::build(config, weights)?;
        if used != weights.len() {
            return Err(LstmError::invalid(
                "weights",
                format!(
                    "the configuration uses {used} weight arrays, {} were given",
                    weights.len()
                ),
            ));
        }
        Ok(net)
    }

    fn build(config: &LayerConfig, weights: &[ArrayD<T>]) -> Result<(Self, usize)> {
        match config {
            LayerConfig::Lstm(c) => {
                let (w, used) = LstmWeights::from_keras_list(c, weights)?;
                Ok((Network::Lstm(Lstm::new(c.clone(), w)?), used))
            }
            LayerConfig::Bidirectional(b) => {
                let (fw, n1) = LstmWeights::from_keras_list(&b.forward, weights)?;
                let (bw, n2) = LstmWeights::from_keras_list(&b.backward, &weights[n1..])?;
                Ok((
                    Network::Bidirectional(Box::new(Bidirectional::new(b.clone(), fw, bw)?)),
                    n1 + n2,
                ))
            }
            LayerConfig::Sequential(layers) => {
                let mut used = 0;
                let mut nets = Vec::new();
                for l in layers {
                    let (n, u) = Self::build(l, &weights[used..])?;
                    used += u;
                    nets.push(n);
                }
                Self::check_stack(&nets)?;
                Ok((Network::Sequential(nets), used))
            }
        }
    }

    /// Fresh weights for every layer, from one seed (each LSTM gets its own stream).
    pub fn random(config: &LayerConfig, input_dim: usize, seed: u64) -> Result<Self> {
        let mut next_seed = seed;
        Self::random_inner(config, input_dim, &mut next_seed)
    }

    fn random_inner(config: &LayerConfig, input_dim: usize, seed: &mut u64) -> Result<Self> {
        let mut draw = |c: &crate::LstmConfig, i: usize| {
            let w = LstmWeights::random(c, i, *seed);
            *seed = seed.wrapping_add(1);
            w
        };
        match config {
            LayerConfig::Lstm(c) => Ok(Network::Lstm(Lstm::new(c.clone(), draw(c, input_dim)?)?)),
            LayerConfig::Bidirectional(b) => {
                let fw = draw(&b.forward, input_dim)?;
                let bw = draw(&b.backward, input_dim)?;
                let layer = Bidirectional::new(b.clone(), fw, bw)?;
                Ok(Network::Bidirectional(Box::new(layer)))
            }
            LayerConfig::Sequential(layers) => {
                let mut nets: Vec<Network<T>> = Vec::new();
                let mut width = input_dim;
                for l in layers {
                    let n = Self::random_inner(l, width, seed)?;
                    width = n.output_width();
                    nets.push(n);
                }
                Self::check_stack(&nets)?;
                Ok(Network::Sequential(nets))
            }
        }
    }

    fn check_stack(nets: &[Network<T>]) -> Result<()> {
        for (k, n) in nets.iter().enumerate() {
            if n.output_count() != 1 && k + 1 < nets.len() {
                return Err(LstmError::invalid(
                    format!("Sequential layer {k} ({})", n.name()),
                    format!(
                        "returns {} tensors; only the last layer of a stack may",
                        n.output_count()
                    ),
                ));
            }
            if let Some(next) = nets.get(k + 1) {
                if !n.returns_sequences() {
                    return Err(LstmError::invalid(
                        format!("Sequential layer {k} ({})", n.name()),
                        "feeds another recurrent layer but has return_sequences=false",
                    ));
                }
                if next.input_dim() != n.output_width() {
                    return Err(LstmError::shape(
                        format!("Sequential layer {} ({}) kernel", k + 1, next.name()),
                        &[n.output_width()],
                        &[next.input_dim()],
                    ));
                }
            }
        }
        Ok(())
    }

    /// The layer's (or the first layer's) name.
    pub fn name(&self) -> &str {
        match self {
            Network::Lstm(l) => &l.config().name,
            Network::Bidirectional(b) => &b.forward_layer().config().name,
            Network::Sequential(ls) => ls[0].name(),
        }
    }

    /// The input width I the network takes.
    pub fn input_dim(&self) -> usize {
        match self {
            Network::Lstm(l) => l.input_dim(),
            Network::Bidirectional(b) => b.forward_layer().input_dim(),
            Network::Sequential(ls) => ls[0].input_dim(),
        }
    }

    /// The width of the (first) output's last axis.
    pub fn output_width(&self) -> usize {
        match self {
            Network::Lstm(l) => l.config().units,
            Network::Bidirectional(b) => {
                let (f, w) = (b.forward_layer(), b.backward_layer());
                match b.merge_mode() {
                    MergeMode::Concat => f.config().units + w.config().units,
                    _ => f.config().units,
                }
            }
            Network::Sequential(ls) => ls.last().map_or(0, |l| l.output_width()),
        }
    }

    /// Whether the (last) layer returns the whole sequence.
    pub fn returns_sequences(&self) -> bool {
        match self {
            Network::Lstm(l) => l.config().return_sequences,
            Network::Bidirectional(b) => b.forward_layer().config().return_sequences,
            Network::Sequential(ls) => ls.last().is_some_and(|l| l.returns_sequences()),
        }
    }

    /// How many tensors a call returns.
    pub fn output_count(&self) -> usize {
        match self {
            Network::Lstm(l) => 1 + l.config().cell.states() * usize::from(l.config().return_state),
            Network::Bidirectional(b) => {
                let outs = if b.merge_mode() == MergeMode::None {
                    2
                } else {
                    1
                };
                let c = b.forward_layer().config();
                outs + 2 * c.cell.states() * usize::from(c.return_state)
            }
            Network::Sequential(ls) => ls.last().map_or(0, |l| l.output_count()),
        }
    }

    /// The weights in Keras `get_weights()` order (per LSTM: kernel, recurrent_kernel, bias).
    ///
    /// ```
    /// use lstm_wgpu::{LayerConfig, LstmConfig, Network};
    /// let config = LayerConfig::Lstm(LstmConfig::new(2));
    /// let net = Network::<f32>::random(&config, 3, 0).unwrap();
    /// let w = net.keras_weights();
    /// let same = Network::from_keras_weights(&config, &w).unwrap();
    /// assert_eq!(same.keras_weights(), w);
    /// ```
    pub fn keras_weights(&self) -> Vec<ArrayD<T>> {
        let lstm = |l: &Lstm<T>| {
            let w = l.weights();
            let mut v = vec![
                w.kernel.clone().into_dyn(),
                w.recurrent_kernel.clone().into_dyn(),
            ];
            v.extend(w.bias.clone().map(|b| b.into_dyn()));
            v
        };
        match self {
            Network::Lstm(l) => lstm(l),
            Network::Bidirectional(b) => {
                let mut v = lstm(b.forward_layer());
                v.extend(lstm(b.backward_layer()));
                v
            }
            Network::Sequential(ls) => ls.iter().flat_map(|l| l.keras_weights()).collect(),
        }
    }

    /// Zeroes the carried state of every stateful layer.
    pub fn reset_states(&mut self) {
        match self {
            Network::Lstm(l) => l.reset_states(),
            Network::Bidirectional(b) => b.reset_states(),
            Network::Sequential(ls) => ls.iter_mut().for_each(|l| l.reset_states()),
        }
    }

    /// Runs the network on `x [B, T, I]` and returns Keras's outputs in return order.
    /// `initial_state` is `[h0, c0]` for an LSTM, `[h_fwd, c_fwd, h_bwd, c_bwd]` for a
    /// Bidirectional layer, and not accepted for a stack. The mask `[B, T]` is passed on to the
    /// next layer of a stack while layers return sequences (as Keras's `compute_mask` does).
    pub fn forward(
        &mut self,
        x: ArrayView3<T>,
        initial_state: Option<&[ArrayView2<T>]>,
        mask: Option<ArrayView2<bool>>,
    ) -> Result<Vec<ArrayD<T>>> {
        match self {
            Network::Lstm(l) => Ok(l.forward_states(x, initial_state, mask)?.into_keras()),
            Network::Bidirectional(b) => b.forward(x, initial_state, mask),
            Network::Sequential(layers) => {
                if initial_state.is_some() {
                    return Err(LstmError::invalid(
                        "initial_state",
                        "a Sequential stack takes no initial state",
                    ));
                }
                let (last, inner) = layers.split_last_mut().expect("a stack has layers");
                // Each layer reads the previous one's (single) output; only the last layer's
                // outputs are returned.
                let mut current: Option<ArrayD<T>> = None;
                for (k, layer) in inner.iter_mut().enumerate() {
                    let input = match &current {
                        None => x,
                        Some(c) => as_sequence(c, k)?,
                    };
                    let next = layer.forward(input, None, mask)?.swap_remove(0);
                    current = Some(next);
                }
                let input = match &current {
                    None => x,
                    Some(c) => as_sequence(c, inner.len())?,
                };
                let outputs = last.forward(input, None, mask)?;
                Ok(outputs)
            }
        }
    }
}

/// The output of stack layer `k - 1` as the `[B, T, W]` input of layer `k`.
fn as_sequence<T>(a: &ArrayD<T>, k: usize) -> Result<ArrayView3<'_, T>> {
    a.view().into_dimensionality::<Ix3>().map_err(|_| {
        LstmError::shape(
            format!("input of Sequential layer {k}"),
            &[0, 0, 0],
            a.shape(),
        )
    })
}
