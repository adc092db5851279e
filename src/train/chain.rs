//! The chain's recorded forward pass, its backward pass (the loss's gradient back through
//! every layer, Keras's `trainable_weights` order) and `fit`.

use super::activation::{dense_activate, dense_activation_backward};
use super::dropout::{dropout_mask, recurrent_dropout, SplitMix};
use super::load::keras_bias;
use super::path::{CpuPath, CpuRecompute, RecurrentPath, Tape};
use super::{
    three, FitOptions, Gradients, History, Loss, LstmCotangents, Optimizer, Sequential, TrainLayer,
};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::model::DenseActivation;
use ndarray::{
    Array2, Array3, ArrayD, ArrayView, ArrayView2, ArrayViewD, Axis, Dimension, Ix2, IxDyn,
};

/// What one layer's forward pass keeps for its backward pass.
// (one per layer of a call; the arrays are on the heap either way)
#[allow(clippy::large_enum_variant)]
pub(super) enum Cache<T> {
    Masking(Array2<bool>),
    /// The tape, the input the cell saw (after its input dropout) and that dropout's scale
    /// mask.
    Lstm(Tape<T>, Array3<T>, Option<ArrayD<T>>),
    /// Both directions' tapes, the inputs they saw, both outputs (the backward one in input
    /// order), their input dropout masks, and cotangents added to each direction's output
    /// beside the merge's (an inner layer's activity regularizer's; the graph sets them).
    Bidi(
        Box<[Tape<T>; 2]>,
        [Array3<T>; 2],
        [ArrayD<T>; 2],
        [Option<ArrayD<T>>; 2],
        [Option<ArrayD<T>>; 2],
    ),
    Dense(ArrayD<T>, ArrayD<T>),
    /// The kept values' scale (0 where dropped), broadcast to the input; None at inference.
    Dropout(Option<ArrayD<T>>),
    /// The table rows looked up (row-major over `[B, T]`) and `[B, T]`.
    Embedding(Vec<usize>, [usize; 2]),
    /// A [`super::layers::TrainOp`]'s own.
    Op(super::layers::OpCache),
}

/// One layer's forward pass: its output, the output's Keras mask, the logits of a sigmoid or
/// softmax output, a recurrent layer's final states (`return_state`: h, and c for an LSTM)
/// and what its backward pass needs.
pub(super) struct LayerForward<T> {
    pub(super) y: ArrayD<T>,
    pub(super) mask: Option<Array2<bool>>,
    pub(super) logits: Option<ArrayD<T>>,
    pub(super) states: Vec<ArrayD<T>>,
    pub(super) cache: Cache<T>,
    /// A stateful recurrent layer's final (h, c), which its next call starts from.
    pub(super) carry: Option<(Array2<T>, Array2<T>)>,
}

/// One layer's backward pass: the cotangent of its input, its weights' gradients (Keras's
/// order), the per-element squares of a sparse (Embedding) gradient and the cotangents of a
/// recurrent layer's initial h and c.
pub(super) struct LayerBackward<T> {
    pub(super) dx: ArrayD<T>,
    pub(super) weights: Vec<ArrayD<T>>,
    pub(super) square: Option<ArrayD<T>>,
    pub(super) d_init: (Array2<T>, Array2<T>),
}

/// The state of layer `l` after a training-mode call that left `cache`, from `state`, its
/// state before that call (BatchNormalization's moving statistics, which Keras assigns in
/// the call: a layer called twice in a step updates them twice, in call order); None for a
/// layer that keeps none or a call in inference mode.
pub(super) fn state_after<T: Element>(
    l: &TrainLayer<T>,
    state: &[ArrayD<T>],
    cache: &Cache<T>,
) -> Option<Vec<ArrayD<T>>> {
    match (l, cache) {
        (TrainLayer::Op(op), Cache::Op(c)) => op.state_update(state, c),
        _ => None,
    }
}

