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

const LOG_ZERO: f32 = f32::NEG_INFINITY;
const NONE: usize = usize::MAX;

/// `ctc_beam_search::BeamProbability<float>`: log-probabilities of a prefix ending in a
/// blank, ending in its last label, and both.
#[derive(Debug, Clone, Copy)]
struct Prob {
    total: f32,
    blank: f32,
    label: f32,
}

impl Prob {
    const ZERO: Prob = Prob {
        total: LOG_ZERO,
        blank: LOG_ZERO,
        label: LOG_ZERO,
    };
}

/// `ctc_beam_search::BeamEntry`: a prefix, as its last label and its parent prefix.
#[derive(Debug, Clone)]
struct Node {
    parent: usize,
    label: usize,
    /// Start of this node's `C - 1` child slots in `BeamDecoder::child_slots`, or `NONE`.
    children: usize,
    oldp: Prob,
    newp: Prob,
}

impl Node {
    fn active(&self) -> bool {
        self.newp.total != LOG_ZERO
    }
}

/// `ctc::LogSumExp` (`ctc_loss_util.h`), with `expf` and `log1pf`.
fn log_sum_exp(a: f32, b: f32) -> f32 {
    if a == LOG_ZERO {
        b
    } else if b == LOG_ZERO {
        a
    } else if a > b {
        a + (b - a).exp().ln_1p()
    } else {
        b + (a - b).exp().ln_1p()
    }
}

/// `ctc::CTCBeamSearchDecoder<float>` with the default scorer, no label selection, the blank
/// last, `merge_repeated = false`.
struct BeamDecoder {
    classes: usize,
    beam_width: usize,
    nodes: Vec<Node>,
    child_slots: Vec<usize>,
    leaves: TopN,
}

impl BeamDecoder {
    fn new(classes: usize, beam_width: usize) -> Self {
        BeamDecoder {
            classes,
            beam_width,
            nodes: Vec::new(),
            child_slots: Vec::new(),
            leaves: TopN::new(beam_width),
        }
    }

    /// `Reset()`: a fresh tree whose root (the empty prefix) has probability 1.
    fn reset(&mut self) {
        self.nodes.clear();
        self.child_slots.clear();
        self.nodes.push(Node {
            parent: NONE,
            label: NONE,
            children: NONE,
            oldp: Prob::ZERO,
            newp: Prob {
                total: 0.0,
                blank: 0.0,
                label: LOG_ZERO,
            },
        });
        self.leaves.reset();
        self.leaves.push(0, &self.nodes);
    }

    /// `BeamEntry::GetChild`: the child of `parent` for `label`, made when first asked for.
    fn child(&mut self, parent: usize, label: usize) -> usize {
        if self.nodes[parent].children == NONE {
            self.nodes[parent].children = self.child_slots.len();
            self.child_slots
                .extend(std::iter::repeat_n(NONE, self.classes - 1));
        }
        let slot = self.nodes[parent].children + label;
        if self.child_slots[slot] == NONE {
            self.child_slots[slot] = self.nodes.len();
            self.nodes.push(Node {
                parent,
                label,
                children: NONE,
                oldp: Prob::ZERO,
                newp: Prob::ZERO,
            });
        }
        self.child_slots[slot]
    }

    /// `is_candidate`: a probability that may enter the beam.
    fn is_candidate(&mut self, total: f32) -> bool {
        total > LOG_ZERO
            && (self.leaves.len() < self.beam_width || {
                let bottom = self.leaves.peek_bottom(&self.nodes);
                total > self.nodes[bottom].newp.total
            })
    }

