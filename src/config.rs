//! Layer configuration: every Keras recurrent option that matters for inference (the weight
//! initializers in `initializer.rs`), and the reading of Keras `get_config()` dictionaries
//! (`LSTM`, `Bidirectional`, `Sequential`).

use crate::activation::Activation;
use crate::error::{LstmError, Result};
pub use crate::initializer::{Distribution, FanMode, Initializer};
use serde_json::Value;

/// Which recurrent cell a layer runs: Keras's `LSTM`, `GRU` or `SimpleRNN`. Everything
/// around the cell (masks, `go_backwards`, `stateful`, `initial_state`, `Bidirectional`,
/// stacks) is the same for all three, as in Keras, so one configuration type carries them.
///
/// ```
/// use lstm_wgpu::{Cell, LstmConfig};
/// let gru = LstmConfig::gru(8);
/// assert_eq!(gru.cell, Cell::Gru { reset_after: true });
/// assert_eq!((gru.cell.gates(), gru.cell.states()), (3, 1));
/// assert_eq!(LstmConfig::simple_rnn(8).cell.gates(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cell {
    /// `LSTM`: gates i, f, c, o; state h and c.
    #[default]
    Lstm,
    /// `GRU`: gates z, r, h; state h. `reset_after` (the Keras 3 default, and cuDNN's and
    /// PyTorch's form) applies the reset gate after the recurrent product and has a separate
    /// recurrent bias; without it the reset gate scales h before the product.
    Gru {
        /// Keras's `reset_after`.
        reset_after: bool,
    },
    /// `SimpleRNN`: `h_t = activation(x_t · kernel + h_{t-1} · recurrent_kernel + bias)`.
    SimpleRnn,
}

impl Cell {
    /// Gate blocks in the kernels' last axis (4, 3, 1).
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru { .. } => 3,
            Cell::SimpleRnn => 1,
        }
    }

    /// State tensors per direction (h and c, or h).
    pub fn states(self) -> usize {
        match self {
            Cell::Lstm => 2,
            _ => 1,
        }
    }

    /// Keras's class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Cell::Lstm => "LSTM",
            Cell::Gru { .. } => "GRU",
            Cell::SimpleRnn => "SimpleRNN",
        }
    }

    /// The names of a direction's initial-state tensors.
    pub(crate) fn state_names(self) -> &'static [&'static str] {
        match self {
            Cell::Lstm => &["h0", "c0"],
            _ => &["h0"],
        }
    }
}

/// Configuration of one recurrent layer (an `LSTM`, or with [`LstmConfig::cell`] a `GRU` or
/// `SimpleRNN`), with Keras's defaults.
///
/// ```
/// use lstm_wgpu::{Activation, LstmConfig};
/// let c = LstmConfig::new(8).return_sequences(true).go_backwards(true);
/// assert_eq!(c.units, 8);
/// assert_eq!(c.activation, Activation::Tanh);
/// assert_eq!(c.recurrent_activation, Activation::Sigmoid);
/// assert!(c.use_bias && c.unit_forget_bias && c.return_sequences && c.go_backwards);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LstmConfig {
    /// The recurrent cell (default LSTM).
    pub cell: Cell,
    /// The number of units H (width of h and c).
    pub units: usize,
    /// Applied to the cell candidate and to the cell state before the output gate.
    pub activation: Activation,
    /// Applied to the input, forget and output gates.
    pub recurrent_activation: Activation,
    /// Whether the layer has a bias vector.
    pub use_bias: bool,
    /// Return the whole sequence `[B, T, H]` instead of the last output `[B, H]`.
    pub return_sequences: bool,
    /// Also return the final h and c.
    pub return_state: bool,
    /// Process the sequence last step first (the returned sequence stays in processing order).
    pub go_backwards: bool,
    /// Keep the final state as the next call's initial state.
    pub stateful: bool,
    /// Masked steps output zeros instead of repeating the previous output.
    pub zero_output_for_mask: bool,
    /// Initialise the forget-gate bias to ones (initialisation only; LSTM only).
    pub unit_forget_bias: bool,
    /// Initializer of `kernel`.
    pub kernel_initializer: Initializer,
    /// Initializer of `recurrent_kernel`.
    pub recurrent_initializer: Initializer,
    /// Initializer of `bias`.
    pub bias_initializer: Initializer,
    /// The layer's name (informative).
    pub name: String,
}

macro_rules! builder {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, value: $ty) -> Self {
                self.$field = value;
                self
            }
        )*
    };
}

