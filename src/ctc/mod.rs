//! CTC decoding: label sequences from a CRNN or speech model's `[B, T, C]` output, exactly as
//! `keras.ops.ctc_decode` of Keras 3 computes them with the TensorFlow backend.
//!
//! [`ctc_decode`] takes the same arguments as Keras's
//! `ctc_decode(inputs, sequence_lengths, strategy, beam_width, top_paths, merge_repeated,
//! mask_index)` and returns the same labels and scores (checked against Keras 3.15.1 with
//! TensorFlow 2.21 on recorded cases, `tests/ctc_decode.rs`):
//!
//! - **Greedy** ([`CtcStrategy::Greedy`], TensorFlow's `CTCGreedyDecoder`): at each of the
//!   row's first `sequence_lengths[b]` steps the class with the largest input value (the
//!   first such class on a tie); the blank (`mask_index`) is dropped, and with
//!   `merge_repeated` a class equal to the previous step's class is dropped too (a blank in
//!   between keeps both: `A A _ A` gives `A A`). The score is `-sum(max)` of the raw input
//!   values, one per batch row.
//! - **Beam search** ([`CtcStrategy::BeamSearch`], TensorFlow's `CTCBeamSearchDecoder` as
//!   `tf.nn.ctc_beam_search_decoder` calls it): the prefix beam search of
//!   `tensorflow/core/util/ctc/ctc_beam_search.h`, keeping `beam_width` prefixes with
//!   blank-ending and label-ending probabilities, with TensorFlow's pruning, its order of
//!   candidates and its tie-breaking (its `gtl::TopN` and libstdc++'s heap and sort
//!   algorithms are reproduced). Each row of the input is log-softmaxed first. The scores
//!   are the `top_paths` prefixes' log-probabilities, best first. Keras's `merge_repeated`
//!   has no effect here (Keras calls the v2 decoder, which always passes
//!   `merge_repeated=False`), so this variant has no such field.
//!
//! ## What to pass as `inputs`
//!
//! Keras hands `inputs` to TensorFlow unchanged: no `log`, no softmax. Its docstring asks for
//! logits; models in practice end in a softmax, and Keras users then pass those
//! probabilities. [`ctc_decode`] does exactly what Keras does with either, so pass what you
//! would have passed to Keras. Two consequences of Keras's behaviour worth knowing:
//!
//! - with probabilities, the greedy score is `-sum` of the largest probabilities (not of
//!   log-probabilities), and the beam search scores are log-probabilities of
//!   `softmax(probabilities)`, a flattened distribution, so its ranking can differ from the
//!   model's;
//! - for beam search on the model's own distribution, pass `probs.mapv(f32::ln)` (a
//!   log-softmax of log-probabilities gives them back; Keras returns the same for the same
//!   input). The greedy labels are the same either way, except where `ln` rounds two
//!   different probabilities of a step to one value.
//!
//! ## Differences from Keras
//!
//! Results are the same; these calls differ:
//! - `mask_index` is a class index in `0..C`. Keras's `None` means the last class (pass
//!   `C - 1`); negative indices are not taken. `mask_index >= C` is an error here; Keras's
//!   greedy decoder refuses it too, its beam search silently uses the last class.
//! - Beam search with a NaN or `+inf` input, or with a step whose inputs are all `-inf`, is an
//!   error: TensorFlow gives NaN scores and arbitrary labels there. Only the first
//!   `sequence_lengths[b]` steps of a row are read or checked. `-inf` inputs (the log of a
//!   zero probability) are fine.
//! - The greedy decoder does what TensorFlow does with NaN: a NaN is never larger than the
//!   running maximum, so it is ignored unless it is class 0 of its step, in which case class
//!   0 is chosen and the score is NaN.
//!
//! Keras's own errors are errors here, as [`LstmError::InvalidArgument`] or
//! [`LstmError::ShapeMismatch`]: an empty input (`B`, `T` or `C` zero), `sequence_lengths`
//! of another length than `B` or with a length over `T`, a beam width or `top_paths` of 0,
//! `top_paths > beam_width`, and fewer distinct prefixes than `top_paths` at the end of a
//! row (TensorFlow's "Less leaves in the beam search than requested", e.g. `top_paths = 2`
//! for a row of length 0).
//!
//! Floating point: `f32` throughout, in TensorFlow's order of operations, with the C
//! library's `expf`, `logf` and `log1pf` as TensorFlow calls them; on the recorded cases
//! (glibc 2.36) every score is bit-identical to Keras's. Another C library may differ in a
//! last bit, and so, on an exact tie, in a label.
//!
//! ```
//! use lstm_wgpu::ctc::{ctc_decode, labels_to_text, CtcStrategy};
//! use ndarray::Array3;
//!
//! // One image, 5 time steps, classes: 0 = blank (Keras's default mask_index), 1 = 'a', 2 = 'b'.
//! let probs = Array3::from_shape_vec(
//!     (1, 5, 3),
//!     vec![
//!         0.1, 0.8, 0.1, // a
//!         0.2, 0.7, 0.1, // a again: merged
//!         0.9, 0.05, 0.05, // blank
//!         0.1, 0.8, 0.1, // a: a new one after the blank
//!         0.1, 0.1, 0.8, // b
//!     ],
//! )
//! .unwrap();
//! let greedy = ctc_decode(probs.view(), &[5], CtcStrategy::greedy(), 0)?;
//! assert_eq!(greedy.paths[0][0], vec![1, 1, 2]);
//! assert_eq!(labels_to_text(&greedy.paths[0][0], &["", "a", "b"])?, "aab");
//! assert!((greedy.scores[[0, 0]] + 4.0).abs() < 1e-6); // -(0.8 + 0.7 + 0.9 + 0.8 + 0.8)
//!
//! let logp = probs.mapv(f32::ln);
//! let beams = ctc_decode(logp.view(), &[5], CtcStrategy::beam_search(10, 2), 0)?;
//! assert_eq!(beams.paths[0][0], vec![1, 1, 2]);
//! assert!(beams.scores[[0, 0]] >= beams.scores[[0, 1]]);
//! assert_eq!(beams.padded().shape(), &[2, 1, 5]); // Keras's layout, -1 padded
//! # Ok::<(), lstm_wgpu::LstmError>(())
//! ```

