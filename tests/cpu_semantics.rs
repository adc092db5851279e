//! Keras semantics on the CPU path, one test per rule of KERAS_SEMANTICS.md, and the error
//! cases: each test compares against an independent formulation of the rule.

use lstm_wgpu::{
    Activation, Bidirectional, BidirectionalConfig, LayerConfig, Lstm, LstmConfig, LstmError,
    LstmWeights, MergeMode, Network,
};
use ndarray::{s, Array2, Array3, ArrayD, Axis};

fn input(b: usize, t: usize, i: usize, seed: f64) -> Array3<f64> {
    Array3::from_shape_fn((b, t, i), |(p, q, r)| {
        ((p * 31 + q * 7 + r * 3) as f64 * 0.37 + seed).sin()
    })
}

fn layer(config: LstmConfig, i: usize, seed: u64) -> Lstm<f64> {
    let w = LstmWeights::random(&config, i, seed).unwrap();
    Lstm::new(config, w).unwrap()
}

fn max_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Largest difference relative to the magnitude (exp/softplus activations grow large values;
/// the summation order differs between the two implementations).
fn max_rel_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f64::max)
}

/// A from-scratch scalar LSTM (no masks), written independently of the crate's loop.
fn naive(
    w: &LstmWeights<f64>,
    cfg: &LstmConfig,
    x: &Array3<f64>,
    h0: &Array2<f64>,
    c0: &Array2<f64>,
) -> (Array3<f64>, Array2<f64>, Array2<f64>) {
    let (b, t, i) = x.dim();
    let hu = cfg.units;
    let mut h = h0.clone();
    let mut c = c0.clone();
    let mut seq = Array3::zeros((b, t, hu));
    for step in 0..t {
        let time = if cfg.go_backwards { t - 1 - step } else { step };
        let mut hn = h.clone();
        for r in 0..b {
            for j in 0..hu {
                let mut z = [0.0; 4];
                for (g, zg) in z.iter_mut().enumerate() {
                    let col = g * hu + j;
                    *zg = w.bias.as_ref().map_or(0.0, |bb| bb[col]);
                    for k in 0..i {
                        *zg += x[[r, time, k]] * w.kernel[[k, col]];
                    }
                    for k in 0..hu {
                        *zg += h[[r, k]] * w.recurrent_kernel[[k, col]];
                    }
                }
                let ra = cfg.recurrent_activation;
                let a = cfg.activation;
                let cn = ra.apply(z[1]) * c[[r, j]] + ra.apply(z[0]) * a.apply(z[2]);
                c[[r, j]] = cn;
                hn[[r, j]] = ra.apply(z[3]) * a.apply(cn);
            }
        }
        h = hn;
        seq.slice_mut(s![.., step, ..]).assign(&h);
    }
    (seq, h, c)
}

#[test]
fn matches_naive_reference_for_every_activation_pair() {
    for (k, act) in Activation::ALL.iter().enumerate() {
        let rec = Activation::ALL[(k + 5) % Activation::ALL.len()];
        let cfg = LstmConfig::new(3)
            .activation(*act)
            .recurrent_activation(rec)
            .return_sequences(true)
            .return_state(true);
        let mut l = layer(cfg.clone(), 2, k as u64);
        let x = input(2, 4, 2, 0.1);
        let out = l.forward(x.view(), None, None).unwrap();
        let z = Array2::zeros((2, 3));
        let (seq, h, c) = naive(l.weights(), &cfg, &x, &z, &z);
        assert!(
            max_rel_diff(&out.output, &seq.into_dyn()) < 1e-12,
            "{act}/{rec}"
        );
        let st = out.state.unwrap();
        assert!(max_rel_diff(&st.h.into_dyn(), &h.into_dyn()) < 1e-12);
        assert!(max_rel_diff(&st.c.into_dyn(), &c.into_dyn()) < 1e-12);
    }
}

#[test]
fn go_backwards_keeps_processing_order() {
    let cfg = LstmConfig::new(4).return_sequences(true).return_state(true);
    let mut fwd = layer(cfg.clone(), 3, 1);
    let mut bwd = Lstm::new(cfg.go_backwards(true), fwd.weights().clone()).unwrap();
    let x = input(2, 5, 3, 0.0);
    let mut x_rev = x.clone();
    x_rev.invert_axis(Axis(1));
    let a = bwd.forward(x.view(), None, None).unwrap();
    let b = fwd.forward(x_rev.view(), None, None).unwrap();
    // Same as running forward on the reversed input, and NOT flipped back.
    assert_eq!(a, b);
    // out[:, 0] is the output after consuming x[:, T-1] only.
    let mut one = layer(LstmConfig::new(4), 3, 1);
    let first = one.forward(x.slice(s![.., 4..5, ..]), None, None).unwrap();
    assert!(
        max_diff(
            &a.output.slice(s![.., 0, ..]).to_owned().into_dyn(),
            &first.output
        ) < 1e-15
    );
}