impl LstmConfig {
    /// A layer with `units` units and Keras's defaults for everything else.
    pub fn new(units: usize) -> Self {
        LstmConfig {
            cell: Cell::Lstm,
            units,
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            use_bias: true,
            return_sequences: false,
            return_state: false,
            go_backwards: false,
            stateful: false,
            zero_output_for_mask: false,
            unit_forget_bias: true,
            kernel_initializer: Initializer::GlorotUniform,
            recurrent_initializer: Initializer::Orthogonal { gain: 1.0 },
            bias_initializer: Initializer::Zeros,
            name: "lstm".to_string(),
        }
    }

    /// A Keras `GRU` with `units` units and Keras 3's defaults (`reset_after=True`).
    pub fn gru(units: usize) -> Self {
        LstmConfig {
            cell: Cell::Gru { reset_after: true },
            unit_forget_bias: false,
            name: "gru".to_string(),
            ..LstmConfig::new(units)
        }
    }

    /// A Keras `SimpleRNN` with `units` units and Keras's defaults (tanh).
    pub fn simple_rnn(units: usize) -> Self {
        LstmConfig {
            cell: Cell::SimpleRnn,
            unit_forget_bias: false,
            name: "simple_rnn".to_string(),
            ..LstmConfig::new(units)
        }
    }

    builder! {
        /// Sets `cell`.
        cell: Cell,
        /// Sets `units`.
        units: usize,
        /// Sets `activation`.
        activation: Activation,
        /// Sets `recurrent_activation`.
        recurrent_activation: Activation,
        /// Sets `use_bias`.
        use_bias: bool,
        /// Sets `return_sequences`.
        return_sequences: bool,
        /// Sets `return_state`.
        return_state: bool,
        /// Sets `go_backwards`.
        go_backwards: bool,
        /// Sets `stateful`.
        stateful: bool,
        /// Sets `zero_output_for_mask`.
        zero_output_for_mask: bool,
        /// Sets `unit_forget_bias`.
        unit_forget_bias: bool,
    }

    /// Checks the configuration itself (units > 0).
    pub fn validate(&self) -> Result<()> {
        if self.units == 0 {
            return Err(LstmError::invalid("units", "must be at least 1"));
        }
        Ok(())
    }

    /// Reads the `config` dictionary of a Keras `LSTM` (`layer.get_config()`).
    ///
    /// Keys that only matter for training (`dropout`, regularizers, constraints, `seed`) are
    /// accepted and ignored; `unroll` is accepted (it does not change the numbers).
    ///
    /// ```
    /// use lstm_wgpu::LstmConfig;
    /// let v = serde_json::json!({"units": 3, "activation": "relu", "return_state": true});
    /// let c = LstmConfig::from_keras(&v).unwrap();
    /// assert_eq!((c.units, c.activation.name(), c.return_state), (3, "relu", true));
    ///
    /// let bad = serde_json::json!({"units": 3, "activation": "mish"});
    /// let e = LstmConfig::from_keras(&bad).unwrap_err().to_string();
    /// assert!(e.contains("activation") && e.contains("mish"));
    /// ```
    pub fn from_keras(config: &Value) -> Result<Self> {
        Self::from_keras_class("LSTM", config)
    }

