//! Device setup: choosing an adapter, requesting its real limits and useful features.
//! Built once and shared (`Arc<GpuContext>`) by every GPU layer.

use crate::error::{LstmError, Result};
use std::sync::{Arc, OnceLock};

/// How to choose the GPU adapter. [`GpuOptions::from_env`] reads the environment:
/// `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`), `WGPU_ADAPTER_NAME` (a case-insensitive
/// substring of the adapter's name), `WGPU_POWER_PREF` (`low`, `high`, `none`),
/// `LSTM_WGPU_ALLOW_SOFTWARE=1` (software adapters may be chosen) and
/// `LSTM_WGPU_FORCE_FALLBACK=1` (ask for the fallback, i.e. software, adapter).
///
/// **Software adapters** (device type `Cpu`: llvmpipe, lavapipe, WARP, SwiftShader) run the
/// kernels 20-40x slower than the crate's own CPU path, so they are chosen only when asked
/// for: [`GpuOptions::allow_software`], `LSTM_WGPU_ALLOW_SOFTWARE=1`, a `WGPU_ADAPTER_NAME`
/// that names one, or `force_fallback_adapter`. Among the others a discrete GPU comes first
/// (an integrated one with `WGPU_POWER_PREF=low`).
///
/// ```
/// use lstm_wgpu::gpu::GpuOptions;
/// let opts = GpuOptions::from_env().adapter_name("llvmpipe").max_binding_size(1 << 20);
/// assert_eq!(opts.adapter_name.as_deref(), Some("llvmpipe"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Backends to search (default: all compiled in).
    pub backends: Option<wgpu::Backends>,
    /// Power preference.
    pub power_preference: Option<wgpu::PowerPreference>,
    /// Only adapters whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Ask for the fallback (software) adapter.
    pub force_fallback_adapter: bool,
    /// Software adapters may be chosen (when no hardware adapter is found).
    pub allow_software: bool,
    /// Request at most this storage-buffer binding size and buffer size (bytes) from the
    /// device, e.g. to exercise chunking; by default the adapter's own limits.
    pub max_binding_size: Option<u64>,
}

impl GpuOptions {
    /// Options read from `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF` and
    /// `LSTM_WGPU_FORCE_FALLBACK`.
    pub fn from_env() -> Self {
        GpuOptions {
            backends: wgpu::Backends::from_env(),
            power_preference: wgpu::PowerPreference::from_env(),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
            force_fallback_adapter: env_flag("LSTM_WGPU_FORCE_FALLBACK"),
            allow_software: env_flag("LSTM_WGPU_ALLOW_SOFTWARE"),
            max_binding_size: None,
        }
    }

    /// Lets a software adapter be chosen when no hardware one is found.
    ///
    /// ```
    /// use lstm_wgpu::gpu::GpuOptions;
    /// assert!(GpuOptions::default().allow_software(true).allow_software);
    /// ```
    pub fn allow_software(mut self, allow: bool) -> Self {
        self.allow_software = allow;
        self
    }

    /// Sets the adapter name filter.
    pub fn adapter_name(mut self, name: impl Into<String>) -> Self {
        self.adapter_name = Some(name.into());
        self
    }

    /// Caps the storage-buffer binding size and buffer size requested from the device.
    pub fn max_binding_size(mut self, bytes: u64) -> Self {
        self.max_binding_size = Some(bytes);
        self
    }

    fn describe(&self, backends: wgpu::Backends) -> String {
        format!(
            "backends {:?}, power preference {:?}, adapter name {}, force_fallback_adapter {}, \
             allow_software {}",
            backends,
            self.power_preference.unwrap_or_default(),
            self.adapter_name
                .as_deref()
                .map_or("any".to_string(), |n| format!("containing {n:?}")),
            self.force_fallback_adapter,
            self.allow_software
        )
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Ranks an adapter for `options` (lower first): hardware before software, then discrete or
/// integrated first as the power preference says.
fn rank(info: &wgpu::AdapterInfo, low_power: bool) -> u8 {
    use wgpu::DeviceType::*;
    match (info.device_type, low_power) {
        (DiscreteGpu, false) | (IntegratedGpu, true) => 0,
        (IntegratedGpu, false) | (DiscreteGpu, true) => 1,
        (VirtualGpu, _) => 2,
        (Other, _) => 3,
        (Cpu, _) => 4,
    }
}

/// A wgpu device and queue with the facts the kernels need (limits, features, adapter info).
///
/// Build it once and share it: it is `Send + Sync`, and [`GpuContext::new`] returns an `Arc`.
///
/// ```no_run
/// use lstm_wgpu::gpu::GpuContext;
/// let ctx = GpuContext::new()?; // honours WGPU_BACKEND, WGPU_ADAPTER_NAME, ...
/// println!("running on {}", ctx.adapter_info().name);
/// # Ok::<(), lstm_wgpu::LstmError>(())
/// ```
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    kernels: OnceLock<Arc<super::kernels::Kernels>>,
    /// The measured loop-iteration limit of one invocation (see [`GpuContext::loop_limit`]).
    loop_limit: OnceLock<Option<u64>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .finish()
    }
}

impl GpuContext {
    /// Picks an adapter as [`GpuOptions::from_env`] says and opens a device on it.
    pub fn new() -> Result<Arc<Self>> {
        Self::with_options(&GpuOptions::from_env())
    }