use ndarray::{Array2, Array3, ArrayView3};

use crate::error::{LstmError, Result};

mod beam;
mod stl;
use beam::BeamDecoder;

/// How [`ctc_decode`] decodes: Keras's `strategy` with the parameters that apply to it.
///
/// ```
/// use lstm_wgpu::ctc::CtcStrategy;
///
/// // Keras: strategy="greedy" (merge_repeated=True is Keras's default)
/// assert_eq!(CtcStrategy::default(), CtcStrategy::Greedy { merge_repeated: true });
/// // Keras: strategy="beam_search", beam_width=100, top_paths=1 (Keras's defaults)
/// assert_eq!(
///     CtcStrategy::beam_search(100, 1),
///     CtcStrategy::BeamSearch { beam_width: 100, top_paths: 1 }
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtcStrategy {
    /// `strategy="greedy"`: the best class of each step, blanks dropped; one path.
    Greedy {
        /// Drop a class equal to the previous step's class (Keras's `merge_repeated`,
        /// default `True`). The previous step counts even when it was a blank, so a blank
        /// between two equal classes keeps both.
        merge_repeated: bool,
    },
    /// `strategy="beam_search"`: TensorFlow's prefix beam search. Keras's `merge_repeated`
    /// does not apply (Keras's TensorFlow backend always decodes with `merge_repeated=False`).
    BeamSearch {
        /// Prefixes kept at each step (Keras's `beam_width`, default 100); at least 1.
        beam_width: usize,
        /// Paths returned per batch row, best first (Keras's `top_paths`, default 1);
        /// `1..=beam_width`.
        top_paths: usize,
    },
}

impl CtcStrategy {
    /// Keras's default: greedy with `merge_repeated=True`.
    ///
    /// ```
    /// use lstm_wgpu::ctc::CtcStrategy;
    /// assert_eq!(CtcStrategy::greedy(), CtcStrategy::Greedy { merge_repeated: true });
    /// ```
    pub const fn greedy() -> Self {
        CtcStrategy::Greedy {
            merge_repeated: true,
        }
    }

    /// Beam search with Keras's `beam_width` and `top_paths`.
    ///
    /// ```
    /// use lstm_wgpu::ctc::CtcStrategy;
    /// let s = CtcStrategy::beam_search(16, 3);
    /// assert_eq!(s, CtcStrategy::BeamSearch { beam_width: 16, top_paths: 3 });
    /// ```
    pub const fn beam_search(beam_width: usize, top_paths: usize) -> Self {
        CtcStrategy::BeamSearch {
            beam_width,
            top_paths,
        }
    }