    /// Reads the `config` dictionary of a Keras `LSTM`, `GRU` or `SimpleRNN` (`class`);
    /// another class is an error naming it. A GRU's `reset_after` is read (default true).
    ///
    /// ```
    /// use lstm_wgpu::{Cell, LstmConfig};
    /// let v = serde_json::json!({"units": 3, "reset_after": false});
    /// let c = LstmConfig::from_keras_class("GRU", &v).unwrap();
    /// assert_eq!(c.cell, Cell::Gru { reset_after: false });
    /// assert!(LstmConfig::from_keras_class("ConvLSTM1D", &v).is_err());
    /// ```
    pub fn from_keras_class(class: &str, config: &Value) -> Result<Self> {
        let cell = match class {
            "LSTM" => Cell::Lstm,
            "GRU" => Cell::Gru { reset_after: true },
            "SimpleRNN" => Cell::SimpleRnn,
            other => return Err(LstmError::unsupported("class_name", other)),
        };
        let units = config
            .get("units")
            .and_then(Value::as_u64)
            .ok_or_else(|| LstmError::bad_config("units", "expected a positive integer"))?
            as usize;
        let mut c = match cell {
            Cell::Lstm => LstmConfig::new(units),
            Cell::Gru { .. } => LstmConfig::gru(units),
            Cell::SimpleRnn => LstmConfig::simple_rnn(units),
        };
        let flag = |key: &str, default: bool| -> Result<bool> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(LstmError::unsupported(key, other)),
            }
        };
        c.use_bias = flag("use_bias", true)?;
        // Keras 2's time_major takes [T, B, I] inputs: refused rather than read batch-major.
        if flag("time_major", false)? {
            return Err(LstmError::unsupported(
                "time_major",
                "true (inputs [timesteps, batch, features]; transpose them to batch-major and                  set time_major to false)",
            ));
        }
        c.return_sequences = flag("return_sequences", false)?;
        c.return_state = flag("return_state", false)?;
        c.go_backwards = flag("go_backwards", false)?;
        c.stateful = flag("stateful", false)?;
        c.zero_output_for_mask = flag("zero_output_for_mask", false)?;
        if cell == Cell::Lstm {
            c.unit_forget_bias = flag("unit_forget_bias", true)?;
        }
        if let Cell::Gru { .. } = cell {
            c.cell = Cell::Gru {
                reset_after: flag("reset_after", true)?,
            };
        }
        c.activation = activation_from_keras("activation", config.get("activation"), "tanh")?;
        c.recurrent_activation = activation_from_keras(
            "recurrent_activation",
            config.get("recurrent_activation"),
            "sigmoid",
        )?;
        for (key, slot) in [
            ("kernel_initializer", &mut c.kernel_initializer),
            ("recurrent_initializer", &mut c.recurrent_initializer),
            ("bias_initializer", &mut c.bias_initializer),
        ] {
            if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                *slot = Initializer::from_keras(key, v)?;
            }
        }
        if let Some(name) = config.get("name").and_then(Value::as_str) {
            c.name = name.to_string();
        }
        c.validate()?;
        Ok(c)
    }
}

/// Reads an activation value of a Keras config: a name, `null` (linear), or a serialised
/// function object whose `config` is the name.
pub(crate) fn activation_from_keras(
    key: &str,
    value: Option<&Value>,
    default: &str,
) -> Result<Activation> {
    match value {
        None => Activation::from_name(default),
        Some(Value::Null) => Ok(Activation::Linear),
        Some(Value::String(s)) => {
            Activation::from_name(s).map_err(|_| LstmError::unsupported(key, s))
        }
        Some(Value::Object(o)) => match o.get("config") {
            Some(Value::String(s)) => {
                Activation::from_name(s).map_err(|_| LstmError::unsupported(key, s))
            }
            _ => Err(LstmError::unsupported(key, Value::Object(o.clone()))),
        },
        Some(other) => Err(LstmError::unsupported(key, other)),
    }
}

/// How `Bidirectional` combines the two directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    /// Forward then backward along the last axis (width 2H).
    Concat,
    /// Element-wise sum.
    Sum,
    /// Element-wise product.
    Mul,
    /// Element-wise mean.
    Ave,
    /// No merge: two outputs.
    None,
}

impl MergeMode {
    /// Reads Keras's `merge_mode` (`"concat"`, `"sum"`, `"mul"`, `"ave"`, `null`).
    ///
    /// ```
    /// use lstm_wgpu::MergeMode;
    /// assert_eq!(MergeMode::from_keras(&serde_json::json!("ave")).unwrap(), MergeMode::Ave);
    /// assert_eq!(MergeMode::from_keras(&serde_json::Value::Null).unwrap(), MergeMode::None);
    /// ```
    pub fn from_keras(value: &Value) -> Result<Self> {
        match value {
            Value::Null => Ok(MergeMode::None),
            Value::String(s) => match s.as_str() {
                "concat" => Ok(MergeMode::Concat),
                "sum" => Ok(MergeMode::Sum),
                "mul" => Ok(MergeMode::Mul),
                "ave" => Ok(MergeMode::Ave),
                other => Err(LstmError::unsupported("merge_mode", other)),
            },
            other => Err(LstmError::unsupported("merge_mode", other)),
        }
    }
}

/// Configuration of a `Bidirectional(LSTM)` layer.
#[derive(Debug, Clone, PartialEq)]
pub struct BidirectionalConfig {
    /// The forward layer.
    pub forward: LstmConfig,
    /// The backward layer (processes the sequence last step first).
    pub backward: LstmConfig,
    /// How the two outputs are combined.
    pub merge_mode: MergeMode,
}