/// The seed of the layer at `at` from a training step's (its own stream).
fn layer_seed(seed: u64, at: usize) -> u64 {
    seed ^ (at as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// The forward pass of layer `name` (`at`: its place, which picks its random streams in
/// training mode, seed `training`) on `h` under `mask`, a recurrent layer from `init` (its
/// initial h and c; zeros when None).
pub(super) fn layer_forward<T: Element>(
    path: &dyn RecurrentPath<T>,
    at: usize,
    (name, l): (&str, &TrainLayer<T>),
    h: ArrayD<T>,
    mask: Option<Array2<bool>>,
    init: Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>,
    training: Option<u64>,
) -> Result<LayerForward<T>> {
    if init.is_some() && !matches!(l, TrainLayer::Recurrent { .. }) {
        return Err(LstmError::unsupported(
            "initial_state",
            format!("on layer {name} in training (only an LSTM, GRU or SimpleRNN takes one)"),
        ));
    }
    let plain = |y: ArrayD<T>, mask: Option<Array2<bool>>, cache: Cache<T>| LayerForward {
        carry: None,
        y,
        mask,
        logits: None,
        states: Vec::new(),
        cache,
    };
    Ok(match l {
        TrainLayer::Embedding { table, mask_zero } => {
            let ids = h.view().into_dimensionality::<Ix2>().map_err(|_| {
                LstmError::shape(format!("input of layer {name}"), &[0, 0], h.shape())
            })?;
            let (b, t) = ids.dim();
            let (vocab, dim) = table.dim();
            let mut rows = Vec::with_capacity(b * t);
            for &v in ids.iter() {
                let f = v.to_f64();
                if !(f >= 0.0 && f < vocab as f64 && f.fract() == 0.0) {
                    return Err(LstmError::invalid(
                        format!("input of layer {name}"),
                        format!("token id {f} is not an integer in [0, {vocab})"),
                    ));
                }
                rows.push(f as usize);
            }
            let mut y = Array2::<T>::zeros((b * t, dim));
            for (mut out, &r) in y.rows_mut().into_iter().zip(&rows) {
                out.assign(&table.row(r));
            }
            let mask = mask_zero.then(|| ids.mapv(|v| v != T::zero()));
            let y = y
                .into_shape_with_order(IxDyn(&[b, t, dim]))
                .expect("[B·T, D] as [B, T, D]");
            plain(y, mask, Cache::Embedding(rows, [b, t]))
        }
        TrainLayer::Op(op) => {
            // (the layer's seed: its own stream of this step's, as a Dropout layer's)
            let seed = training.map(|s| layer_seed(s, at));
            let out = op.forward(name, h.view(), mask.as_ref(), seed)?;
            LayerForward {
                logits: op.logits(&out.cache),
                y: out.y,
                mask: out.mask,
                states: Vec::new(),
                cache: Cache::Op(out.cache),
                carry: None,
            }
        }
        TrainLayer::Dropout { rate, noise_shape } => match training {
            Some(seed) if *rate > 0.0 => {
                let mut rng = SplitMix(layer_seed(seed, at));
                let m = dropout_mask(name, *rate, noise_shape.as_deref(), h.shape(), &mut rng)?;
                plain(&h * &m, mask, Cache::Dropout(Some(m)))
            }
            _ => plain(h, mask, Cache::Dropout(None)),
        },
        TrainLayer::Masking { mask_value } => {
            let x3 = three(h.view(), name)?;
            let m = x3.map_axis(Axis(2), |row| row.iter().any(|v| v != mask_value));
            let mut y = x3.to_owned();
            zero_masked(&mut y, &m);
            plain(y.into_dyn(), Some(m.clone()), Cache::Masking(m))
        }
        TrainLayer::Recurrent {
            config,
            weights,
            dropout,
            recurrent_dropout: rd,
        } => {
            let x3 = three(h.view(), name)?;
            let (xin, dm, gm) = recurrent_dropout(config, x3, (*dropout, *rd), training, (at, 0))?;
            let (b, units) = (x3.dim().0, config.units);
            let lstm = matches!(config.cell, crate::config::Cell::Lstm);
            // (a GRU's or SimpleRNN's state is h alone: its c starts and stays zero)
            let zeros = Array2::<T>::zeros((b, units));
            let init = init.map(|(h0, c0)| (h0, if lstm { c0 } else { zeros.view() }));
            let (out, tape) = path.forward(
                (at, 0),
                (config, weights),
                xin.view(),
                mask.as_ref().map(|m| m.view()),
                init,
                gm.as_ref(),
            )?;
            let carry = config.stateful.then(|| (out.h.clone(), out.c.clone()));
            let states = match (config.return_state, lstm) {
                (false, _) => Vec::new(),
                (true, true) => vec![out.h.into_dyn(), out.c.into_dyn()],
                (true, false) => vec![out.h.into_dyn()],
            };
            LayerForward {
                y: out.output,
                mask: if config.return_sequences { mask } else { None },
                logits: None,
                states,
                cache: Cache::Lstm(tape, xin, dm),
                carry,
            }
        }
        TrainLayer::Bidirectional {
            forward,
            backward,
            merge,
            dropout,
            recurrent_dropout: rd,
        } => {
            let x3 = three(h.view(), name)?;
            let m = mask.as_ref().map(|m| m.view());
            let rates = (*dropout, *rd);
            let (xf, mf, gf) = recurrent_dropout(&forward.0, x3, rates, training, (at, 0))?;
            let (xb, mb, gb) = recurrent_dropout(&backward.0, x3, rates, training, (at, 1))?;
            let fw = (&forward.0, &forward.1);
            let (yf, tf) = path.forward((at, 0), fw, xf.view(), m, None, gf.as_ref())?;
            let bw = (&backward.0, &backward.1);
            let (yb, tb) = path.forward((at, 1), bw, xb.view(), m, None, gb.as_ref())?;
            let seqs = forward.0.return_sequences;
            let mut yb = yb.output;
            if seqs {
                yb.invert_axis(Axis(1));
                yb = yb.as_standard_layout().into_owned();
            }
            let yf = yf.output;
            let merged =
                crate::network::merge_directions(*merge, false, vec![yf.clone()], vec![yb.clone()])
                    .remove(0);
            let cache = Cache::Bidi(
                Box::new([tf, tb]),
                [xf, xb],
                [yf, yb],
                [mf, mb],
                [None, None],
            );
            plain(merged, if seqs { mask } else { None }, cache)
        }
        TrainLayer::Dense {
            kernel,
            bias,
            activation,
            time_distributed,
        } => {
            let shape = h.shape().to_vec();
            let (&width, lead) = shape.split_last().ok_or_else(|| {
                LstmError::shape(
                    format!("input of layer {name}"),
                    &[0, kernel.nrows()],
                    &shape,
                )
            })?;
            if width != kernel.nrows() {
                let mut want = lead.to_vec();
                want.push(kernel.nrows());
                return Err(LstmError::shape(
                    format!("input of layer {name}"),
                    &want,
                    &shape,
                ));
            }
            let rows: usize = lead.iter().product();
            let x2 = h
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order((rows, width))
                .expect("rows x features");
            let mut z = x2.dot(kernel);
            if let Some(b) = bias {
                z += b;
            }
            let mut out_shape = lead.to_vec();
            out_shape.push(kernel.ncols());
            let z = z
                .into_shape_with_order(IxDyn(&out_shape))
                .expect("the shape");
            let y = dense_activate(*activation, &z);
            // (Keras's loss takes the logits of a sigmoid or softmax output, which a
            // TimeDistributed's reshape of it hides: its loss is of the probabilities)
            let logits = (!time_distributed
                && matches!(
                    activation,
                    DenseActivation::Softmax
                        | DenseActivation::Elementwise(crate::Activation::Sigmoid)
                ))
            .then(|| z.clone());
            LayerForward {
                y,
                mask,
                logits,
                states: Vec::new(),
                cache: Cache::Dense(x2.into_dyn(), z),
                carry: None,
            }
        }
    })
}

/// The backward pass of layer `name` (at `at`) for the cotangent `d` of its output (of its
/// logits with `from_logits`) and `d_states` of its final states (`return_state`), from what
/// its forward pass kept.
pub(super) fn layer_backward<T: Element>(
    path: &dyn RecurrentPath<T>,
    at: usize,
    (name, l): (&str, &TrainLayer<T>),
    cache: Cache<T>,
    d: ArrayD<T>,
    d_states: [Option<Array2<T>>; 2],
    from_logits: bool,
) -> Result<LayerBackward<T>> {
    let none = || (Array2::zeros((0, 0)), Array2::zeros((0, 0)));
    let plain = |dx: ArrayD<T>, weights: Vec<ArrayD<T>>| LayerBackward {
        dx,
        weights,
        square: None,
        d_init: none(),
    };
    Ok(match (l, cache) {
        (TrainLayer::Embedding { table, .. }, Cache::Embedding(rows, [b, t])) => {
            // the looked-up rows' cotangents summed into the table (Keras's IndexedSlices,
            // densified); token ids have no gradient: zeros
            let dim = table.ncols();
            let d2 = d
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order((rows.len(), dim))
                .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
            let mut dt = Array2::<T>::zeros(table.raw_dim());
            let mut sq = Array2::<T>::zeros(table.raw_dim());
            for (g, &r) in d2.rows().into_iter().zip(&rows) {
                let mut row = dt.row_mut(r);
                row += &g;
                let mut srow = sq.row_mut(r);
                srow.zip_mut_with(&g, |s, &v| *s += v * v);
            }
            LayerBackward {
                square: Some(sq.into_dyn()),
                ..plain(ArrayD::zeros(IxDyn(&[b, t])), vec![dt.into_dyn()])
            }
        }
        (TrainLayer::Op(op), Cache::Op(cache)) => {
            // (the loss gave the cotangent of this last layer's logits)
            let (dx, w) = if from_logits {
                op.backward_from_logits(name, &cache, d)?
            } else {
                op.backward(name, &cache, d)?
            };
            plain(dx, w)
        }
        (TrainLayer::Dropout { .. }, Cache::Dropout(m)) => match m {
            Some(m) => plain(&d * &m, Vec::new()),
            None => plain(d, Vec::new()),
        },
        (TrainLayer::Masking { .. }, Cache::Masking(m)) => {
            let mut dx = d
                .into_dimensionality::<ndarray::Ix3>()
                .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
            zero_masked(&mut dx, &m);
            plain(dx.into_dyn(), Vec::new())
        }
        (
            TrainLayer::Recurrent {
                config, weights, ..
            },
            Cache::Lstm(tape, x3, dm),
        ) => {
            let [h, c] = d_states;
            let cot = LstmCotangents { output: d, h, c };
            let g = path.backward((at, 0), (config, weights), x3.view(), &tape, &cot)?;
            let n = g.kernel.ncols();
            let mut w = vec![g.kernel.into_dyn(), g.recurrent_kernel.into_dyn()];
            w.extend(g.bias.map(|b| keras_bias(b, n)));
            let mut dx = g.x.into_dyn();
            if let Some(m) = dm {
                dx = &dx * &m;
            }
            LayerBackward {
                d_init: (g.h0, g.c0),
                ..plain(dx, w)
            }
        }
        (
            TrainLayer::Bidirectional {
                forward,
                backward,
                merge,
                ..
            },
            Cache::Bidi(tapes, xs, [yf, yb], masks, [ef, eb]),
        ) => {
            use crate::config::MergeMode;
            let hf = forward.0.units;
            let last = Axis(d.ndim() - 1);
            let half = T::from_f64(0.5);
            let (mut df, mut db) = match merge {
                MergeMode::Concat => (
                    d.slice_axis(last, (..hf).into()).to_owned(),
                    d.slice_axis(last, (hf..).into()).to_owned(),
                ),
                MergeMode::Sum => (d.clone(), d),
                MergeMode::Ave => (d.mapv(|v| v * half), d.mapv(|v| v * half)),
                MergeMode::Mul => (&d * &yb, &d * &yf),
                MergeMode::None => {
                    return Err(LstmError::unsupported(
                        "merge_mode",
                        format!("None on layer {name} in training"),
                    ))
                }
            };
            for (d, e) in [(&mut df, ef), (&mut db, eb)] {
                if let Some(e) = e {
                    *d += &e;
                }
            }
            if forward.0.return_sequences {
                db.invert_axis(Axis(1));
                db = db.as_standard_layout().into_owned();
            }
            let [tf, tb] = *tapes;
            let mut w = Vec::new();
            let mut dx = ArrayD::<T>::zeros(IxDyn(xs[0].shape()));
            for (dir, ((cfg, weights), tape, d)) in [(forward, &tf, df), (backward, &tb, db)]
                .into_iter()
                .enumerate()
            {
                let x3 = &xs[dir];
                let cot = LstmCotangents {
                    output: d,
                    h: None,
                    c: None,
                };
                let g = path.backward((at, dir), (cfg, weights), x3.view(), tape, &cot)?;
                let n = g.kernel.ncols();
                w.extend([g.kernel.into_dyn(), g.recurrent_kernel.into_dyn()]);
                w.extend(g.bias.map(|b| keras_bias(b, n)));
                match &masks[dir] {
                    Some(m) => dx += &(&g.x.into_dyn() * m),
                    None => dx += &g.x.into_dyn(),
                }
            }
            plain(dx, w)
        }
        (
            TrainLayer::Dense {
                kernel,
                bias,
                activation,
                ..
            },
            Cache::Dense(x2, z),
        ) => {
            let dz = if from_logits {
                d
            } else {
                dense_activation_backward(*activation, &z, &d)
            };
            let units = kernel.ncols();
            let rows = dz.len() / units.max(1);
            let dz2 = dz
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order((rows, units))
                .map_err(|_| LstmError::invalid(format!("layer {name}"), "cotangent shape"))?;
            let x2 = x2.into_dimensionality::<Ix2>().expect("rows x features");
            let mut w = vec![x2.t().dot(&dz2).into_dyn()];
            if bias.is_some() {
                w.push(dz2.sum_axis(Axis(0)).into_dyn());
            }
            let mut shape = z.shape().to_vec();
            *shape.last_mut().expect("a shape") = kernel.nrows();
            let dx = dz2
                .dot(&kernel.t())
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&shape))
                .expect("the input's shape");
            plain(dx, w)
        }
        _ => {
            return Err(LstmError::invalid(
                format!("layer {name}"),
                "cache mismatch",
            ));
        }
    })
}

