//! `lstm_wgpu::ctc::ctc_decode` against `keras.ops.ctc_decode` (Keras 3.15.1, TensorFlow 2.21
//! backend), recorded by `scripts/record_ctc_cases.py` into `tests/data/ctc/`: the labels must
//! be identical, the scores within 1e-5 (relative to the score's size past 1).

use std::path::PathBuf;

use lstm_wgpu::ctc::{ctc_decode, labels_to_text, CtcDecoded, CtcStrategy};
use lstm_wgpu::LstmError;
use ndarray::{Array1, Array3, ArrayView3};
use serde_json::Value;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ctc")
}

struct Recorded {
    doc: Value,
    values: Array1<f32>,
}

impl Recorded {
    fn load() -> Self {
        let text = std::fs::read_to_string(data_dir().join("cases.json")).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let values: Array1<f32> = ndarray_npy::read_npy(data_dir().join("inputs.npy")).unwrap();
        Recorded { doc, values }
    }

    /// The input set `name`: its `[B, T, C]` values and its recorded sequence lengths.
    fn input(&self, name: &str) -> (Array3<f32>, Vec<usize>) {
        let entry = self.doc["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no input set {name}"));
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let offset = entry["offset"].as_u64().unwrap() as usize;
        let n = shape.iter().product::<usize>();
        let x = Array3::from_shape_vec(
            (shape[0], shape[1], shape[2]),
            self.values.as_slice().unwrap()[offset..offset + n].to_vec(),
        )
        .unwrap();
        (x, usizes(&entry["sequence_lengths"]))
    }
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn strategy(case: &Value) -> CtcStrategy {
    let n = |k: &str| case[k].as_u64().unwrap() as usize;
    match case["strategy"].as_str().unwrap() {
        "greedy" => CtcStrategy::Greedy {
            merge_repeated: case["merge_repeated"].as_bool().unwrap(),
        },
        "beam_search" => CtcStrategy::beam_search(n("beam_width"), n("top_paths")),
        other => panic!("strategy {other}"),
    }
}

fn describe(case: &Value) -> String {
    format!(
        "{} {} merge={} width={} top={} mask={}",
        case["input"],
        case["strategy"],
        case["merge_repeated"],
        case["beam_width"],
        case["top_paths"],
        case["mask_index"]
    )
}

/// Keras's decoded array from the recorded unpadded label lists.
fn keras_padded(decoded: &Value, batch: usize, max_time: usize) -> Array3<i64> {
    let paths = decoded.as_array().unwrap();
    let mut out = Array3::from_elem((paths.len(), batch, max_time), -1i64);
    for (k, path) in paths.iter().enumerate() {
        for (b, labels) in path.as_array().unwrap().iter().enumerate() {
            for (t, label) in labels.as_array().unwrap().iter().enumerate() {
                out[[k, b, t]] = label.as_i64().unwrap();
            }
        }
    }
    out
}

#[test]
fn recorded_decodes_match_keras() {
    let rec = Recorded::load();
    assert_eq!(rec.doc["keras"], "3.15.1");
    assert_eq!(rec.doc["backend"], "tensorflow");
    let cases = rec.doc["decodes"].as_array().unwrap();
    assert!(cases.len() >= 150, "{} recorded decodes", cases.len());
    let (mut worst_abs, mut worst_rel, mut worst_case) = (0.0f64, 0.0f64, String::new());
    let mut exact = 0usize;
    let mut scores_seen = 0usize;
    for case in cases {
        let what = describe(case);
        let (x, lengths) = rec.input(case["input"].as_str().unwrap());
        let mask = case["mask_index"].as_u64().unwrap() as usize;
        let out: CtcDecoded = ctc_decode(x.view(), &lengths, strategy(case), mask)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (batch, max_time, _) = x.dim();
        let expected = keras_padded(&case["decoded"], batch, max_time);
        assert_eq!(out.padded(), expected, "{what}: decoded");
        assert_eq!(out.paths.len(), expected.dim().0, "{what}");
        let scores = case["scores"].as_array().unwrap();
        assert_eq!(
            out.scores.dim(),
            (batch, expected.dim().0),
            "{what}: scores shape"
        );
        for (b, row) in scores.iter().enumerate() {
            for (k, want) in row.as_array().unwrap().iter().enumerate() {
                let got = out.scores[[b, k]];
                scores_seen += 1;
                if let Some(special) = want.as_str() {
                    let same = match special {
                        "nan" => got.is_nan(),
                        "inf" => got == f32::INFINITY,
                        "-inf" => got == f32::NEG_INFINITY,
                        other => panic!("score {other}"),
                    };
                    assert!(same, "{what}: score [{b}, {k}] = {got}, Keras: {special}");
                    exact += 1;
                    continue;
                }
                let want = want.as_f64().unwrap();
                let diff = (got as f64 - want).abs();
                let rel = diff / want.abs().max(1.0);
                assert!(
                    rel <= 1e-5,
                    "{what}: score [{b}, {k}] = {got}, Keras {want} (diff {diff:e})"
                );
                // (serde_json's f64 parsing may miss the recorded f32 value by an f64 ulp;
                // rounding to f32 recovers it.)
                if got == want as f32 {
                    exact += 1;
                }
                if diff > worst_abs {
                    worst_abs = diff;
                }
                if rel > worst_rel {
                    worst_rel = rel;
                    worst_case = format!("{what} [{b}, {k}]");
                }
            }
        }
    }
    println!(
        "{} decodes, {scores_seen} scores ({exact} bit-identical); worst |diff| {worst_abs:e}, \
         worst relative {worst_rel:e} ({worst_case})",
        cases.len()
    );
}

