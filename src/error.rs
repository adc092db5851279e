//! The crate's one error type.
//!
//! Every fallible call returns [`Result<T>`](crate::Result), whose error is [`LstmError`].
//! Each variant carries the facts needed to say what was wrong: the argument's name, the
//! expected and the actual shape, the unsupported key and value.

use thiserror::Error;

/// Everything that can go wrong in this crate.
///
/// ```
/// use lstm_wgpu::{LstmConfig, LstmError, LstmWeights};
/// use ndarray::Array2;
///
/// let config = LstmConfig::new(4);
/// // kernel must be [I, 4H] = [3, 16]; this one is [3, 15].
/// let err = LstmWeights::<f32>::new(
///     &config,
///     3,
///     Array2::zeros((3, 15)),
///     Array2::zeros((4, 16)),
///     Some(ndarray::Array1::zeros(16)),
/// )
/// .unwrap_err();
/// assert!(matches!(err, LstmError::ShapeMismatch { .. }));
/// assert!(err.to_string().contains("kernel"));
/// ```
#[derive(Debug, Error)]
pub enum LstmError {
    /// A tensor's shape does not match what the layer needs.
    #[error("shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// Which tensor (argument or weight) was wrong.
        what: String,
        /// The shape the layer needs.
        expected: Vec<usize>,
        /// The shape that was given.
        actual: Vec<usize>,
    },

    /// An argument is invalid for a reason other than its shape (a zero size, a wrong count).
    #[error("invalid argument {what}: {reason}")]
    InvalidArgument {
        /// The argument's name.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A configuration key has a value this crate does not support.
    #[error("unsupported value for config key `{key}`: {value}")]
    UnsupportedConfig {
        /// The configuration key (e.g. `activation`).
        key: String,
        /// The value that was found, as text.
        value: String,
    },

    /// A configuration key that is required is absent or has the wrong JSON type.
    #[error("missing or malformed config key `{key}`: {reason}")]
    BadConfig {
        /// The configuration key.
        key: String,
        /// What was expected.
        reason: String,
    },

    /// A weight that the configuration requires was not given.
    #[error("missing weight `{name}`")]
    MissingWeight {
        /// The weight's name (e.g. `bias`, `backward/kernel`).
        name: String,
    },

    /// A weights file's layers do not fit the model's under Keras's `load_weights` rules
    /// (`model::WeightMatch`): the layer counts, a layer's weight count, or a layer the
    /// file lacks.
    #[error("cannot load the weights{}: {reason}", if layer.is_empty() { String::new() } else { format!(" of layer {layer}") })]
    WeightMismatch {
        /// The model layer (empty when the whole model is meant).
        layer: String,
        /// What does not fit, with the expected and the found counts.
        reason: String,
    },

    /// A stateful layer was called with a batch size other than the one its state was built for.
    #[error("stateful layer was built for batch size {expected}, called with batch size {actual}")]
    StatefulBatchChanged {
        /// The batch size the stored state has.
        expected: usize,
        /// The batch size of the call.
        actual: usize,
    },

    /// No GPU adapter matched the request.
    #[error("no GPU adapter found (tried: {tried})")]
    NoGpuAdapter {
        /// What was asked of wgpu (backends, power preference, name filter, fallback).
        tried: String,
    },

    /// The GPU device reported an error (validation, out of memory, lost device, map failure).
    #[error("GPU device error: {message}")]
    Device {
        /// wgpu's message.
        message: String,
    },

    /// A GPU buffer the forward needs is larger than the adapter allows. Over the storage
    /// binding limit a forward runs in several submissions of fewer batch rows; this error
    /// means that even one batch row does not fit.
    #[error(
        "{what} needs a {need}-byte GPU buffer, over this adapter's limit of {max} bytes \
         ({limit}); {hint}"
    )]
    Limit {
        /// The buffer (`x`, `output sequence`, a weight's name, ...).
        what: String,
        /// Bytes it needs.
        need: u64,
        /// Bytes the adapter allows.
        max: u64,
        /// Which limit (`max_storage_buffer_binding_size`, `max_buffer_size`).
        limit: String,
        /// What to do instead.
        hint: String,
    },

    /// The operation is not available for this element type on this path.
    #[error("{what} is not supported on the {path} path: {hint}")]
    UnsupportedOnPath {
        /// The operation or type.
        what: String,
        /// `gpu` or `cpu`.
        path: String,
        /// What to do instead.
        hint: String,
    },

    /// A file or folder could not be read (the operating system's error is kept as the
    /// source).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A case or model file is not in the format it should be (or a model uses what this
    /// crate cannot run).
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file; when the bytes were given in memory, what they are (`.keras archive`,
        /// `HDF5 weights`, `Keras model`).
        path: String,
        /// Why it failed.
        reason: String,
    },

    /// Training stopped: a step's loss or gradients were not finite. The weights are those
    /// from before that step (nothing of it was applied).
    #[error("training stopped at epoch {epoch}, step {step} (batch rows {rows}): {what}")]
    TrainingDiverged {
        /// The epoch (from 1).
        epoch: usize,
        /// The step within the epoch (from 1).
        step: usize,
        /// The batch's sample rows, `start..end`.
        rows: String,
        /// What was not finite.
        what: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, LstmError>;

impl LstmError {
    /// A [`LstmError::Limit`] with `hint` as its advice; any other error unchanged.
    pub(crate) fn with_hint(self, hint: &str) -> Self {
        match self {
            LstmError::Limit {
                what,
                need,
                max,
                limit,
                ..
            } => LstmError::Limit {
                what,
                need,
                max,
                limit,
                hint: hint.into(),
            },
            other => other,
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        LstmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A [`LstmError::ShapeMismatch`] (for code outside the crate too, such as a
    /// [`crate::custom::CustomLayer`]).
    ///
    /// ```
    /// let e = lstm_wgpu::LstmError::shape("x of layer pool", &[2, 5], &[2, 4]);
    /// assert!(e.to_string().contains("x of layer pool"));
    /// ```
    pub fn shape(what: impl Into<String>, expected: &[usize], actual: &[usize]) -> Self {
        LstmError::ShapeMismatch {
            what: what.into(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        }
    }

    /// A [`LstmError::InvalidArgument`] (for code outside the crate too, such as a
    /// [`crate::custom::CustomLayer`]).
    ///
    /// ```
    /// let e = lstm_wgpu::LstmError::invalid("inputs of layer ctc", "takes (y_true, y_pred)");
    /// assert!(e.to_string().contains("ctc"));
    /// ```
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        LstmError::InvalidArgument {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(key: impl Into<String>, value: impl std::fmt::Display) -> Self {
        LstmError::UnsupportedConfig {
            key: key.into(),
            value: value.to_string(),
        }
    }

    pub(crate) fn bad_config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        LstmError::BadConfig {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