impl BidirectionalConfig {
    /// A Bidirectional wrapper around `layer`, as `keras.layers.Bidirectional(layer)` builds it:
    /// the backward layer is a copy with `go_backwards` flipped, and both have
    /// `zero_output_for_mask` forced to `return_sequences`.
    ///
    /// ```
    /// use lstm_wgpu::{BidirectionalConfig, LstmConfig, MergeMode};
    /// let b = BidirectionalConfig::new(LstmConfig::new(4).return_sequences(true), MergeMode::Sum);
    /// assert!(b.backward.go_backwards && b.backward.zero_output_for_mask);
    /// ```
    pub fn new(layer: LstmConfig, merge_mode: MergeMode) -> Self {
        let mut backward = layer.clone();
        backward.go_backwards = !layer.go_backwards;
        backward.name = format!("backward_{}", layer.name);
        let mut forward = layer;
        forward.name = format!("forward_{}", forward.name);
        let mut b = BidirectionalConfig {
            forward,
            backward,
            merge_mode,
        };
        b.force_keras_flags();
        b
    }

    fn force_keras_flags(&mut self) {
        for l in [&mut self.forward, &mut self.backward] {
            l.zero_output_for_mask = l.return_sequences;
        }
    }

    /// Reads the `config` dictionary of a Keras `Bidirectional` layer.
    pub fn from_keras(config: &Value) -> Result<Self> {
        let merge_mode = MergeMode::from_keras(config.get("merge_mode").unwrap_or(&Value::Null))?;
        let inner = |key: &str| -> Result<Option<LstmConfig>> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    // an RNN around one cell is that cell's layer
                    let unwrapped;
                    let mut v = v;
                    if v.get("class_name").and_then(Value::as_str) == Some("RNN") {
                        let null = Value::Null;
                        let rnn = v.get("config").unwrap_or(&null);
                        let cell = rnn.get("cell").unwrap_or(&null);
                        let name = rnn.get("name").and_then(Value::as_str).unwrap_or("rnn");
                        unwrapped = cell_as_layer(cell, rnn, name)?;
                        v = &unwrapped;
                    }
                    let class = v.get("class_name").and_then(Value::as_str).unwrap_or("");
                    if !matches!(class, "LSTM" | "GRU" | "SimpleRNN") {
                        return Err(LstmError::unsupported(format!("{key}.class_name"), class));
                    }
                    let cfg = v
                        .get("config")
                        .ok_or_else(|| LstmError::bad_config(key, "layer without config"))?;
                    LstmConfig::from_keras_class(class, cfg).map(Some)
                }
            }
        };
        let forward = inner("layer")?
            .ok_or_else(|| LstmError::bad_config("layer", "Bidirectional without a layer"))?;
        let mut b = match inner("backward_layer")? {
            Some(backward) => BidirectionalConfig {
                forward,
                backward,
                merge_mode,
            },
            None => {
                let mut b = BidirectionalConfig::new(forward.clone(), merge_mode);
                b.forward.name = forward.name;
                b
            }
        };
        if b.forward.return_sequences != b.backward.return_sequences
            || b.forward.return_state != b.backward.return_state
        {
            return Err(LstmError::unsupported(
                "backward_layer",
                "return_sequences/return_state differ from the forward layer",
            ));
        }
        if b.forward.units != b.backward.units && merge_mode != MergeMode::Concat {
            return Err(LstmError::unsupported(
                "backward_layer.units",
                format!(
                    "{} (forward has {}; merge_mode {:?} needs equal widths)",
                    b.backward.units, b.forward.units, merge_mode
                ),
            ));
        }
        // Standalone Keras (2.3 and before) had no zero_output_for_mask: its Bidirectional
        // repeats each direction's previous output at masked steps.
        if config
            .get("standalone_keras_mask")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            for l in [&mut b.forward, &mut b.backward] {
                l.zero_output_for_mask = false;
            }
        } else {
            b.force_keras_flags();
        }
        Ok(b)
    }
}

/// Keras's cell classes and the layer class that is an `RNN` around each.
pub(crate) const RNN_CELLS: &[(&str, &str)] = &[
    ("LSTMCell", "LSTM"),
    ("GRUCell", "GRU"),
    ("SimpleRNNCell", "SimpleRNN"),
];

