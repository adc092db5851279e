//! Sequence-to-sequence decoding as Keras's seq2seq examples run it (`lstm_seq2seq`, the
//! word-level translation tutorials): the encoder model turns the source sequence into
//! states; the decoder model is then called one step at a time on the last token (one-hot
//! or an id) and the states it returned, the next token drawn from its distribution, until
//! the stop token (kept, as the example appends it before stopping) or the maximum length.

use super::{last_distribution, Sampler};
use crate::error::{LstmError, Result};
use crate::gpu::GpuNetwork;
use crate::model::{KerasModel, ModelInput};
use ndarray::ArrayD;

/// How a decoder step reads the previous token: Keras's character-level example feeds a
/// one-hot row `[1, 1, V]`; models with an Embedding take the id `[1, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFeed {
    /// A one-hot vector over `V` tokens.
    OneHot(usize),
    /// The token id.
    Id,
}

impl TokenFeed {
    /// The feed of a decoder whose first input (named `name`) has `dims` after the batch
    /// axis: `[steps, V]` is one-hot over `V`, `[steps]` ids.
    ///
    /// ```
    /// use lstm_wgpu::generate::TokenFeed;
    /// assert_eq!(TokenFeed::of("decoder_inputs", &[None, Some(13)])?, TokenFeed::OneHot(13));
    /// assert_eq!(TokenFeed::of("target", &[None])?, TokenFeed::Id);
    /// assert!(TokenFeed::of("image", &[Some(8), Some(8), Some(1)]).is_err());
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn of(name: &str, dims: &[Option<usize>]) -> Result<Self> {
        match dims {
            [None | Some(1), Some(v)] if *v > 0 => Ok(TokenFeed::OneHot(*v)),
            [None | Some(1)] => Ok(TokenFeed::Id),
            _ => Err(LstmError::invalid(
                format!("decoder input {name}"),
                format!(
                    "dims {dims:?} after the batch: a decoder step reads one token, as \
                     [steps, vocabulary] one-hot rows or [steps] ids"
                ),
            )),
        }
    }

    /// `token` as the decoder's input for one step.
    ///
    /// ```
    /// use lstm_wgpu::generate::TokenFeed;
    /// use lstm_wgpu::model::ModelInput;
    /// let ModelInput::F32(x) = TokenFeed::OneHot(4).input(2)? else { unreachable!() };
    /// assert_eq!(x.iter().copied().collect::<Vec<_>>(), [0.0, 0.0, 1.0, 0.0]);
    /// assert!(TokenFeed::OneHot(4).input(4).is_err());
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn input(self, token: i64) -> Result<ModelInput> {
        match self {
            TokenFeed::OneHot(v) => {
                let k = usize::try_from(token)
                    .ok()
                    .filter(|&k| k < v)
                    .ok_or_else(|| {
                        LstmError::invalid(
                            "token",
                            format!("{token} is not one of the decoder's {v} one-hot tokens"),
                        )
                    })?;
                let mut x = ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 1, v]));
                x[[0, 0, k]] = 1.0;
                Ok(ModelInput::F32(x))
            }
            TokenFeed::Id => Ok(ModelInput::I64(ArrayD::from_elem(
                ndarray::IxDyn(&[1, 1]),
                token,
            ))),
        }
    }
}

/// Where decoding starts and stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seq2SeqOptions {
    /// The token the first decoder step reads (the example's start character `\t`).
    pub start: i64,
    /// The token that ends decoding (kept as the last token); None: only `max_len` does.
    pub stop: Option<i64>,
    /// The most tokens decoded.
    pub max_len: usize,
}

impl Seq2SeqOptions {
    /// Decoding from `start` for at most `max_len` tokens, with no stop token.
    ///
    /// ```
    /// use lstm_wgpu::generate::Seq2SeqOptions;
    /// let opts = Seq2SeqOptions::new(1, 60);
    /// assert_eq!((opts.start, opts.stop, opts.max_len), (1, None, 60));
    /// ```
    pub fn new(start: i64, max_len: usize) -> Self {
        Seq2SeqOptions {
            start,
            stop: None,
            max_len,
        }
    }

    /// Stops after `token`.
    ///
    /// ```
    /// use lstm_wgpu::generate::Seq2SeqOptions;
    /// assert_eq!(Seq2SeqOptions::new(1, 60).stop(2).stop, Some(2));
    /// ```
    pub fn stop(mut self, token: i64) -> Self {
        self.stop = Some(token);
        self
    }
}

