//! Generation loops (`lstm_wgpu::generate`) on a character model recorded from Keras 3.15.1
//! (`tests/data/generation`, `scripts/record_generation.py`): the tokens of Python loops
//! (greedy, temperature 0.7, temperature 1.2 with top-5) replayed with the same uniform
//! draws, on both paths; a seeded sampler reproducible; bad arguments errors.

use lstm_wgpu::generate::Sampler;
use lstm_wgpu::model::KerasModel;
use std::path::PathBuf;

mod common;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/generation")
}

fn sampler(case: &serde_json::Value) -> Sampler {
    let uniforms: Vec<f64> = case["uniforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_f64().unwrap())
        .collect();
    let top_k = case["top_k"].as_u64().map(|k| k as usize);
    Sampler::replay(case["temperature"].as_f64().unwrap(), top_k, uniforms).unwrap()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect()
}

#[test]
fn python_loops_are_replayed_token_for_token() {
    let text = std::fs::read_to_string(dir().join("char_lstm.loops.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut model = KerasModel::load(&dir().join("char_lstm.keras")).unwrap();
    let ctx = common::gpu("generation");
    let mut gpu = ctx.map(|c| lstm_wgpu::gpu::GpuNetwork::from_model(c, &model).unwrap());
    for case in &cases {
        let (seed, want) = (ints(&case["seed"]), ints(&case["tokens"]));
        let got = model
            .generate(&seed, want.len(), &mut sampler(case))
            .unwrap();
        assert_eq!(got, want, "{} cpu", case["name"]);
        if let Some(g) = &mut gpu {
            let got = g.generate(&seed, want.len(), &mut sampler(case)).unwrap();
            assert_eq!(got, want, "{} gpu", case["name"]);
            assert_eq!(g.stats().submits, 1, "one submission per token");
        }
        println!(
            "{}: {} tokens as the Python loop's",
            case["name"],
            want.len()
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_bad_arguments_are_errors() {
    let mut model = KerasModel::load(&dir().join("char_lstm.keras")).unwrap();
    let seed: Vec<i64> = (1..=10).collect();
    let run = |model: &mut KerasModel, s: u64| {
        model
            .generate(&seed, 30, &mut Sampler::new(1.0, Some(8), s).unwrap())
            .unwrap()
    };
    let (a, b, c) = (run(&mut model, 7), run(&mut model, 7), run(&mut model, 8));
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed, other draws");
    assert!(a.iter().all(|&t| (0..24).contains(&t)));
    // a seed shorter than the model's window, a replay that runs out
    let e = model
        .generate(&[1, 2], 5, &mut Sampler::greedy())
        .unwrap_err()
        .to_string();
    assert!(e.contains("seed") && e.contains("10"), "{e}");
    let e = model
        .generate(
            &seed,
            5,
            &mut Sampler::replay(1.0, None, vec![0.5; 2]).unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("ran out"), "{e}");
    assert!(Sampler::replay(1.0, None, vec![1.0]).is_err());
    assert!(Sampler::new(f64::NAN, None, 0).is_err());
    assert!(Sampler::new(1.0, Some(0), 0).is_err());
    let mut s = Sampler::greedy();
    assert!(s.sample(&[0.2, f32::NAN]).is_err());
    assert!(s.sample(&[]).is_err());
}