    /// The number of paths this strategy returns per batch row (1 for greedy).
    ///
    /// ```
    /// use lstm_wgpu::ctc::CtcStrategy;
    /// assert_eq!(CtcStrategy::greedy().top_paths(), 1);
    /// assert_eq!(CtcStrategy::beam_search(8, 3).top_paths(), 3);
    /// ```
    pub const fn top_paths(&self) -> usize {
        match self {
            CtcStrategy::Greedy { .. } => 1,
            CtcStrategy::BeamSearch { top_paths, .. } => *top_paths,
        }
    }
}

impl Default for CtcStrategy {
    /// [`CtcStrategy::greedy`], Keras's default.
    fn default() -> Self {
        CtcStrategy::greedy()
    }
}

/// What [`ctc_decode`] returns: Keras's `(decoded, scores)`.
///
/// ```
/// use lstm_wgpu::ctc::{ctc_decode, CtcStrategy};
/// use ndarray::Array3;
///
/// // B = 2, T = 2, C = 2 (class 0 is the blank)
/// let x = Array3::from_shape_vec((2, 2, 2), vec![0.2, 0.8, 0.7, 0.3, 0.9, 0.1, 0.6, 0.4]).unwrap();
/// let out = ctc_decode(x.view(), &[2, 2], CtcStrategy::greedy(), 0)?;
/// assert_eq!(out.paths, vec![vec![vec![1], vec![]]]); // [top_paths][B]
/// assert_eq!(out.scores.dim(), (2, 1)); // [B, top_paths]
/// assert_eq!(out.padded(), ndarray::array![[[1, -1], [-1, -1]]]); // Keras's decoded array
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CtcDecoded {
    /// `paths[k][b]`: the `k`-th best label sequence of batch row `b` (`top_paths` paths;
    /// one for greedy), in the input's class numbering (the blank never appears).
    pub paths: Vec<Vec<Vec<i64>>>,
    /// `[B, top_paths]`, as Keras returns them: for greedy `-sum` over the row's steps of the
    /// largest input value; for beam search each path's log-probability (best first).
    pub scores: Array2<f32>,
    /// `T`, the input's time steps: the last axis of [`CtcDecoded::padded`].
    pub max_time: usize,
}

impl CtcDecoded {
    /// Keras's `decoded` array: `[top_paths, B, T]`, each path's labels followed by `-1`.
    ///
    /// ```
    /// use lstm_wgpu::ctc::{ctc_decode, CtcStrategy};
    /// use ndarray::Array3;
    ///
    /// let x = Array3::from_shape_vec((1, 3, 2), vec![0.1, 0.9, 0.8, 0.2, 0.3, 0.7]).unwrap();
    /// let out = ctc_decode(x.view(), &[3], CtcStrategy::greedy(), 0)?;
    /// assert_eq!(out.padded(), ndarray::array![[[1, 1, -1]]]);
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn padded(&self) -> Array3<i64> {
        let batch = self.paths.first().map_or(0, Vec::len);
        let mut out = Array3::from_elem((self.paths.len(), batch, self.max_time), -1i64);
        for (k, path) in self.paths.iter().enumerate() {
            for (b, labels) in path.iter().enumerate() {
                for (t, &label) in labels.iter().enumerate().take(self.max_time) {
                    out[[k, b, t]] = label;
                }
            }
        }
        out
    }
}

