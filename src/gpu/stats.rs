//! What a forward cost and where its time went: the statistics a test or a benchmark reads.

/// What one forward cost: the figures a test or a benchmark checks the schedule with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Compute dispatches recorded.
    pub dispatches: u32,
    /// Queue submissions.
    pub submits: u32,
    /// Buffer maps (readbacks).
    pub readbacks: u32,
    /// Bytes written from the host (inputs, states, and per-shape parameters when a plan was
    /// built by this forward).
    pub bytes_uploaded: u64,
    /// Bytes read back to the host.
    pub bytes_read_back: u64,
    /// Input projections recorded, summed over the recurrent layers and their directions:
    /// one per direction (a Bidirectional layer has two, a stack one per layer), more where
    /// one direction's projection for all timesteps exceeds the binding limit and is split
    /// into chunks of timesteps.
    pub projection_chunks: u32,
    /// Submissions of batch rows the forward was split into because a buffer exceeded the
    /// adapter's binding limit (0 when the whole batch ran at once).
    pub batch_chunks: u32,
    /// GPU buffers created by this forward (0 when the shape's plan was reused).
    pub buffers_created: u32,
}

/// Adds the costs of another forward (the submissions of a batch-chunked forward).
impl std::ops::AddAssign for ForwardStats {
    fn add_assign(&mut self, o: ForwardStats) {
        self.dispatches += o.dispatches;
        self.submits += o.submits;
        self.readbacks += o.readbacks;
        self.bytes_uploaded += o.bytes_uploaded;
        self.bytes_read_back += o.bytes_read_back;
        self.projection_chunks += o.projection_chunks;
        self.buffers_created += o.buffers_created;
        self.batch_chunks += o.batch_chunks;
    }
}

/// Where the time of one forward went, from GPU timestamp queries (projection, steps, merge, other layers)
/// and host clocks (upload, waiting, readback). Recorded when profiling is on
/// ([`GpuNetwork::set_profiling`](super::GpuNetwork::set_profiling)) and the adapter has timestamp queries inside passes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ForwardProfile {
    /// Host: writing x, mask and states, and recording the commands.
    pub upload_s: f64,
    /// GPU: the projection dispatches.
    pub projection_s: f64,
    /// GPU: the recurrent dispatches (per-step or whole-sequence).
    pub steps_s: f64,
    /// GPU: Bidirectional merges.
    pub merge_s: f64,
    /// GPU: the other layers (Masking, Dense).
    pub layers_s: f64,
    /// Host: from submit until the outputs were mapped.
    pub wait_s: f64,
    /// Host: copying the mapped outputs into arrays.
    pub readback_s: f64,
}

/// What each timestamp closes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    Start,
    Projection,
    Steps,
    Merge,
    Layers,
}

/// Timestamp queries of a profiled plan.
pub(super) struct Timestamps {
    pub(super) set: wgpu::QuerySet,
    pub(super) resolve: wgpu::Buffer,
    pub(super) phases: Vec<Phase>,
    /// Byte offset of the timestamps in the staging buffer.
    pub(super) offset: u64,
}