/// The decoding loop over any model calls: `step(token, states)` returns the next-token
/// distribution and the new states; the states start as `states` (the encoder's).
///
/// ```
/// use lstm_wgpu::generate::{decode_loop, Sampler, Seq2SeqOptions};
/// use ndarray::ArrayD;
/// // a toy decoder: the state counts steps; the next token is (token + state) mod 4
/// let step = |tok: i64, s: Vec<ArrayD<f32>>| -> lstm_wgpu::Result<(Vec<f32>, Vec<ArrayD<f32>>)> {
///     let n = s[0][[0]] + 1.0;
///     let mut p = vec![0.0; 4];
///     p[((tok + n as i64) % 4) as usize] = 1.0;
///     Ok((p, vec![ArrayD::from_elem(ndarray::IxDyn(&[1]), n)]))
/// };
/// let start = vec![ArrayD::zeros(ndarray::IxDyn(&[1]))];
/// let opts = Seq2SeqOptions::new(0, 10).stop(2);
/// let tokens = decode_loop(start, step, &opts, &mut Sampler::greedy())?;
/// assert_eq!(tokens, [1, 3, 2]); // 0+1, 1+2, 3+3 = 6 mod 4: the stop token, kept
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
pub fn decode_loop(
    mut states: Vec<ArrayD<f32>>,
    mut step: impl FnMut(i64, Vec<ArrayD<f32>>) -> Result<(Vec<f32>, Vec<ArrayD<f32>>)>,
    options: &Seq2SeqOptions,
    sampler: &mut Sampler,
) -> Result<Vec<i64>> {
    let mut token = options.start;
    let mut out = Vec::new();
    for _ in 0..options.max_len {
        let (probs, next) = step(token, states)?;
        states = next;
        token = sampler.sample(&probs)? as i64;
        out.push(token);
        if Some(token) == options.stop {
            break;
        }
    }
    Ok(out)
}

/// A source batch of 1.
fn check_batch(source: &[ModelInput]) -> Result<()> {
    if let Some(x) = source.first() {
        let b = match x {
            ModelInput::F32(a) => a.shape().first().copied(),
            ModelInput::I64(a) => a.shape().first().copied(),
        };
        if b != Some(1) {
            return Err(LstmError::invalid(
                "source",
                format!(
                    "batch {b:?}: seq2seq decoding runs one sequence at a time (batch 1), \
                     as Keras's loop does"
                ),
            ));
        }
    }
    Ok(())
}

/// The decoder's inputs are its token input and one input per encoder output (the states,
/// in order).
fn check_pair(encoder_outputs: usize, decoder_inputs: usize) -> Result<()> {
    if decoder_inputs != encoder_outputs + 1 {
        return Err(LstmError::invalid(
            "decoder",
            format!(
                "takes {decoder_inputs} inputs; a decoder for this encoder takes the token and \
                 its {encoder_outputs} states ({} inputs)",
                encoder_outputs + 1
            ),
        ));
    }
    Ok(())
}

/// The distribution and the new states in a decoder step's outputs `[probs, states...]`.
fn split_outputs(
    mut outs: Vec<ArrayD<f32>>,
    states: usize,
) -> Result<(Vec<f32>, Vec<ArrayD<f32>>)> {
    if outs.len() != states + 1 {
        return Err(LstmError::invalid(
            "decoder",
            format!(
                "returns {} outputs; a decoder step returns the distribution and its {states} \
                 states",
                outs.len()
            ),
        ));
    }
    let rest = outs.split_off(1);
    Ok((last_distribution(&outs[0])?, rest))
}

/// Keras's seq2seq inference loop on the CPU: `encoder` (source → states) once, then
/// `decoder` ([token, states...] → [distribution, states...]) a step at a time, each token
/// drawn by `sampler`. `source` holds the encoder's inputs (batch 1). Returns the decoded
/// tokens (not the start token).
///
/// ```no_run
/// use lstm_wgpu::generate::{seq2seq, Sampler, Seq2SeqOptions};
/// use lstm_wgpu::model::KerasModel;
/// let mut encoder = KerasModel::load("encoder_model.keras".as_ref())?;
/// let mut decoder = KerasModel::load("decoder_model.keras".as_ref())?;
/// let source = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 12, 71])); // one-hot chars
/// let opts = Seq2SeqOptions::new(1, 60).stop(2); // '\t' starts, '\n' stops
/// let tokens = seq2seq(&mut encoder, &mut decoder, &[source.into()], &opts, &mut Sampler::greedy())?;
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
pub fn seq2seq(
    encoder: &mut KerasModel,
    decoder: &mut KerasModel,
    source: &[ModelInput],
    options: &Seq2SeqOptions,
    sampler: &mut Sampler,
) -> Result<Vec<i64>> {
    let dims: Vec<(String, Vec<Option<usize>>)> = decoder
        .inputs()
        .iter()
        .map(|i| (i.name.clone(), i.shape.clone()))
        .collect();
    run_pair(
        &dims,
        source,
        |x| encoder.predict_inputs(x),
        |inputs, _| decoder.predict_inputs(inputs),
        options,
        sampler,
    )
}

