//! One layer's recorded forward pass and its backward pass, for the chain trainer
//! (`sequential.rs`) and the graph trainer (`graph/`) alike.

use super::activation::{dense_activate, dense_activation_backward};
use super::dropout::{dropout_mask, recurrent_dropout, SplitMix};
use super::load::keras_bias;
use super::path::{RecurrentPath, Tape};
use super::{three, LstmCotangents, TrainLayer};
use crate::element::Element;
use crate::error::{LstmError, Result};
use crate::model::DenseActivation;
use ndarray::{Array2, Array3, ArrayD, ArrayView2, Axis, Ix2, IxDyn};

/// What one layer's forward pass keeps for its backward pass.
// (one per layer of a call; the arrays are on the heap either way)
#[allow(clippy::large_enum_variant)]
pub(super) enum Cache<T: Element> {
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
pub(super) struct LayerForward<T: Element> {
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
pub(super) fn layer_seed(seed: u64, at: usize) -> u64 {
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

/// Zeroes the steps `[b, t, ..]` of `a` that `mask` marks absent (Masking's `x · mask`,
/// and its gradient).
fn zero_masked<T: Element>(a: &mut Array3<T>, mask: &Array2<bool>) {
    for ((b, t), &keep) in mask.indexed_iter() {
        if !keep {
            a.slice_mut(ndarray::s![b, t, ..]).fill(T::zero());
        }
    }
}
