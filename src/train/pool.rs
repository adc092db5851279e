//! The buffers of a training step, kept for the next one: the recurrent layers' tapes and
//! their cotangents are tens of megabytes per step, and freshly allocated memory comes from
//! the operating system one zeroed page at a time (a page fault each), which measured 40%
//! of a CPU step at `256x20x64x128` (the step 36-42 ms with the allocator returning its
//! memory on every free, 20-22 ms with it keeping it). A step gives its tapes back here when
//! they are dropped and the next step of the same shape takes them again.
//!
//! Per thread (the step's arrays are made on the thread that calls `fit` or `gradients`;
//! rayon's workers only write into views of them). Bounded: at most [`MAX_BUFFERS`] buffers
//! and [`MAX_BYTES`] bytes are kept (the oldest go first), a buffer is only reused for an
//! array of at least half its size, and [`release_buffers`] frees the calling thread's.

use crate::element::Element;
use ndarray::{Array, Dimension, ShapeBuilder};
use std::any::Any;
use std::cell::RefCell;

/// The most buffers one thread keeps.
const MAX_BUFFERS: usize = 48;
/// The most bytes one thread keeps.
const MAX_BYTES: usize = 512 << 20;
/// Buffers below this many bytes are left to the allocator (small allocations are cheap).
const MIN_BYTES: usize = 64 << 10;

#[derive(Default)]
struct Pool {
    /// `(bytes, Vec<T>)`, oldest first.
    free: Vec<(usize, Box<dyn Any>)>,
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A zero-filled array of `shape`, reusing a kept buffer when one fits.
pub(crate) fn zeros<T: Element, Sh: ShapeBuilder>(shape: Sh) -> Array<T, Sh::Dim>
where
    Sh::Dim: Dimension,
{
    let shape = shape.into_shape_with_order();
    let len = shape.size();
    let bytes = len * std::mem::size_of::<T>();
    if bytes < MIN_BYTES {
        return Array::zeros(shape);
    }
    let found = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let at = p.free.iter().position(|(_, b)| {
            b.downcast_ref::<Vec<T>>()
                .is_some_and(|v| v.capacity() >= len && v.capacity() <= 2 * len)
        })?;
        let (n, b) = p.free.remove(at);
        p.bytes -= n;
        b.downcast::<Vec<T>>().ok().map(|v| *v)
    });
    match found {
        Some(mut v) => {
            v.clear();
            v.resize(len, T::zero());
            Array::from_shape_vec(shape, v).expect("the buffer holds the shape's elements")
        }
        None => Array::zeros(shape),
    }
}

/// Keeps `a`'s buffer for a later [`zeros`] (or drops it when the pool is full).
pub(crate) fn recycle<T: Element, D: Dimension>(a: Array<T, D>) {
    let (v, _) = a.into_raw_vec_and_offset();
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
        return;
    }
    // (a thread being torn down has no pool left: the buffer is simply dropped)
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        while !p.free.is_empty() && (p.free.len() >= MAX_BUFFERS || p.bytes + bytes > MAX_BYTES) {
            let (n, _) = p.free.remove(0);
            p.bytes -= n;
        }
        p.bytes += bytes;
        p.free.push((bytes, Box::new(v)));
    });
}

/// Moves `a` out for [`recycle`], leaving an empty array.
pub(crate) fn take<T: Element, D: Dimension>(a: &mut Array<T, D>) -> Array<T, D> {
    std::mem::replace(
        a,
        Array::from_shape_vec(D::zeros(a.ndim()), Vec::new()).expect("empty"),
    )
}

/// Frees the training buffers this thread keeps between steps (up to one step's tapes);
/// the next step allocates again. Training frees nothing else by itself: call this after
/// `fit` when the memory is wanted back.
///
/// ```
/// lstm_wgpu::train::release_buffers();
/// assert_eq!(lstm_wgpu::train::kept_buffer_bytes(), 0);
/// ```
pub fn release_buffers() {
    let _ = POOL.try_with(|p| *p.borrow_mut() = Pool::default());
}

/// The bytes of training buffers this thread keeps between steps (see [`release_buffers`]).
///
/// ```
/// assert!(lstm_wgpu::train::kept_buffer_bytes() <= 512 << 20);
/// ```
pub fn kept_buffer_bytes() -> usize {
    POOL.try_with(|p| p.borrow().bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_zeroed_and_bounded() {
        release_buffers();
        let mut a = zeros::<f32, _>((64, 1024));
        a.fill(3.0);
        let ptr = a.as_ptr();
        recycle(a);
        assert_eq!(kept_buffer_bytes(), 64 * 1024 * 4);
        // the same buffer again, zeroed, for a shape of the same size
        let b = zeros::<f32, _>((1024, 64));
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.iter().all(|&v| v == 0.0));
        assert_eq!(kept_buffer_bytes(), 0);
        // not for another element type, nor for one under half its size
        recycle(b);
        let c = zeros::<f64, _>((64, 512));
        assert_ne!(c.as_ptr().cast::<f32>(), ptr);
        let d = zeros::<f32, _>((64, 400));
        assert_ne!(d.as_ptr(), ptr);
        // many distinct shapes: the kept bytes stay under the bound
        for k in 1..200usize {
            recycle(zeros::<f32, _>((k, 4096)));
            assert!(kept_buffer_bytes() <= MAX_BYTES);
            assert!(POOL.with(|p| p.borrow().free.len()) <= MAX_BUFFERS);
        }
        release_buffers();
        assert_eq!(kept_buffer_bytes(), 0);
        // small arrays are left to the allocator
        recycle(zeros::<f32, _>((4, 4)));
        assert_eq!(kept_buffer_bytes(), 0);
    }
}
