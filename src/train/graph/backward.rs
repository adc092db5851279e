//! The backward pass of a [`Functional`]: the forward with its caches, then every call's
//! cotangents from the last call to the first, summed per tensor and per shared layer.

use super::*;

impl<T: Element> Functional<T> {
    /// The gradients and the new state of the layers that keep one, by layer index.
    #[allow(clippy::type_complexity)]
    pub(in crate::train) fn gradients_with(
        &self,
        path: &dyn RecurrentPath<T>,
        xs: &[ArrayViewD<'_, T>],
        targets: &[ArrayViewD<'_, T>],
        losses: &Losses,
        training: Option<u64>,
    ) -> Result<(GraphGradients<T>, Vec<(usize, Vec<ArrayD<T>>)>)> {
        let n_out = self.outputs.len();
        if losses.per_output.len() != n_out || targets.len() != n_out {
            return Err(LstmError::invalid(
                "losses",
                format!(
                    "the model has {n_out} outputs; got {} losses and {} targets",
                    losses.per_output.len(),
                    targets.len()
                ),
            ));
        }
        let (inputs, vals, mut caches) = self.forward(path, xs, training)?;
        // cotangents: of each call's outputs, of its logits, of the inputs
        let mut cot: Vec<Vec<Option<ArrayD<T>>>> = vals
            .iter()
            .map(|v| v.iter().map(|_| None).collect())
            .collect();
        let mut lcot: Vec<Option<ArrayD<T>>> = vec![None; vals.len()];
        let mut icot: Vec<Option<ArrayD<T>>> = vec![None; inputs.len()];
        fn add<T: Element>(slot: &mut Option<ArrayD<T>>, d: ArrayD<T>) {
            match slot {
                Some(s) => *s += &d,
                None => *slot = Some(d),
            }
        }
        let mut total = T::zero();
        for (o, (&src, spec)) in self.outputs.iter().zip(&losses.per_output).enumerate() {
            let Some((loss, weight)) = spec else {
                continue;
            };
            let t = match src {
                Src::Input(i) => &inputs[i],
                Src::Out(c, k) => &vals[c][k],
            };
            let lg = loss
                .evaluate(
                    t.data.view(),
                    t.logits.as_ref().map(|l| l.view()),
                    targets[o].view(),
                    t.mask.as_ref().map(|m| m.view().into_dyn()),
                )
                .map_err(|e| match e {
                    LstmError::ShapeMismatch {
                        what,
                        expected,
                        actual,
                    } => LstmError::ShapeMismatch {
                        what: format!("{what} (output {o})"),
                        expected,
                        actual,
                    },
                    other => other,
                })?;
            let w = T::from_f64(*weight);
            total += lg.value * w;
            let grad = lg.grad.mapv(|v| v * w);
            match src {
                Src::Input(i) => add(&mut icot[i], grad),
                Src::Out(c, _) if lg.wrt_logits => add(&mut lcot[c], grad),
                Src::Out(c, k) => add(&mut cot[c][k], grad),
            }
        }
        // activity regularizers: `r(y) / batch` for every output of each call (Keras's
        // add_loss in Layer.__call__), its gradient
        let activity = |r: &Regularizer, y: &ArrayD<T>, what: &dyn Fn() -> String| {
            let rows = y.shape().first().copied().unwrap_or(1);
            if rows == 0 {
                // (divide_no_nan: no rows, no loss)
                return Ok(None);
            }
            r.check_shape(y.shape(), &what())?;
            let b = T::from_f64(rows as f64);
            Ok::<_, LstmError>(Some((
                r.loss(y.view()) / b,
                r.gradient(y.view()).mapv(|v| v / b),
            )))
        };
        for (k, call) in self.calls.iter().enumerate() {
            let name = &self.layers[call.layer].0;
            if let Some(r) = &self.activity[call.layer] {
                for (o, t) in vals[k].iter().enumerate() {
                    let what = || format!("the activity regularizer of layer {name}");
                    if let Some((l, g)) = activity(r, &t.data, &what)? {
                        total += l;
                        add(&mut cot[k][o], g);
                    }
                }
            }
            // a Bidirectional's inner layers': on each direction's output (Keras calls
            // them as layers), their cotangents handed to that direction's backward pass
            let inner = &self.inner_activity[call.layer];
            if let (CallCache::One(c), true) = (&mut caches[k], inner.iter().any(Option::is_some)) {
                if let Cache::Bidi(_, _, ys, _, extra) = c.as_mut() {
                    for ((r, y), e) in inner.iter().zip(ys.iter()).zip(extra.iter_mut()) {
                        let Some(r) = r else { continue };
                        let what = || format!("the activity regularizer inside layer {name}");
                        if let Some((l, g)) = activity(r, y, &what)? {
                            total += l;
                            *e = Some(g);
                        }
                    }
                }
            }
        }
        let mut wgrads: Vec<Option<Vec<ArrayD<T>>>> = vec![None; self.layers.len()];
        let mut squares: Vec<Option<ArrayD<T>>> = vec![None; self.layers.len()];
        // the new state of the layers that keep one: each training-mode call's update from
        // the state its layer's earlier calls left, in call order (Keras assigns it in each
        // call: a shared BatchNormalization moves its statistics twice in a step)
        let mut running: Vec<Option<Vec<ArrayD<T>>>> = vec![None; self.layers.len()];
        for (call, cache) in self.calls.iter().zip(&caches) {
            let (GraphLayer::One(l), CallCache::One(c)) = (&self.layers[call.layer].1, cache)
            else {
                continue;
            };
            if self.training_of(call.layer, training).is_none() {
                continue;
            }
            let before = running[call.layer].take().unwrap_or_else(|| l.state());
            running[call.layer] = Some(state_after(l, &before, c).unwrap_or(before));
        }
        let states: Vec<(usize, Vec<ArrayD<T>>)> = running
            .into_iter()
            .enumerate()
            .filter_map(|(at, s)| Some((at, s?)))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        for (k, (call, cache)) in self.calls.iter().zip(caches).enumerate().rev() {
            let (name, layer) = &self.layers[call.layer];
            let shape0 = vals[k][0].data.raw_dim();
            let (dxs, w): (Vec<Option<ArrayD<T>>>, Vec<ArrayD<T>>) = match (layer, cache) {
                (GraphLayer::One(l), CallCache::One(cache)) => {
                    let (d, from_logits) = match (cot[k][0].take(), lcot[k].take()) {
                        (Some(d), Some(dl)) => {
                            // a cross-entropy output (taken from its logits) that other
                            // layers or an activity regularizer read too: their cotangent
                            // passes the activation, and the two meet at the logits
                            let act = logits_activation(l);
                            let (Some(act), Some(z)) = (act, vals[k][0].logits.as_ref()) else {
                                return Err(LstmError::invalid(
                                    format!("output of layer {name}"),
                                    "a cotangent of logits that are not kept",
                                ));
                            };
                            (dense_activation_backward(act, z, &d) + &dl, true)
                        }
                        (None, Some(dl)) => (dl, true),
                        (Some(d), None) => (d, false),
                        (None, None) => (ArrayD::zeros(shape0), false),
                    };
                    let two = |d: Option<ArrayD<T>>| -> Result<Option<Array2<T>>> {
                        d.map(|d| {
                            d.into_dimensionality::<Ix2>().map_err(|_| {
                                LstmError::invalid(format!("layer {name}"), "state cotangent")
                            })
                        })
                        .transpose()
                    };
                    let d_states = [
                        two(cot[k].get_mut(1).and_then(Option::take))?,
                        two(cot[k].get_mut(2).and_then(Option::take))?,
                    ];
                    let back =
                        layer_backward(path, k, (name, l), *cache, d, d_states, from_logits)?;
                    if let Some(sq) = back.square {
                        add(&mut squares[call.layer], sq);
                    }
                    let mut dxs = vec![Some(back.dx)];
                    let (dh, dc) = back.d_init;
                    match call.states.len() {
                        0 => {}
                        1 => dxs.push(Some(dh.into_dyn())),
                        _ => dxs.extend([Some(dh.into_dyn()), Some(dc.into_dyn())]),
                    }
                    (dxs, back.weights)
                }
                (GraphLayer::Many(op), CallCache::Many(cache)) => {
                    let d = cot[k][0].take().unwrap_or_else(|| ArrayD::zeros(shape0));
                    let extra: Vec<Option<ArrayD<T>>> =
                        cot[k].iter_mut().skip(1).map(Option::take).collect();
                    let (mut dxs, w) = op.backward_extra(name, &cache, d, extra)?;
                    dxs.resize(call.inputs.len(), None);
                    (dxs, w)
                }
                _ => {
                    return Err(LstmError::invalid(
                        format!("layer {name}"),
                        "cache mismatch",
                    ))
                }
            };
            // (inputs, then the initial states, in the order the call read them)
            for (&src, dx) in call.inputs.iter().chain(&call.states).zip(dxs) {
                let Some(dx) = dx else { continue };
                match src {
                    Src::Input(i) => add(&mut icot[i], dx),
                    Src::Out(c, o) => add(&mut cot[c][o], dx),
                }
            }
            match &mut wgrads[call.layer] {
                Some(sum) => {
                    for (s, g) in sum.iter_mut().zip(&w) {
                        *s += g;
                    }
                }
                slot => *slot = Some(w),
            }
        }
        let mut weights = Vec::new();
        let mut sparse_squares = Vec::new();
        for (k, ((_, layer), g)) in self.layers.iter().zip(wgrads).enumerate() {
            if self.frozen[k] {
                // (not among Keras's trainable_weights, nor its regularization losses)
                continue;
            }
            let values = layer.weights();
            let mut g = match g {
                Some(g) => g,
                None => values.iter().map(|w| ArrayD::zeros(w.raw_dim())).collect(),
            };
            for (j, gj) in g.iter_mut().enumerate() {
                let mut square = if j == 0 { squares[k].take() } else { None };
                // (Keras's model.losses: unweighted, beside the outputs' losses)
                if let Some(r) = self.regularizers[k].get(j).copied().flatten() {
                    total += r.loss(values[j].view());
                    let dr = r.gradient(values[j].view());
                    // (TensorFlow sums an Embedding's slices and a dense gradient into a
                    // dense tensor: the optimizer sees no slices. Measured: the slices'
                    // squares kept, plus the dense part's, leave graph_fit_graph_reg's table
                    // 4.2e-2 from Keras's after 20 Adam steps; dense, 2.8e-6)
                    square = None;
                    *gj += &dr;
                }
                sparse_squares.push(square);
            }
            weights.extend(g);
        }
        let input_grads = icot
            .into_iter()
            .zip(&inputs)
            .map(|(d, x)| d.unwrap_or_else(|| ArrayD::zeros(x.data.raw_dim())))
            .collect();
        Ok((
            GraphGradients {
                loss: total,
                weights,
                inputs: input_grads,
                sparse_squares,
            },
            states,
        ))
    }
}

/// The sigmoid or softmax between a layer's logits and its output (a Dense's activation, an
/// Activation layer's), None for a layer that gives no logits.
fn logits_activation<T: Element>(l: &TrainLayer<T>) -> Option<crate::model::DenseActivation> {
    match l {
        TrainLayer::Dense { activation, .. } => Some(*activation),
        TrainLayer::Op(op) => op.logits_activation(),
        _ => None,
    }
}