/// A stateful layer's final (h, c) by its index in the chain.
type Carries<T> = Vec<(usize, (Array2<T>, Array2<T>))>;

/// A chain's forward pass: the prediction, its Keras mask, the logits of a sigmoid or
/// softmax output, the caches, and the stateful layers' final states by layer index.
struct Forward<T> {
    y: ArrayD<T>,
    mask: Option<ArrayD<bool>>,
    logits: Option<ArrayD<T>>,
    caches: Vec<Cache<T>>,
    carries: Carries<T>,
}

impl<T: Element> Sequential<T> {
    /// The forward pass, the stateful layers starting from [`Sequential::carried`].
    fn forward(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        training: Option<u64>,
    ) -> Result<Forward<T>> {
        let mut h: ArrayD<T> = x.to_owned();
        let mut mask: Option<Array2<bool>> = None;
        let mut caches = Vec::new();
        let mut logits = None;
        let mut carries = Vec::new();
        for (at, (name, l)) in self.layers.iter().enumerate() {
            let init = self.carried_into(at, name, h.shape().first().copied())?;
            let out = layer_forward(path, at, (name, l), h, mask, init, training)?;
            h = out.y;
            mask = out.mask;
            logits = out.logits;
            caches.push(out.cache);
            carries.extend(out.carry.map(|c| (at, c)));
        }
        Ok(Forward {
            y: h,
            mask: mask.map(|m| m.into_dyn()),
            logits,
            caches,
            carries,
        })
    }