/// Decodes a CTC model's output `inputs` (`[B, T, C]`) as `keras.ops.ctc_decode` does with
/// the TensorFlow backend.
///
/// `sequence_lengths[b]` (at most `T`) is how many steps of row `b` are decoded; the rest are
/// not read. `mask_index` is the blank class (Keras's default is 0; the OCR example's models
/// put it last, `C - 1`). See the [module documentation](self) for what to pass as `inputs`,
/// the two strategies, and the errors.
///
/// ```
/// use lstm_wgpu::ctc::{ctc_decode, CtcStrategy};
/// use ndarray::Array3;
///
/// // Blank last (mask_index = C - 1 = 2); the second row is only 1 step long.
/// let x = Array3::from_shape_vec(
///     (2, 2, 3),
///     vec![0.7, 0.2, 0.1, 0.1, 0.8, 0.1, 0.1, 0.3, 0.6, 0.9, 0.05, 0.05],
/// )
/// .unwrap();
/// let out = ctc_decode(x.view(), &[2, 1], CtcStrategy::greedy(), 2)?;
/// assert_eq!(out.paths[0], vec![vec![0, 1], vec![]]);
///
/// let err = ctc_decode(x.view(), &[2, 3], CtcStrategy::greedy(), 2).unwrap_err();
/// assert!(err.to_string().contains("sequence_lengths"));
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
pub fn ctc_decode(
    inputs: ArrayView3<f32>,
    sequence_lengths: &[usize],
    strategy: CtcStrategy,
    mask_index: usize,
) -> Result<CtcDecoded> {
    let (batch, max_time, classes) = inputs.dim();
    if batch == 0 || max_time == 0 || classes == 0 {
        return Err(LstmError::invalid(
            "inputs",
            format!(
                "shape [{batch}, {max_time}, {classes}] is empty; [B, T, C] must all be at \
                 least 1 (TensorFlow: `inputs must not be empty`)"
            ),
        ));
    }
    if sequence_lengths.len() != batch {
        return Err(LstmError::shape(
            "sequence_lengths",
            &[batch],
            &[sequence_lengths.len()],
        ));
    }
    if let Some((b, &len)) = sequence_lengths
        .iter()
        .enumerate()
        .find(|(_, &len)| len > max_time)
    {
        return Err(LstmError::invalid(
            "sequence_lengths",
            format!("sequence_lengths[{b}] = {len} is more than the input's {max_time} steps"),
        ));
    }
    if mask_index >= classes {
        return Err(LstmError::invalid(
            "mask_index",
            format!("{mask_index} is not a class of the input's {classes} (0..{classes})"),
        ));
    }
    match strategy {
        CtcStrategy::Greedy { merge_repeated } => {
            Ok(greedy(inputs, sequence_lengths, merge_repeated, mask_index))
        }
        CtcStrategy::BeamSearch {
            beam_width,
            top_paths,
        } => {
            if beam_width == 0 {
                return Err(LstmError::invalid("beam_width", "must be at least 1"));
            }
            if beam_width > i32::MAX as usize {
                return Err(LstmError::invalid(
                    "beam_width",
                    format!("{beam_width} is over TensorFlow's limit of {}", i32::MAX),
                ));
            }
            if top_paths == 0 {
                return Err(LstmError::invalid("top_paths", "must be at least 1"));
            }
            if top_paths > beam_width {
                return Err(LstmError::invalid(
                    "top_paths",
                    format!(
                        "{top_paths} is more than beam_width {beam_width} (TensorFlow: \
                         `requested more paths than the beam width`)"
                    ),
                ));
            }
            check_beam_inputs(inputs, sequence_lengths)?;
            beam_search(inputs, sequence_lengths, beam_width, top_paths, mask_index)
        }
    }
}

/// Turns a label sequence into text with a Keras `StringLookup` vocabulary: label `k` becomes
/// `vocabulary[k]`.
///
/// Pass the list `get_vocabulary()` returns. In Keras's OCR example (`captcha_ocr`),
/// `char_to_num = StringLookup(vocabulary=list(characters), mask_token=None)` puts its OOV
/// token `"[UNK]"` at index 0, so its `get_vocabulary()` is `["[UNK]", c1, c2, ...]`:
/// label `k >= 1` is `characters[k - 1]`, which is what the example's
/// `num_to_char = StringLookup(vocabulary=char_to_num.get_vocabulary(), invert=True)` gives.
/// (That model's blank is the extra last class, `C - 1 = len(vocabulary)`: decode with
/// `mask_index = C - 1`.) A label outside the vocabulary is an
/// [`LstmError::InvalidArgument`] (Keras's inverted lookup would give its OOV token).
///
/// ```
/// use lstm_wgpu::ctc::labels_to_text;
///
/// let vocabulary = ["[UNK]", "2", "3", "b", "c"]; // char_to_num.get_vocabulary()
/// assert_eq!(labels_to_text(&[3, 1, 4], &vocabulary)?, "b2c");
/// assert!(labels_to_text(&[5], &vocabulary).is_err());
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
pub fn labels_to_text<S: AsRef<str>>(labels: &[i64], vocabulary: &[S]) -> Result<String> {
    let mut text = String::new();
    for (i, &label) in labels.iter().enumerate() {
        let entry = usize::try_from(label)
            .ok()
            .and_then(|k| vocabulary.get(k))
            .ok_or_else(|| {
                LstmError::invalid(
                    "labels",
                    format!(
                        "labels[{i}] = {label} is not an index of the {}-entry vocabulary",
                        vocabulary.len()
                    ),
                )
            })?;
        text.push_str(entry.as_ref());
    }
    Ok(text)
}