#[test]
fn recorded_refusals_are_errors() {
    let rec = Recorded::load();
    let cases = rec.doc["errors"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let what = format!("{} (Keras: {})", describe(case), case["error"]);
        let name = case["input"].as_str().unwrap();
        let x = if name.contains("zeros") {
            Array3::<f32>::zeros((1, 0, 3))
        } else {
            rec.input(name).0
        };
        let lengths = usizes(&case["sequence_lengths"]);
        let mask = case["mask_index"].as_u64().unwrap() as usize;
        let err = ctc_decode(x.view(), &lengths, strategy(case), mask)
            .expect_err(&format!("{what}: accepted"));
        assert!(
            matches!(
                err,
                LstmError::InvalidArgument { .. } | LstmError::ShapeMismatch { .. }
            ),
            "{what}: {err:?}"
        );
    }
}

/// Peaked log-probabilities (the arg-max has probability 0.97 at each step) along a path with
/// repeats and blanks: a deterministic LCG, no recorded data.
fn peaked_log_probs(batch: usize, steps: usize, classes: usize, blank: usize) -> Array3<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut x = Array3::<f32>::zeros((batch, steps, classes));
    for b in 0..batch {
        let mut class = blank;
        for t in 0..steps {
            match next() % 10 {
                0..=3 => class = blank,
                4..=5 => {}
                _ => class = next() % classes,
            }
            let rest = 0.03 / (classes - 1) as f32;
            for c in 0..classes {
                x[[b, t, c]] = if c == class { 0.97f32.ln() } else { rest.ln() };
            }
        }
    }
    x
}

#[test]
fn long_sequence_greedy_and_beam_width_1_agree() {
    let (batch, steps, classes) = (2, 2000, 6);
    for blank in [0, 3, classes - 1] {
        let x = peaked_log_probs(batch, steps, classes, blank);
        let lengths = [steps, 1234];
        let greedy = ctc_decode(x.view(), &lengths, CtcStrategy::greedy(), blank).unwrap();
        let beam = ctc_decode(x.view(), &lengths, CtcStrategy::beam_search(1, 1), blank).unwrap();
        assert_eq!(greedy.paths, beam.paths, "blank {blank}");
        assert!(greedy.paths[0][0].len() > 500, "a long path");
        for b in 0..batch {
            // The beam's prefix probability sums the greedy alignment and others like it.
            let best_alignment = -greedy.scores[[b, 0]];
            let prefix = beam.scores[[b, 0]];
            assert!(
                prefix >= best_alignment - 1e-2,
                "row {b}: beam log-prob {prefix} < greedy alignment {best_alignment}"
            );
        }
        // Wider beams agree on the best path here too.
        let wide = ctc_decode(x.view(), &lengths, CtcStrategy::beam_search(16, 2), blank).unwrap();
        assert_eq!(wide.paths[0], beam.paths[0], "blank {blank}");
        assert!(wide.scores[[0, 0]] >= wide.scores[[0, 1]]);
    }
}