    /// The state the stateful layer at `at` starts its call on a batch of `rows` from
    /// ([`Sequential::carried`]; None: zeros, or not a stateful layer).
    fn carried_into(
        &self,
        at: usize,
        name: &str,
        rows: Option<usize>,
    ) -> Result<Option<(ArrayView2<'_, T>, ArrayView2<'_, T>)>> {
        let stateful = matches!(&self.layers[at].1,
            TrainLayer::Recurrent { config, .. } if config.stateful);
        match self.carried.get(&at) {
            Some((h0, c0)) if stateful => {
                if rows != Some(h0.nrows()) {
                    return Err(LstmError::invalid(
                        format!("batch of the stateful layer {name}"),
                        format!(
                            "{} rows; its carried state holds {} (a stateful layer keeps one \
                             batch size, as in Keras; reset_states() before changing it)",
                            rows.unwrap_or(0),
                            h0.nrows()
                        ),
                    ));
                }
                Ok(Some((h0.view(), c0.view())))
            }
            _ => Ok(None),
        }
    }

    /// Empties [`Sequential::carried`]: every stateful layer's next call starts from zeros
    /// (Keras's `layer.reset_states()` on each).
    pub fn reset_states(&mut self) {
        self.carried.clear();
    }

    /// The model's output on `x` (`[B, T, I]` features, or `[B, T]` token ids when the
    /// chain starts with an Embedding). Stateful layers start from
    /// [`Sequential::carried`] and leave it as it was (only `fit` advances it).
    pub fn predict<D: Dimension>(&self, x: ArrayView<'_, T, D>) -> Result<ArrayD<T>> {
        Ok(self.forward(&CpuPath, x.into_dyn(), None)?.y)
    }