/// The loop of both paths: the decoder's token feed from its first input of `dims`, the
/// encoder's states `encode(source)`, then `forward(inputs, first)` of the decoder a step at a
/// time on the token and the states it returned.
fn run_pair(
    dims: &[(String, Vec<Option<usize>>)],
    source: &[ModelInput],
    encode: impl FnOnce(&[ModelInput]) -> Result<Vec<ArrayD<f32>>>,
    mut forward: impl FnMut(&[ModelInput], bool) -> Result<Vec<ArrayD<f32>>>,
    options: &Seq2SeqOptions,
    sampler: &mut Sampler,
) -> Result<Vec<i64>> {
    let feed = dims
        .first()
        .map(|(name, d)| TokenFeed::of(name, d))
        .transpose()?
        .ok_or_else(|| LstmError::invalid("decoder", "has no inputs"))?;
    check_batch(source)?;
    let states = encode(source)?;
    check_pair(states.len(), dims.len())?;
    let n = states.len();
    let mut first = true;
    let step = |token: i64, states: Vec<ArrayD<f32>>| {
        let mut inputs = vec![feed.input(token)?];
        inputs.extend(states.into_iter().map(ModelInput::F32));
        let outs = forward(&inputs, first)?;
        first = false;
        split_outputs(outs, n)
    };
    decode_loop(states, step, options, sampler)
}

/// [`seq2seq`] on the GPU: each decoder step is one submission and one readback; the
/// weights stay on the GPU, and so do the states: the decoder's state outputs are copied
/// into its state inputs on the GPU after each step, so that only the token is uploaded
/// (the states still come back with the distribution, `B·H` floats each, for the caller).
///
/// ```no_run
/// use lstm_wgpu::generate::{seq2seq_gpu, Sampler, Seq2SeqOptions};
/// use lstm_wgpu::gpu::{GpuContext, GpuNetwork};
/// use lstm_wgpu::model::KerasModel;
/// let ctx = GpuContext::new()?;
/// let encoder = KerasModel::load("encoder_model.keras".as_ref())?;
/// let decoder = KerasModel::load("decoder_model.keras".as_ref())?;
/// let mut enc = GpuNetwork::from_model(ctx.clone(), &encoder)?;
/// let mut dec = GpuNetwork::from_model(ctx, &decoder)?;
/// let source = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 12, 71]));
/// let opts = Seq2SeqOptions::new(1, 60).stop(2);
/// let tokens = seq2seq_gpu(&mut enc, &mut dec, &[source.into()], &opts, &mut Sampler::greedy())?;
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
pub fn seq2seq_gpu(
    encoder: &mut GpuNetwork,
    decoder: &mut GpuNetwork,
    source: &[ModelInput],
    options: &Seq2SeqOptions,
    sampler: &mut Sampler,
) -> Result<Vec<i64>> {
    let dims: Vec<(String, Vec<Option<usize>>)> = decoder
        .input_dims()
        .into_iter()
        .map(|(name, d)| (name.to_string(), d.to_vec()))
        .collect();
    // The decoder's state outputs 1.. are fed back into its state inputs 1.. on the GPU: after
    // the first step (which uploads the encoder's states) only the token goes up.
    let feedback: Vec<(usize, usize)> = (1..dims.len()).map(|k| (k, k)).collect();
    run_pair(
        &dims,
        source,
        |x| encoder.forward_inputs(x),
        |inputs, first| decoder.forward_fed(inputs, &feedback, first),
        options,
        sampler,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeding an output into an input of another shape is an error naming both, and the
    /// next fed forward uploads every input again.
    #[test]
    fn feedback_of_another_shape_is_an_error() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seq2seq");
        let Ok(ctx) = crate::gpu::GpuContext::with_options(
            &crate::gpu::GpuOptions::from_env().allow_software(true),
        ) else {
            if std::env::var("LSTM_WGPU_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("LSTM_WGPU_REQUIRE_GPU=1 but no GPU adapter");
            }
            return;
        };
        let model = KerasModel::load(&dir.join("char_decoder.keras")).unwrap();
        let mut dec = GpuNetwork::from_model(ctx, &model).unwrap();
        let inputs = [
            TokenFeed::OneHot(13).input(1).unwrap(),
            ModelInput::F32(ArrayD::zeros(ndarray::IxDyn(&[1, 16]))),
            ModelInput::F32(ArrayD::zeros(ndarray::IxDyn(&[1, 16]))),
        ];
        // output 0 is the [1, 1, 13] distribution; input 1 a [1, 16] state
        let err = dec.forward_fed(&inputs, &[(0, 1)], true).unwrap_err();
        assert!(err.to_string().contains("output 0"), "{err}");
        let ok = dec.forward_fed(&inputs, &[(1, 1), (2, 2)], false).unwrap();
        assert_eq!(ok.len(), 3);
        // (that forward uploaded every input: no plan held fed values)
        assert_eq!(dec.stats().bytes_uploaded % 4, 0);
        assert!(
            dec.stats().bytes_uploaded >= 4 * (13 + 16 + 16),
            "{:?}",
            dec.stats()
        );
    }
}