    /// Picks an adapter as `options` say and opens a device with the adapter's real limits
    /// (workgroup storage, binding sizes, buffer size) and the optional features it has
    /// (subgroups, shader-f16, timestamp queries).
    pub fn with_options(options: &GpuOptions) -> Result<Arc<Self>> {
        let backends = options.backends.unwrap_or(wgpu::Backends::all());
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let no_adapter = |extra: &str| LstmError::NoGpuAdapter {
            tried: format!("{}{extra}", options.describe(backends)),
        };
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let label = |i: &wgpu::AdapterInfo| format!("{} ({:?})", i.name, i.backend);
        let seen: Vec<String> = adapters.iter().map(|a| label(&a.get_info())).collect();
        let wanted = options.adapter_name.as_ref().map(|n| n.to_lowercase());
        let allow_software =
            options.allow_software || options.force_fallback_adapter || wanted.is_some();
        let low_power = options.power_preference == Some(wgpu::PowerPreference::LowPower);
        let mut skipped = Vec::new();
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                let info = a.get_info();
                let software = info.device_type == wgpu::DeviceType::Cpu;
                let named = wanted
                    .as_ref()
                    .is_none_or(|n| info.name.to_lowercase().contains(n));
                if named && software && !allow_software {
                    skipped.push(label(&info));
                }
                named
                    && (!options.force_fallback_adapter || software)
                    && (allow_software || !software)
            })
            .collect();
        candidates.sort_by_key(|a| rank(&a.get_info(), low_power));
        let Some(adapter) = candidates.into_iter().next() else {
            let extra = if skipped.is_empty() {
                format!("; adapters seen: {seen:?}")
            } else {
                format!(
                    "; adapters seen: {seen:?}; software adapters skipped: {skipped:?} (they \
                     run 20-40x slower than this crate's CPU path; to use one anyway set \
                     LSTM_WGPU_ALLOW_SOFTWARE=1, GpuOptions::allow_software(true), or \
                     WGPU_ADAPTER_NAME to its name)"
                )
            };
            return Err(no_adapter(&extra));
        };
        let info = adapter.get_info();
        if info.device_type == wgpu::DeviceType::Cpu {
            log::warn!(
                "GPU path on a software adapter ({}): expect it to be slower than the CPU path",
                label(&info)
            );
        }
        let mut limits = adapter.limits();
        if let Some(cap) = options.max_binding_size {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
            limits.max_buffer_size = limits.max_buffer_size.min(cap.max(1 << 16));
        }
        let wanted = wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("lstm-wgpu"),
            required_features: features,
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| LstmError::Device {
            message: format!("request_device on {}: {e}", adapter.get_info().name),
        })?;
        // Errors outside our error scopes are reported by the calls that check them; never
        // let wgpu's default handler panic inside the library.
        device.on_uncaptured_error(Arc::new(|e| {
            log::error!("uncaptured wgpu error: {e}");
        }));
        Ok(Arc::new(Self::assemble(device, queue, adapter.get_info())))
    }

    /// Wraps a device and queue the application already has. `info` describes its adapter
    /// (from `adapter.get_info()`); the kernels use the device's own limits and features.
    ///
    /// ```no_run
    /// # let (device, queue, info): (wgpu::Device, wgpu::Queue, wgpu::AdapterInfo) = unimplemented!();
    /// let ctx = lstm_wgpu::gpu::GpuContext::from_device(device, queue, info);
    /// ```
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Arc<Self> {
        Arc::new(Self::assemble(device, queue, info))
    }

    fn assemble(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let limits = device.limits();
        GpuContext {
            device,
            queue,
            info,
            limits,
            kernels: OnceLock::new(),
            loop_limit: OnceLock::new(),
        }
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's description (name, backend, device type).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// How many loop iterations one shader invocation may run on this adapter before the
    /// driver ends its loops: `Some(n)` on drivers that cut loops short without an error
    /// (Mesa's llvmpipe/lavapipe: 65,535, counted over all loops of the invocation), `None`
    /// where a loop of millions of iterations ran to its end. Measured once, on first use, by
    /// a one-thread probe kernel; the plan builders keep every dispatch within half of it.
    ///
    /// ```no_run
    /// let ctx = lstm_wgpu::gpu::GpuContext::new()?;
    /// if let Some(n) = ctx.loop_limit()? {
    ///     println!("{} stops loops after {n} iterations", ctx.describe());
    /// }
    /// # Ok::<(), lstm_wgpu::LstmError>(())
    /// ```
    pub fn loop_limit(&self) -> Result<Option<u64>> {
        if let Some(n) = self.loop_limit.get() {
            return Ok(*n);
        }
        let n = self.checked("probing the loop limit", || {
            super::loops::probe(&self.device, &self.queue)
        })??;
        if let Some(n) = n {
            log::info!(
                "{}: shader loops stop after {n} iterations",
                self.describe()
            );
        }
        Ok(*self.loop_limit.get_or_init(|| n))
    }

    /// The device's enabled features.
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// A one-line description: adapter name and backend.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// Every adapter wgpu sees on the given backends, as one line each.
    pub fn list_adapters(backends: wgpu::Backends) -> Vec<String> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(backends))
            .into_iter()
            .map(|a| {
                let i = a.get_info();
                format!(
                    "{} ({:?}, {:?}, driver {})",
                    i.name, i.backend, i.device_type, i.driver
                )
            })
            .collect()
    }

    /// Runs `f`, capturing wgpu validation and out-of-memory errors as an `Err`.
    pub(crate) fn checked<R>(&self, what: &str, f: impl FnOnce() -> R) -> Result<R> {
        super::scope::checked(&self.device, what, f)
    }

    /// The kernel registry of this device, created on first use.
    pub(crate) fn kernels(&self) -> Result<Arc<super::kernels::Kernels>> {
        if let Some(k) = self.kernels.get() {
            return Ok(k.clone());
        }
        let k = Arc::new(super::kernels::Kernels::new(&self.device)?);
        Ok(self.kernels.get_or_init(|| k).clone())
    }
}
