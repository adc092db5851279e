//! Forwards over the binding limit, and what the statistics and `step()` promise.

use lstm_wgpu::gpu::{GpuContext, GpuNetwork, GpuOptions};
use lstm_wgpu::{BidirectionalConfig, LayerConfig, LstmConfig, LstmError, MergeMode, Network};
use ndarray::{s, Array2, Array3, ArrayD};

mod common;
use common::gpu;

fn input(b: usize, t: usize, i: usize, seed: u64) -> Array3<f32> {
    common::xorshift_input(b, t, i, seed, 1.0)
}

fn capped(bytes: u64) -> std::sync::Arc<GpuContext> {
    GpuContext::with_options(
        &GpuOptions::from_env()
            .allow_software(true)
            .max_binding_size(bytes),
    )
    .unwrap()
}

#[test]
fn forwards_over_the_binding_limit_run_in_batch_chunks_with_identical_results() {
    let Some(ctx) = gpu("forwards_over_the_binding_limit_run_in_batch_chunks") else {
        return;
    };
    let small = capped(16 << 20);
    // B = 512, T = 80, H = 128: the output sequence alone is 20 MiB.
    let config = LayerConfig::Lstm(
        LstmConfig::new(128)
            .return_sequences(true)
            .return_state(true),
    );
    let cpu = Network::<f32>::random(&config, 16, 1).unwrap();
    let x = input(512, 80, 16, 2);
    let mut mask = Array2::from_elem((512, 80), true);
    mask.slice_mut(s![..100, 60..]).fill(false);
    let mut whole = GpuNetwork::new(ctx.clone(), &cpu).unwrap();
    let mut chunked = GpuNetwork::new(small.clone(), &cpu).unwrap();
    let want = whole.forward(x.view(), None, Some(mask.view())).unwrap();
    assert_eq!(whole.stats().batch_chunks, 0);
    let got = chunked.forward(x.view(), None, Some(mask.view())).unwrap();
    let st = chunked.stats();
    assert!(st.batch_chunks >= 2, "{st:?}");
    assert_eq!(st.submits, st.batch_chunks);
    assert_eq!(got, want, "batch chunks give the same bits");
    // forward_async takes the same path.
    let got = chunked
        .forward_async(x.view(), None, Some(mask.view()))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(got, want);

    // Bidirectional with initial states: each chunk takes its rows of the states.
    let bcfg = LayerConfig::Bidirectional(BidirectionalConfig::new(
        LstmConfig::new(128)
            .return_sequences(true)
            .return_state(true),
        MergeMode::Concat,
    ));
    let bcpu = Network::<f32>::random(&bcfg, 16, 4).unwrap();
    let states: Vec<Array2<f32>> = (0..4)
        .map(|k| {
            input(1, 384, 128, 10 + k)
                .into_shape_with_order((384, 128))
                .unwrap()
        })
        .collect();
    let views: Vec<_> = states.iter().map(|a| a.view()).collect();
    let xb = x.slice(s![..384, .., ..]);
    let want: Vec<ArrayD<f32>> = GpuNetwork::new(ctx.clone(), &bcpu)
        .unwrap()
        .forward(xb, Some(&views), None)
        .unwrap();
    let mut bi = GpuNetwork::new(small.clone(), &bcpu).unwrap();
    let got = bi.forward(xb, Some(&views), None).unwrap();
    assert!(bi.stats().batch_chunks >= 2);
    assert_eq!(got, want);

    // A stateful network cannot be split: the limit error says so.
    let scfg = LayerConfig::Lstm(LstmConfig::new(128).return_sequences(true).stateful(true));
    let mut stateful = GpuNetwork::new(
        small.clone(),
        &Network::<f32>::random(&scfg, 16, 0).unwrap(),
    )
    .unwrap();
    match stateful.forward(x.view(), None, None) {
        Err(LstmError::Limit {
            what,
            need,
            max,
            hint,
            ..
        }) => {
            assert_eq!(what, "output sequence");
            assert!(need > max && hint.contains("stateful"), "{hint}");
        }
        other => panic!("expected a Limit error, got {other:?}"),
    }
    // One batch row over the limit: an error that names the buffer and says why.
    let long = input(1, 40_000, 16, 0);
    let mut one = GpuNetwork::new(small, &cpu).unwrap();
    match one.forward(long.view(), None, None) {
        Err(e @ LstmError::Limit { .. }) => {
            assert!(e.to_string().contains("output sequence"), "{e}")
        }
        other => panic!("expected a Limit error, got {other:?}"),
    }
    let two = ndarray::concatenate(ndarray::Axis(0), &[long.view(), long.view()]).unwrap();
    match one.forward(two.view(), None, None) {
        Err(e @ LstmError::Limit { .. }) => {
            assert!(e.to_string().contains("even one batch row"), "{e}")
        }
        other => panic!("expected a Limit error, got {other:?}"),
    }
}