/// TensorFlow's `CTCGreedyDecoderOp` (`tensorflow/core/kernels/ctc_decoder_ops.cc`).
fn greedy(
    inputs: ArrayView3<f32>,
    sequence_lengths: &[usize],
    merge_repeated: bool,
    blank: usize,
) -> CtcDecoded {
    let (batch, max_time, classes) = inputs.dim();
    let mut paths = Vec::with_capacity(batch);
    let mut scores = Array2::<f32>::zeros((batch, 1));
    for (b, &len) in sequence_lengths.iter().enumerate() {
        let mut labels = Vec::new();
        let mut score = 0.0f32;
        let mut prev: Option<usize> = None;
        for t in 0..len {
            // RowMax: the first class of the largest value; `>` never picks a NaN.
            let mut best = 0;
            let mut max = inputs[[b, t, 0]];
            for c in 1..classes {
                let v = inputs[[b, t, c]];
                if v > max {
                    max = v;
                    best = c;
                }
            }
            score += -max;
            if best != blank && !(merge_repeated && prev == Some(best)) {
                labels.push(best as i64);
            }
            prev = Some(best);
        }
        scores[[b, 0]] = score;
        paths.push(labels);
    }
    CtcDecoded {
        paths: vec![paths],
        scores,
        max_time,
    }
}

/// Beam search inputs TensorFlow has no defined result for.
fn check_beam_inputs(inputs: ArrayView3<f32>, sequence_lengths: &[usize]) -> Result<()> {
    let classes = inputs.dim().2;
    for (b, &len) in sequence_lengths.iter().enumerate() {
        for t in 0..len {
            let mut max = f32::NEG_INFINITY;
            for c in 0..classes {
                let v = inputs[[b, t, c]];
                if v.is_nan() || v == f32::INFINITY {
                    return Err(LstmError::invalid(
                        "inputs",
                        format!(
                            "inputs[{b}, {t}, {c}] is {v}: beam search needs finite values or \
                             -inf (TensorFlow's result for it is NaN scores and arbitrary \
                             labels)"
                        ),
                    ));
                }
                max = max.max(v);
            }
            if max == f32::NEG_INFINITY {
                return Err(LstmError::invalid(
                    "inputs",
                    format!(
                        "every class of inputs[{b}, {t}, ..] is -inf: beam search needs one \
                         finite value per step (TensorFlow's result for it is NaN scores)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Keras's beam search: the `mask_index` column moved last, TensorFlow's
/// `CTCBeamSearchDecoderOp` on that, labels at or above `mask_index` shifted back up.
fn beam_search(
    inputs: ArrayView3<f32>,
    sequence_lengths: &[usize],
    beam_width: usize,
    top_paths: usize,
    mask_index: usize,
) -> Result<CtcDecoded> {
    let (batch, max_time, classes) = inputs.dim();
    // Keras: concat([x[..., :mask], x[..., mask + 1:], x[..., mask:mask + 1]])
    let order: Vec<usize> = (0..classes)
        .filter(|&c| c != mask_index)
        .chain(std::iter::once(mask_index))
        .collect();
    let mut decoder = BeamDecoder::new(classes, beam_width);
    let mut paths = vec![Vec::with_capacity(batch); top_paths];
    let mut scores = Array2::<f32>::zeros((batch, top_paths));
    let mut row = vec![0.0f32; classes];
    for (b, &len) in sequence_lengths.iter().enumerate() {
        decoder.reset();
        for t in 0..len {
            for (slot, &c) in row.iter_mut().zip(&order) {
                *slot = inputs[[b, t, c]];
            }
            decoder.step(&row);
        }
        let best = decoder.top_paths(top_paths).ok_or_else(|| {
            LstmError::invalid(
                "top_paths",
                format!(
                    "{top_paths} paths were asked for, but batch row {b} (length {len}) has \
                     only {} distinct prefixes in its beam (TensorFlow: `Less leaves in the \
                     beam search than requested`)",
                    decoder.leaves.len()
                ),
            )
        })?;
        for (k, (labels, log_prob)) in best.into_iter().enumerate() {
            let labels = labels
                .into_iter()
                .map(|l| {
                    if l >= mask_index {
                        l as i64 + 1
                    } else {
                        l as i64
                    }
                })
                .collect();
            paths[k].push(labels);
            scores[[b, k]] = log_prob;
        }
    }
    Ok(CtcDecoded {
        paths,
        scores,
        max_time,
    })
}