    /// `Step()`: one time step; `row` has the blank last.
    fn step(&mut self, row: &[f32]) {
        let blank = self.classes - 1;
        let max_coeff = row.iter().copied().fold(LOG_ZERO, f32::max);
        let mut logsumexp = 0.0f32;
        for &v in row {
            logsumexp += (v - max_coeff).exp();
        }
        let logsumexp = logsumexp.ln();
        let norm_offset = max_coeff + logsumexp;

        let branches = self.leaves.extract(&self.nodes);
        self.leaves.reset();
        for &b in &branches {
            self.nodes[b].oldp = self.nodes[b].newp;
        }

        for &b in &branches {
            let node = &self.nodes[b];
            let parent = node.parent;
            let label = node.label;
            let mut newp = node.newp;
            let oldp = node.oldp;
            if parent != NONE {
                let p = &self.nodes[parent];
                if p.active() {
                    let previous = if label == p.label {
                        p.oldp.blank
                    } else {
                        p.oldp.total
                    };
                    newp.label = log_sum_exp(newp.label, previous);
                }
                newp.label += row[label] - norm_offset;
            }
            newp.blank = oldp.total + row[blank] - norm_offset;
            newp.total = log_sum_exp(newp.blank, newp.label);
            self.nodes[b].newp = newp;
            self.leaves.push(b, &self.nodes);
        }

        for &b in &branches {
            if !self.is_candidate(self.nodes[b].oldp.total) {
                continue;
            }
            let b_label = self.nodes[b].label;
            let b_oldp = self.nodes[b].oldp;
            for (label, &logit) in row.iter().enumerate().take(blank) {
                let c = self.child(b, label);
                if self.nodes[c].active() {
                    continue;
                }
                let previous = if label == b_label {
                    b_oldp.blank
                } else {
                    b_oldp.total
                };
                let total = logit - norm_offset + previous;
                self.nodes[c].newp = Prob {
                    total,
                    blank: LOG_ZERO,
                    label: total,
                };
                if self.is_candidate(total) {
                    if self.leaves.len() == self.beam_width {
                        let bottom = self.leaves.peek_bottom(&self.nodes);
                        self.nodes[bottom].newp = Prob::ZERO;
                    }
                    self.leaves.push(c, &self.nodes);
                } else {
                    self.nodes[c].oldp = Prob::ZERO;
                    self.nodes[c].newp = Prob::ZERO;
                }
            }
        }
    }

    /// `TopPaths()`: the `n` best prefixes (labels with the blank last) and their
    /// log-probabilities, or `None` when the beam holds fewer than `n`.
    fn top_paths(&self, n: usize) -> Option<Vec<(Vec<usize>, f32)>> {
        if n > self.leaves.len() {
            return None;
        }
        let mut top = TopN::new(n);
        for &e in &self.leaves.elements {
            top.push(e, &self.nodes);
        }
        let best = top.extract(&self.nodes);
        Some(
            best.into_iter()
                .take(n)
                .map(|e| (self.label_seq(e), self.nodes[e].newp.total))
                .collect(),
        )
    }