    /// [`predict`](Self::predict) with the recurrent layers on `path`.
    pub(crate) fn predict_with(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
    ) -> Result<ArrayD<T>> {
        Ok(self.forward(path, x, None)?.y)
    }

    /// The loss of the batch `(x, y)` (Keras's loss object on the model's output, its mask
    /// included) and its gradients w.r.t. every weight and `x`, in inference mode (Dropout
    /// is the identity: `tf.GradientTape` over `model(x, training=False)`).
    pub fn gradients<D: Dimension>(
        &self,
        x: ArrayView<'_, T, D>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
    ) -> Result<Gradients<T>> {
        self.gradients_with(&CpuPath, x.into_dyn(), y, loss, None)
    }

    /// [`gradients`](Self::gradients) in training mode, as `fit` computes them: every
    /// `Dropout` layer draws its mask from `seed` (the same seed, the same masks).
    ///
    /// ```
    /// use lstm_wgpu::train::{Loss, Sequential, TrainLayer};
    /// use lstm_wgpu::model::DenseActivation;
    /// use lstm_wgpu::Activation;
    /// let net = Sequential::<f64> { layers: vec![
    ///     ("dropout".into(), TrainLayer::Dropout { rate: 0.5, noise_shape: None }),
    ///     ("dense".into(), TrainLayer::Dense { kernel: ndarray::Array2::ones((3, 1)), bias: None,
    ///         time_distributed: false,
    ///         activation: DenseActivation::Elementwise(Activation::Linear) }),
    /// ], carried: Default::default() };
    /// let x = ndarray::Array3::<f64>::ones((4, 5, 3));
    /// let y = ndarray::Array3::<f64>::zeros((4, 5, 1)).into_dyn();
    /// let a = net.gradients_in_training(x.view(), y.view(), Loss::MeanSquaredError, 1).unwrap();
    /// let b = net.gradients_in_training(x.view(), y.view(), Loss::MeanSquaredError, 1).unwrap();
    /// assert_eq!(a.weights, b.weights);
    /// // the kept inputs are doubled, the others 0: the loss differs from inference's 9
    /// assert_ne!(a.loss, net.gradients(x.view(), y.view(), Loss::MeanSquaredError).unwrap().loss);
    /// ```
    pub fn gradients_in_training<D: Dimension>(
        &self,
        x: ArrayView<'_, T, D>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
        seed: u64,
    ) -> Result<Gradients<T>> {
        self.gradients_with(&CpuPath, x.into_dyn(), y, loss, Some(seed))
    }