#[test]
fn projection_chunks_count_one_per_direction() {
    let Some(ctx) = gpu("projection_chunks_count_one_per_direction") else {
        return;
    };
    // A stack of a Bidirectional layer (two directions) and an LSTM: three projections.
    let config = LayerConfig::Sequential(vec![
        LayerConfig::Bidirectional(BidirectionalConfig::new(
            LstmConfig::new(4).return_sequences(true),
            MergeMode::Sum,
        )),
        LayerConfig::Lstm(LstmConfig::new(3)),
    ]);
    let mut net = GpuNetwork::new(ctx, &Network::<f32>::random(&config, 2, 0).unwrap()).unwrap();
    net.forward(input(2, 7, 2, 0).view(), None, None).unwrap();
    assert_eq!(net.stats().projection_chunks, 3);
    assert_eq!(net.stats().batch_chunks, 0);
}

#[test]
fn step_on_a_stateful_bidirectional_network_equals_one_step_calls() {
    let Some(ctx) = gpu("step_on_a_stateful_bidirectional_network_equals_one_step_calls") else {
        return;
    };
    let config = LayerConfig::Bidirectional(BidirectionalConfig::new(
        LstmConfig::new(5).return_sequences(true).stateful(true),
        MergeMode::Concat,
    ));
    let cpu = Network::<f32>::random(&config, 3, 9).unwrap();
    let x = input(2, 6, 3, 1);
    let mut gpu = GpuNetwork::new(ctx, &cpu).unwrap();
    // Keras's stateful Bidirectional: each call runs the backward layer over that call's
    // steps only, so T calls of one step are T one-step forwards, not one T-step forward.
    let mut one_step_calls = cpu.clone();
    let mut one_forward = cpu.clone();
    let whole = one_forward.forward(x.view(), None, None).unwrap();
    let mut differs = 0.0f32;
    for t in 0..6 {
        let x_t = x.slice(s![.., t, ..]);
        let got = gpu.step(x_t).unwrap();
        let want = one_step_calls
            .forward(x.slice(s![.., t..t + 1, ..]), None, None)
            .unwrap()
            .swap_remove(0)
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((2, 10))
            .unwrap();
        let err = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(err <= 1e-5, "step {t}: {err}");
        let w = whole[0].slice(s![.., t, ..]);
        differs = differs.max((&got - &w).mapv(f32::abs).fold(0.0, |a, &b| a.max(b)));
    }
    assert!(
        differs > 1e-3,
        "the backward half differs from a T-step forward"
    );
}

/// A model graph of two inputs over the binding limit (the encoder–decoder of
/// `keras-zoo`, its inputs tiled to 2,048 rows) runs in batch chunks, every input sliced
/// alike, with the bits of the whole-batch forward.
#[test]
fn a_graph_of_two_inputs_over_the_binding_limit_runs_in_batch_chunks() {
    let Some(ctx) = gpu("a_graph_of_two_inputs_over_the_binding_limit_runs_in_batch_chunks") else {
        return;
    };
    let zoo = common::golden_dir("keras-zoo", "LSTM_WGPU_ZOO_DIR");
    let model =
        lstm_wgpu::model::KerasModel::load(&zoo.join("p_encoder_decoder_states.keras")).unwrap();
    let enc = ArrayD::from_shape_fn(ndarray::IxDyn(&[2048, 8, 4]), |i| {
        ((i[0] * 31 + i[1] * 7 + i[2]) % 17) as f32 / 8.0 - 1.0
    });
    let dec = ArrayD::from_shape_fn(ndarray::IxDyn(&[2048, 6, 3]), |i| {
        ((i[0] * 13 + i[1] * 5 + i[2]) % 11) as f32 / 5.0 - 1.0
    });
    let inputs = [enc.into(), dec.into()];
    let mut whole = GpuNetwork::from_model(ctx, &model).unwrap();
    let want = whole.forward_inputs(&inputs).unwrap();
    assert_eq!(whole.stats().batch_chunks, 0);
    let mut chunked = GpuNetwork::from_model(capped(256 << 10), &model).unwrap();
    let got = chunked.forward_inputs(&inputs).unwrap();
    let st = chunked.stats();
    assert!(st.batch_chunks >= 2, "{st:?}");
    assert_eq!(got, want, "batch chunks give the same bits");
}