#[test]
fn recorded_long_case_is_long() {
    let rec = Recorded::load();
    let (x, lengths) = rec.input("logpeaked_b1_t2000_c4_long");
    assert_eq!(x.dim(), (1, 2000, 4));
    let greedy = ctc_decode(x.view(), &lengths, CtcStrategy::greedy(), 0).unwrap();
    let beam = ctc_decode(x.view(), &lengths, CtcStrategy::beam_search(1, 1), 0).unwrap();
    assert_eq!(greedy.paths, beam.paths);
}

fn invalid(err: LstmError, what: &str) {
    match err {
        LstmError::InvalidArgument { what: w, .. } => assert_eq!(w, what),
        other => panic!("expected InvalidArgument for {what}, got {other:?}"),
    }
}

#[test]
fn errors_name_the_argument() {
    let x = Array3::<f32>::from_elem((2, 4, 3), 1.0 / 3.0);
    let v = x.view();
    let beam = CtcStrategy::beam_search(4, 2);
    match ctc_decode(v, &[4], CtcStrategy::greedy(), 0).unwrap_err() {
        LstmError::ShapeMismatch {
            what,
            expected,
            actual,
        } => {
            assert_eq!(what, "sequence_lengths");
            assert_eq!((expected, actual), (vec![2], vec![1]));
        }
        other => panic!("{other:?}"),
    }
    invalid(
        ctc_decode(v, &[4, 5], CtcStrategy::greedy(), 0).unwrap_err(),
        "sequence_lengths",
    );
    invalid(
        ctc_decode(v, &[4, 5], beam, 0).unwrap_err(),
        "sequence_lengths",
    );
    invalid(
        ctc_decode(v, &[4, 4], CtcStrategy::beam_search(0, 1), 0).unwrap_err(),
        "beam_width",
    );
    invalid(
        ctc_decode(v, &[4, 4], CtcStrategy::beam_search(3, 0), 0).unwrap_err(),
        "top_paths",
    );
    invalid(
        ctc_decode(v, &[4, 4], CtcStrategy::beam_search(3, 4), 0).unwrap_err(),
        "top_paths",
    );
    invalid(
        ctc_decode(v, &[4, 4], CtcStrategy::greedy(), 3).unwrap_err(),
        "mask_index",
    );
    invalid(ctc_decode(v, &[4, 4], beam, 3).unwrap_err(), "mask_index");
    // A row of length 0 has one prefix (the empty one): fewer than 2 paths.
    let err = ctc_decode(v, &[4, 0], beam, 0).unwrap_err();
    assert!(err.to_string().contains("batch row 1"), "{err}");
    invalid(err, "top_paths");
    assert!(ctc_decode(v, &[4, 0], CtcStrategy::beam_search(4, 1), 0).is_ok());
    // Empty inputs.
    for shape in [(0, 4, 3), (2, 0, 3), (2, 4, 0)] {
        let e = Array3::<f32>::zeros(shape);
        let lengths = vec![0; shape.0];
        invalid(
            ctc_decode(e.view(), &lengths, CtcStrategy::greedy(), 0).unwrap_err(),
            "inputs",
        );
    }
}

#[test]
fn non_finite_inputs() {
    let mut x = Array3::<f32>::from_elem((1, 4, 3), 0.2);
    x[[0, 0, 1]] = 0.6;
    x[[0, 2, 2]] = 0.6;
    let beam = CtcStrategy::beam_search(8, 1);
    // NaN past the sequence length is never read, by either decoder.
    x[[0, 3, 0]] = f32::NAN;
    let ok = ctc_decode(x.view(), &[3], beam, 0).unwrap();
    assert_eq!(ok.paths[0][0], vec![1, 2]);
    assert!(ctc_decode(x.view(), &[3], CtcStrategy::greedy(), 0).is_ok());
    // Within it: beam search refuses NaN and +inf, greedy follows TensorFlow.
    let err = ctc_decode(x.view(), &[4], beam, 0).unwrap_err();
    assert!(err.to_string().contains("inputs[0, 3, 0]"), "{err}");
    invalid(err, "inputs");
    let g = ctc_decode(x.view(), &[4], CtcStrategy::greedy(), 0).unwrap();
    assert_eq!(g.paths[0][0], vec![1, 2]); // class 0 (the blank) chosen at the NaN step
    assert!(g.scores[[0, 0]].is_nan());
    x[[0, 3, 0]] = f32::INFINITY;
    invalid(ctc_decode(x.view(), &[4], beam, 0).unwrap_err(), "inputs");
    let g = ctc_decode(x.view(), &[4], CtcStrategy::greedy(), 0).unwrap();
    assert_eq!(g.scores[[0, 0]], f32::NEG_INFINITY);
    // -inf (a log of 0) is fine, unless a whole step is -inf.
    x[[0, 3, 0]] = f32::NEG_INFINITY;
    assert!(ctc_decode(x.view(), &[4], beam, 0).is_ok());
    for c in 0..3 {
        x[[0, 3, c]] = f32::NEG_INFINITY;
    }
    invalid(ctc_decode(x.view(), &[4], beam, 0).unwrap_err(), "inputs");
}