#[test]
fn masked_steps_carry_state_and_repeat_output() {
    let cfg = LstmConfig::new(3).return_sequences(true).return_state(true);
    let mut l = layer(cfg.clone(), 2, 3);
    let x = input(1, 5, 2, 0.3);
    let mask = Array2::from_shape_vec((1, 5), vec![true, false, true, false, true]).unwrap();
    let out = l.forward(x.view(), None, Some(mask.view())).unwrap();
    // Equals running on the present steps only.
    let kept = ndarray::concatenate(
        Axis(1),
        &[
            x.slice(s![.., 0..1, ..]),
            x.slice(s![.., 2..3, ..]),
            x.slice(s![.., 4..5, ..]),
        ],
    )
    .unwrap();
    let mut l2 = layer(cfg, 2, 3);
    let compact = l2.forward(kept.view(), None, None).unwrap();
    assert_eq!(out.state, compact.state);
    let seq = &out.output;
    // masked steps repeat the previous output
    assert_eq!(seq.slice(s![0, 1, ..]), seq.slice(s![0, 0, ..]));
    assert_eq!(seq.slice(s![0, 3, ..]), seq.slice(s![0, 2, ..]));
    assert_eq!(seq.slice(s![0, 4, ..]), compact.output.slice(s![0, 2, ..]));
}

#[test]
fn leading_masked_steps_output_zero_even_with_initial_state() {
    let cfg = LstmConfig::new(3).return_sequences(true).return_state(true);
    let mut l = layer(cfg, 2, 4);
    let x = input(1, 4, 2, 0.0);
    let h0 = Array2::from_elem((1, 3), 0.5);
    let c0 = Array2::from_elem((1, 3), -0.25);
    let mask = Array2::from_shape_vec((1, 4), vec![false, false, true, true]).unwrap();
    let out = l
        .forward(x.view(), Some((h0.view(), c0.view())), Some(mask.view()))
        .unwrap();
    assert!(out.output.slice(s![0, 0..2, ..]).iter().all(|v| *v == 0.0));
    assert!(out.output.slice(s![0, 2, ..]).iter().all(|v| *v != 0.0));
    // fully masked: outputs zero, state unchanged
    let none = Array2::from_elem((1, 4), false);
    let out = l
        .forward(x.view(), Some((h0.view(), c0.view())), Some(none.view()))
        .unwrap();
    assert!(out.output.iter().all(|v| *v == 0.0));
    let st = out.state.unwrap();
    assert_eq!((st.h, st.c), (h0, c0));
}

#[test]
fn zero_output_for_mask_zeroes_masked_steps_but_keeps_state() {
    let cfg = LstmConfig::new(3)
        .return_state(true)
        .zero_output_for_mask(true);
    let mut l = layer(cfg.clone(), 2, 5);
    let x = input(2, 3, 2, 0.0);
    let mask = Array2::from_shape_vec((2, 3), vec![true, true, false, true, true, true]).unwrap();
    let out = l.forward(x.view(), None, Some(mask.view())).unwrap();
    let st = out.state.unwrap();
    // row 0: last step masked -> output 0, state h is the carried non-zero h
    assert!(out.output.slice(s![0, ..]).iter().all(|v| *v == 0.0));
    assert!(st.h.row(0).iter().all(|v| *v != 0.0));
    // row 1: nothing masked -> output == h
    assert_eq!(out.output.slice(s![1, ..]), st.h.row(1));
    let mut seq = Lstm::new(cfg.return_sequences(true), l.weights().clone()).unwrap();
    let out = seq.forward(x.view(), None, Some(mask.view())).unwrap();
    assert!(out.output.slice(s![0, 2, ..]).iter().all(|v| *v == 0.0));
}