    /// [`gradients`](Self::gradients) with the recurrent layers on `path`, in training mode
    /// with Dropout seed `training`.
    pub(crate) fn gradients_with(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
        training: Option<u64>,
    ) -> Result<Gradients<T>> {
        Ok(self.gradients_and_state(path, x, y, loss, training)?.0)
    }

    /// [`gradients_with`](Self::gradients_with), the new state of the layers that keep
    /// one (BatchNormalization's moving statistics after a training-mode forward), by layer
    /// index, and the stateful recurrent layers' final states (the next call's
    /// [`Sequential::carried`]).
    #[allow(clippy::type_complexity)]
    pub(crate) fn gradients_and_state(
        &self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        y: ArrayViewD<'_, T>,
        loss: Loss,
        training: Option<u64>,
    ) -> Result<(Gradients<T>, Vec<(usize, Vec<ArrayD<T>>)>, Carries<T>)> {
        let Forward {
            y: pred,
            mask,
            logits,
            caches,
            carries,
        } = self.forward(path, x, training)?;
        let states = match training {
            Some(_) => self
                .layers
                .iter()
                .zip(&caches)
                .enumerate()
                .filter_map(|(at, ((_, l), c))| Some((at, state_after(l, &l.state(), c)?)))
                .collect(),
            None => Vec::new(),
        };
        let lg = loss.evaluate(
            pred.view(),
            logits.as_ref().map(|l| l.view()),
            y,
            mask.as_ref().map(|m| m.view()),
        )?;
        let mut d = lg.grad;
        let mut skip_activation = lg.wrt_logits;
        let mut grads: Vec<Vec<ArrayD<T>>> = Vec::new();
        // (the sparse gradients' squares, by their layer's index in `grads`)
        let mut squares: Vec<(usize, ArrayD<T>)> = Vec::new();
        for (at, ((name, l), cache)) in self.layers.iter().zip(caches).enumerate().rev() {
            let back =
                layer_backward(path, at, (name, l), cache, d, [None, None], skip_activation)?;
            if let Some(sq) = back.square {
                squares.push((grads.len(), sq));
            }
            grads.push(back.weights);
            d = back.dx;
            skip_activation = false;
        }
        // (one entry per weight: None for the dense ones)
        let mut per_layer: Vec<Vec<Option<ArrayD<T>>>> =
            grads.iter().map(|l| vec![None; l.len()]).collect();
        for (k, sq) in squares {
            per_layer[k][0] = Some(sq);
        }
        let sparse_squares = per_layer.into_iter().rev().flatten().collect();
        Ok((
            Gradients {
                loss: lg.value,
                weights: grads.into_iter().rev().flatten().collect(),
                x: d,
                sparse_squares,
            },
            states,
            carries,
        ))
    }