#[test]
fn any_memory_layout() {
    let rec = Recorded::load();
    let (x, lengths) = rec.input("softmax_b3_t30_c12");
    // The same values held time-major [T, B, C], viewed as [B, T, C].
    let time_major = x
        .view()
        .permuted_axes([1, 0, 2])
        .as_standard_layout()
        .into_owned();
    let view: ArrayView3<f32> = time_major.view().permuted_axes([1, 0, 2]);
    assert!(!view.is_standard_layout());
    for strategy in [CtcStrategy::greedy(), CtcStrategy::beam_search(16, 1)] {
        let a = ctc_decode(x.view(), &lengths, strategy, 5).unwrap();
        let b = ctc_decode(view, &lengths, strategy, 5).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn text_from_a_string_lookup_vocabulary() {
    // Keras's OCR example: StringLookup(vocabulary=list(characters), mask_token=None) has
    // "[UNK]" at index 0; its model's last class (len(vocabulary)) is the CTC blank.
    let characters = ["2", "3", "4", "b", "c", "d"];
    let mut vocabulary = vec!["[UNK]".to_string()];
    vocabulary.extend(characters.iter().map(|s| s.to_string()));
    let blank = vocabulary.len(); // C - 1
    let classes = vocabulary.len() + 1;
    let word = [4usize, 1, 1, 6]; // "b22d"
    let mut x = Array3::<f32>::from_elem((1, 10, classes), 0.01);
    let steps = [4, 4, blank, 1, blank, 1, 1, 6, blank, blank];
    for (t, &c) in steps.iter().enumerate() {
        x[[0, t, c]] = 0.9;
    }
    let out = ctc_decode(x.view(), &[10], CtcStrategy::greedy(), blank).unwrap();
    let labels: Vec<i64> = word.iter().map(|&k| k as i64).collect();
    assert_eq!(out.paths[0][0], labels);
    assert_eq!(
        labels_to_text(&out.paths[0][0], &vocabulary).unwrap(),
        "b22d"
    );
    let logp = x.mapv(f32::ln);
    let beam = ctc_decode(logp.view(), &[10], CtcStrategy::beam_search(10, 1), blank).unwrap();
    assert_eq!(
        labels_to_text(&beam.paths[0][0], &vocabulary).unwrap(),
        "b22d"
    );
    invalid(labels_to_text(&[-1], &vocabulary).unwrap_err(), "labels");
    invalid(labels_to_text(&[7], &vocabulary).unwrap_err(), "labels");
}

#[test]
fn a_single_class_is_all_blank() {
    // Keras/TF accept C = 1: every step is the blank, the path is empty.
    let x = Array3::<f32>::from_elem((2, 3, 1), 0.5);
    let g = ctc_decode(x.view(), &[3, 1], CtcStrategy::greedy(), 0).unwrap();
    let empty: Vec<Vec<Vec<i64>>> = vec![vec![vec![], vec![]]];
    assert_eq!(g.paths, empty);
    assert_eq!(g.scores.column(0).to_vec(), vec![-1.5, -0.5]);
    let b = ctc_decode(x.view(), &[3, 1], CtcStrategy::beam_search(4, 1), 0).unwrap();
    assert_eq!(b.paths, empty);
    assert_eq!(b.scores.column(0).to_vec(), vec![0.0, 0.0]); // log-softmax of one class
}