/// The layer entry `{"class_name": "LSTM" | "GRU" | "SimpleRNN", "config": ...}` that an
/// `RNN` (config `rnn`) around the cell entry `cell` is: the cell's options with the RNN's
/// (`return_sequences`, `return_state`, `go_backwards`, `stateful`, `zero_output_for_mask`,
/// and the loader's marks), named `name`.
pub(crate) fn cell_as_layer(cell: &Value, rnn: &Value, name: &str) -> Result<Value> {
    let class = cell
        .get("class_name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let layer = RNN_CELLS
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, l)| *l)
        .ok_or_else(|| LstmError::unsupported("cell class_name", class))?;
    let mut config = match cell.get("config") {
        Some(Value::Object(c)) => c.clone(),
        _ => return Err(LstmError::bad_config("cell", "a cell without config")),
    };
    if let Some(Value::Object(r)) = Some(rnn) {
        for (k, v) in r {
            let rnn_key = matches!(
                k.as_str(),
                "return_sequences"
                    | "return_state"
                    | "go_backwards"
                    | "stateful"
                    | "zero_output_for_mask"
                    | "unroll"
                    | "time_major"
                    | "keras2_call_mask"
                    | "standalone_keras_mask"
            );
            if rnn_key {
                config.insert(k.clone(), v.clone());
            }
        }
    }
    config.insert("name".into(), Value::String(name.to_string()));
    Ok(serde_json::json!({"class_name": layer, "config": config}))
}

/// Configuration of a layer or a stack of layers.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerConfig {
    /// One recurrent layer: `LSTM`, `GRU` or `SimpleRNN` (see [`LstmConfig::cell`]).
    Lstm(LstmConfig),
    /// One `Bidirectional` around a recurrent layer.
    Bidirectional(BidirectionalConfig),
    /// Layers applied in order, each consuming the previous (single) output.
    Sequential(Vec<LayerConfig>),
}

impl LayerConfig {
    /// Reads `{"class_name": ..., "config": {...}}` as Keras serialises a layer or a
    /// `Sequential` model. `InputLayer` entries of a `Sequential` are skipped; any other
    /// class gives an error naming it.
    ///
    /// ```
    /// use lstm_wgpu::LayerConfig;
    /// let v = serde_json::json!({"class_name": "Sequential", "config": {"layers": [
    ///     {"class_name": "InputLayer", "config": {"batch_shape": [null, 5, 3]}},
    ///     {"class_name": "LSTM", "config": {"units": 4, "return_sequences": true}},
    ///     {"class_name": "LSTM", "config": {"units": 2}}]}});
    /// match LayerConfig::from_keras(&v).unwrap() {
    ///     LayerConfig::Sequential(layers) => assert_eq!(layers.len(), 2),
    ///     _ => unreachable!(),
    /// }
    /// let e = LayerConfig::from_keras(&serde_json::json!({"class_name": "ConvLSTM1D", "config": {}}));
    /// assert!(e.unwrap_err().to_string().contains("ConvLSTM1D"));
    /// ```
    pub fn from_keras(layer: &Value) -> Result<Self> {
        let class = layer
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| LstmError::bad_config("class_name", "expected a string"))?;
        let config = layer
            .get("config")
            .ok_or_else(|| LstmError::bad_config("config", "layer without config"))?;
        match class {
            "LSTM" | "GRU" | "SimpleRNN" => Ok(LayerConfig::Lstm(LstmConfig::from_keras_class(
                class, config,
            )?)),
            "Bidirectional" => Ok(LayerConfig::Bidirectional(BidirectionalConfig::from_keras(
                config,
            )?)),
            "Sequential" => {
                let layers = config
                    .get("layers")
                    .and_then(Value::as_array)
                    .ok_or_else(|| LstmError::bad_config("layers", "expected a list"))?;
                let mut out = Vec::new();
                for l in layers {
                    if l.get("class_name").and_then(Value::as_str) == Some("InputLayer") {
                        continue;
                    }
                    out.push(LayerConfig::from_keras(l)?);
                }
                if out.is_empty() {
                    return Err(LstmError::bad_config(
                        "layers",
                        "no LSTM layer in Sequential",
                    ));
                }
                Ok(LayerConfig::Sequential(out))
            }
            other => Err(LstmError::unsupported("class_name", other)),
        }
    }

    /// The LSTM configurations in weight order (`get_weights()` order).
    pub fn lstms(&self) -> Vec<&LstmConfig> {
        match self {
            LayerConfig::Lstm(c) => vec![c],
            LayerConfig::Bidirectional(b) => vec![&b.forward, &b.backward],
            LayerConfig::Sequential(ls) => ls.iter().flat_map(|l| l.lstms()).collect(),
        }
    }
}