    /// Trains on `x` (`[N, T, I]` features, or `[N, T]` token ids for a chain that starts
    /// with an Embedding) and targets `y` (leading axis N) as Keras's
    /// `model.fit(x, y, batch_size, epochs, shuffle=False)` does: the batches in order, the
    /// loss and its gradients for each, one step of `optimizer`. A loss or gradient that is
    /// not finite stops it with [`LstmError::TrainingDiverged`] naming the epoch, step and
    /// rows; the weights are then those from before that step. Logs each epoch's loss
    /// (`log::info!`) and each step's with the running mean (`log::debug!`), Keras's
    /// progress line.
    pub fn fit<D: Dimension>(
        &mut self,
        x: ArrayView<'_, T, D>,
        y: ArrayViewD<'_, T>,
        options: &FitOptions,
        optimizer: &mut Optimizer,
    ) -> Result<History> {
        let path: &dyn RecurrentPath<T> = match options.recompute {
            Some(steps) => &CpuRecompute(steps),
            None => &CpuPath,
        };
        self.fit_with(path, x.into_dyn(), y, options, optimizer, &mut |_| Ok(()))
    }

    /// [`fit`](Self::fit) with the recurrent layers on `path`; `updated` runs after each
    /// optimizer step (to upload the new weights).
    pub(crate) fn fit_with(
        &mut self,
        path: &dyn RecurrentPath<T>,
        x: ArrayViewD<'_, T>,
        y: ArrayViewD<'_, T>,
        options: &FitOptions,
        optimizer: &mut Optimizer,
        updated: &mut dyn FnMut(&Self) -> Result<()>,
    ) -> Result<History> {
        let Some(&n) = x.shape().first() else {
            return Err(LstmError::invalid("x", "has no batch axis (a scalar)"));
        };
        if y.shape().first() != Some(&n) {
            return Err(LstmError::shape(
                "targets",
                &[n],
                &y.shape()[..y.ndim().min(1)],
            ));
        }
        fit_batches(
            n,
            options,
            optimizer,
            &mut |optimizer, (start, end), seed| {
                let xb = x.slice_axis(Axis(0), (start..end).into());
                let yb = y.slice_axis(Axis(0), (start..end).into());
                let (g, states, carries) =
                    self.gradients_and_state(path, xb, yb, options.loss, Some(seed))?;
                if let Some(what) = not_finite(g.loss, &g.weights) {
                    return Ok(Err(what));
                }
                optimizer.apply_views_sparse(
                    &mut self.weights_mut(),
                    &g.weights,
                    &g.sparse_squares,
                )?;
                // (the moving statistics of a training-mode forward, as Keras assigns them)
                for (at, state) in states {
                    if let TrainLayer::Op(op) = &mut self.layers[at].1 {
                        op.set_state(&state)?;
                    }
                }
                // (and the stateful layers' final states, which the next batch starts from)
                self.carried.extend(carries);
                updated(self)?;
                Ok(Ok(g.loss.to_f64()))
            },
        )
    }
}