#[test]
fn stateful_carries_state_resets_and_rejects_batch_change() {
    let cfg = LstmConfig::new(4).return_sequences(true).stateful(true);
    let mut l = layer(cfg.clone(), 2, 6);
    let x = input(3, 6, 2, 0.2);
    let a = l.forward(x.slice(s![.., 0..2, ..]), None, None).unwrap();
    let b = l.forward(x.slice(s![.., 2..6, ..]), None, None).unwrap();
    let mut whole = Lstm::new(cfg.clone().stateful(false), l.weights().clone()).unwrap();
    let w = whole.forward(x.view(), None, None).unwrap();
    let joined = ndarray::concatenate(Axis(1), &[a.output.view(), b.output.view()]).unwrap();
    assert!(max_diff(&joined, &w.output) < 1e-14);
    l.reset_states();
    let again = l.forward(x.slice(s![.., 0..2, ..]), None, None).unwrap();
    assert_eq!(again, a);
    let err = l
        .forward(input(2, 2, 2, 0.0).view(), None, None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LstmError::StatefulBatchChanged {
                expected: 3,
                actual: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn bidirectional_flips_back_merges_and_orders_states() {
    for mode in [
        MergeMode::Concat,
        MergeMode::Sum,
        MergeMode::Mul,
        MergeMode::Ave,
        MergeMode::None,
    ] {
        let base = LstmConfig::new(3).return_sequences(true).return_state(true);
        let cfg = BidirectionalConfig::new(base, mode);
        assert!(cfg.forward.zero_output_for_mask && cfg.backward.zero_output_for_mask);
        let fw = LstmWeights::random(&cfg.forward, 2, 10).unwrap();
        let bw = LstmWeights::random(&cfg.backward, 2, 11).unwrap();
        let mut f = Lstm::new(cfg.forward.clone(), fw.clone()).unwrap();
        let mut b = Lstm::new(cfg.backward.clone(), bw.clone()).unwrap();
        let mut bi = Bidirectional::new(cfg, fw, bw).unwrap();
        let x = input(2, 4, 2, 0.7);
        let out = bi.forward(x.view(), None, None).unwrap();
        let yf = f.forward(x.view(), None, None).unwrap();
        let yb = b.forward(x.view(), None, None).unwrap();
        let mut yb_seq = yb.output.clone();
        yb_seq.invert_axis(Axis(2 - 1));
        let merged: Vec<ArrayD<f64>> = match mode {
            MergeMode::Concat => {
                vec![ndarray::concatenate(Axis(2), &[yf.output.view(), yb_seq.view()]).unwrap()]
            }
            MergeMode::Sum => vec![&yf.output + &yb_seq],
            MergeMode::Mul => vec![&yf.output * &yb_seq],
            MergeMode::Ave => vec![(&yf.output + &yb_seq) / 2.0],
            MergeMode::None => vec![yf.output.clone(), yb_seq.to_owned()],
        };
        let n = merged.len();
        for (k, m) in merged.iter().enumerate() {
            assert!(max_diff(&out[k], m) < 1e-15, "{mode:?} output {k}");
        }
        let (sf, sb) = (yf.state.unwrap(), yb.state.unwrap());
        assert_eq!(out[n], sf.h.into_dyn());
        assert_eq!(out[n + 1], sf.c.into_dyn());
        assert_eq!(out[n + 2], sb.h.into_dyn());
        assert_eq!(out[n + 3], sb.c.into_dyn());
    }
}

#[test]
fn stack_feeds_each_layer_the_previous_sequence() {
    let c1 = LstmConfig::new(5).return_sequences(true);
    let c2 = LstmConfig::new(2);
    let cfg = LayerConfig::Sequential(vec![
        LayerConfig::Lstm(c1.clone()),
        LayerConfig::Lstm(c2.clone()),
    ]);
    let w1 = LstmWeights::<f64>::random(&c1, 3, 1).unwrap();
    let w2 = LstmWeights::<f64>::random(&c2, 5, 2).unwrap();
    let list: Vec<ArrayD<f64>> = [&w1, &w2]
        .iter()
        .flat_map(|w| {
            [
                w.kernel.clone().into_dyn(),
                w.recurrent_kernel.clone().into_dyn(),
                w.bias.clone().unwrap().into_dyn(),
            ]
        })
        .collect();
    let mut net = Network::from_keras_weights(&cfg, &list).unwrap();
    let x = input(2, 4, 3, 0.0);
    let out = net.forward(x.view(), None, None).unwrap();
    let mut l1 = Lstm::new(c1, w1).unwrap();
    let mut l2 = Lstm::new(c2, w2).unwrap();
    let y1 = l1
        .forward(x.view(), None, None)
        .unwrap()
        .output
        .into_dimensionality()
        .unwrap();
    let y2: Array3<f64> = y1;
    let want = l2.forward(y2.view(), None, None).unwrap().output;
    assert_eq!(out, vec![want]);
    // a wrong number of weights is an error
    assert!(Network::from_keras_weights(&cfg, &list[..5]).is_err());
}

#[test]
fn float32_and_float64_agree() {
    let cfg = LstmConfig::new(6).return_sequences(true);
    let w64 = LstmWeights::<f64>::random(&cfg, 4, 9).unwrap();
    let w32 = LstmWeights::new(
        &cfg,
        4,
        w64.kernel.mapv(|v| v as f32),
        w64.recurrent_kernel.mapv(|v| v as f32),
        w64.bias.as_ref().map(|b| b.mapv(|v| v as f32)),
    )
    .unwrap();
    let x = input(3, 7, 4, 0.0);
    let a = Lstm::new(cfg.clone(), w64)
        .unwrap()
        .forward(x.view(), None, None)
        .unwrap();
    let b = Lstm::new(cfg, w32)
        .unwrap()
        .forward(x.mapv(|v| v as f32).view(), None, None)
        .unwrap();
    let d = a
        .output
        .iter()
        .zip(&b.output)
        .map(|(p, q)| (p - *q as f64).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-5, "f32 vs f64: {d}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cfg = LstmConfig::new(3);
    let mut l = layer(cfg.clone(), 2, 0);
    let ok = input(2, 4, 2, 0.0);
    let shape_err = |r: lstm_wgpu::Result<_>, what: &str| match r {
        Err(LstmError::ShapeMismatch { what: w, .. }) => assert!(w.contains(what), "{w}"),
        Err(e) => panic!("expected a shape error for {what}, got {e}"),
        Ok(_) => panic!("expected a shape error for {what}"),
    };
    // zero batch, zero timesteps
    assert!(matches!(
        l.forward(Array3::zeros((0, 4, 2)).view(), None, None),
        Err(LstmError::InvalidArgument { .. })
    ));
    assert!(matches!(
        l.forward(Array3::zeros((2, 0, 2)).view(), None, None),
        Err(LstmError::InvalidArgument { .. })
    ));
    // wrong input width
    shape_err(l.forward(input(2, 4, 5, 0.0).view(), None, None), "x");
    // mask of the wrong shape
    let m = Array2::from_elem((2, 3), true);
    shape_err(l.forward(ok.view(), None, Some(m.view())), "mask");
    // initial state of the wrong shape
    let h = Array2::zeros((2, 4));
    let c = Array2::zeros((2, 3));
    shape_err(l.forward(ok.view(), Some((h.view(), c.view())), None), "h0");
    let h = Array2::zeros((2, 3));
    let c = Array2::zeros((1, 3));
    shape_err(l.forward(ok.view(), Some((h.view(), c.view())), None), "c0");
    // missing bias when use_bias
    let w = LstmWeights::<f64>::random(&cfg, 2, 0).unwrap();
    let e =
        LstmWeights::new(&cfg, 2, w.kernel.clone(), w.recurrent_kernel.clone(), None).unwrap_err();
    assert!(matches!(e, LstmError::MissingWeight { .. }));
    // zero units
    assert!(LstmWeights::<f64>::random(&LstmConfig::new(0), 2, 0).is_err());
    // wrong number of initial states for a Bidirectional layer
    let bc = BidirectionalConfig::new(LstmConfig::new(2), MergeMode::Sum);
    let mut net = Network::<f64>::random(&LayerConfig::Bidirectional(bc), 2, 0).unwrap();
    let s = Array2::zeros((2, 2));
    assert!(net
        .forward(ok.view(), Some(&[s.view(), s.view()]), None)
        .is_err());
}

#[test]
fn nan_input_propagates_without_crash() {
    let mut l = layer(LstmConfig::new(3).return_sequences(true), 2, 0);
    let mut x = input(2, 3, 2, 0.0);
    x[[0, 1, 0]] = f64::NAN;
    let out = l.forward(x.view(), None, None).unwrap();
    assert!(out.output.slice(s![0, 0, ..]).iter().all(|v| v.is_finite()));
    assert!(out.output.slice(s![0, 1.., ..]).iter().all(|v| v.is_nan()));
    assert!(out
        .output
        .slice(s![1, .., ..])
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn config_errors_name_key_and_value() {
    let e = LayerConfig::from_keras(&serde_json::json!({"class_name": "LSTM", "config": {"units": 2, "recurrent_activation": "mish"}})).unwrap_err();
    match e {
        LstmError::UnsupportedConfig { key, value } => {
            assert_eq!(key, "recurrent_activation");
            assert_eq!(value, "mish");
        }
        other => panic!("{other}"),
    }
    let e = LayerConfig::from_keras(&serde_json::json!({"class_name": "Bidirectional", "config": {"merge_mode": "max", "layer": {"class_name": "LSTM", "config": {"units": 2}}}})).unwrap_err();
    assert!(e.to_string().contains("merge_mode") && e.to_string().contains("max"));
}