    /// `BeamEntry::LabelSeq(false)`.
    fn label_seq(&self, mut e: usize) -> Vec<usize> {
        let mut labels = Vec::new();
        while self.nodes[e].parent != NONE {
            labels.push(self.nodes[e].label);
            e = self.nodes[e].parent;
        }
        labels.reverse();
        labels
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopNState {
    Unordered,
    BottomKnown,
    HeapSorted,
}

/// `tensorflow::gtl::TopN<BeamEntry*, BeamComparer>` (`tensorflow/core/lib/gtl/top_n.h`):
/// the `limit` entries with the largest `newp.total`, in TensorFlow's layout, so that equal
/// totals come out in TensorFlow's order. Entries are node indices; comparisons read the
/// nodes' current totals, as the pointers do in TensorFlow.
#[derive(Debug)]
struct TopN {
    elements: Vec<usize>,
    limit: usize,
    state: TopNState,
}

impl TopN {
    fn new(limit: usize) -> Self {
        TopN {
            elements: Vec::new(),
            limit,
            state: TopNState::Unordered,
        }
    }

    fn len(&self) -> usize {
        self.elements.len()
    }

    fn reset(&mut self) {
        self.elements.clear();
        self.state = TopNState::Unordered;
    }

    fn push(&mut self, v: usize, nodes: &[Node]) {
        let gt = |a: usize, b: usize| nodes[a].newp.total > nodes[b].newp.total;
        if self.limit == 0 {
            return;
        }
        if self.state != TopNState::HeapSorted {
            self.elements.push(v);
            let n = self.elements.len();
            if n > self.limit {
                make_heap(&mut self.elements, &gt);
                pop_heap(&mut self.elements, &gt);
                self.elements.pop();
                self.state = TopNState::HeapSorted;
            } else if self.state == TopNState::BottomKnown
                && !gt(self.elements[n - 1], self.elements[0])
            {
                // Keep the bottom at position 0: the new entry goes there, the old bottom last.
                self.elements.swap(0, n - 1);
            }
        } else if gt(v, self.elements[0]) {
            pop_heap(&mut self.elements, &gt);
            let n = self.elements.len();
            self.elements[n - 1] = v;
            push_heap(&mut self.elements, &gt);
        }
    }

    /// The lowest entry (the container must not be empty).
    fn peek_bottom(&mut self, nodes: &[Node]) -> usize {
        let gt = |a: usize, b: usize| nodes[a].newp.total > nodes[b].newp.total;
        if self.state == TopNState::Unordered {
            let mut min_candidate = 0;
            for i in 1..self.elements.len() {
                if gt(self.elements[min_candidate], self.elements[i]) {
                    min_candidate = i;
                }
            }
            if min_candidate != 0 {
                self.elements.swap(0, min_candidate);
            }
            self.state = TopNState::BottomKnown;
        }
        self.elements[0]
    }

    /// `Extract()`: the entries in descending order (`std::sort` or `std::sort_heap`).
    fn extract(&mut self, nodes: &[Node]) -> Vec<usize> {
        let gt = |a: usize, b: usize| nodes[a].newp.total > nodes[b].newp.total;
        let mut out = std::mem::take(&mut self.elements);
        if self.state != TopNState::HeapSorted {
            std_sort(&mut out, &gt);
        } else {
            sort_heap(&mut out, &gt);
        }
        out
    }
}

// libstdc++'s heap and sort algorithms (bits/stl_heap.h, bits/stl_algo.h), which
// TensorFlow's Linux builds use, step for step: they decide the order of equal totals. The
// comparator is TensorFlow's "greater", so the heaps keep their smallest entry first. The
// bounds in the loops marked "guard" never bind for a strict weak order (totals are never
// NaN); they only keep the port free of out-of-range indexing.

/// `std::__push_heap`.
fn push_heap_hole<F: Fn(usize, usize) -> bool>(
    h: &mut [usize],
    mut hole: usize,
    top: usize,
    value: usize,
    gt: &F,
) {
    while hole > top {
        let parent = (hole - 1) / 2;
        if !gt(h[parent], value) {
            break;
        }
        h[hole] = h[parent];
        hole = parent;
    }
    h[hole] = value;
}

/// `std::__adjust_heap` on `h[..len]`.
fn adjust_heap<F: Fn(usize, usize) -> bool>(
    h: &mut [usize],
    mut hole: usize,
    len: usize,
    value: usize,
    gt: &F,
) {
    let top = hole;
    let mut second = hole;
    let len_i = len as isize;
    while (second as isize) < (len_i - 1) / 2 {
        second = 2 * (second + 1);
        if gt(h[second], h[second - 1]) {
            second -= 1;
        }
        h[hole] = h[second];
        hole = second;
    }
    if len & 1 == 0 && second as isize == (len_i - 2) / 2 {
        second = 2 * (second + 1);
        h[hole] = h[second - 1];
        hole = second - 1;
    }
    push_heap_hole(h, hole, top, value, gt);
}

/// `std::__pop_heap(first, first + len, first + result)`.
fn pop_heap_to<F: Fn(usize, usize) -> bool>(h: &mut [usize], len: usize, result: usize, gt: &F) {
    let value = h[result];
    h[result] = h[0];
    adjust_heap(h, 0, len, value, gt);
}

/// `std::pop_heap`.
fn pop_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let n = h.len();
    if n > 1 {
        pop_heap_to(h, n - 1, n - 1, gt);
    }
}

/// `std::push_heap`.
fn push_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let n = h.len();
    if n > 0 {
        let value = h[n - 1];
        push_heap_hole(h, n - 1, 0, value, gt);
    }
}