/// What is not finite about a step's loss and gradients, or None.
pub(super) fn not_finite<T: Element>(loss: T, grads: &[ArrayD<T>]) -> Option<String> {
    if !loss.to_f64().is_finite() {
        Some(format!("the loss is {loss}"))
    } else if !grads
        .iter()
        .all(|w| w.iter().all(|v| v.to_f64().is_finite()))
    {
        Some("a gradient is not finite".to_string())
    } else {
        None
    }
}

/// One optimizer step on rows `start..end` with its Dropout seed: the batch's loss, or what
/// was not finite (the weights then untouched).
pub(super) type BatchStep<'a> =
    dyn FnMut(&mut Optimizer, (usize, usize), u64) -> Result<std::result::Result<f64, String>> + 'a;

/// Keras's `fit` loop over `n` rows with `shuffle=False`: the batches in order, `step` on
/// each (one Dropout stream per optimizer step), the per-epoch mean loss; a step that was
/// not finite stops it with [`LstmError::TrainingDiverged`].
pub(super) fn fit_batches(
    n: usize,
    options: &FitOptions,
    optimizer: &mut Optimizer,
    step: &mut BatchStep<'_>,
) -> Result<History> {
    if options.batch_size == 0 {
        return Err(LstmError::invalid("batch_size", "must be at least 1"));
    }
    let mut history = History {
        epoch_loss: Vec::new(),
    };
    for epoch in 1..=options.epochs {
        let (mut total, mut count) = (0.0f64, 0usize);
        for (k, start) in (0..n).step_by(options.batch_size).enumerate() {
            let end = (start + options.batch_size).min(n);
            // one Dropout stream per optimizer step
            let seed =
                SplitMix(options.seed ^ optimizer.iterations().wrapping_mul(0xA076_1D64_78BD_642F))
                    .next_u64();
            let loss = step(optimizer, (start, end), seed)?.map_err(|what| {
                LstmError::TrainingDiverged {
                    epoch,
                    step: k + 1,
                    rows: format!("{start}..{end}"),
                    what,
                }
            })?;
            total += loss * (end - start) as f64;
            count += end - start;
            log::debug!(
                "epoch {epoch}/{}, step {}: loss {loss:.6} (running mean {:.6})",
                options.epochs,
                k + 1,
                total / count as f64
            );
        }
        let mean = if count == 0 {
            0.0
        } else {
            total / count as f64
        };
        log::info!("epoch {epoch}/{}: loss {mean:.6}", options.epochs);
        history.epoch_loss.push(mean);
    }
    Ok(history)
}

/// Zeroes the steps `[b, t, ..]` of `a` that `mask` marks absent (Masking's `x · mask`,
/// and its gradient).
fn zero_masked<T: Element>(a: &mut Array3<T>, mask: &Array2<bool>) {
    for ((b, t), &keep) in mask.indexed_iter() {
        if !keep {
            a.slice_mut(ndarray::s![b, t, ..]).fill(T::zero());
        }
    }
}