/// `std::make_heap`.
fn make_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let n = h.len();
    if n < 2 {
        return;
    }
    let mut parent = (n - 2) / 2;
    loop {
        let value = h[parent];
        adjust_heap(h, parent, n, value, gt);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

/// `std::sort_heap`.
fn sort_heap<F: Fn(usize, usize) -> bool>(h: &mut [usize], gt: &F) {
    let mut n = h.len();
    while n > 1 {
        n -= 1;
        pop_heap_to(h, n, n, gt);
    }
}

const S_THRESHOLD: usize = 16;

/// `std::sort` (introsort: median-of-three quicksort, heapsort past `2 * lg(n)` levels, a
/// final insertion sort).
fn std_sort<F: Fn(usize, usize) -> bool>(v: &mut [usize], gt: &F) {
    let n = v.len();
    if n == 0 {
        return;
    }
    let lg = (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, 2 * lg, gt);
    final_insertion_sort(v, gt);
}

fn introsort_loop<F: Fn(usize, usize) -> bool>(
    v: &mut [usize],
    first: usize,
    mut last: usize,
    mut depth_limit: usize,
    gt: &F,
) {
    while last - first > S_THRESHOLD {
        if depth_limit == 0 {
            // std::__partial_sort(first, last, last): __heap_select then __sort_heap
            make_heap(&mut v[first..last], gt);
            sort_heap(&mut v[first..last], gt);
            return;
        }
        depth_limit -= 1;
        let cut = unguarded_partition_pivot(v, first, last, gt);
        introsort_loop(v, cut, last, depth_limit, gt);
        last = cut;
    }
}

fn move_median_to_first<F: Fn(usize, usize) -> bool>(
    v: &mut [usize],
    result: usize,
    a: usize,
    b: usize,
    c: usize,
    gt: &F,
) {
    let pick = if gt(v[a], v[b]) {
        if gt(v[b], v[c]) {
            b
        } else if gt(v[a], v[c]) {
            c
        } else {
            a
        }
    } else if gt(v[a], v[c]) {
        a
    } else if gt(v[b], v[c]) {
        c
    } else {
        b
    };
    v.swap(result, pick);
}

fn unguarded_partition_pivot<F: Fn(usize, usize) -> bool>(
    v: &mut [usize],
    first: usize,
    last: usize,
    gt: &F,
) -> usize {
    let mid = first + (last - first) / 2;
    move_median_to_first(v, first, first + 1, mid, last - 1, gt);
    let pivot = first;
    let mut lo = first + 1;
    let mut hi = last;
    loop {
        while lo < last && gt(v[lo], v[pivot]) {
            lo += 1; // guard: lo < last
        }
        hi -= 1;
        while hi > first && gt(v[pivot], v[hi]) {
            hi -= 1; // guard: hi > first
        }
        if lo >= hi {
            return lo;
        }
        v.swap(lo, hi);
        lo += 1;
    }
}

/// `std::__unguarded_linear_insert`.
fn linear_insert<F: Fn(usize, usize) -> bool>(v: &mut [usize], mut last: usize, gt: &F) {
    let val = v[last];
    while last > 0 && gt(val, v[last - 1]) {
        // guard: last > 0
        v[last] = v[last - 1];
        last -= 1;
    }
    v[last] = val;
}

/// `std::__insertion_sort` on `v[first..last]`.
fn insertion_sort<F: Fn(usize, usize) -> bool>(v: &mut [usize], first: usize, last: usize, gt: &F) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        if gt(v[i], v[first]) {
            let val = v[i];
            v.copy_within(first..i, first + 1);
            v[first] = val;
        } else {
            linear_insert(v, i, gt);
        }
    }
}

fn final_insertion_sort<F: Fn(usize, usize) -> bool>(v: &mut [usize], gt: &F) {
    let n = v.len();
    if n > S_THRESHOLD {
        insertion_sort(v, 0, S_THRESHOLD, gt);
        for i in S_THRESHOLD..n {
            linear_insert(v, i, gt);
        }
    } else {
        insertion_sort(v, 0, n, gt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The libstdc++ port sorts like a sort (descending, every entry kept), including with
    /// ties and past the insertion-sort threshold and the depth limit.
    #[test]
    fn std_sort_and_heaps_sort() {
        let mut state = 12345u64;
        for n in [0usize, 1, 2, 3, 15, 16, 17, 40, 100, 300] {
            for distinct in [1u64, 3, 1000] {
                let keys: Vec<f32> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((state >> 33) % distinct) as f32
                    })
                    .collect();
                let gt = |a: usize, b: usize| keys[a] > keys[b];
                let mut v: Vec<usize> = (0..n).collect();
                std_sort(&mut v, &gt);
                let mut w: Vec<usize> = (0..n).collect();
                make_heap(&mut w, &gt);
                sort_heap(&mut w, &gt);
                for s in [&v, &w] {
                    let mut seen = s.to_vec();
                    seen.sort_unstable();
                    assert_eq!(seen, (0..n).collect::<Vec<_>>());
                    assert!(s.windows(2).all(|p| keys[p[0]] >= keys[p[1]]));
                }
            }
        }
    }

    /// `TopN` keeps the `limit` largest totals and extracts them in descending order.
    #[test]
    fn top_n_keeps_the_largest() {
        let totals = [0.5f32, -1.0, 3.0, 2.0, -0.5, 1.0];
        let nodes: Vec<Node> = totals
            .iter()
            .map(|&t| Node {
                parent: NONE,
                label: 0,
                children: NONE,
                oldp: Prob::ZERO,
                newp: Prob {
                    total: t,
                    blank: t,
                    label: LOG_ZERO,
                },
            })
            .collect();
        let mut top = TopN::new(3);
        for i in 0..nodes.len() {
            top.push(i, &nodes);
        }
        assert_eq!(top.len(), 3);
        assert_eq!(top.extract(&nodes), vec![2, 3, 5]);
    }
}
